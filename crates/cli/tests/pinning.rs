//! Pinned images (issue 20, parts 1–2), end to end: `berth deploy` pins
//! each tag to its manifest digest, and a CVM keeps running the pinned image
//! after the tag moved, through a restart and an update of the same file.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use testkit::images::{ImageSpec, PushTarget, push_image};
use testkit::{Dockerd, FaultProxy, Registry};

const CANARY: &str = "canary-pinning-pw-7d21";
const ADMIN_KEY: &str = "berth_test_admin_key_pinning_012";

fn berth_cli(cloud: &Cloud, dir: &Path, args: &[&str]) -> Run {
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .current_dir(dir)
            .env("BERTH_API_URL", &cloud.api)
            .env("BERTH_API_KEY", ADMIN_KEY)
            .env("BERTH_KMS_PUBKEY", &cloud.kms_pubkey)
            .env("BERTH_OWNER_KEY", dir.join("owner-key"))
            .env("DOCKER_CONFIG", dir.join("no-docker-config")),
        b"",
    );
    assert!(!out.stdout.contains(CANARY) && !out.stderr.contains(CANARY));
    out
}

/// The image ID the CVM's `app` container runs.
fn app_image(engine: &Dockerd) -> String {
    let ps = engine.docker_out(&[
        "ps",
        "-q",
        "--filter",
        "label=com.docker.compose.service=app",
    ]);
    let id = ps
        .split_whitespace()
        .next()
        .expect("a running app container");
    engine
        .docker_out(&["inspect", "-f", "{{.Image}}", id])
        .trim()
        .to_owned()
}

fn compose(host: &str, tag: &str) -> String {
    format!(
        "# the app\nservices:\n  app:\n    image: \"{host}/acme/app:{tag}\"  # pinned by berth\n    network_mode: none\n    command: [\"sleep\", \"600\"]\n"
    )
}

#[test]
fn a_pinned_app_keeps_its_image_after_the_tag_moves() {
    let engine = Dockerd::start();
    let registry = Registry::with_htpasswd(&[("acme", CANARY)]);
    let target = PushTarget::new(&registry.host_port()).with_creds("acme", CANARY);
    let base = || ImageSpec::new().busybox();
    let v1 = push_image(&target, "acme/app", "v1", &base().seeded_layer(4096, 1));
    let proxy = FaultProxy::start(&registry);
    let host = proxy.host_port();
    let dir = tempdir("pinning");
    let mapping = format!("--registry-endpoint={host}={}", proxy.base_url());
    let cloud = Cloud::start(
        &dir.join("state"),
        &engine.host(),
        Some(ADMIN_KEY),
        &[&mapping],
    );
    std::fs::write(dir.join("v1.yml"), compose(&host, "v1")).unwrap();
    std::fs::write(dir.join("v2.yml"), compose(&host, "v2")).unwrap();
    std::fs::write(
        dir.join(".env"),
        format!(
            "DSTACK_DOCKER_USERNAME=acme\nDSTACK_DOCKER_PASSWORD={CANARY}\nDSTACK_DOCKER_REGISTRY={host}\n"
        ),
    )
    .unwrap();

    // Deploy: the output names the pinned digest, the stored file holds it.
    let out = berth_cli(
        &cloud,
        &dir,
        &[
            "deploy",
            "-n",
            "pinned-app",
            "-c",
            "v1.yml",
            "-e",
            ".env",
            "--wait",
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains(&format!("app  {host}/acme/app:v1 -> {}", v1.digest)),
        "{}",
        out.stdout
    );
    let cvm = cloud.settled(ADMIN_KEY, "pinned-app", CANARY);
    let id = cvm["vm_uuid"].as_str().unwrap().to_owned();
    let (code, stored) = cloud.request(
        ADMIN_KEY,
        None,
        "GET",
        &format!("/cvms/{id}/docker-compose.yml"),
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(
        stored,
        format!(
            "# the app\nservices:\n  app:\n    image: \"{host}/acme/app:v1@{}\"  # pinned by berth\n    network_mode: none\n    command: [\"sleep\", \"600\"]\n",
            v1.digest
        )
    );
    let original = app_image(&engine);

    // The tag moves.
    let moved = push_image(&target, "acme/app", "v1", &base().seeded_layer(4096, 2));
    assert_ne!(moved.digest, v1.digest);

    // A restart runs the pinned image.
    let (code, _) = cloud.call(
        ADMIN_KEY,
        "POST",
        &format!("/cvms/{id}/restart"),
        Some(&serde_json::json!({"force": false})),
    );
    assert_eq!(code, 200);
    let cvm: Value = cloud.settled(ADMIN_KEY, &id, CANARY);
    assert_eq!(cvm["status"], "running", "{cvm}");
    assert_eq!(app_image(&engine), original);

    // An update with the deployed (pinned) file keeps its digest as written:
    // nothing changed, and the CVM still runs the original image.
    std::fs::write(dir.join("pinned.yml"), &stored).unwrap();
    let out = berth_cli(
        &cloud,
        &dir,
        &[
            "deploy",
            "--update",
            &id,
            "-c",
            "pinned.yml",
            "-e",
            ".env",
            "--wait",
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("No pinned digest changed."),
        "{}",
        out.stdout
    );
    assert_eq!(app_image(&engine), original);

    // An update naming another tag shows the digest that changed.
    let v2 = push_image(&target, "acme/app", "v2", &base().seeded_layer(4096, 3));
    let out = berth_cli(
        &cloud,
        &dir,
        &[
            "deploy", "--update", &id, "-c", "v2.yml", "-e", ".env", "--wait",
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!(
            "app  {host}/acme/app:v2 -> {}  (changed, was {})",
            v2.digest, v1.digest
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("1 pinned digest changed."),
        "{}",
        out.stdout
    );
    assert_ne!(app_image(&engine), original);
}
