//! Fuzz target: see `../checks/sealed_env.rs` for what is checked.
#![no_main]

#[path = "../checks/sealed_env.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
