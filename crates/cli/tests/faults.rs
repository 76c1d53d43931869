//! Faults that need the real `berth` binary: a pull killed with SIGKILL (as
//! a CVM's boot agent dies with its VM) resumes on the next run. The pull
//! engine's other faults are in `crates/registry/tests/faults.rs`.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::images::{ImageSpec, PushTarget, push_image};
use testkit::{FaultProxy, Registry, Target};

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// Every file under `blobs/sha256` hashes to its name.
fn assert_only_verified_blobs(store: &Path) {
    for entry in std::fs::read_dir(store.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(sha256_hex(&path), name, "an unverified blob was committed");
    }
}

fn berth_pull(args: &[&str], docker_config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("pull")
        .args(args)
        .env("DOCKER_CONFIG", docker_config)
        .stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("DSTACK_") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn pull_killed_mid_blob_resumes_from_the_partial_download_and_commits_nothing_unverified() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg);
    let host = reg.host_port();
    let pushed = push_image(
        &PushTarget::new(&host),
        "lib/big",
        "1",
        &ImageSpec::with_layers(&[12 << 20]),
    );
    let layer = pushed.image.layers[0].clone();
    let hex = layer.digest.trim_start_matches("sha256:").to_owned();
    let dir = tempdir("faults-killed-pull");
    let docker_config = dir.join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    let store = dir.join("store");
    let image = format!("{host}/lib/big:1");
    let endpoint = format!("{host}={}", proxy.base_url());
    let args = [
        "--json",
        "--store",
        store.to_str().unwrap(),
        "--registry-endpoint",
        &endpoint,
        &image,
    ];

    // A slow link, and the process killed once 3 MiB of the layer are in
    // ingest/.
    proxy.throttle(Target::Blobs, 4 << 20);
    let mut child = berth_pull(&args, &docker_config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let partial = store.join("ingest").join(format!("sha256-{hex}.partial"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < 3 << 20 {
        assert!(
            Instant::now() < deadline,
            "the download did not start: {:?}",
            child.try_wait()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup of any kind.
    child.wait().unwrap();

    assert!(
        !store.join("blobs/sha256").join(&hex).exists(),
        "the half-downloaded layer is not under blobs/"
    );
    assert_only_verified_blobs(&store);
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept >= 3 << 20 && kept < layer.size, "{kept}");

    // The next run: only the missing bytes are fetched.
    proxy.clear_faults();
    proxy.clear_requests();
    let out = run(&mut berth_pull(&args, &docker_config), b"");
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let json: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(json["images"][0]["digest"], pushed.digest);
    let gets: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&layer.digest))
        .collect();
    assert_eq!(gets.len(), 1, "{gets:#?}");
    assert_eq!(gets[0].status, 206);
    assert_eq!(
        gets[0].range.as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );
    assert_eq!(gets[0].body_bytes, layer.size - kept);
    assert!(
        json["images"][0]["bytes_reused"].as_u64().unwrap() >= kept,
        "{json}"
    );
    assert!(!partial.exists());
    assert_eq!(sha256_hex(&store.join("blobs/sha256").join(&hex)), hex);
    assert_only_verified_blobs(&store);
}
