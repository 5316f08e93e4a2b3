//! The `applevz` command end to end through the simulator: two processes (`run` in
//! one, `stop` / `suspend` / `status` … in another), every bad input with its message
//! and exit status, and the terminal restored after `run`.
//!
//! Every process a test starts is held by a [`support::KillOnDrop`], so a test that
//! fails leaves no `applevz run` behind; ordering waits for an event (a line `run`
//! printed, a state `status` reports), never for a fixed time.
#![cfg(applevz_simulator)]

#[path = "../common/mod.rs"]
mod common;
#[path = "../../src/bin/applevz/pty.rs"]
mod pty;
mod support;

mod commands;
mod control_socket;
mod fault_matrix;
mod faults;
mod harness;
mod review;
mod rough_edges;
