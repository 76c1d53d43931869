//! The app's image policy at boot (issue 20, parts 3–4), through `berth
//! guest boot` against a private Docker engine and Debian's registry: a
//! signed image boots; an unsigned one, one signed by another key, one whose
//! signature is for another digest, one whose payload was altered, and an
//! unpinned one under `require_digests` each end `untrusted_image` (exit
//! code 11) with a sentence naming the image, no container started and no
//! layer of that image in the engine. Signatures are made by test code in
//! cosign's format (`testkit::cosign`) and checked with Python's
//! `cryptography`.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;
use testkit::cosign::{CosignKey, Signature, payload, push_signatures, verify_with_python};
use testkit::images::{ImageSpec, PushTarget, PushedImage, push_image};
use testkit::{Dockerd, Registry};

struct Case {
    dir: TestDir,
    shared: PathBuf,
    state: PathBuf,
    key: PathBuf,
}

impl Case {
    fn new(name: &str, yaml: &str, policy: serde_json::Value, sys: serde_json::Value) -> Case {
        let dir = tempdir(name);
        let shared = dir.join("shared");
        let state = dir.join("state");
        std::fs::create_dir_all(&shared).unwrap();
        let (key, _) = keygen(&dir);
        let app = serde_json::json!({
            "manifest_version": 2,
            "name": name,
            "runner": "docker-compose",
            "docker_compose_file": yaml,
            "allowed_envs": [],
            "kms_enabled": true,
            "features": ["kms"],
            "berth_image_policy": policy,
        });
        std::fs::write(
            shared.join("app-compose.json"),
            serde_json::to_vec(&app).unwrap(),
        )
        .unwrap();
        std::fs::write(shared.join("sys-config.json"), sys.to_string()).unwrap();
        Case {
            dir,
            shared,
            state,
            key,
        }
    }

    fn boot(&self, engine: &Dockerd) -> Run {
        let out = run(
            Command::new(env!("CARGO_BIN_EXE_berth"))
                .args(["guest", "boot", "--shared"])
                .arg(&self.shared)
                .arg("--state")
                .arg(&self.state)
                .arg("--env-key-file")
                .arg(&self.key)
                .env("DOCKER_HOST", engine.host()),
            b"",
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        let _ = &self.dir;
        out
    }
}

fn last_line(out: &Run) -> String {
    let line = out.stdout.lines().last().unwrap_or_default();
    line.split_once("] ")
        .map(|(_, l)| l.to_owned())
        .unwrap_or_default()
}

/// The containers of compose project `project`, running or not.
fn containers(engine: &Dockerd, project: &str) -> Vec<String> {
    engine
        .docker_out(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
        ])
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Every layer (diff ID) of every image in the engine.
fn engine_layers(engine: &Dockerd) -> String {
    let ids = engine.docker_out(&["image", "ls", "-aq", "--no-trunc"]);
    let mut all = String::new();
    for id in ids.split_whitespace() {
        all.push_str(&engine.docker_out(&[
            "image",
            "inspect",
            "-f",
            "{{json .RootFS.Layers}}",
            id,
        ]));
    }
    all
}

const COMPOSE: &str = "services:\n  app:\n    image: \"{IMAGE}\"\n    network_mode: none\n    command: [\"sleep\", \"600\"]\n";

#[test]
fn signed_images_boot_and_untrusted_ones_end_untrusted_image_with_nothing_in_the_engine() {
    let engine = Dockerd::start();
    let registry = Registry::start();
    let host = registry.host_port();
    let target = PushTarget::new(&host);
    let owner = CosignKey::from_seed("owner");
    let stranger = CosignKey::from_seed("stranger");
    // Each image has a layer of its own (after busybox's, which they share).
    let push = |name: &str, seed: u64| -> PushedImage {
        push_image(
            &target,
            &format!("acme/{name}"),
            "v1",
            &ImageSpec::new().busybox().seeded_layer(4096, seed),
        )
    };
    let name = |repo: &str| format!("{host}/acme/{repo}");
    let elsewhere = "sha256:".to_owned() + &"ab".repeat(32);

    let good = push("good", 11);
    let sig = Signature::by(&owner, payload(&name("good"), &good.digest));
    assert!(verify_with_python(
        &owner.public_pem(),
        &sig.payload,
        &sig.signature
    ));
    push_signatures(&registry, "acme/good", &good.digest, &[sig]);

    let unsigned = push("unsigned", 12);

    let other_key = push("other-key", 13);
    let sig = Signature::by(&stranger, payload(&name("other-key"), &other_key.digest));
    assert!(!verify_with_python(
        &owner.public_pem(),
        &sig.payload,
        &sig.signature
    ));
    push_signatures(&registry, "acme/other-key", &other_key.digest, &[sig]);

    let other_digest = push("other-digest", 14);
    let sig = Signature::by(&owner, payload(&name("other-digest"), &elsewhere));
    push_signatures(&registry, "acme/other-digest", &other_digest.digest, &[sig]);

    let tampered = push("tampered", 15);
    let mut sig = Signature::by(&owner, payload(&name("tampered"), &elsewhere));
    sig.payload = payload(&name("tampered"), &tampered.digest);
    assert!(!verify_with_python(
        &owner.public_pem(),
        &sig.payload,
        &sig.signature
    ));
    push_signatures(&registry, "acme/tampered", &tampered.digest, &[sig]);

    let policy = serde_json::json!({
        "require_digests": true,
        "signatures": [{"scope": format!("{host}/acme"), "keys": [owner.public_pem()]}],
    });
    let sys = |project: &str| {
        serde_json::json!({
            "registry_endpoints": {host.clone(): registry.base_url()},
            "project_name": project,
        })
    };
    let pinned = |repo: &str, image: &PushedImage| {
        COMPOSE.replace("{IMAGE}", &format!("{}:v1@{}", name(repo), image.digest))
    };

    // The signed image boots, and the serial log says which key signed it.
    let case = Case::new(
        "signed-good",
        &pinned("good", &good),
        policy.clone(),
        sys("signedgood"),
    );
    let out = case.boot(&engine);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(last_line(&out).starts_with("BOOT OK"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!(
            "image policy: every image pinned to a digest; cosign signatures for {host}/acme by 1 key"
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "pull: {}:v1@{}: cosign signature of {} verified (key sha256:",
            name("good"),
            good.digest,
            good.digest
        )),
        "{}",
        out.stdout
    );
    assert_eq!(containers(&engine, "signedgood").len(), 1);
    let good_layer = good.image.diff_ids.last().unwrap();
    assert!(engine_layers(&engine).contains(good_layer.as_str()));

    // Each untrusted image: untrusted_image, exit code 11, a sentence
    // naming the image and why, no container, no layer of it.
    let cases: [(&str, &PushedImage, String); 4] = [
        (
            "unsigned",
            &unsigned,
            "has no cosign signature (no signature layer under the tag sha256-".to_owned(),
        ),
        (
            "other-key",
            &other_key,
            "its signature verifies under none of the keys the app's image policy names".to_owned(),
        ),
        (
            "other-digest",
            &other_digest,
            format!(
                "is for digest {elsewhere}, not for the pinned digest {}",
                other_digest.digest
            ),
        ),
        (
            "tampered",
            &tampered,
            "its signature verifies under none of the keys".to_owned(),
        ),
    ];
    for (repo, image, why) in cases {
        let project = format!("signed{}", repo.replace('-', ""));
        let case = Case::new(
            &format!("signed-{repo}"),
            &pinned(repo, image),
            policy.clone(),
            sys(&project),
        );
        let out = case.boot(&engine);
        assert_eq!(out.code, 11, "{repo}: {}\n{}", out.stdout, out.stderr);
        let last = last_line(&out);
        assert!(
            last.starts_with(&format!(
                "BOOT FAILED: untrusted_image: {}@{} is untrusted: ",
                name(repo),
                image.digest
            )) && last.contains(&why),
            "{repo}: {last}"
        );
        assert!(
            out.stdout
                .contains("troubleshooting: sign the image's digest with cosign"),
            "{}",
            out.stdout
        );
        assert!(containers(&engine, &project).is_empty(), "{repo}");
        let layer = image.image.diff_ids.last().unwrap();
        assert!(
            !engine_layers(&engine).contains(layer.as_str()),
            "{repo}: a layer of the untrusted image is in the engine"
        );
        assert!(
            !case
                .state
                .join("images/blobs/sha256")
                .join(
                    image
                        .image
                        .layers
                        .last()
                        .unwrap()
                        .digest
                        .trim_start_matches("sha256:")
                )
                .exists(),
            "{repo}: a layer of the untrusted image is in the store"
        );
    }

    // An unpinned image under require_digests: refused before any pull.
    let case = Case::new(
        "signed-unpinned",
        &COMPOSE.replace("{IMAGE}", &format!("{}:v1", name("good"))),
        policy.clone(),
        sys("signedunpinned"),
    );
    let out = case.boot(&engine);
    assert_eq!(out.code, 11, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        last_line(&out),
        format!(
            "BOOT FAILED: untrusted_image: service app's image {}:v1 is not pinned to a digest, and the app's image policy requires every image as name@sha256:…",
            name("good")
        )
    );
    assert!(containers(&engine, "signedunpinned").is_empty());

    // A malformed policy is a config failure with a sentence, not a panic.
    let case = Case::new(
        "signed-badpolicy",
        &pinned("good", &good),
        serde_json::json!({"signatures": [{"scope": "*", "keys": ["not a key"]}]}),
        sys("signedbadpolicy"),
    );
    let out = case.boot(&engine);
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    assert!(
        last_line(&out).starts_with("BOOT FAILED: config: the image policy (berth_image_policy) is not valid: signature rule 1 (scope `*`): key 1 is not a PEM public key"),
        "{}",
        out.stdout
    );
}
