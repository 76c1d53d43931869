//! `berth pull` and `berth check` against real servers on loopback: Debian's
//! `docker-registry` (htpasswd, token auth, TLS), a token issuer, `moto` for
//! ECR, and a fault-injecting proxy. Images are built and pushed with skopeo.

mod common;
use base64::Engine as _;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::images::{ImageSpec, PushTarget, push_image, push_multi_arch};
use testkit::{FaultProxy, Moto, Registry, Target, TokenIssuer};

const CANARY: &str = "canary-pw-4c1d9e";

struct Pull {
    code: i32,
    json: Value,
    stderr: String,
    stdout: String,
}

/// Runs `berth ARGS` with no DSTACK_* in its environment and an empty Docker
/// config, so only what the test passes counts.
fn berth_json(args: &[&str], extra_env: &[(&str, &str)]) -> Pull {
    let docker_config = tempdir("docker-config-empty");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args).env("DOCKER_CONFIG", &docker_config);
    for (k, _) in std::env::vars() {
        if k.starts_with("DSTACK_") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd, b"");
    assert!(
        !out.stdout.contains(CANARY) && !out.stderr.contains(CANARY),
        "secret leaked: {}{}",
        out.stdout,
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    let json = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
    Pull {
        code: out.code,
        json,
        stderr: out.stderr,
        stdout: out.stdout,
    }
}

fn env_file(dir: &Path, lines: &[(&str, &str)]) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("creds-{n}.env"));
    let text: String = lines.iter().map(|(k, v)| format!("{k}='{v}'\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn docker_creds(dir: &Path, registry: &str, user: &str, pw: &str) -> PathBuf {
    env_file(
        dir,
        &[
            ("DSTACK_DOCKER_USERNAME", user),
            ("DSTACK_DOCKER_PASSWORD", pw),
            ("DSTACK_DOCKER_REGISTRY", registry),
        ],
    )
}

fn skopeo_inspect_digest(store: &Path, reference: &str) -> String {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:{reference}", store.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("sha256:{}", sha256_hex(&out.stdout))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn error_of(p: &Pull) -> (&str, String) {
    let e = &p.json["error"];
    (
        e["category"]
            .as_str()
            .unwrap_or_else(|| panic!("no error object: {} {}", p.stdout, p.stderr)),
        format!("{} | {}", e["message"], e["hint"]),
    )
}

#[test]
fn htpasswd_registry_pull_restart_and_failures() {
    let reg = Registry::with_htpasswd(&[("alice", CANARY)]);
    let host = reg.host_port();
    let pushed = push_image(
        &PushTarget::new(&host).with_creds("alice", CANARY),
        "team/app",
        "v1",
        &ImageSpec::with_layers(&[200_000, 300_000, 50_000]),
    );
    let dir = tempdir("pull-htpasswd");
    let store = dir.join("store");
    let creds = docker_creds(&dir, &host, "alice", CANARY);
    let image = format!("{host}/team/app:v1");
    let args = [
        "pull",
        "--json",
        "--store",
        store.to_str().unwrap(),
        "-e",
        creds.to_str().unwrap(),
        &image,
    ];

    let first = berth_json(&args, &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let img = &first.json["images"][0];
    assert_eq!(img["reference"], image);
    assert_eq!(img["digest"], pushed.digest);
    assert_eq!(img["layers"], 3);
    assert!(img["bytes_downloaded"].as_u64().unwrap() > 550_000);
    assert_eq!(img["bytes_reused"], 0);
    // skopeo reads the store by the full reference.
    assert_eq!(skopeo_inspect_digest(&store, &image), pushed.digest);

    // Pulling again downloads nothing.
    let again = berth_json(&args, &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.json["images"][0]["bytes_downloaded"], 0);
    assert_eq!(again.json["images"][0]["manifest_cached"], true);

    // Wrong password: credentials_rejected, exit 3, the password nowhere.
    let bad = docker_creds(&dir, &host, "alice", &format!("{CANARY}-wrong"));
    let p = berth_json(
        &[
            "pull",
            "--json",
            "--store",
            store.to_str().unwrap(),
            "-e",
            bad.to_str().unwrap(),
            &image,
        ],
        &[],
    );
    assert_eq!(p.code, 3, "{}", p.stdout);
    let (cat, msg) = error_of(&p);
    assert_eq!(cat, "credentials_rejected", "{msg}");
    assert!(msg.contains("not expired"), "{msg}");
    assert_eq!(p.json["error"]["registry"], host);
    assert_eq!(p.json["error"]["image"], image);

    // No credentials at all: access_denied, with the variables to set.
    let p = berth_json(
        &[
            "pull",
            "--json",
            "--store",
            dir.join("s2").to_str().unwrap(),
            &image,
        ],
        &[],
    );
    assert_eq!(p.code, 4, "{}", p.stdout);
    let (cat, msg) = error_of(&p);
    assert_eq!(cat, "access_denied");
    assert!(
        msg.contains("DSTACK_DOCKER_USERNAME") && msg.contains("DSTACK_DOCKER_REGISTRY"),
        "{msg}"
    );

    // Missing tag: not_found, exit 5; plain (non-JSON) output says so on stderr.
    let missing = format!("{host}/team/app:nope");
    let p = berth_json(
        &[
            "pull",
            "--store",
            store.to_str().unwrap(),
            "-e",
            creds.to_str().unwrap(),
            &missing,
        ],
        &[],
    );
    assert_eq!(p.code, 5, "{}", p.stderr);
    assert!(
        p.stderr.contains("was not found")
            && p.stderr.contains("tag nope")
            && p.stderr.contains("[not_found]"),
        "{}",
        p.stderr
    );
    assert!(
        p.stderr.contains("hint: check the image path and tag"),
        "{}",
        p.stderr
    );

    // Digest-pinned pull of the same image: served from the store.
    let pinned = format!("{host}/team/app@{}", pushed.digest);
    let p = berth_json(
        &[
            "pull",
            "--json",
            "--store",
            store.to_str().unwrap(),
            "-e",
            creds.to_str().unwrap(),
            &pinned,
        ],
        &[],
    );
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(p.json["images"][0]["digest"], pushed.digest);
    assert_eq!(p.json["images"][0]["bytes_downloaded"], 0);
    assert_eq!(skopeo_inspect_digest(&store, &pinned), pushed.digest);

    // check: credentials accepted, tag exists.
    let p = berth_json(
        &["check", "--json", "-e", creds.to_str().unwrap(), &image],
        &[],
    );
    assert_eq!(p.code, 0, "{} {}", p.stdout, p.stderr);
    assert_eq!(p.json["images"][0]["digest"], pushed.digest);
    assert_eq!(p.json["images"][0]["ok"], true);
    let p = berth_json(
        &["check", "--json", "-e", bad.to_str().unwrap(), &image],
        &[],
    );
    assert_eq!(p.code, 3, "{}", p.stdout);

    // skopeo copies out of the store.
    let out = Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:{image}", store.display()))
        .arg(format!("dir:{}", dir.join("copied").display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A developer machine: the login comes from the Docker client's
    // config.json (no DSTACK_* at all), and a Docker v2 schema 2 image.
    let docker_image = push_image(
        &PushTarget::new(&host).with_creds("alice", CANARY),
        "team/docker-format",
        "v1",
        &ImageSpec::with_layers(&[30_000]).docker_format(),
    );
    let cfg_dir = dir.join("docker-config");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("alice:{CANARY}"));
    std::fs::write(
        cfg_dir.join("config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let reference = format!("{host}/team/docker-format:v1");
    let p = berth_json(
        &[
            "pull",
            "--json",
            "--store",
            store.to_str().unwrap(),
            &reference,
        ],
        &[("DOCKER_CONFIG", cfg_dir.to_str().unwrap())],
    );
    assert_eq!(p.code, 0, "{} {}", p.stdout, p.stderr);
    assert_eq!(p.json["images"][0]["digest"], docker_image.digest);
    // Stored byte-exact under its digest. (skopeo's `oci:` transport reads
    // only OCI-typed index entries, so it cannot read this one: see
    // ARCHITECTURE.md, `store`.)
    let manifest =
        std::fs::read(store.join("blobs/sha256").join(&docker_image.digest[7..])).unwrap();
    assert_eq!(
        format!("sha256:{}", sha256_hex(&manifest)),
        docker_image.digest
    );
}

#[test]
fn token_auth_like_docker_hub_and_ghcr() {
    let issuer = TokenIssuer::builder()
        .user("alice", CANARY, &[("team/*", &["pull", "push"])])
        .user("pusher", "push-pw", &[("*", &["pull", "push"])])
        .expires_in(false)
        .start();
    let reg = Registry::with_token_auth(&issuer);
    let host = reg.host_port();
    let target = PushTarget::new(&host).with_creds("pusher", "push-pw");
    let pushed = push_image(
        &target,
        "team/web",
        "1",
        &ImageSpec::with_layers(&[100_000, 100_000]),
    );
    push_image(
        &target,
        "private/db",
        "1",
        &ImageSpec::with_layers(&[10_000]),
    );
    let dir = tempdir("pull-token");
    let store = dir.join("store");
    let creds = docker_creds(&dir, &host, "alice", CANARY);
    issuer.reset_counters();

    let image = format!("{host}/team/web:1");
    let p = berth_json(
        &[
            "pull",
            "--json",
            "--store",
            store.to_str().unwrap(),
            "-e",
            creds.to_str().unwrap(),
            &image,
        ],
        &[],
    );
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(p.json["images"][0]["digest"], pushed.digest);
    // One token for the scope, shared by the concurrent blob downloads.
    assert_eq!(
        issuer.request_count_for_scope("repository:team/web:pull"),
        1
    );
    assert_eq!(
        issuer.max_in_flight_for_scope("repository:team/web:pull"),
        1
    );

    // Valid login, repository it may not read: DENIED for real -> access_denied.
    let other = format!("{host}/private/db:1");
    let p = berth_json(
        &[
            "pull",
            "--json",
            "--store",
            store.to_str().unwrap(),
            "-e",
            creds.to_str().unwrap(),
            &other,
        ],
        &[],
    );
    assert_eq!(p.code, 4, "{}", p.stdout);
    let (cat, msg) = error_of(&p);
    assert_eq!(cat, "access_denied", "{msg}");
    assert!(msg.contains("read:packages"), "{msg}");

    // Wrong password: the token service refuses -> credentials_rejected.
    let bad = docker_creds(&dir, &host, "alice", "nope");
    let p = berth_json(
        &["check", "--json", "-e", bad.to_str().unwrap(), &image],
        &[],
    );
    assert_eq!(p.code, 3, "{}", p.stdout);
}

/// The pull engine's faults are tested one per test in
/// `crates/registry/tests/transient_faults.rs`; through the binary, one
/// fault, a restart, and the CLI's words for the engine's hints.
#[test]
fn a_dropped_download_is_resumed_restarts_cost_nothing_and_hints_name_flags() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg);
    let host = reg.host_port();
    let pushed = push_image(
        &PushTarget::new(&host),
        "lib/app",
        "1",
        &ImageSpec::with_layers(&[1_500_000, 700_000]),
    );
    let dir = tempdir("pull-faults");
    let store = dir.join("store");
    let image = format!("{host}/lib/app:1");
    let endpoint = format!("{host}={}", proxy.base_url());
    let pull = |store: &Path, extra: &[&str]| {
        let mut args = vec!["pull", "--json", "--store", store.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--registry-endpoint", &endpoint, &image]);
        berth_json(&args, &[])
    };

    // A connection dropped mid-blob: resumed with Range.
    proxy.drop_blob_after(400_000, 1);
    let p = pull(&store, &[]);
    assert_eq!(p.code, 0, "{} {}", p.stdout, p.stderr);
    assert_eq!(p.json["images"][0]["digest"], pushed.digest);
    assert_eq!(skopeo_inspect_digest(&store, &image), pushed.digest);
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.range.is_some() && r.status == 206),
        "the dropped download was resumed with Range"
    );

    // Restart: HEAD only, no manifest GET, no blob bytes.
    proxy.clear_faults();
    proxy.clear_requests();
    let p = pull(&store, &[]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(proxy.manifest_gets(), 0);
    assert_eq!(proxy.manifest_heads(), 1);
    assert_eq!(proxy.blob_gets(), 0);

    // A stalled registry: exit 7, and the hint names the CLI's flag for the
    // retry budget (the library names none).
    proxy.stall_headers(Target::Manifests, usize::MAX);
    let p = pull(&dir.join("store2"), &["--max-retry-time", "2"]);
    assert_eq!(p.code, 7, "{}", p.stdout);
    let (cat, msg) = error_of(&p);
    assert_eq!(cat, "unreachable");
    assert!(msg.contains("--max-retry-time"), "{msg}");
    proxy.clear_faults();

    // Docker Hub, anonymous, over its limit: exit 6, the hint says to log
    // in. The endpoint mapping comes from a config file this time.
    let config = dir.join("berth.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"registry_endpoints": {{"docker.io": "{}"}}}}"#,
            proxy.base_url()
        ),
    )
    .unwrap();
    proxy.too_many_requests(Target::Manifests, 21600, usize::MAX);
    let p = berth_json(
        &[
            "pull",
            "--json",
            "--max-retry-time",
            "2",
            "--config",
            config.to_str().unwrap(),
            "--store",
            dir.join("store3").to_str().unwrap(),
            "lib/app:1",
        ],
        &[],
    );
    assert_eq!(p.code, 6, "{}", p.stdout);
    let (cat, msg) = error_of(&p);
    assert_eq!(cat, "rate_limited");
    assert_eq!(p.json["error"]["registry"], "docker.io");
    assert!(
        msg.contains("6 h") && msg.contains("DSTACK_DOCKER_USERNAME"),
        "{msg}"
    );
}

#[test]
fn tls_with_a_private_ca() {
    let reg = Registry::builder()
        .htpasswd(&[("alice", CANARY)])
        .tls()
        .start();
    let host = reg.host_port();
    let ca = reg.ca_cert_path().unwrap().to_str().unwrap().to_owned();
    let target = PushTarget::new(&host).with_creds("alice", CANARY);
    let pushed = push_image(&target, "app", "1", &ImageSpec::with_layers(&[10_000]));
    let dir = tempdir("pull-tls");
    let creds = docker_creds(&dir, &host, "alice", CANARY);
    let image = format!("{host}/app:1");
    let store = dir.join("store");
    let p = berth_json(
        &[
            "pull",
            "--json",
            "--ca-cert",
            &ca,
            "--store",
            store.to_str().unwrap(),
            "-e",
            creds.to_str().unwrap(),
            &image,
        ],
        &[],
    );
    assert_eq!(p.code, 0, "{} {}", p.stdout, p.stderr);
    assert_eq!(p.json["images"][0]["digest"], pushed.digest);
    let p = berth_json(
        &[
            "pull",
            "--json",
            "--store",
            store.to_str().unwrap(),
            "-e",
            creds.to_str().unwrap(),
            &image,
        ],
        &[],
    );
    assert_eq!(p.code, 7, "{}", p.stdout);
    let (cat, msg) = error_of(&p);
    assert_eq!(cat, "unreachable");
    assert!(
        msg.contains("TLS certificate is not trusted") && msg.contains("--ca-cert"),
        "{msg}"
    );
}

#[test]
fn ecr_via_moto_and_docker_credentials_side_by_side() {
    let moto = Moto::start();
    let account = moto.account_id().to_owned();
    let (user, ecr_pw) = Moto::ecr_credentials(&account, "us-east-1");
    let ecr = Registry::with_htpasswd(&[(&user, &ecr_pw)]);
    let docker = Registry::with_htpasswd(&[("alice", CANARY)]);
    let ecr_host = Moto::ecr_registry_host(&account, "us-east-1");
    let a = push_image(
        &PushTarget::new(&ecr.host_port()).with_creds(&user, &ecr_pw),
        "svc/api",
        "1",
        &ImageSpec::with_layers(&[20_000]),
    );
    let b = push_image(
        &PushTarget::new(&docker.host_port()).with_creds("alice", CANARY),
        "svc/web",
        "1",
        &ImageSpec::with_layers(&[20_000]),
    );
    let dir = tempdir("pull-ecr");
    let creds = env_file(
        &dir,
        &[
            ("DSTACK_DOCKER_USERNAME", "alice"),
            ("DSTACK_DOCKER_PASSWORD", CANARY),
            ("DSTACK_DOCKER_REGISTRY", &docker.host_port()),
            ("DSTACK_AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE"),
            ("DSTACK_AWS_SECRET_ACCESS_KEY", "secret-key-canary"),
            ("DSTACK_AWS_REGION", "us-east-1"),
            ("DSTACK_AWS_ECR_REGISTRY", &ecr_host),
        ],
    );
    let ecr_image = format!("{ecr_host}/svc/api:1");
    let docker_image = format!("{}/svc/web:1", docker.host_port());
    let endpoint = format!("{ecr_host}={}", ecr.base_url());
    let store = dir.join("store");
    let p = berth_json(
        &[
            "pull",
            "--json",
            "--store",
            store.to_str().unwrap(),
            "-e",
            creds.to_str().unwrap(),
            "--registry-endpoint",
            &endpoint,
            &ecr_image,
            &docker_image,
        ],
        &[("AWS_ENDPOINT_URL_ECR", &moto.endpoint())],
    );
    assert_eq!(p.code, 0, "{} {}", p.stdout, p.stderr);
    assert!(!p.stdout.contains("secret-key-canary") && !p.stderr.contains("secret-key-canary"));
    assert_eq!(p.json["images"][0]["digest"], a.digest);
    assert_eq!(p.json["images"][1]["digest"], b.digest);
    assert!(
        moto.log_contents().contains("POST"),
        "the ECR API was called"
    );

    // ECR answers an expired token with 403: Berth gets a new token once and
    // goes on; a 403 that persists is access_denied.
    let proxy = testkit::FaultProxy::start(&ecr);
    let via_proxy = format!("{ecr_host}={}", proxy.base_url());
    let token_calls = || moto.log_contents().matches("POST /").count();
    let before = token_calls();
    proxy.forbidden(testkit::Target::Manifests, 1);
    let p = berth_json(
        &[
            "pull",
            "--json",
            "--store",
            dir.join("store-403").to_str().unwrap(),
            "-e",
            creds.to_str().unwrap(),
            "--registry-endpoint",
            &via_proxy,
            &ecr_image,
        ],
        &[("AWS_ENDPOINT_URL_ECR", &moto.endpoint())],
    );
    assert_eq!(p.code, 0, "{} {}", p.stdout, p.stderr);
    let statuses: Vec<u16> = proxy.requests().iter().map(|r| r.status).collect();
    assert!(statuses.contains(&403), "{statuses:?}");
    assert_eq!(
        token_calls() - before,
        2,
        "one token, then a fresh one after the 403: {statuses:?}"
    );
    proxy.forbidden(testkit::Target::Manifests, usize::MAX);
    let p = berth_json(
        &[
            "pull",
            "--json",
            "--store",
            dir.join("store-403b").to_str().unwrap(),
            "-e",
            creds.to_str().unwrap(),
            "--registry-endpoint",
            &via_proxy,
            &ecr_image,
        ],
        &[("AWS_ENDPOINT_URL_ECR", &moto.endpoint())],
    );
    assert_eq!(p.code, 4, "{}", p.stdout);
    assert_eq!(error_of(&p).0, "access_denied");

    // Three of four ECR variables: a config error naming the missing one.
    let partial = env_file(
        &dir,
        &[
            ("DSTACK_AWS_ACCESS_KEY_ID", "A"),
            ("DSTACK_AWS_REGION", "us-east-1"),
            ("DSTACK_AWS_ECR_REGISTRY", &ecr_host),
        ],
    );
    let p = berth_json(
        &[
            "check",
            "--json",
            "-e",
            partial.to_str().unwrap(),
            &ecr_image,
        ],
        &[],
    );
    assert_eq!(p.code, 2);
    let (cat, msg) = error_of(&p);
    assert_eq!(cat, "config");
    assert!(msg.contains("DSTACK_AWS_SECRET_ACCESS_KEY"), "{msg}");
}

#[test]
fn multi_platform_index_selects_the_platform() {
    let reg = Registry::start();
    let host = reg.host_port();
    let pushed = push_multi_arch(
        &PushTarget::new(&host),
        "multi",
        "1",
        &ImageSpec::amd64_arm64(&[10_000]),
    );
    let dir = tempdir("pull-multi");
    let image = format!("{host}/multi:1");
    for (platform, arch, selected) in [
        ("linux/arm64", "arm64", "linux/arm64/v8"),
        ("linux/amd64", "amd64", "linux/amd64"),
    ] {
        let store = dir.join(arch);
        let p = berth_json(
            &[
                "pull",
                "--json",
                "--platform",
                platform,
                "--store",
                store.to_str().unwrap(),
                &image,
            ],
            &[],
        );
        assert_eq!(p.code, 0, "{}", p.stderr);
        assert_eq!(
            p.json["images"][0]["digest"],
            pushed.digest_for(arch).unwrap()
        );
        assert_eq!(p.json["images"][0]["index_digest"], pushed.digest);
        assert_eq!(p.json["images"][0]["platform"], selected);
    }
    let p = berth_json(
        &[
            "pull",
            "--json",
            "--platform",
            "linux/s390x",
            "--store",
            dir.join("x").to_str().unwrap(),
            &image,
        ],
        &[],
    );
    assert_eq!(p.code, 5);
    assert!(error_of(&p).1.contains("linux/amd64"), "{}", error_of(&p).1);
}

#[test]
fn configuration_errors_and_unreachable() {
    let p = berth_json(&["pull", "--json", "Not/A:Valid:Ref"], &[]);
    assert_eq!(p.code, 2);
    assert_eq!(error_of(&p).0, "config");
    let p = berth_json(
        &[
            "check",
            "--json",
            "-e",
            "DSTACK_DOCKER_USERNAME=bob",
            "busybox",
        ],
        &[],
    );
    assert_eq!(p.code, 2);
    assert!(
        error_of(&p).1.contains("DSTACK_DOCKER_PASSWORD"),
        "{}",
        error_of(&p).1
    );
    let port = testkit::free_port();
    let dir = tempdir("pull-unreachable");
    let p = berth_json(
        &[
            "pull",
            "--json",
            "--max-retry-time",
            "2",
            "--store",
            dir.to_str().unwrap(),
            &format!("127.0.0.1:{port}/x:1"),
        ],
        &[],
    );
    assert_eq!(p.code, 7, "{}", p.stdout);
    assert!(
        error_of(&p).1.contains("connection refused"),
        "{}",
        error_of(&p).1
    );
}
