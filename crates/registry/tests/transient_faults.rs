//! One fault per test, at the level where it is handled: the pull engine
//! against Debian's `docker-registry` behind testkit's fault proxy. These
//! were one scenario through the `berth` binary (four faults at once); the
//! binary keeps a small end-to-end in `crates/cli/tests/pull.rs`.

mod common;
use common::{assert_store_consistent, options, pull, runtime};
use contract::SecretValue;
use registry::credentials::DockerLogin;
use registry::{
    Category, CredentialSet, Endpoints, Hint, ImageReference, PullOptions, Puller, no_events,
};
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::images::{ImageSpec, PushTarget, PushedImage, push_image};
use testkit::{FaultProxy, Registry, Target};

const LAYERS: [u64; 2] = [1_500_000, 700_000];

/// A registry with `lib/app:1` (two layers), behind a fault proxy.
fn setup() -> (Registry, FaultProxy, PushedImage, tempfile::TempDir) {
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg);
    let pushed = push_image(
        &reg.push_target(),
        "lib/app",
        "1",
        &ImageSpec::with_layers(&LAYERS),
    );
    (reg, proxy, pushed, tempfile::tempdir().unwrap())
}

fn image(proxy: &FaultProxy) -> String {
    format!("{}/lib/app:1", proxy.host_port())
}

fn opts(dir: &Path) -> PullOptions {
    options(&dir.join("store"), Duration::from_secs(20))
}

#[test]
fn a_connection_dropped_mid_blob_is_resumed_with_range() {
    let (_reg, proxy, pushed, dir) = setup();
    proxy.drop_blob_after(400_000, 1);
    let pulled = pull(opts(dir.path()), &image(&proxy)).expect("survives the drop");
    assert_eq!(pulled.digest.to_string(), pushed.digest);
    let ranged: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.range.is_some())
        .collect();
    assert_eq!(ranged.len(), 1, "{ranged:#?}");
    assert_eq!(ranged[0].status, 206);
    assert_eq!(ranged[0].range.as_deref(), Some("bytes=400000-"));
    let total: u64 = LAYERS.iter().sum();
    assert!(
        pulled.bytes_downloaded < total + 100_000,
        "resumed, not restarted: {pulled:?}"
    );
    assert_store_consistent(&dir.path().join("store"));
}

#[test]
fn manifests_answering_503_are_retried() {
    let (_reg, proxy, pushed, dir) = setup();
    proxy.unavailable(Target::Manifests, 2);
    let pulled = pull(opts(dir.path()), &image(&proxy)).expect("survives the flap");
    assert_eq!(pulled.digest.to_string(), pushed.digest);
    let flapped = proxy
        .requests()
        .iter()
        .filter(|r| r.fault == Some("503"))
        .count();
    assert_eq!(flapped, 2);
}

#[test]
fn a_429_with_retry_after_is_waited_out() {
    let (_reg, proxy, pushed, dir) = setup();
    proxy.too_many_requests(Target::Blobs, 1, 1);
    let started = Instant::now();
    let pulled = pull(opts(dir.path()), &image(&proxy)).expect("waits, then pulls");
    assert_eq!(pulled.digest.to_string(), pushed.digest);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 honoured: {:?}",
        started.elapsed()
    );
}

#[test]
fn blobs_redirected_to_another_host_get_no_credentials() {
    let reg = Registry::with_htpasswd(&[("alice", "pw-redirect-1")]);
    let proxy = FaultProxy::start(&reg);
    let pushed = push_image(
        &PushTarget::new(&reg.host_port()).with_creds("alice", "pw-redirect-1"),
        "lib/app",
        "1",
        &ImageSpec::with_layers(&[200_000]),
    );
    // Storage answers 400 to a request carrying Authorization.
    proxy.redirect_blobs(usize::MAX, true);
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.credentials = CredentialSet {
        docker: Some(DockerLogin {
            registry: proxy.host_port(),
            username: "alice".into(),
            password: SecretValue::from("pw-redirect-1"),
        }),
        ecr: None,
    };
    let pulled = pull(o, &image(&proxy)).expect("pulls through the redirect");
    assert_eq!(pulled.digest.to_string(), pushed.digest);
    let storage = proxy.storage_requests();
    assert!(!storage.is_empty(), "the blobs came from storage");
    assert!(
        storage.iter().all(|r| !r.authorization),
        "credentials followed a redirect: {storage:#?}"
    );
    assert!(
        proxy.requests().iter().any(|r| r.authorization),
        "the registry itself got the credentials"
    );
}

#[test]
fn a_second_pull_costs_one_head_and_nothing_else() {
    let (_reg, proxy, _pushed, dir) = setup();
    pull(opts(dir.path()), &image(&proxy)).unwrap();
    proxy.clear_requests();
    let again = pull(opts(dir.path()), &image(&proxy)).unwrap();
    assert!(again.manifest_cached);
    assert_eq!(again.bytes_downloaded, 0);
    assert_eq!(proxy.manifest_gets(), 0);
    assert_eq!(proxy.manifest_heads(), 1);
    assert_eq!(proxy.blob_gets(), 0);
}

#[test]
fn a_blob_corrupted_once_is_fetched_again() {
    let (_reg, proxy, pushed, dir) = setup();
    proxy.corrupt_blob(1000, 1);
    let pulled = pull(opts(dir.path()), &image(&proxy)).expect("refetches");
    assert_eq!(pulled.digest.to_string(), pushed.digest);
    assert_store_consistent(&dir.path().join("store"));
}

#[test]
fn a_blob_corrupted_every_time_is_an_integrity_error_and_is_not_stored() {
    let (_reg, proxy, pushed, dir) = setup();
    proxy.corrupt_blob(1000, usize::MAX);
    let err = pull(opts(dir.path()), &image(&proxy)).unwrap_err();
    assert_eq!(err.category, Category::Integrity, "{err:?}");
    assert!(err.message.contains("twice"), "{}", err.message);
    let store = dir.path().join("store");
    assert_store_consistent(&store);
    for layer in &pushed.image.layers {
        let hex = layer.digest.trim_start_matches("sha256:");
        assert!(!store.join("blobs/sha256").join(hex).exists());
    }
    let partials = std::fs::read_dir(store.join("ingest")).unwrap().count();
    assert_eq!(partials, 0, "the corrupt download was discarded");
}

#[test]
fn rate_limited_longer_than_the_budget_says_how_long_to_wait() {
    let (_reg, proxy, _pushed, dir) = setup();
    proxy.too_many_requests(Target::Manifests, 3600, usize::MAX);
    let started = Instant::now();
    let err = pull(
        options(&dir.path().join("store"), Duration::from_secs(5)),
        &image(&proxy),
    )
    .unwrap_err();
    assert_eq!(err.category, Category::RateLimited, "{err:?}");
    assert_eq!(err.retry_after, Some(Duration::from_secs(3600)));
    assert!(err.message.contains("60 min"), "{}", err.message);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no hopeless wait"
    );
}

#[test]
fn docker_hub_anonymous_over_its_limit_is_told_to_log_in() {
    let (_reg, proxy, _pushed, dir) = setup();
    let mut o = options(&dir.path().join("store"), Duration::from_secs(2));
    let mut endpoints = Endpoints::new();
    endpoints.insert("docker.io", &proxy.base_url()).unwrap();
    o.endpoints = endpoints;
    proxy.too_many_requests(Target::Manifests, 21600, usize::MAX);
    let err = pull(o, "lib/app:1").unwrap_err();
    assert_eq!(err.category, Category::RateLimited, "{err:?}");
    assert_eq!(err.registry.as_deref(), Some("docker.io"));
    assert!(err.message.contains("6 h"), "{}", err.message);
    let hint = err.hint.text().expect("plain advice");
    assert!(hint.contains("DSTACK_DOCKER_USERNAME"), "{hint}");
}

#[test]
fn quota_headers_are_reported() {
    let (_reg, proxy, _pushed, dir) = setup();
    proxy.rate_limit(100, 76, false);
    let reference: ImageReference = image(&proxy).parse().unwrap();
    let limits = runtime().block_on(async {
        let puller = Puller::new(opts(dir.path()), no_events()).unwrap();
        puller.pull(&reference).await.unwrap();
        puller.rate_limits().await
    });
    assert_eq!(limits.len(), 1, "{limits:?}");
    // The HEAD saw 76 left; the one manifest GET of a fresh store used one.
    assert_eq!((limits[0].1.limit, limits[0].1.remaining), (100, Some(75)));
}

#[test]
fn check_never_gets_a_manifest() {
    let (_reg, proxy, pushed, dir) = setup();
    let reference: ImageReference = image(&proxy).parse().unwrap();
    let checked = runtime()
        .block_on(async {
            let puller = Puller::new(opts(dir.path()), no_events()).unwrap();
            puller.check(&reference).await
        })
        .unwrap();
    assert_eq!(
        checked.digest.map(|d| d.to_string()),
        Some(pushed.digest.clone())
    );
    assert_eq!(proxy.manifest_gets(), 0);
    assert_eq!(proxy.manifest_heads(), 1);
    assert_eq!(proxy.blob_gets(), 0);
}

#[test]
fn a_registry_that_keeps_failing_is_a_registry_error() {
    let (_reg, proxy, _pushed, dir) = setup();
    proxy.unavailable(Target::Manifests, usize::MAX);
    let err = pull(
        options(&dir.path().join("store"), Duration::from_secs(2)),
        &image(&proxy),
    )
    .unwrap_err();
    assert_eq!(err.category, Category::RegistryError, "{err:?}");
    assert!(err.message.contains("503"), "{}", err.message);
}

#[test]
fn an_untrusted_certificate_fails_at_once_with_the_trust_ca_hint() {
    let reg = Registry::builder().tls().start();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = pull(opts(dir.path()), &format!("{}/lib/app:1", reg.host_port())).unwrap_err();
    assert_eq!(err.category, Category::Unreachable, "{err:?}");
    assert_eq!(err.hint, Hint::TrustCa);
    assert!(
        err.message.contains("TLS certificate is not trusted"),
        "{}",
        err.message
    );
    assert!(started.elapsed() < Duration::from_secs(5), "not retried");
}
