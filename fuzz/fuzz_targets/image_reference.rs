//! Fuzz target: see `../checks/image_reference.rs` for what is checked.
#![no_main]

#[path = "../checks/image_reference.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
