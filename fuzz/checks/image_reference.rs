//! Image references (`contract::reference::ImageReference::parse`) and
//! digests, for any text:
//! - parsing never panics;
//! - a parsed reference is normalised: its `Display` parses back to the
//!   same reference (so a reference is checked and measured the same way
//!   wherever it is parsed again), and keeps the grammar's invariants
//!   (lowercase repository path, registry plus path at most 255 bytes, a
//!   tag or a digest, no whitespace or control character anywhere);
//! - a parsed digest's `Display` parses back to itself.
//!
//! Shared by the fuzz target `fuzz/fuzz_targets/image_reference.rs` and the
//! property test `crates/contract/tests/fuzz_image_reference.rs`.

use contract::reference::{Digest, ImageReference, NAME_TOTAL_LENGTH_MAX};

pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match ImageReference::parse(&text) {
        Ok(r) => {
            let shown = r.to_string();
            let again = ImageReference::parse(&shown)
                .unwrap_or_else(|e| panic!("{text:?} normalises to {shown:?}, which fails: {e}"));
            assert_eq!(again, r, "{text:?} -> {shown:?}");
            assert_eq!(again.to_string(), shown);
            assert!(r.tag().is_some() || r.digest().is_some());
            assert!(!r.registry().is_empty() && !r.repository().is_empty());
            assert!(r.registry().len() + 1 + r.repository().len() <= NAME_TOTAL_LENGTH_MAX);
            assert!(
                !r.repository().bytes().any(|b| b.is_ascii_uppercase()),
                "{shown:?}"
            );
            assert!(
                !shown.chars().any(|c| c.is_whitespace() || c.is_control()),
                "{shown:?}"
            );
            let _ = r.api_host();
            let m = r.reference_for_manifest();
            assert!(!m.is_empty());
        }
        Err(e) => {
            assert_eq!(e.reference, text);
        }
    }
    if let Ok(d) = text.parse::<Digest>() {
        assert_eq!(d.to_string(), text);
        assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
        assert_eq!(d.hex().len(), d.algorithm().hex_len());
    }
}
