//! Fuzz target: see `../checks/manifest.rs` for what is checked.
#![no_main]

#[path = "../checks/manifest.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
