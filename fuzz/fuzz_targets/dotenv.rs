//! Fuzz target: see `../checks/dotenv.rs` for what is checked.
#![no_main]

#[path = "../checks/dotenv.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
