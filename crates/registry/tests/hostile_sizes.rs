//! A hostile registry's sizes and counts (issue 23, findings 4 and 11): a
//! manifest announcing a layer of another size than its blob, a registry
//! that answers every `Range` with the whole blob or never completes one,
//! and a manifest of more layers than the Docker engine loads. Against
//! testkit's [`HostileRegistry`], a real HTTP server on loopback that serves
//! what a real registry would refuse to store.
//!
//! Each pull is bounded by the test: before the fixes, these boots retried
//! until someone stopped them.

mod common;

use common::{options, runtime};
use registry::{
    Category, ImageReference, PullError, PullOptions, PulledImage, Puller, RangedOptions, no_events,
};
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::hostile::{manifest, sha256_digest};
use testkit::{BlobAnswer, HostileRegistry};

/// The retry budget of these pulls: a failure that is not retried comes
/// well before it.
const BUDGET: Duration = Duration::from_secs(10);
/// How long a test waits for a pull before calling it endless.
const ENDLESS: Duration = Duration::from_secs(40);
/// The layer's true size.
const LAYER: usize = 300_000;

/// A registry serving `lib/app:1`: a small config and one layer of
/// [`LAYER`] bytes whose manifest size is `announced`, answered as `answer`
/// says. Returns the registry and the layer's digest.
fn one_layer(announced: u64, answer: BlobAnswer) -> (HostileRegistry, String) {
    let reg = HostileRegistry::start();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = reg.put_blob(config.to_vec(), BlobAnswer::Whole);
    let bytes: Vec<u8> = (0..LAYER).map(|i| (i * 31 % 251) as u8).collect();
    let layer = reg.put_blob(bytes, answer);
    reg.set_manifest(manifest(
        (&config_digest, config.len() as u64),
        &[(layer.clone(), announced)],
    ));
    (reg, layer)
}

/// Pulls `lib/app:1` from `reg`: its outcome and how long it took, or
/// `None` if it had not ended after [`ENDLESS`].
fn pull_within(
    reg: &HostileRegistry,
    opts: PullOptions,
) -> Option<(Result<PulledImage, PullError>, Duration)> {
    let reference: ImageReference = format!("{}/lib/app:1", reg.host_port()).parse().unwrap();
    let started = Instant::now();
    runtime().block_on(async {
        let puller = Puller::new(opts, no_events()).unwrap();
        tokio::time::timeout(ENDLESS, puller.pull(&reference))
            .await
            .ok()
            .map(|r| (r, started.elapsed()))
    })
}

/// Blob GETs of `digest` the registry received.
fn gets_of(reg: &HostileRegistry, digest: &str) -> usize {
    reg.blob_requests()
        .iter()
        .filter(|r| r.method == "GET" && r.digest == digest)
        .count()
}

/// Big blobs in parts: the layer is fetched as `Range` parts of 64 KiB.
fn in_parts(store: &Path) -> PullOptions {
    let mut opts = options(store, BUDGET);
    opts.ranged = RangedOptions {
        threshold: 64 << 10,
        part_size: 64 << 10,
        connections_per_registry: 3,
    };
    opts
}

/// The pull failed, soon, as `category`, naming both sizes, after at most
/// `max_gets` requests for the layer.
fn assert_refused_at_once(
    reg: &HostileRegistry,
    layer: &str,
    outcome: Option<(Result<PulledImage, PullError>, Duration)>,
    announced: u64,
    max_gets: usize,
) {
    let gets = gets_of(reg, layer);
    let Some((result, elapsed)) = outcome else {
        panic!("the pull was still retrying after {ENDLESS:?} ({gets} requests for the layer)");
    };
    let err = result.expect_err("a blob of another size than announced is never stored");
    assert_eq!(err.category, Category::Integrity, "{err:?}");
    for size in [LAYER as u64, announced] {
        assert!(
            err.message.contains(&size.to_string()),
            "the message names both sizes: {}",
            err.message
        );
    }
    assert!(gets <= max_gets, "{gets} requests for the layer");
    assert!(
        elapsed < BUDGET / 2,
        "failed after {elapsed:?}, not at once (budget {BUDGET:?})"
    );
    eprintln!("{gets} requests for the layer, failed in {elapsed:?}: {err}");
}

#[test]
fn a_layer_announced_larger_than_its_blob_fails_at_once_as_integrity() {
    let announced = LAYER as u64 + 100;
    let (reg, layer) = one_layer(announced, BlobAnswer::Whole);
    let dir = tempfile::tempdir().unwrap();
    let outcome = pull_within(&reg, options(&dir.path().join("store"), BUDGET));
    assert_refused_at_once(&reg, &layer, outcome, announced, 1);
}

#[test]
fn a_layer_announced_larger_than_its_blob_fails_at_once_when_fetched_in_parts() {
    let announced = LAYER as u64 + 100;
    let (reg, layer) = one_layer(announced, BlobAnswer::Whole);
    let dir = tempfile::tempdir().unwrap();
    let outcome = pull_within(&reg, in_parts(&dir.path().join("store")));
    // The first part's request, answered with the whole blob, is the only
    // one: its length is not the announced one.
    assert_refused_at_once(&reg, &layer, outcome, announced, 1);
}

#[test]
fn a_layer_announced_smaller_than_its_blob_fails_at_once_as_integrity() {
    let announced = LAYER as u64 - 100;
    let (reg, layer) = one_layer(announced, BlobAnswer::Whole);
    let dir = tempfile::tempdir().unwrap();
    let outcome = pull_within(&reg, options(&dir.path().join("store"), BUDGET));
    assert_refused_at_once(&reg, &layer, outcome, announced, 1);
}

#[test]
fn a_body_that_ends_properly_short_of_the_announced_size_fails_at_once() {
    // Chunked: no length announced, the body ends with its last chunk.
    let announced = LAYER as u64 + 100;
    let (reg, layer) = one_layer(announced, BlobAnswer::Chunked);
    let dir = tempfile::tempdir().unwrap();
    let outcome = pull_within(&reg, options(&dir.path().join("store"), BUDGET));
    assert_refused_at_once(&reg, &layer, outcome, announced, 1);
}

#[test]
fn a_registry_that_never_completes_a_blob_is_asked_for_it_a_bounded_number_of_times() {
    // Honest sizes, but every answer stops halfway and `Range` is ignored:
    // each attempt brings bytes (so the retry budget never runs out) and
    // never the blob.
    let (reg, layer) = one_layer(LAYER as u64, BlobAnswer::CutAfter(LAYER / 2));
    let dir = tempfile::tempdir().unwrap();
    let outcome = pull_within(&reg, options(&dir.path().join("store"), BUDGET));
    let gets = gets_of(&reg, &layer);
    let Some((result, elapsed)) = outcome else {
        panic!("the pull was still retrying after {ENDLESS:?} ({gets} requests for the layer)");
    };
    let err = result.expect_err("the blob never arrived whole");
    assert_eq!(err.category, Category::RegistryError, "{err:?}");
    assert!(err.message.contains(&layer), "{}", err.message);
    // One request, then at most `pull::blobs::REQUESTS_PER_BLOB_BEYOND_PLAN`
    // (32) more.
    assert!(gets <= 33, "{gets} requests for the layer");
    eprintln!("{gets} requests for the layer, failed in {elapsed:?}: {err}");
}

/// A manifest of `n` layers of one byte each, none of which the registry
/// has.
fn layers_manifest(reg: &HostileRegistry, n: usize) {
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let config_digest = reg.put_blob(config.to_vec(), BlobAnswer::Whole);
    let layers: Vec<(String, u64)> = (0..n).map(|i| (format!("sha256:{i:064x}"), 1)).collect();
    reg.set_manifest(manifest((&config_digest, config.len() as u64), &layers));
}

#[test]
fn a_manifest_of_more_layers_than_the_engine_loads_is_refused_before_any_blob_request() {
    let reg = HostileRegistry::start();
    layers_manifest(&reg, 25_000);
    let dir = tempfile::tempdir().unwrap();
    let outcome = pull_within(&reg, options(&dir.path().join("store"), BUDGET));
    let requests = reg.blob_requests().len();
    let Some((result, elapsed)) = outcome else {
        panic!("the pull was still busy after {ENDLESS:?} ({requests} blob requests)");
    };
    let err = result.expect_err("25,000 layers are refused");
    assert_eq!(err.category, Category::RegistryError, "{err:?}");
    assert!(
        err.message.contains("25000") && err.message.contains("125"),
        "the message names the count and the limit: {}",
        err.message
    );
    assert_eq!(requests, 0, "no blob is asked for");
    eprintln!("refused in {elapsed:?}: {err}");
}

#[test]
fn an_image_of_as_many_layers_as_the_engine_loads_is_pulled() {
    let reg = HostileRegistry::start();
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let config_digest = reg.put_blob(config.to_vec(), BlobAnswer::Whole);
    let layers: Vec<(String, u64)> = (0..125u32)
        .map(|i| {
            let bytes = i.to_be_bytes().to_vec();
            assert_eq!(
                reg.put_blob(bytes.clone(), BlobAnswer::Whole),
                sha256_digest(&bytes)
            );
            (sha256_digest(&bytes), 4)
        })
        .collect();
    reg.set_manifest(manifest((&config_digest, config.len() as u64), &layers));
    let dir = tempfile::tempdir().unwrap();
    let (result, _) =
        pull_within(&reg, options(&dir.path().join("store"), BUDGET)).expect("the pull ends");
    assert_eq!(result.expect("125 layers are pulled").layers, 125);
}
