//! Helpers shared by the pull engine's integration tests.
#![allow(dead_code)]

use registry::{
    ImageReference, PullError, PullOptions, PulledImage, Puller, RetryPolicy, no_events,
};
use sha2::Digest as _;
use std::path::Path;
use std::time::Duration;

/// Options for a store at `store`, with quick retries within `budget`.
pub fn options(store: &Path, budget: Duration) -> PullOptions {
    let mut opts = PullOptions::new(store);
    opts.retry = RetryPolicy {
        max_attempts: 30,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(500),
        budget,
    };
    opts
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Pulls `reference` with a fresh puller.
pub fn pull(opts: PullOptions, reference: &str) -> Result<PulledImage, PullError> {
    let reference: ImageReference = reference.parse().unwrap();
    runtime().block_on(async {
        let puller = Puller::new(opts, no_events())?;
        puller.pull(&reference).await
    })
}

/// Every file under `blobs/sha256` hashes to its name, and `index.json` is
/// valid JSON with a manifests list.
pub fn assert_store_consistent(store: &Path) {
    for entry in std::fs::read_dir(store.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let hash = hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap()));
        assert_eq!(hash, name, "an unverified blob was committed: {path:?}");
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("index.json")).unwrap())
            .expect("index.json is valid JSON");
    assert!(index["manifests"].is_array(), "{index}");
}
