//! Faults a pull survives, or fails on cleanly, against real servers on
//! loopback: Debian's `docker-registry` (killed and started again), testkit's
//! fault proxy (stalls, slow links, AWS throttling) and moto (ECR). One fault
//! per test, so a failure names what broke.

use contract::SecretValue;
use registry::credentials::EcrLogin;
use registry::{
    Category, CredentialSet, Endpoints, Hint, ImageReference, PullError, PullOptions, PulledImage,
    Puller, RetryPolicy, no_events,
};
use sha2::Digest as _;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::images::{BlobInfo, ImageSpec, PushTarget, push_image};
use testkit::{FaultProxy, Moto, Registry, RequestRecord, Target};

fn options(store: &Path, budget: Duration) -> PullOptions {
    let mut opts = PullOptions::new(store);
    opts.retry = RetryPolicy {
        max_attempts: 30,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(500),
        budget,
    };
    opts
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn pull(opts: PullOptions, reference: &str) -> Result<PulledImage, PullError> {
    let reference: ImageReference = reference.parse().unwrap();
    runtime().block_on(async {
        let puller = Puller::new(opts, no_events())?;
        puller.pull(&reference).await
    })
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GETs of one blob seen by the proxy, in order.
fn blob_gets(proxy: &FaultProxy, blob: &BlobInfo) -> Vec<RequestRecord> {
    proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&blob.digest))
        .collect()
}

/// Every file under `blobs/sha256` hashes to its name, and `index.json` is
/// valid JSON with a manifests list.
fn assert_store_consistent(store: &Path) {
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

fn blob_path(store: &Path, blob: &BlobInfo) -> std::path::PathBuf {
    store
        .join("blobs/sha256")
        .join(blob.digest.trim_start_matches("sha256:"))
}

#[test]
fn registry_restarted_mid_blob_the_pull_resumes_with_range_when_it_is_back() {
    let mut reg = Registry::start();
    let proxy = FaultProxy::start(&reg);
    let pushed = push_image(
        &reg.push_target(),
        "lib/big",
        "1",
        &ImageSpec::with_layers(&[16 << 20]),
    );
    let layer = pushed.image.layers[0].clone();
    // A slow link, so the registry can be killed while the blob flows.
    proxy.throttle(Target::Blobs, 6 << 20);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let budget = Duration::from_secs(20);
    let opts = options(&store, budget);
    let reference = format!("{}/lib/big:1", proxy.host_port());
    let started = Instant::now();
    let puller = std::thread::spawn(move || pull(opts, &reference));

    wait_for("2 MiB of the layer", Duration::from_secs(15), || {
        blob_gets(&proxy, &layer)
            .first()
            .is_some_and(|r| r.body_bytes >= 2 << 20)
    });
    reg.stop();
    proxy.clear_throttle();
    std::thread::sleep(Duration::from_secs(1));
    reg.start_again();

    let pulled = puller
        .join()
        .unwrap()
        .expect("the pull survives the restart");
    assert!(started.elapsed() < budget, "{:?}", started.elapsed());
    assert_eq!(pulled.digest.to_string(), pushed.digest);
    let gets = blob_gets(&proxy, &layer);
    let first = &gets[0];
    assert_eq!(first.range, None);
    let kept = first.body_bytes;
    assert!(kept < layer.size, "the restart cut the first download");
    let resumed: Vec<_> = gets.iter().filter(|r| r.status == 206).collect();
    assert_eq!(resumed.len(), 1, "{gets:#?}");
    assert_eq!(
        resumed[0].range.as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );
    // Only the missing bytes were fetched after the restart.
    assert_eq!(resumed[0].body_bytes, layer.size - kept);
    let served: u64 = gets.iter().map(|r| r.body_bytes).sum();
    assert_eq!(served, layer.size, "{gets:#?}");
    assert!(blob_path(&store, &layer).is_file());
    assert_store_consistent(&store);
}

#[test]
fn registry_that_stalls_before_answering_is_given_up_within_the_budget() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg);
    push_image(
        &reg.push_target(),
        "lib/app",
        "1",
        &ImageSpec::with_layers(&[50_000]),
    );
    // Accepts, reads the request, then never sends a status line.
    proxy.stall_headers(Target::Manifests, usize::MAX);
    let dir = tempfile::tempdir().unwrap();
    let budget = Duration::from_secs(3);
    let started = Instant::now();
    let err = pull(
        options(&dir.path().join("store"), budget),
        &format!("{}/lib/app:1", proxy.host_port()),
    )
    .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.category, Category::Unreachable, "{err:?}");
    assert!(err.message.contains("no answer within"), "{}", err.message);
    assert_eq!(err.hint, Hint::RaiseRetryBudget);
    assert!(
        took >= budget && took < budget + Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn registry_that_stalls_mid_blob_is_given_up_within_the_budget() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg);
    let pushed = push_image(
        &reg.push_target(),
        "lib/app",
        "1",
        &ImageSpec::with_layers(&[1_000_000]),
    );
    let layer = pushed.image.layers[0].clone();
    // Headers and 100 kB of every blob body, then silence on an open
    // connection.
    proxy.stall_body_after(Target::PathContains(layer.digest.clone()), 100_000, 100);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let budget = Duration::from_secs(3);
    let started = Instant::now();
    let err = pull(
        options(&store, budget),
        &format!("{}/lib/app:1", proxy.host_port()),
    )
    .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.category, Category::Unreachable, "{err:?}");
    assert!(
        err.message.contains("sent nothing for 3 s"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("100000 of"),
        "what arrived is kept: {}",
        err.message
    );
    assert!(
        took >= budget && took < budget + Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        blob_gets(&proxy, &layer).len(),
        1,
        "no retry past the budget"
    );
    assert!(!blob_path(&store, &layer).exists());
    assert_store_consistent(&store);
}

#[test]
fn registry_that_stalls_mid_manifest_is_given_up_within_the_budget() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg);
    push_image(
        &reg.push_target(),
        "lib/app",
        "1",
        &ImageSpec::with_layers(&[50_000]),
    );
    // Headers and 10 bytes of the manifest, then silence.
    proxy.stall_body_after(Target::Manifests, 10, usize::MAX);
    let dir = tempfile::tempdir().unwrap();
    let budget = Duration::from_secs(3);
    let started = Instant::now();
    let err = pull(
        options(&dir.path().join("store"), budget),
        &format!("{}/lib/app:1", proxy.host_port()),
    )
    .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.category, Category::Unreachable, "{err:?}");
    assert!(err.message.contains("within 3 s"), "{}", err.message);
    assert!(
        took >= budget && took < budget + Duration::from_secs(3),
        "{took:?}"
    );
}

/// A tmpfs of `size` mounted on `dir`, unmounted on drop. The tests that
/// need one fail (they do not pass unchecked) when not root or when mounting
/// is not allowed here: run them as root, or leave them out by name.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        // SAFETY: geteuid has no preconditions.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "this test mounts a small tmpfs, which needs root: run it as root"
        );
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs, which is not allowed here: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }

    fn grow(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {:?}", self.0);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn disk_too_small_for_the_image_fails_before_downloading_with_a_config_error() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg);
    push_image(
        &reg.push_target(),
        "lib/big",
        "1",
        &ImageSpec::with_layers(&[12 << 20]),
    );
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "8m");
    let store = dir.path().join("disk/store");
    let reference = format!("{}/lib/big:1", proxy.host_port());
    let err = pull(options(&store, Duration::from_secs(10)), &reference).unwrap_err();
    assert_eq!(err.category, Category::Config, "{err:?}");
    assert!(
        err.message.contains(&store.display().to_string()),
        "names the folder: {}",
        err.message
    );
    assert!(err.message.contains("needs 12.0 MiB"), "{}", err.message);
    assert_eq!(err.hint, Hint::FreeSpace);
    assert_eq!(proxy.blob_gets(), 0, "nothing downloaded in vain");
    assert_store_consistent(&store);

    // The disk grown: the same pull into the same store succeeds.
    disk.grow("40m");
    pull(options(&store, Duration::from_secs(10)), &reference).expect("pulls with room");
    assert_store_consistent(&store);
}

#[test]
fn disk_filling_up_during_a_pull_fails_cleanly_and_the_next_pull_succeeds() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg);
    let pushed = push_image(
        &reg.push_target(),
        "lib/big",
        "1",
        &ImageSpec::with_layers(&[8 << 20]),
    );
    let layer = pushed.image.layers[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let _disk = Tmpfs::mount(&disk, "20m");
    let store = disk.join("store");
    let reference = format!("{}/lib/big:1", proxy.host_port());
    // Room at the start; something else fills the disk mid-download.
    proxy.throttle(Target::Blobs, 4 << 20);
    let opts = options(&store, Duration::from_secs(10));
    let r = reference.clone();
    let puller = std::thread::spawn(move || pull(opts, &r));
    wait_for("1 MiB of the layer", Duration::from_secs(15), || {
        blob_gets(&proxy, &layer)
            .first()
            .is_some_and(|r| r.body_bytes >= 1 << 20)
    });
    let filler = disk.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 1 << 20];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let err = puller.join().unwrap().unwrap_err();
    assert_eq!(err.category, Category::Config, "{err:?}");
    assert!(
        err.message.contains(&store.display().to_string()),
        "names the folder: {}",
        err.message
    );
    assert!(err.message.contains("needs 8.0 MiB"), "{}", err.message);
    assert_eq!(err.hint, Hint::FreeSpace);
    assert!(
        !blob_path(&store, &layer).exists(),
        "no partial blob committed"
    );
    assert_store_consistent(&store);

    // Space freed: the next pull resumes and succeeds.
    std::fs::remove_file(&filler).unwrap();
    proxy.clear_faults();
    let pulled = pull(options(&store, Duration::from_secs(10)), &reference).unwrap();
    assert_eq!(pulled.digest.to_string(), pushed.digest);
    assert!(pulled.bytes_reused > 0, "resumed from ingest/: {pulled:?}");
    assert!(blob_path(&store, &layer).is_file());
    assert_store_consistent(&store);
}

/// An htpasswd registry standing in for ECR with moto's password, moto behind
/// a fault proxy, and the options that reach both.
struct Ecr {
    _moto: Moto,
    api: FaultProxy,
    registry: Registry,
    host: String,
}

impl Ecr {
    fn start() -> Ecr {
        let moto = Moto::start();
        let account = moto.account_id().to_owned();
        let (user, pw) = Moto::ecr_credentials(&account, "us-east-1");
        let registry = Registry::with_htpasswd(&[(&user, &pw)]);
        let api = FaultProxy::start_for(moto.host_port().parse().unwrap());
        Ecr {
            host: Moto::ecr_registry_host(&account, "us-east-1"),
            _moto: moto,
            api,
            registry,
        }
    }

    fn push(&self, repo: &str) {
        let (user, pw) = &self.registry.users()[0];
        push_image(
            &PushTarget::new(&self.registry.host_port()).with_creds(user, pw),
            repo,
            "1",
            &ImageSpec::with_layers(&[20_000]),
        );
    }

    fn options(&self, store: &Path) -> PullOptions {
        self.options_with_budget(store, Duration::from_secs(20))
    }

    fn options_with_budget(&self, store: &Path, budget: Duration) -> PullOptions {
        let mut opts = options(store, budget);
        let mut endpoints = Endpoints::new();
        endpoints
            .insert(&self.host, &self.registry.base_url())
            .unwrap();
        opts.endpoints = endpoints;
        opts.credentials = CredentialSet {
            docker: None,
            ecr: Some(EcrLogin {
                registry: self.host.clone(),
                account: Moto::DEFAULT_ACCOUNT_ID.into(),
                region: "us-east-1".into(),
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: SecretValue::from("secret"),
                session_token: None,
            }),
        };
        opts.ecr_endpoint = Some(self.api.base_url().parse().unwrap());
        opts
    }

    /// `GetAuthorizationToken` calls that reached the ECR API (mock), and
    /// those answered `ThrottlingException`.
    fn token_calls(&self) -> (usize, usize) {
        let calls: Vec<_> = self
            .api
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect();
        let throttled = calls
            .iter()
            .filter(|r| r.fault == Some("aws-throttling"))
            .count();
        (calls.len(), throttled)
    }
}

#[test]
fn ecr_throttling_exception_is_backed_off_and_the_pull_succeeds() {
    let ecr = Ecr::start();
    ecr.push("svc/api");
    // A mock of AWS's throttling of GetAuthorizationToken (moto never
    // throttles): 400 ThrottlingException, three times.
    ecr.api.aws_throttling(Target::Any, 3);
    let dir = tempfile::tempdir().unwrap();
    let pulled = pull(
        ecr.options(&dir.path().join("store")),
        &format!("{}/svc/api:1", ecr.host),
    )
    .expect("backs off, then gets the token");
    assert_eq!(pulled.layers, 1);
    assert_eq!(ecr.token_calls(), (4, 3));
}

#[test]
fn many_pulls_of_one_ecr_account_in_one_process_fetch_the_token_once() {
    let ecr = Ecr::start();
    for repo in ["svc/a", "svc/b", "svc/c"] {
        ecr.push(repo);
    }
    // Throttled at first, so every pull is waiting while the one fetch in
    // flight backs off.
    ecr.api.aws_throttling(Target::Any, 2);
    let refs: Vec<ImageReference> = (0..12)
        .map(|i| {
            format!("{}/svc/{}:1", ecr.host, ["a", "b", "c"][i % 3])
                .parse()
                .unwrap()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let opts = ecr.options(&dir.path().join("store"));
    let pulled = runtime()
        .block_on(async {
            let puller = Puller::new(opts, no_events())?;
            puller.pull_all(&refs).await
        })
        .unwrap();
    assert_eq!(pulled.len(), 12);
    assert_eq!(
        ecr.token_calls(),
        (3, 2),
        "one token for the account, fetched once (after two throttled tries)"
    );
}

#[test]
fn ecr_throttling_that_never_ends_fails_every_waiting_pull_once_within_the_budget() {
    let ecr = Ecr::start();
    ecr.push("svc/api");
    // A mock of AWS's throttling that does not let up.
    ecr.api.aws_throttling(Target::Any, usize::MAX);
    let refs: Vec<ImageReference> = (0..8)
        .map(|_| format!("{}/svc/api:1", ecr.host).parse().unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let budget = Duration::from_secs(2);
    let opts = ecr.options_with_budget(&dir.path().join("store"), budget);
    let started = Instant::now();
    let results = runtime().block_on(async {
        let puller = Puller::new(opts, no_events()).unwrap();
        futures_util::future::join_all(refs.iter().map(|r| puller.pull(r))).await
    });
    let took = started.elapsed();
    for r in &results {
        let err = r.as_ref().unwrap_err();
        assert_eq!(err.category, Category::RateLimited, "{err:?}");
        assert!(
            err.message.contains("ThrottlingException"),
            "{}",
            err.message
        );
    }
    // The pulls waited for the one fetch in flight and got its answer:
    // the budget was spent once, not once per pull.
    assert!(took < budget + Duration::from_secs(3), "{took:?}");
    let (calls, throttled) = ecr.token_calls();
    assert_eq!(calls, throttled);
    assert!(calls <= 30, "{calls} calls: one fetch's retries");
}

#[test]
fn ecr_403_to_its_token_gets_a_fresh_token_once_and_the_pull_goes_on() {
    let ecr = Ecr::start();
    ecr.push("svc/api");
    // The registry behind a proxy that answers the next manifest request
    // 403, as ECR answers an expired token.
    let proxy = FaultProxy::start(&ecr.registry);
    proxy.forbidden(Target::Manifests, 1);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ecr.options(&dir.path().join("store"));
    let mut endpoints = Endpoints::new();
    endpoints.insert(&ecr.host, &proxy.base_url()).unwrap();
    opts.endpoints = endpoints;
    let pulled = pull(opts, &format!("{}/svc/api:1", ecr.host)).expect("renews and pulls");
    assert_eq!(pulled.layers, 1);
    let statuses: Vec<u16> = proxy.requests().iter().map(|r| r.status).collect();
    assert!(statuses.contains(&403), "{statuses:?}");
    assert_eq!(
        ecr.token_calls(),
        (2, 0),
        "one token, then a fresh one after the 403"
    );
}
