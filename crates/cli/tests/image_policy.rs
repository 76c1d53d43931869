//! The image policy through `berth up` (issue 20, part 3): `--require-digests`
//! refuses an unpinned image at provisioning with a sentence naming it; an
//! app's policy travels in its measured manifest, a signed image boots under
//! it, a malformed policy is refused with a sentence, and an owner-authorized
//! app refuses an unsigned update that weakens it.

mod common;
use common::*;
use serde_json::{Value, json};
use testkit::cosign::{CosignKey, Signature, payload, push_signatures};
use testkit::images::{ImageSpec, PushTarget, PushedImage, push_image};
use testkit::{Dockerd, Registry};

const ADMIN_KEY: &str = "berth_test_admin_key_policy_0123";

fn compose(image: &str) -> String {
    format!(
        "services:\n  app:\n    image: \"{image}\"\n    network_mode: none\n    command: [\"sleep\", \"600\"]\n"
    )
}

fn app_image(registry: &Registry) -> PushedImage {
    push_image(
        &PushTarget::new(&registry.host_port()),
        "acme/app",
        "v1",
        &ImageSpec::new().busybox().seeded_layer(2048, 77),
    )
}

/// `berth cvms get NAME` against `cloud`.
fn cvms_get(cloud: &Cloud, name: &str) -> Run {
    let out = run(
        std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["cvms", "get", name])
            .env("BERTH_API_URL", &cloud.api)
            .env("BERTH_API_KEY", ADMIN_KEY),
        b"",
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    out
}

fn provision(cloud: &Cloud, body: &Value) -> (u16, Value) {
    cloud.call(ADMIN_KEY, "POST", "/cvms/provision", Some(body))
}

#[test]
fn an_unpinned_image_is_refused_at_provisioning_under_require_digests() {
    let engine = Dockerd::start();
    let registry = Registry::start();
    let host = registry.host_port();
    let image = app_image(&registry);
    let dir = tempdir("require-digests");
    let mapping = format!("--registry-endpoint={host}={}", registry.base_url());
    let cloud = Cloud::start(
        &dir.join("state"),
        &engine.host(),
        Some(ADMIN_KEY),
        &[&mapping, "--require-digests"],
    );
    let (code, answer) = provision(
        &cloud,
        &json!({"name": "unpinned-app", "compose_file": {"docker_compose_file": compose(&format!("{host}/acme/app:v1"))}}),
    );
    assert_eq!(code, 422, "{answer}");
    assert_eq!(
        answer["detail"],
        format!(
            "service app's image {host}/acme/app:v1 is not pinned to a digest, and this cloud's operator requires every image as name@sha256:…"
        )
    );
    // Pinned, it is provisioned and boots.
    let id = cloud.deploy_public_as(
        ADMIN_KEY,
        "pinned-app",
        &compose(&format!("{host}/acme/app:v1@{}", image.digest)),
    );
    let cvm = cloud.wait_booted_as(ADMIN_KEY, &id);
    assert_eq!(cvm["status"], "running", "{cvm}");
}

#[test]
fn a_policy_is_measured_and_an_owner_authorized_app_refuses_an_unsigned_weakening() {
    let engine = Dockerd::start();
    let registry = Registry::start();
    let host = registry.host_port();
    let image = app_image(&registry);
    let signer = CosignKey::from_seed("policy-owner");
    push_signatures(
        &registry,
        "acme/app",
        &image.digest,
        &[Signature::by(
            &signer,
            payload(&format!("{host}/acme/app"), &image.digest),
        )],
    );
    let dir = tempdir("image-policy");
    let mapping = format!("--registry-endpoint={host}={}", registry.base_url());
    let cloud = Cloud::start(
        &dir.join("state"),
        &engine.host(),
        Some(ADMIN_KEY),
        &[&mapping],
    );
    let pinned = compose(&format!("{host}/acme/app:v1@{}", image.digest));
    let policy = json!({
        "require_digests": true,
        "signatures": [{"scope": format!("{host}/acme"), "keys": [signer.public_pem()]}],
    });

    // A malformed policy, or one whose digests rule the file breaks, is
    // refused with a sentence.
    let (code, answer) = provision(
        &cloud,
        &json!({"name": "bad-policy", "compose_file": {"docker_compose_file": pinned},
                "berth_image_policy": {"signatures": [{"scope": "*", "keys": ["-----BEGIN CERTIFICATE-----"]}]}}),
    );
    assert_eq!(code, 422, "{answer}");
    assert_eq!(
        answer["detail"],
        "the image policy (berth_image_policy) is not valid: signature rule 1 (scope `*`): key 1 is not a PEM public key (-----BEGIN PUBLIC KEY----- … -----END PUBLIC KEY-----)"
    );
    let (code, answer) = provision(
        &cloud,
        &json!({"name": "tag-policy", "compose_file": {"docker_compose_file": compose(&format!("{host}/acme/app:v1"))},
                "berth_image_policy": policy}),
    );
    assert_eq!(code, 422, "{answer}");
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .ends_with("is not pinned to a digest, and the app's image policy requires every image as name@sha256:…"),
        "{answer}"
    );

    // An owner-authorized app with the policy: measured, and it boots.
    let owner = kms::owner::OwnerKey::generate();
    let (code, p) = provision(
        &cloud,
        &json!({"name": "signed-app", "compose_file": {"docker_compose_file": pinned},
                "berth_owner_key": owner.public_hex(), "berth_image_policy": policy}),
    );
    assert_eq!(code, 200, "{p}");
    let (code, c) = cloud.call(
        ADMIN_KEY,
        "POST",
        "/cvms",
        Some(&json!({"app_id": p["app_id"], "compose_hash": p["compose_hash"], "name": "signed-app"})),
    );
    assert_eq!(code, 200, "{c}");
    let id = cloud.cvm_as(ADMIN_KEY, "signed-app")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cvm = cloud.wait_booted_as(ADMIN_KEY, &id);
    assert_eq!(cvm["status"], "running", "{cvm}");
    let hash = cvm["compose_hash"].as_str().unwrap().to_owned();
    assert_eq!(hash, p["compose_hash"].as_str().unwrap());
    let serial = cloud.serial_log(ADMIN_KEY, &id, "no-secret-here");
    assert!(
        serial.contains("cosign signature of") && serial.contains("verified (key sha256:"),
        "{serial}"
    );

    // `berth cvms get` shows the digest each service runs.
    let get = cvms_get(&cloud, "signed-app");
    assert!(
        get.stdout.contains(&format!(
            "Images:        app  {}  ({host}/acme/app:v1)",
            image.digest
        )),
        "{}",
        get.stdout
    );

    // An app whose image is not signed: its boot fails untrusted_image,
    // and `berth cvms get` says which image and why.
    let unsigned = push_image(
        &PushTarget::new(&host),
        "acme/unsigned",
        "v1",
        &ImageSpec::new().busybox().seeded_layer(2048, 78),
    );
    let (code, p2) = provision(
        &cloud,
        &json!({"name": "unsigned-app", "compose_file": {"docker_compose_file": compose(&format!("{host}/acme/unsigned:v1@{}", unsigned.digest))},
                "berth_image_policy": policy}),
    );
    assert_eq!(code, 200, "{p2}");
    let (code, c) = cloud.call(
        ADMIN_KEY,
        "POST",
        "/cvms",
        Some(&json!({"app_id": p2["app_id"], "compose_hash": p2["compose_hash"], "name": "unsigned-app"})),
    );
    assert_eq!(code, 200, "{c}");
    let failed = cloud.wait_booted_as(ADMIN_KEY, "unsigned-app");
    assert_eq!(failed["status"], "boot_failed", "{failed}");
    assert_eq!(failed["boot_category"], "untrusted_image", "{failed}");
    let get = cvms_get(&cloud, "unsigned-app");
    assert!(
        get.stdout.contains(&format!(
            "boot_failed (untrusted_image): {host}/acme/unsigned@{} is untrusted: it has no cosign signature",
            unsigned.digest
        )),
        "{}",
        get.stdout
    );

    // The control plane (or anyone with the API key) drops or weakens the
    // policy without the owner's signature: refused, nothing changes.
    for weaker in [
        json!({}),
        json!({"require_digests": true}),
        json!({"signatures": [{"scope": format!("{host}/acme"), "keys": [CosignKey::from_seed("mallory").public_pem()]}]}),
    ] {
        let (code, answer) = cloud.call(
            ADMIN_KEY,
            "PATCH",
            &format!("/cvms/{id}"),
            Some(&json!({"docker_compose_file": pinned, "berth_image_policy": weaker})),
        );
        assert_eq!(code, 403, "{weaker}: {answer}");
        assert!(
            answer["detail"]
                .as_str()
                .unwrap_or("")
                .contains("owner-authorized"),
            "{answer}"
        );
        let after = cloud.cvm_as(ADMIN_KEY, &id);
        assert_eq!(after["compose_hash"], hash.as_str(), "{weaker}");
    }
}

/// `berth` against `cloud`, run in `dir` (its owner key there).
fn berth_in(cloud: &Cloud, dir: &std::path::Path, args: &[&str]) -> Run {
    run(
        std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .current_dir(dir)
            .env("BERTH_API_URL", &cloud.api)
            .env("BERTH_API_KEY", ADMIN_KEY)
            .env("BERTH_KMS_PUBKEY", &cloud.kms_pubkey)
            .env("BERTH_OWNER_KEY", dir.join("owner-key"))
            .env("DOCKER_CONFIG", dir.join("no-docker-config")),
        b"",
    )
}

#[test]
fn berth_deploy_carries_the_policy_and_only_the_owner_s_signed_update_changes_it() {
    let engine = Dockerd::start();
    let registry = Registry::start();
    let host = registry.host_port();
    let image = app_image(&registry);
    let signer = CosignKey::from_seed("cli-owner");
    push_signatures(
        &registry,
        "acme/app",
        &image.digest,
        &[Signature::by(
            &signer,
            payload(&format!("{host}/acme/app"), &image.digest),
        )],
    );
    let dir = tempdir("image-policy-cli");
    let mapping = format!("--registry-endpoint={host}={}", registry.base_url());
    let cloud = Cloud::start(
        &dir.join("state"),
        &engine.host(),
        Some(ADMIN_KEY),
        &[&mapping],
    );
    std::fs::write(
        dir.join("app.yml"),
        compose(&format!("{host}/acme/app:v1@{}", image.digest)),
    )
    .unwrap();
    std::fs::write(
        dir.join("policy.json"),
        json!({"require_digests": true, "signatures": [{"scope": format!("{host}/acme"), "keys": [signer.public_pem()]}]}).to_string(),
    )
    .unwrap();
    std::fs::write(dir.join("weaker.json"), r#"{"require_digests": true}"#).unwrap();
    std::fs::write(
        dir.join("bad.json"),
        r#"{"signatures": [{"scope": "ghcr.io"}]}"#,
    )
    .unwrap();

    // A malformed policy file: refused on the user's machine, with a sentence.
    let out = berth_in(
        &cloud,
        &dir,
        &[
            "deploy",
            "-n",
            "policy-cli",
            "-c",
            "app.yml",
            "--image-policy",
            "bad.json",
        ],
    );
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(
            "bad.json: the image policy (berth_image_policy) is not valid: missing field `keys`"
        ),
        "{}",
        out.stderr
    );

    let out = berth_in(
        &cloud,
        &dir,
        &[
            "deploy",
            "-n",
            "policy-cli",
            "-c",
            "app.yml",
            "--image-policy",
            "policy.json",
            "--wait",
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "Image policy: every image pinned to a digest; cosign signatures for {host}/acme by 1 key"
        )),
        "{}",
        out.stderr
    );
    let cvm = cloud.cvm_as(ADMIN_KEY, "policy-cli");
    let id = cvm["id"].as_str().unwrap().to_owned();
    let before = cvm["compose_hash"].as_str().unwrap().to_owned();

    // The owner's own update weakens the policy: signed, accepted.
    let out = berth_in(
        &cloud,
        &dir,
        &[
            "deploy",
            "--update",
            &id,
            "-c",
            "app.yml",
            "--image-policy",
            "weaker.json",
            "--wait",
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("Image policy of the update: every image pinned to a digest"),
        "{}",
        out.stderr
    );
    let after = cloud.cvm_as(ADMIN_KEY, "policy-cli");
    assert_ne!(after["compose_hash"], before.as_str());
    assert_eq!(after["status"], "running", "{after}");
}
