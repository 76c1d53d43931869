//! `WWW-Authenticate` challenges (the registry client's parser), for any
//! header value:
//! - parsing never panics; a Bearer challenge always has its realm, and it
//!   is the `realm` parameter;
//! - parameters written the way RFC 9110 writes them (`key="quoted \"
//!   value"` or `key=token`, separated by commas) are read back exactly,
//!   whatever the quoted values hold.
//!
//! Shared by the fuzz target `fuzz/fuzz_targets/www_authenticate.rs` and the
//! property test `crates/registry/tests/fuzz_www_authenticate.rs`.

use registry::client::parse_challenge_for_fuzzing as parse;
use std::collections::HashMap;

pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    if mode % 2 == 0 {
        if let Some((realm, params)) = parse(&text) {
            if let Some(realm) = realm {
                assert_eq!(params.get("realm"), Some(&realm));
            }
            for k in params.keys() {
                assert_eq!(*k, k.to_ascii_lowercase());
            }
        }
        return;
    }
    // Structured: NUL-separated key, value, key, value, ...; the mode byte's
    // bits choose the scheme's spelling and the separators.
    let parts: Vec<&str> = text.split('\0').collect();
    let mut want: HashMap<String, String> = HashMap::new();
    let mut written = Vec::new();
    want.insert("realm".into(), "https://auth.example/token".into());
    written.push(r#"realm="https://auth.example/token""#.to_owned());
    for (i, pair) in parts.chunks(2).enumerate() {
        let key: String = pair[0]
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            .collect::<String>()
            .to_ascii_lowercase();
        if key.is_empty() || want.contains_key(&key) {
            continue;
        }
        let value = pair.get(1).copied().unwrap_or_default();
        // Header values are visible ASCII, spaces and tabs.
        let value: String = value
            .chars()
            .filter(|c| matches!(c, ' ' | '\t' | '!'..='~'))
            .collect();
        let token = !value.is_empty()
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
        let shown_key = if mode & 2 != 0 {
            key.to_ascii_uppercase()
        } else {
            key.clone()
        };
        if token && (mode >> 2).wrapping_add(i as u8) % 2 == 0 {
            written.push(format!("{shown_key}={value}"));
        } else {
            let quoted = value.replace('\\', "\\\\").replace('"', "\\\"");
            written.push(format!("{shown_key}=\"{quoted}\""));
        }
        want.insert(key, value);
    }
    let sep = if mode & 8 != 0 { ", " } else { "," };
    let scheme = if mode & 16 != 0 { "bearer" } else { "Bearer" };
    let header = format!("{scheme} {}", written.join(sep));
    let (realm, params) = parse(&header).unwrap_or_else(|| panic!("{header:?} is refused"));
    assert_eq!(realm.as_deref(), Some("https://auth.example/token"));
    assert_eq!(params, want, "{header:?}");
}
