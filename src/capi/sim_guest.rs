//! On the simulator, `applevz_vm_open` scripts the simulated guest from the
//! environment variable `APPLEVZ_SIM_GUEST`, with the syntax `applevz run` reads, so C
//! and C++ programs can test their VM-managing code on Linux without a Mac:
//!
//! ```text
//! APPLEVZ_SIM_GUEST=boot_delay_ms=200,ignores_stop_request
//! ```
//!
//! Keys: `boot_delay_ms`, `stop_delay_ms`, `operation_delay_ms`, `power_off_after_ms`,
//! `crash_after_ms` (the VM fails with `VZErrorDomain` code 1), `ignores_stop_request`,
//! `save_restore_unsupported`, `not_savable`.

use std::path::Path;

use crate::sim::SimulatedGuest;

use super::error::applevz_error;

/// The variable read by [`from_env`].
const VARIABLE: &str = "APPLEVZ_SIM_GUEST";

/// The guest `APPLEVZ_SIM_GUEST` describes (the default guest when it is unset), or an
/// `APPLEVZ_ERROR_INVALID_CONFIG` error naming the item it cannot use.
pub(super) fn from_env(definition: &Path) -> Result<SimulatedGuest, applevz_error> {
    match std::env::var(VARIABLE) {
        Ok(script) => parse(&script).map_err(|item| {
            applevz_error::invalid_config(format!(
                "{}: {VARIABLE}: cannot use {item:?} (keys: boot_delay_ms, stop_delay_ms, \
                 operation_delay_ms, power_off_after_ms, crash_after_ms, \
                 ignores_stop_request, save_restore_unsupported, not_savable)",
                definition.display()
            ))
        }),
        Err(std::env::VarError::NotPresent) => Ok(SimulatedGuest::default()),
        Err(std::env::VarError::NotUnicode(_)) => Err(applevz_error::invalid_config(format!(
            "{}: {VARIABLE} is not UTF-8",
            definition.display()
        ))),
    }
}

fn parse(script: &str) -> Result<SimulatedGuest, String> {
    SimulatedGuest::from_script(script)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn scripts_parse_and_bad_items_are_named() {
        let guest = parse("boot_delay_ms=5, ignores_stop_request,,not_savable").unwrap();
        assert_eq!(guest.boot_delay, Duration::from_millis(5));
        assert!(guest.ignores_stop_request && guest.not_savable);
        assert_eq!(parse("").unwrap(), SimulatedGuest::default());
        assert_eq!(
            parse("boot_delay_ms=soon").unwrap_err(),
            "boot_delay_ms=soon"
        );
        assert_eq!(
            parse("ignores_stop_request=1").unwrap_err(),
            "ignores_stop_request=1"
        );
        assert_eq!(parse("fly").unwrap_err(), "fly");
    }
}
