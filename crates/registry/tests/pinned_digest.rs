//! A reference pinned to a digest (issue 20, part 2): a registry that
//! answers another manifest for it fails the pull as `integrity`, with a
//! sentence naming the image and both digests; nothing is stored.

mod common;

use common::{options, runtime};
use registry::{Category, ImageReference, Puller, no_events};
use std::time::Duration;
use testkit::hostile::{manifest, sha256_digest};
use testkit::{BlobAnswer, HostileRegistry};

#[test]
fn a_registry_answering_another_manifest_for_a_pinned_digest_fails_integrity() {
    let reg = HostileRegistry::start();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = reg.put_blob(config.to_vec(), BlobAnswer::Whole);
    let served = manifest((&config_digest, config.len() as u64), &[]);
    let served_digest = sha256_digest(&served);
    reg.set_manifest(served);
    let pinned = sha256_digest(b"the manifest the owner deployed");
    let reference: ImageReference = format!("{}/lib/app:1@{pinned}", reg.host_port())
        .parse()
        .unwrap();
    let dir = tempfile_dir();
    let err = runtime()
        .block_on(async {
            let puller = Puller::new(options(&dir, Duration::from_secs(10)), no_events()).unwrap();
            puller.pull(&reference).await
        })
        .unwrap_err();
    assert_eq!(err.category, Category::Integrity, "{}", err.message);
    assert!(err.message.contains(&pinned), "{}", err.message);
    assert!(err.message.contains(&served_digest), "{}", err.message);
    assert!(err.message.contains("lib/app:1"), "{}", err.message);
    assert!(
        !dir.join("blobs/sha256")
            .join(served_digest.trim_start_matches("sha256:"))
            .exists()
    );
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "berth-pinned-digest-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
