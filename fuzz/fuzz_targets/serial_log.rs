//! Fuzz target: see `../checks/serial_log.rs` for what is checked.
#![no_main]

#[path = "../checks/serial_log.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
