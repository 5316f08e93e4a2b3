//! Fuzz target: a control-protocol request line (any bytes) → `parse_request`, the
//! parser `applevz run` applies to what a client sends on its control socket
//! (src/bin/applevz/request.rs, included here as it is).
//!
//! It may not panic on any input; an error is the expected answer. A line longer than
//! `MAX_REQUEST_BYTES` is always refused. A request that parses renders (`to_line`, the
//! line `applevz` itself sends) as a line that parses back to the same request, within
//! the size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)] // `verb` and `label` are for the tool's messages.
#[path = "../../src/bin/applevz/request.rs"]
mod request;

use request::{MAX_REQUEST_BYTES, parse_request};

fuzz_target!(|data: &[u8]| {
    let parsed = parse_request(data);
    if data.len() > MAX_REQUEST_BYTES {
        assert!(parsed.is_err(), "{} bytes accepted: {parsed:?}", data.len());
        return;
    }
    let Ok(request) = parsed else {
        return;
    };
    let line = request.to_line();
    assert!(
        line.len() < MAX_REQUEST_BYTES,
        "{request:?} renders as {} bytes: {line:?}",
        line.len()
    );
    assert_eq!(
        parse_request(line.as_bytes()),
        Ok(request),
        "{request:?} renders as {line:?}, from {:?}",
        String::from_utf8_lossy(data)
    );
    // As `applevz` sends it: with the newline.
    assert_eq!(parse_request(format!("{line}\n").as_bytes()), Ok(request));
});
