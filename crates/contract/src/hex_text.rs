//! Hex as Berth's processes compare it: compose hashes, app ids and
//! signatures arrive with or without `0x` and in either case.

/// Lowercase hex without a `0x` prefix.
pub fn normalize_hex(s: &str) -> String {
    s.trim().trim_start_matches("0x").to_ascii_lowercase()
}
