//! Fuzz target: see `../checks/compose.rs` for what is checked.
#![no_main]

#[path = "../checks/compose.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
