//! Manifests and indexes (`registry::manifest::Manifest::parse`), for any
//! bytes and any of the content types a registry may send:
//! - parsing never panics, and a refusal is a `registry` error whose
//!   message quotes nothing from the body;
//! - an accepted image manifest has a config and layer descriptors with
//!   valid digests; an accepted index yields, for any platform, either no
//!   entry or an entry of the index for that os/architecture;
//! - `Platform::parse` accepts only what it prints back.
//!
//! Shared by the fuzz target `fuzz/fuzz_targets/manifest.rs` and the
//! property test `crates/registry/tests/fuzz_manifest.rs`.

use registry::Category;
use registry::manifest::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, Manifest, OCI_INDEX, OCI_MANIFEST, Platform,
};

const CONTENT_TYPES: [Option<&str>; 7] = [
    None,
    Some(OCI_MANIFEST),
    Some(OCI_INDEX),
    Some(DOCKER_MANIFEST),
    Some(DOCKER_MANIFEST_LIST),
    Some("application/json; charset=utf-8"),
    Some("text/html"),
];

pub fn check(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    match Manifest::parse(body, content_type) {
        Err(e) => {
            assert_eq!(e.category, Category::RegistryError, "{e}");
            let msg = e.to_string();
            // Only fixed sentences: nothing the registry wrote.
            assert!(
                msg.starts_with("the registry sent a manifest that ") || msg.contains("schema 1"),
                "{msg}"
            );
        }
        Ok(Manifest::Image(m)) => {
            for d in std::iter::once(&m.config).chain(&m.layers) {
                assert_eq!(d.digest.hex().len(), d.digest.algorithm().hex_len());
            }
        }
        Ok(Manifest::Index(index)) => {
            let mut platforms: Vec<Platform> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.clone())
                .collect();
            platforms.push(Platform::host());
            platforms.push(Platform::parse("linux/arm64/v8").unwrap());
            for p in &platforms {
                if let Some(chosen) = p.select(&index) {
                    assert!(index.manifests.contains(chosen));
                    let cp = chosen.platform.as_ref().expect("selected without platform");
                    assert_eq!((&cp.os, &cp.architecture), (&p.os, &p.architecture));
                }
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(body)
        && let Ok(p) = Platform::parse(text)
    {
        assert_eq!(p.to_string(), text);
    }
}
