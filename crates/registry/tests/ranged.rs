//! Big blobs fetched as `Range` parts on separate connections, against
//! Debian's `docker-registry` (which serves `Range`) behind testkit's fault
//! proxy (which logs every range asked for and the bytes it sent, and cuts,
//! corrupts or strips what a test says). A low threshold and 1 MiB parts
//! keep the blobs small.

mod common;

use common::{assert_store_consistent, options, runtime};
use registry::{
    Category, ImageReference, PullError, PullEvent, PullOptions, PulledImage, Puller,
    RangedOptions, no_events,
};
use sha2::Digest as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::images::{BlobInfo, ImageSpec, PushedImage, push_image};
use testkit::{FaultProxy, Registry, RequestRecord, Target};

const MAX_PART: u64 = 1 << 20;
/// The big layer's content (the layer blob is a little larger: its tar
/// headers): nine parts on three connections.
const BIG: u64 = 6 * MAX_PART + 123_457;
const CONNECTIONS: usize = 3;

/// The length of each part (the last may be shorter), as
/// `RangedOptions::part_size` says: the blob is cut into the fewest parts of
/// at most `part_size` that fill every connection in each round.
fn part_len(size: u64) -> u64 {
    let connections = CONNECTIONS as u64;
    let parts = connections * size.div_ceil(connections * MAX_PART);
    size.div_ceil(parts)
}

fn ranged_options(store: &Path, budget: Duration) -> PullOptions {
    let mut opts = options(store, budget);
    opts.ranged = RangedOptions {
        threshold: 2 * MAX_PART,
        part_size: MAX_PART,
        connections_per_registry: CONNECTIONS,
    };
    opts
}

/// A registry with an image of one big layer and one small one, behind a
/// proxy.
fn setup() -> (Registry, FaultProxy, PushedImage) {
    setup_with(&[BIG, 300_000])
}

/// A registry with an image of layers of these sizes, behind a proxy.
fn setup_with(layers: &[u64]) -> (Registry, FaultProxy, PushedImage) {
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg);
    let pushed = push_image(
        &reg.push_target(),
        "lib/big",
        "1",
        &ImageSpec::with_layers(layers),
    );
    (reg, proxy, pushed)
}

fn pull_through(
    proxy: &FaultProxy,
    opts: PullOptions,
    events: registry::EventSink,
) -> Result<PulledImage, PullError> {
    let reference: ImageReference = format!("{}/lib/big:1", proxy.host_port()).parse().unwrap();
    runtime().block_on(async {
        let puller = Puller::new(opts, events)?;
        puller.pull(&reference).await
    })
}

/// A pull through `proxy` into `store` with the test's parts, no events.
fn pull_parts(proxy: &FaultProxy, store: &Path) -> Result<PulledImage, PullError> {
    pull_through(
        proxy,
        ranged_options(store, Duration::from_secs(20)),
        no_events(),
    )
}

/// GETs of one blob seen by the proxy, in order.
fn blob_gets(proxy: &FaultProxy, blob: &BlobInfo) -> Vec<RequestRecord> {
    proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&blob.digest))
        .collect()
}

/// `(first, last)` of a `Range: bytes=FIRST-LAST` header.
fn range_of(r: &RequestRecord) -> (u64, u64) {
    let range = r.range.as_deref().expect("a ranged request");
    let (first, last) = range
        .strip_prefix("bytes=")
        .unwrap()
        .split_once('-')
        .unwrap();
    (first.parse().unwrap(), last.parse().unwrap())
}

/// The `Range` of each part of a blob of `size`.
fn part_ranges(size: u64) -> Vec<(u64, u64)> {
    let part = part_len(size);
    (0..size.div_ceil(part))
        .map(|i| (i * part, ((i + 1) * part).min(size) - 1))
        .collect()
}

fn blob_path(store: &Path, blob: &BlobInfo) -> PathBuf {
    store
        .join("blobs/sha256")
        .join(blob.digest.trim_start_matches("sha256:"))
}

fn ingest_is_empty(store: &Path) -> bool {
    std::fs::read_dir(store.join("ingest"))
        .unwrap()
        .next()
        .is_none()
}

#[test]
fn a_big_blob_arrives_in_parts_on_bounded_connections_and_is_verified_before_it_is_reported() {
    let (_reg, proxy, pushed) = setup();
    let (big, small) = (&pushed.image.layers[0], &pushed.image.layers[1]);
    // A slow link per connection, so the parts overlap in time.
    proxy.set_link(8 << 20, Duration::from_millis(5));
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // When each blob is reported done, it is already under blobs/.
    let done = Arc::new(Mutex::new(Vec::new()));
    let events: registry::EventSink = {
        let (done, store) = (done.clone(), store.clone());
        Arc::new(move |e: &PullEvent| {
            if let PullEvent::BlobDone { digest, .. } = e {
                let path = store.join("blobs/sha256").join(digest.hex());
                done.lock()
                    .unwrap()
                    .push((digest.to_string(), path.is_file()));
            }
        })
    };
    let pulled = pull_through(
        &proxy,
        ranged_options(&store, Duration::from_secs(20)),
        events,
    )
    .expect("the pull succeeds");
    assert_eq!(pulled.digest.to_string(), pushed.digest);
    assert_eq!(
        pulled.bytes_downloaded,
        big.size + small.size + pushed.image.config.size
    );

    // The big layer: each part asked once, with its exact range, answered
    // 206 with exactly its bytes.
    let gets = blob_gets(&proxy, big);
    let mut asked: Vec<(u64, u64)> = gets.iter().map(range_of).collect();
    asked.sort();
    assert_eq!(asked, part_ranges(big.size), "{gets:#?}");
    for get in &gets {
        let (first, last) = range_of(get);
        assert_eq!(
            (get.status, get.body_bytes),
            (206, last - first + 1),
            "{get:#?}"
        );
    }
    // The small layer: one plain stream.
    let gets = blob_gets(&proxy, small);
    assert_eq!(gets.len(), 1, "{gets:#?}");
    assert_eq!((gets[0].range.as_deref(), gets[0].status), (None, 200));

    // In parallel, never more than the registry's connections.
    let most = proxy.max_concurrent_blob_gets();
    assert!(
        (2..=CONNECTIONS).contains(&most),
        "{most} blob GETs at once"
    );

    let bytes = std::fs::read(blob_path(&store, big)).unwrap();
    assert_eq!(
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes))),
        big.digest
    );
    let done = done.lock().unwrap().clone();
    assert_eq!(done.len(), 3, "{done:?}");
    assert!(done.iter().all(|(_, present)| *present), "{done:?}");
    assert!(done.iter().any(|(d, _)| *d == big.digest));
    assert!(ingest_is_empty(&store));
    assert_store_consistent(&store);
}

#[test]
fn a_registry_that_ignores_range_is_read_in_one_stream() {
    let (_reg, proxy, pushed) = setup();
    let big = &pushed.image.layers[0];
    let part = part_len(big.size);
    proxy.ignore_range();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pulled = pull_parts(&proxy, &store).expect("the pull succeeds");
    assert_eq!(pulled.digest.to_string(), pushed.digest);
    // The first part's request was answered 200 with the whole blob, and
    // that answer was read to the end: no other request.
    let gets = blob_gets(&proxy, big);
    assert_eq!(gets.len(), 1, "{gets:#?}");
    assert_eq!(range_of(&gets[0]), (0, part - 1));
    assert_eq!((gets[0].status, gets[0].body_bytes), (200, big.size));
    assert!(blob_path(&store, big).is_file());
    assert!(ingest_is_empty(&store));
    assert_store_consistent(&store);
}

#[test]
fn a_part_dropped_midway_is_the_only_one_fetched_again_from_where_it_stopped() {
    let (_reg, proxy, pushed) = setup();
    let big = &pushed.image.layers[0];
    let part = part_len(big.size);
    proxy.drop_part_after(2 * part, 300_000, 1);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    pull_parts(&proxy, &store).expect("the pull survives the drop");

    let gets = blob_gets(&proxy, big);
    let dropped: Vec<_> = gets.iter().filter(|r| r.fault == Some("drop")).collect();
    assert_eq!(dropped.len(), 1, "{gets:#?}");
    assert_eq!(range_of(dropped[0]), (2 * part, 3 * part - 1));
    let kept = dropped[0].body_bytes;
    assert_eq!(kept, 300_000);
    // Every other part once; the dropped one once more, from where it
    // stopped to its end.
    let mut asked: Vec<(u64, u64)> = gets.iter().map(range_of).collect();
    asked.sort();
    let mut want = part_ranges(big.size);
    want.push((2 * part + kept, 3 * part - 1));
    want.sort();
    assert_eq!(asked, want, "{gets:#?}");
    let served: u64 = gets.iter().map(|r| r.body_bytes).sum();
    assert_eq!(served, big.size, "nothing was fetched twice");
    assert!(blob_path(&store, big).is_file());
    assert_store_consistent(&store);
}

#[test]
fn a_part_with_wrong_bytes_fails_the_digest_and_nothing_is_committed() {
    let (_reg, proxy, pushed) = setup();
    let big = &pushed.image.layers[0];
    let part = part_len(big.size);
    // Part 3 comes back with one byte flipped, every time.
    proxy.corrupt_part(3 * part, 4242, usize::MAX);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let err = pull_parts(&proxy, &store).unwrap_err();
    assert_eq!(err.category, Category::Integrity, "{err:?}");
    assert!(err.message.contains(&big.digest), "{}", err.message);
    assert!(
        err.message.contains("does not match its digest"),
        "{}",
        err.message
    );
    assert!(
        !blob_path(&store, big).exists(),
        "a corrupt blob was committed"
    );
    // Tried twice from scratch (every part asked twice), then discarded.
    let mut asked: Vec<(u64, u64)> = blob_gets(&proxy, big).iter().map(range_of).collect();
    asked.sort();
    let mut want: Vec<(u64, u64)> = part_ranges(big.size)
        .into_iter()
        .flat_map(|r| [r, r])
        .collect();
    want.sort();
    assert_eq!(asked, want);
    let big_partial = format!("sha256-{}", big.digest.trim_start_matches("sha256:"));
    for entry in std::fs::read_dir(store.join("ingest")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            !name.starts_with(&big_partial),
            "{name} was left in ingest/"
        );
    }
    assert_store_consistent(&store);
}

#[test]
fn a_later_run_fetches_only_the_parts_an_earlier_run_did_not_finish() {
    let (_reg, proxy, pushed) = setup();
    let big = &pushed.image.layers[0];
    let part = part_len(big.size);
    // Run 1: part 4 stalls after 200 000 bytes until the retry budget is
    // spent.
    let stop_at = 4 * part + 200_000;
    proxy.stall_body_after(Target::RangeFrom(4 * part), 200_000, 1);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let err = pull_through(
        &proxy,
        ranged_options(&store, Duration::from_secs(2)),
        no_events(),
    )
    .unwrap_err();
    assert_eq!(err.category, Category::Unreachable, "{err:?}");
    assert!(
        err.message.contains("are kept for the next attempt"),
        "{}",
        err.message
    );
    assert!(!blob_path(&store, big).exists());
    assert_store_consistent(&store);

    // Run 2, a new puller on the same store: one request, for the rest of
    // part 4 only.
    proxy.clear_faults();
    proxy.clear_requests();
    let pulled = pull_parts(&proxy, &store).expect("the second run completes the pull");
    assert_eq!(pulled.digest.to_string(), pushed.digest);
    let gets = blob_gets(&proxy, big);
    assert_eq!(gets.len(), 1, "{gets:#?}");
    assert_eq!(range_of(&gets[0]), (stop_at, 5 * part - 1));
    assert_eq!(
        (gets[0].status, gets[0].body_bytes),
        (206, 5 * part - stop_at)
    );
    assert_eq!(pulled.bytes_downloaded, 5 * part - stop_at);
    assert!(pulled.bytes_reused >= big.size - (5 * part - stop_at));
    assert!(blob_path(&store, big).is_file());
    assert!(ingest_is_empty(&store));
    assert_store_consistent(&store);
}

#[test]
fn a_pull_cut_off_mid_download_resumes_its_parts_in_the_next_run() {
    let (_reg, proxy, pushed) = setup();
    let big = &pushed.image.layers[0];
    let part = part_len(big.size);
    // A slow link, and run 1 abandoned (its future dropped: nothing is
    // flushed or recorded on the way out, as when the process is killed)
    // once some parts have been sent whole.
    proxy.set_link(1 << 20, Duration::from_millis(5));
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let opts = ranged_options(&store, Duration::from_secs(20));
    let reference: ImageReference = format!("{}/lib/big:1", proxy.host_port()).parse().unwrap();
    let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
    let run = std::thread::spawn(move || {
        runtime().block_on(async {
            let puller = Puller::new(opts, no_events()).unwrap();
            tokio::select! {
                r = puller.pull(&reference) => Some(r),
                _ = cancelled => None,
            }
        })
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let whole = |proxy: &FaultProxy| {
        blob_gets(proxy, big)
            .iter()
            .filter(|r| r.ended.is_some() && r.body_bytes == part)
            .count()
    };
    while whole(&proxy) < 2 {
        assert!(Instant::now() < deadline, "no part arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let before_cut = Instant::now() - Duration::from_millis(150);
    let _ = cancel.send(());
    assert!(
        run.join().unwrap().is_none(),
        "run 1 finished before the cut"
    );
    let run1 = blob_gets(&proxy, big);
    assert!(!blob_path(&store, big).exists());

    proxy.clear_link();
    proxy.clear_requests();
    let pulled = pull_parts(&proxy, &store).expect("the second run completes the pull");
    assert_eq!(pulled.digest.to_string(), pushed.digest);
    let run2 = blob_gets(&proxy, big);
    let fetched: u64 = run2.iter().map(|r| r.body_bytes).sum();
    assert!(fetched < big.size, "run 2 fetched the whole blob again");
    assert_eq!(pulled.bytes_downloaded, fetched);
    // Parts that run 1 had received whole well before the cut are not asked
    // again; every request of run 2 stays within one part.
    let whole_before_cut: Vec<_> = run1
        .iter()
        .filter(|r| r.body_bytes == part && r.ended.is_some_and(|e| e < before_cut))
        .collect();
    assert!(!whole_before_cut.is_empty(), "{run1:#?}");
    for done in whole_before_cut {
        let (first, last) = range_of(done);
        assert!(
            run2.iter().all(|r| {
                let (a, b) = range_of(r);
                b < first || a > last
            }),
            "{first}-{last} was fetched again: {run2:#?}"
        );
    }
    for r in &run2 {
        let (a, b) = range_of(r);
        assert_eq!(a / part, b / part, "{r:#?}");
    }
    assert!(blob_path(&store, big).is_file());
    assert!(ingest_is_empty(&store));
    assert_store_consistent(&store);
}

#[test]
fn the_parts_travel_on_separate_connections_to_a_tls_registry() {
    // Each part on a connection of its own (HTTP/2, which a registry or CDN
    // may offer over TLS, would carry them all on one, under one cap): the
    // registry's own log shows the client's address of every request.
    let reg = Registry::builder().tls().start();
    let pushed = push_image(
        &reg.push_target(),
        "lib/big",
        "1",
        &ImageSpec::with_layers(&[BIG]),
    );
    let big = &pushed.image.layers[0];
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut opts = ranged_options(&store, Duration::from_secs(20));
    opts.ca_certs_pem = vec![reg.ca_cert_pem().unwrap().as_bytes().to_vec()];
    let reference: ImageReference = format!("{}/lib/big:1", reg.host_port()).parse().unwrap();
    runtime()
        .block_on(async { Puller::new(opts, no_events())?.pull(&reference).await })
        .expect("the pull succeeds");
    assert!(blob_path(&store, big).is_file());

    let log = reg.log_contents();
    let blob_lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("response completed")
                && l.contains("http.request.method=GET")
                && l.contains("http.request.useragent=berth/")
                && l.contains(&big.digest)
        })
        .collect();
    assert_eq!(
        blob_lines.len() as u64,
        big.size.div_ceil(part_len(big.size)),
        "{log}"
    );
    let field = |line: &str, name: &str| -> String {
        let rest =
            &line[line.find(name).unwrap_or_else(|| panic!("{name}: {line}")) + name.len()..];
        rest.trim_start_matches('"')
            .split(['"', ' '])
            .next()
            .unwrap()
            .to_owned()
    };
    let mut peers: Vec<String> = blob_lines
        .iter()
        .map(|l| field(l, "http.request.remoteaddr="))
        .collect();
    peers.sort();
    peers.dedup();
    assert!(
        peers.len() >= 2,
        "one connection for all parts: {blob_lines:#?}"
    );
    // How many distinct connections there were over time is not bounded by
    // the cap (the client's pool may open a fresh one when a finished part's
    // connection is not back yet); how many are open at once is, and
    // `a_big_blob_arrives_in_parts_on_bounded_connections_and_is_verified_before_it_is_reported`
    // checks that.
}

#[test]
fn big_blobs_come_in_parts_one_after_another_so_the_first_is_ready_first() {
    // Two big layers: each gets every connection in turn, so the first is
    // verified while the second still downloads (the boot agent hands it to
    // the engine meanwhile), instead of both finishing together at the end.
    let (_reg, proxy, pushed) = setup_with(&[BIG, BIG + 1]);
    proxy.set_link(8 << 20, Duration::from_millis(5));
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    pull_parts(&proxy, &store).expect("the pull succeeds");
    let spans: Vec<(Instant, Instant)> = pushed
        .image
        .layers
        .iter()
        .map(|layer| {
            let gets = blob_gets(&proxy, layer);
            assert!(gets.len() > CONNECTIONS, "{gets:#?}");
            let first = gets.iter().map(|g| g.started).min().unwrap();
            let last = gets.iter().filter_map(|g| g.ended).max().unwrap();
            (first, last)
        })
        .collect();
    let (a, b) = (spans[0], spans[1]);
    assert!(
        a.1 <= b.0 || b.1 <= a.0,
        "the two blobs' parts overlapped in time: {spans:?}"
    );
    // Still every connection for each: parts of one blob run side by side.
    assert!(proxy.max_concurrent_blob_gets() >= 2);
    assert_store_consistent(&store);
}
