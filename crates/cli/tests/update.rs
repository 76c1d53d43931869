//! Updates in place, end to end: `berth up` on a real Docker engine, a real
//! registry with a password (behind testkit's recording proxy, which is how
//! the test sees which blobs and manifests were fetched), the OFFICIAL
//! `phala` CLI (`phala deploy --cvm-id`) and `berth deploy --update`.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use testkit::images::{ImageSpec, PushTarget, PushedImage, push_image};
use testkit::{Dockerd, Registry};
use testkit::{FaultProxy, RequestKind};

const CANARY: &str = "canary-update-pw-41c9";
const ADMIN_KEY: &str = "berth_test_admin_key_update_0123";

/// A private registry behind a recording proxy, with `alice/web:v1`,
/// `alice/web:v2` (same base layers, a different top layer: its file name
/// says the version) and `alice/db:1`.
struct Images {
    _registry: Registry,
    proxy: FaultProxy,
    host: String,
    v1: PushedImage,
    v2: PushedImage,
}

fn images() -> Images {
    let registry = Registry::with_htpasswd(&[("alice", CANARY)]);
    let target = PushTarget::new(&registry.host_port()).with_creds("alice", CANARY);
    let base = || ImageSpec::new().busybox().seeded_layer(300_000, 7);
    let v1 = push_image(&target, "alice/web", "v1", &base().seeded_layer(4096, 101));
    let v2 = push_image(&target, "alice/web", "v2", &base().seeded_layer(4096, 102));
    push_image(&target, "alice/db", "1", &base().seeded_layer(2048, 300));
    let proxy = FaultProxy::start(&registry);
    Images {
        host: proxy.host_port(),
        _registry: registry,
        proxy,
        v1,
        v2,
    }
}

impl Images {
    /// `--registry-endpoint` mapping the image host (the proxy) for CVMs.
    fn mapping(&self) -> String {
        format!(
            "--registry-endpoint={}={}",
            self.host,
            self.proxy.base_url()
        )
    }

    fn compose(&self, web_tag: &str) -> String {
        format!(
            "services:\n  web:\n    image: {h}/alice/web:{web_tag}\n    network_mode: none\n    environment:\n      - NOTE=${{NOTE:-none}}\n    command: [\"sh\", \"-c\", \"echo web note=$$NOTE; sleep 600\"]\n  db:\n    image: {h}/alice/db:1\n    network_mode: none\n    command: [\"sh\", \"-c\", \"echo db up; sleep 600\"]\n",
            h = self.host
        )
    }

    fn env(&self) -> String {
        format!(
            "DSTACK_DOCKER_USERNAME=alice\nDSTACK_DOCKER_PASSWORD={CANARY}\nDSTACK_DOCKER_REGISTRY={}\n",
            self.host
        )
    }

    /// (blob GETs by digest, manifest GETs) seen from request `from` on.
    fn fetched_since(&self, from: usize) -> (Vec<String>, usize) {
        let records = self.proxy.requests();
        let new = &records[from.min(records.len())..];
        let blobs = new
            .iter()
            .filter(|r| r.kind == RequestKind::Blob && r.method == "GET")
            .map(|r| r.path.rsplit('/').next().unwrap_or("").to_owned())
            .collect();
        let manifests = new
            .iter()
            .filter(|r| r.kind == RequestKind::Manifest && r.method == "GET")
            .count();
        (blobs, manifests)
    }

    fn seen(&self) -> usize {
        self.proxy.requests().len()
    }
}

fn up(state: &Path, engine: &Dockerd, mapping: &str) -> Cloud {
    Cloud::start(state, &engine.host(), Some(ADMIN_KEY), &[mapping])
}

fn phala(cloud: &Cloud, cwd: &Path, args: &[&str]) -> Run {
    cloud.phala(ADMIN_KEY, cwd, args, CANARY)
}

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

fn patch(cloud: &Cloud, path: &str, body: &Value) -> (u16, Value) {
    cloud.call(ADMIN_KEY, "PATCH", path, Some(body))
}

/// Waits until the CVM has finished booting, then returns it.
fn settled(cloud: &Cloud, id: &str) -> Value {
    cloud.settled(ADMIN_KEY, id, CANARY)
}

fn serial(cloud: &Cloud, id: &str) -> String {
    cloud.serial_log(ADMIN_KEY, id, CANARY)
}

/// The serial log of the last boot only (from its first step).
fn last_boot(cloud: &Cloud, id: &str) -> String {
    let log = serial(cloud, id);
    let lines: Vec<&str> = log.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.ends_with("[1/7] measure the app"))
        .unwrap_or(0);
    lines[start..].join("\n")
}

/// The image ID the running `web` container of the CVM's project runs.
fn web_image(engine: &Dockerd, cvm_id: &str) -> String {
    let short: String = cvm_id.chars().filter(|c| *c != '-').take(12).collect();
    let ps = engine.docker_out(&[
        "ps",
        "-q",
        "--filter",
        "label=com.docker.compose.service=web",
    ]);
    for id in ps.split_whitespace() {
        let project = engine.docker_out(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"com.docker.compose.project\"}} {{.Image}}",
            id,
        ]);
        if project.contains(&short) || ps.split_whitespace().count() == 1 {
            return project.split_whitespace().last().unwrap_or("").to_owned();
        }
    }
    panic!("no running web container for {cvm_id}: {ps}")
}

fn bytes_downloaded(boot: &str) -> u64 {
    let line = boot
        .lines()
        .find(|l| l.contains("bytes downloaded"))
        .unwrap_or_else(|| panic!("no pull summary in:\n{boot}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "bytes").unwrap();
    words[i - 1].parse().unwrap()
}

#[test]
fn the_official_cli_updates_an_app_in_place_pulling_only_new_layers() {
    let engine = Dockerd::start();
    let img = images();
    let dir = tempdir("update-official");
    let cloud = up(&dir.join("state"), &engine, &img.mapping());
    std::fs::write(dir.join("v1.yml"), img.compose("v1")).unwrap();
    std::fs::write(dir.join("v2.yml"), img.compose("v2")).unwrap();
    std::fs::write(dir.join(".env"), img.env()).unwrap();
    // The update brings a variable the first deployment did not allow.
    std::fs::write(
        dir.join("v2.env"),
        format!("{}NOTE=hello-from-v2\n", img.env()),
    )
    .unwrap();

    let out = phala(
        &cloud,
        &dir,
        &["deploy", "-n", "cloud-app", "-c", "v1.yml", "-e", ".env"],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let before = settled(&cloud, "cloud-app");
    assert_eq!(
        before["status"],
        "running",
        "{}",
        serial(&cloud, "cloud-app")
    );
    assert_eq!(before["upgrade_authority"], "cloud");
    let id = before["vm_uuid"].as_str().unwrap().to_owned();
    assert_eq!(web_image(&engine, &id), img.v1.image.config.digest);

    // The official update path: PATCH /cvms/{id}, then --wait.
    let mark = img.seen();
    let out = phala(
        &cloud,
        &dir,
        &[
            "deploy", "--cvm-id", &id, "-c", "v2.yml", "-e", "v2.env", "--wait",
        ],
    );
    assert_eq!(
        out.code,
        0,
        "{}\n{}\n{}",
        out.stdout,
        out.stderr,
        cloud.output()
    );
    let after = settled(&cloud, &id);
    assert_eq!(after["status"], "running", "{}", serial(&cloud, &id));
    // The same CVM and app: id, app id (so env key) unchanged.
    assert_eq!(after["vm_uuid"], before["vm_uuid"]);
    assert_eq!(after["app_id"], before["app_id"]);
    assert_ne!(after["compose_hash"], before["compose_hash"]);
    assert_eq!(web_image(&engine, &id), img.v2.image.config.digest);
    // The new allowed variable and the new sealed env reached the app.
    let web_logs = || {
        let ids = engine.docker_out(&[
            "ps",
            "-q",
            "--filter",
            "label=com.docker.compose.service=web",
        ]);
        engine.docker_out(&["logs", ids.split_whitespace().next().unwrap_or("none")])
    };
    eventually(10, "the app prints the note", || {
        web_logs().contains("note=hello-from-v2")
    });
    let (code, compose) = cloud.request(
        ADMIN_KEY,
        None,
        "GET",
        &format!("/cvms/{id}/docker-compose.yml"),
        None,
    );
    assert_eq!(code, 200);
    assert!(compose.contains("alice/web:v2"), "{compose}");

    // Only what v2 added was downloaded; one manifest GET (web:v2), the
    // unchanged db:1 cost none.
    let (blobs, manifest_gets) = img.fetched_since(mark);
    let v1_blobs: Vec<&str> = img
        .v1
        .image
        .layers
        .iter()
        .map(|l| l.digest.as_str())
        .collect();
    let new_layer = &img.v2.image.layers.last().unwrap().digest;
    assert!(blobs.contains(new_layer), "{blobs:?}");
    for b in &blobs {
        assert!(
            b == new_layer || *b == img.v2.image.config.digest,
            "downloaded {b}, which v1 already had or v2 does not need: {blobs:?} (v1: {v1_blobs:?})"
        );
    }
    assert_eq!(manifest_gets, 1, "manifest GETs during the update");
    let boot = last_boot(&cloud, &id);
    assert!(boot.contains("upgrades: cloud-authorized"), "{boot}");
    assert!(bytes_downloaded(&boot) < 10_000, "{boot}");

    // The history records both versions.
    let h = berth_cli(&cloud, &dir, &["cvms", "history", &id, "--json"]);
    assert_eq!(h.code, 0, "{}", h.stderr);
    let h: Value = serde_json::from_str(&h.stdout).unwrap();
    let versions = h["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{h}");
    assert_eq!(versions[0]["authorized_by"], "provisioned");
    assert_eq!(versions[1]["authorized_by"], "cloud");
    assert_eq!(versions[1]["compose_hash"], after["compose_hash"]);
    assert_eq!(versions[1]["current"], true);

    // `phala envs update` with a name the app does not allow yet: all the
    // secrets are replaced, allowed_envs grows (a third version), the app
    // sees the new values.
    std::fs::write(
        dir.join("v3.env"),
        format!("{}NOTE=changed-by-envs-update\nEXTRA=1\n", img.env()),
    )
    .unwrap();
    let out = phala(&cloud, &dir, &["envs", "update", &id, "-e", "v3.env"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        settled(&cloud, &id)["status"],
        "running",
        "{}",
        serial(&cloud, &id)
    );
    eventually(20, "the app prints the new note", || {
        web_logs().contains("note=changed-by-envs-update")
    });
    let h = berth_cli(&cloud, &dir, &["cvms", "history", &id, "--json"]);
    let h: Value = serde_json::from_str(&h.stdout).unwrap();
    assert_eq!(h["versions"].as_array().unwrap().len(), 3, "{h}");
    let _ = cloud.stop();
}

#[test]
fn only_the_owner_can_upgrade_an_owner_authorized_app() {
    let engine = Dockerd::start();
    let img = images();
    let dir = tempdir("update-owner");
    let cloud = up(&dir.join("state"), &engine, &img.mapping());
    for (file, tag) in [("v1.yml", "v1"), ("v2.yml", "v2")] {
        std::fs::write(dir.join(file), img.compose(tag)).unwrap();
    }
    std::fs::write(dir.join(".env"), img.env()).unwrap();

    let out = berth_cli(
        &cloud,
        &dir,
        &[
            "deploy",
            "-n",
            "owned-app",
            "-c",
            "v1.yml",
            "-e",
            ".env",
            "--wait",
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("owner-authorized"), "{}", out.stdout);
    assert!(out.stderr.contains("Created owner key"), "{}", out.stderr);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("owner-key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let cvm = settled(&cloud, "owned-app");
    let (id, app_id) = (
        cvm["vm_uuid"].as_str().unwrap().to_owned(),
        cvm["app_id"].as_str().unwrap().to_owned(),
    );
    assert_eq!(cvm["upgrade_authority"], "owner");

    // The owner's update, signed by `berth deploy --update`.
    let out = berth_cli(
        &cloud,
        &dir,
        &["deploy", "--update", &id, "-c", "v2.yml", "--wait"],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("BOOT OK"), "{}", out.stdout);
    let v2 = settled(&cloud, &id);
    assert_eq!(v2["app_id"], app_id.as_str());
    assert_eq!(web_image(&engine, &id), img.v2.image.config.digest);
    assert!(last_boot(&cloud, &id).contains("upgrades: owner-authorized"));
    let v2_hash = v2["compose_hash"].as_str().unwrap().to_owned();

    // The KMS (its socket, reachable by this test's user) holds the same.
    let kms_state = || {
        let sock = dir.join("state/kms/kms.sock");
        let out = Command::new("curl")
            .args(["-sf", "--unix-socket"])
            .arg(&sock)
            .arg(format!("http://kms/kms/v1/apps/{app_id}/compose-hash"))
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
    };
    assert_eq!(kms_state()["compose_hash"], v2_hash.as_str());
    assert_eq!(kms_state()["counter"], 1);

    // Rollback to v1: an update like any other, and nothing to download.
    let mark = img.seen();
    let out = berth_cli(
        &cloud,
        &dir,
        &["deploy", "--update", &id, "-c", "v1.yml", "--wait"],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(web_image(&engine, &id), img.v1.image.config.digest);
    let (blobs, manifest_gets) = img.fetched_since(mark);
    assert!(blobs.is_empty(), "a rollback downloaded {blobs:?}");
    assert_eq!(manifest_gets, 0, "a rollback fetched manifests");
    assert_eq!(bytes_downloaded(&last_boot(&cloud, &id)), 0);
    let v1_hash = settled(&cloud, &id)["compose_hash"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(kms_state()["counter"], 2);

    // What the control plane (or anyone with the API key) cannot do:
    let compose_v2 = std::fs::read_to_string(dir.join("v2.yml")).unwrap();
    let owner = kms::owner::OwnerKey::load_or_create(&dir.join("owner-key"))
        .unwrap()
        .0;
    let refused = |body: Value, why: &str| {
        let (code, answer) = patch(&cloud, &format!("/cvms/{id}"), &body);
        assert_eq!(code, 403, "{why}: {answer}");
        let after = settled(&cloud, &id);
        assert_eq!(after["status"], "running", "{why}");
        assert_eq!(after["compose_hash"], v1_hash.as_str(), "{why}");
        assert_eq!(kms_state()["compose_hash"], v1_hash.as_str(), "{why}");
        answer["detail"].as_str().unwrap_or("").to_owned()
    };
    // ... an unsigned update,
    let detail = refused(json_body(&compose_v2, None), "unsigned");
    assert!(detail.contains("owner-authorized"), "{detail}");
    // ... an update signed for another app,
    let other_app = "ab".repeat(20);
    let elsewhere = owner.authorize(&other_app, &v2_hash, 3).unwrap();
    refused(
        json_body(&compose_v2, Some(&elsewhere)),
        "another app's signature",
    );
    // ... and the owner's earlier signature for v2, replayed.
    let replayed = owner.authorize(&app_id, &v2_hash, 1).unwrap();
    let detail = refused(json_body(&compose_v2, Some(&replayed)), "replayed");
    assert!(detail.contains("replayed"), "{detail}");
    // The official CLI, which cannot sign, hears why.
    let out = phala(
        &cloud,
        &dir,
        &["deploy", "--cvm-id", &id, "-c", "v2.yml", "-e", ".env"],
    );
    assert_ne!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("owner-authorized"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(web_image(&engine, &id), img.v1.image.config.digest);
    // Nor can it add env names (that changes the manifest): refused, saying why.
    std::fs::write(dir.join("extra.env"), format!("{}EXTRA=1\n", img.env())).unwrap();
    let out = phala(&cloud, &dir, &["envs", "update", &id, "-e", "extra.env"]);
    assert_ne!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("owner-authorized"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(settled(&cloud, &id)["compose_hash"], v1_hash.as_str());

    // The history: provisioned, owner v2, owner v1.
    let h = berth_cli(&cloud, &dir, &["cvms", "history", &id]);
    assert_eq!(h.code, 0, "{}", h.stderr);
    assert_eq!(h.stdout.matches("owner key").count(), 3, "{}", h.stdout);
    assert!(
        h.stdout.contains(&v1_hash) && h.stdout.contains(&v2_hash),
        "{}",
        h.stdout
    );

    // The owner's private key never left the user's side: not in what the
    // cloud printed, not in any file of its state (database, KMS records).
    let output = cloud.stop();
    let private = std::fs::read_to_string(dir.join("owner-key")).unwrap();
    let private = private.trim();
    assert_eq!(private.len(), 64);
    assert!(!output.contains(private), "owner key in berth up's output");
    for f in files_under(&dir.join("state")) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(private),
            "owner key in {}",
            f.display()
        );
    }
}

fn json_body(compose: &str, auth: Option<&contract::upgrade::OwnerAuthorization>) -> Value {
    let mut body = serde_json::json!({"docker_compose_file": compose, "allowed_envs": ["DSTACK_DOCKER_USERNAME", "DSTACK_DOCKER_PASSWORD", "DSTACK_DOCKER_REGISTRY"]});
    if let Some(a) = auth {
        body["berth_owner_authorization"] = serde_json::to_value(a).unwrap();
    }
    body
}
