//! Berth's boot agent in a dstack guest, through the pre-launch script
//! users paste (`berth prelaunch-script`), in testkit's guest emulation
//! ([`testkit::dstack_guest`]): a root laid out as a dstack guest, a private
//! Docker engine, a `dstack-util` stub, and a runner that sources the
//! script as `app-compose.sh` does, then runs compose up and prunes.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::dstack_guest::{BootRun, DstackGuest, GuestApp, NotifyMode, Shell};
use testkit::images::{ImageSpec, PushTarget, PushedImage, push_image};
use testkit::{Dockerd, FaultProxy, Registry, RequestKind, Target};

const PASSWORD: &str = "canary-prelaunch-pw-5c1e9a";
const AWS_SECRET: &str = "canary-prelaunch-aws-77d0b2";
const APP_SECRET: &str = "canary-prelaunch-app-3f88aa";
const BOOT_LIMIT: Duration = Duration::from_secs(120);

/// The agent binary, as the CVM downloads it (a copy: the path the script
/// fetches from is outside the guest).
fn agent_binary(guest: &DstackGuest) -> (String, String) {
    let dir = guest.outside();
    std::fs::create_dir_all(&dir).unwrap();
    let dst = dir.join("berth");
    // Never a copy onto a link to the binary itself (that would empty it).
    let _ = std::fs::remove_file(&dst);
    // A link where it can be (the same file system): no 100 MB copy.
    if std::fs::hard_link(env!("CARGO_BIN_EXE_berth"), &dst).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_berth"), &dst).unwrap();
    }
    let sha = testkit::sha256_hex(&std::fs::read(&dst).unwrap());
    (format!("file://{}", dst.display()), sha)
}

fn script(url: &str, sha: &str) -> String {
    let out = berth(&["prelaunch-script", "--url", url, "--sha256", sha], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout
}

fn guest_script(guest: &DstackGuest) -> String {
    let (url, sha) = agent_binary(guest);
    script(&url, &sha)
}

/// A runnable image that prints `what` and sleeps.
fn runnable(seed: u64) -> ImageSpec {
    ImageSpec::new().busybox().seeded_layer(2000, seed)
}

fn service(name: &str, image: &str) -> String {
    format!(
        "  {name}:\n    image: {image}\n    network_mode: none\n    command: [\"sh\", \"-c\", \"echo {name} up; sleep 600\"]\n"
    )
}

fn config_digest(p: &PushedImage) -> String {
    p.image.config.digest.clone()
}

/// The image ID each of the project's containers runs, by service.
fn running_images(engine: &Dockerd) -> Vec<(String, String, String)> {
    let ids = engine.docker_out(&["ps", "-aq"]);
    ids.split_whitespace()
        .map(|id| {
            let out = engine.docker_out(&[
                "inspect",
                "--format",
                "{{index .Config.Labels \"com.docker.compose.service\"}} {{.Image}} {{.State.Status}}",
                id,
            ]);
            let mut f = out.split_whitespace().map(str::to_owned);
            (
                f.next().unwrap_or_default(),
                f.next().unwrap_or_default(),
                f.next().unwrap_or_default(),
            )
        })
        .collect()
}

fn assert_no_secret(guest: &DstackGuest, run: &BootRun, secrets: &[&str]) {
    for s in secrets {
        assert!(!run.stdout.contains(s), "a secret on stdout");
        assert!(!run.stderr.contains(s), "a secret on stderr");
        let files = guest.files_containing(s);
        assert!(files.is_empty(), "a secret in {files:?}");
    }
}

fn has_line(run: &BootRun, needle: &str) -> bool {
    run.stdout.lines().any(|l| l.contains(needle))
}

#[test]
fn private_images_from_a_password_registry_and_ecr_first_boot_pulls_reboot_sends_no_gets() {
    let engine = Dockerd::start();
    let registry = Registry::with_htpasswd(&[("alice", PASSWORD)]);
    let proxy = FaultProxy::start(&registry);
    let target = PushTarget::new(&registry.host_port()).with_creds("alice", PASSWORD);
    let web = push_image(&target, "acme/web", "v3", &runnable(1));
    let ecr = Ecr::start();
    let ecr_proxy = FaultProxy::start(&ecr.registry);
    let api = ecr.push("svc/api", "1", &runnable(2));

    let guest = DstackGuest::new("prelaunch-both", &engine);
    let compose = format!(
        "services:\n{}{}",
        service("web", "ghcr.io/acme/web:${WEB_TAG}"),
        service("api", &format!("{}/svc/api:1", ecr.host))
    );
    guest.install(&GuestApp {
        compose,
        pre_launch_script: Some(guest_script(&guest)),
        env: vec![
            ("DSTACK_DOCKER_USERNAME".into(), "alice".into()),
            ("DSTACK_DOCKER_PASSWORD".into(), PASSWORD.into()),
            ("DSTACK_DOCKER_REGISTRY".into(), "ghcr.io".into()),
            (
                "DSTACK_AWS_ACCESS_KEY_ID".into(),
                "AKIAIOSFODNN7EXAMPLE".into(),
            ),
            ("DSTACK_AWS_SECRET_ACCESS_KEY".into(), AWS_SECRET.into()),
            ("DSTACK_AWS_REGION".into(), "us-east-1".into()),
            ("DSTACK_AWS_ECR_REGISTRY".into(), ecr.host.clone()),
            ("WEB_TAG".into(), "v3".into()),
            ("APP_SECRET".into(), APP_SECRET.into()),
            (
                "DSTACK_ROOT_PASSWORD".into(),
                "canary-root-pw-1b2c3d".into(),
            ),
        ],
        sys_config: Some(serde_json::json!({
            "registry_endpoints": {
                "ghcr.io": proxy.base_url(),
                ecr.host.clone(): ecr_proxy.base_url(),
            },
            "aws_endpoint_url_ecr": ecr.moto.endpoint(),
        })),
        ..Default::default()
    });

    let secrets = [PASSWORD, AWS_SECRET, APP_SECRET, "canary-root-pw-1b2c3d"];
    let watches: Vec<ArgvWatch> = [PASSWORD, AWS_SECRET]
        .iter()
        .map(|s| ArgvWatch::start(s, None, Duration::from_millis(10)))
        .collect();

    // First boot, as dstack's current app-compose.sh: set -euo pipefail.
    let first = guest.boot(Shell::Strict, BOOT_LIMIT);
    assert!(first.ok, "first boot failed");
    assert!(has_line(&first, "PRELAUNCH OK"));
    assert!(has_line(&first, "registry login for ghcr.io"));
    assert!(has_line(&first, &format!("ECR login for {}", ecr.host)));
    assert!(proxy.manifest_gets() >= 1 && proxy.blob_gets() >= 1);
    assert!(ecr_proxy.manifest_gets() >= 1 && ecr_proxy.blob_gets() >= 1);
    let want = [
        ("web".to_owned(), config_digest(&web)),
        ("api".to_owned(), config_digest(&api)),
    ];
    let running = running_images(&engine);
    for (svc, id) in &want {
        assert!(
            running
                .iter()
                .any(|(s, i, st)| s == svc && i == id && st == "running"),
            "{svc} does not run {id}: {running:?}"
        );
    }
    let events = guest.notifications();
    assert!(
        events
            .iter()
            .any(|(e, d)| e == "boot.progress" && d == "berth: 2 images ready"),
        "{events:?}"
    );
    // The root password was set from the env, as a hash.
    let shadow = std::fs::read_to_string(guest.root().join("etc/shadow")).unwrap();
    assert!(shadow.starts_with("root:$6$"), "{shadow}");

    // A reboot, as v0.5.x's app-compose.sh (no options): HEAD requests only.
    proxy.clear_requests();
    ecr_proxy.clear_requests();
    guest.reboot();
    let second = guest.boot(Shell::Lax, BOOT_LIMIT);
    assert!(second.ok, "reboot failed");
    for p in [&proxy, &ecr_proxy] {
        assert_eq!(p.manifest_gets(), 0, "manifest GETs on reboot");
        assert_eq!(p.count(RequestKind::Blob, "GET"), 0, "blob GETs on reboot");
        assert!(p.manifest_heads() >= 1);
    }
    assert!(has_line(&second, "agent cached on the persistent disk"));
    let running = running_images(&engine);
    for (svc, id) in &want {
        assert!(
            running.iter().any(|(s, i, _)| s == svc && i == id),
            "{svc} does not run {id} after the reboot: {running:?}"
        );
    }

    for w in watches {
        let scan = w.finish();
        assert!(scan.passes > 0);
        assert!(scan.found.is_empty(), "a secret in argv: {:?}", scan.found);
    }
    assert_no_secret(&guest, &first, &secrets);
    assert_no_secret(&guest, &second, &secrets);
}

/// A guest of one private registry (behind a fault proxy) with `web:1`.
struct OneRegistry {
    engine: Dockerd,
    registry: Registry,
    proxy: FaultProxy,
    web: PushedImage,
    guest: DstackGuest,
}

fn one_registry(name: &str, password: &str, extra_env: &[(&str, &str)]) -> OneRegistry {
    let engine = Dockerd::start();
    let registry = Registry::with_htpasswd(&[("alice", PASSWORD)]);
    let proxy = FaultProxy::start(&registry);
    let target = PushTarget::new(&registry.host_port()).with_creds("alice", PASSWORD);
    let web = push_image(&target, "acme/web", "1", &runnable(3));
    let guest = DstackGuest::new(name, &engine);
    let mut env: Vec<(String, String)> = vec![
        ("DSTACK_DOCKER_USERNAME".into(), "alice".into()),
        ("DSTACK_DOCKER_PASSWORD".into(), password.into()),
        ("DSTACK_DOCKER_REGISTRY".into(), "ghcr.io".into()),
        // Registry requests give up after 3 s of transient failures.
        ("BERTH_PRELAUNCH_MAX_RETRY_TIME".into(), "3".into()),
    ];
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    guest.install(&GuestApp {
        compose: format!("services:\n{}", service("web", "ghcr.io/acme/web:1")),
        pre_launch_script: Some(guest_script(&guest)),
        env,
        sys_config: Some(serde_json::json!({
            "registry_endpoints": { "ghcr.io": proxy.base_url() },
        })),
        ..Default::default()
    });
    OneRegistry {
        engine,
        registry,
        proxy,
        web,
        guest,
    }
}

#[test]
fn a_wrong_password_fails_the_boot_with_credentials_rejected_and_a_boot_error() {
    let t = one_registry("prelaunch-wrong-pw", "canary-wrong-pw-0e0e", &[]);
    let run = t.guest.boot(Shell::Strict, BOOT_LIMIT);
    assert!(!run.ok, "the boot went on with a wrong password");
    assert!(
        has_line(&run, "BOOT FAILED: credentials_rejected"),
        "{}",
        run.stdout
    );
    assert!(has_line(&run, "troubleshooting:"));
    assert!(!run.stdout.contains("Starting containers"));
    let events = t.guest.notifications();
    assert!(
        events
            .iter()
            .any(|(e, d)| e == "boot.error" && d.starts_with("berth: credentials_rejected")),
        "{events:?}"
    );
    assert_no_secret(&t.guest, &run, &["canary-wrong-pw-0e0e", PASSWORD]);
    let _ = (&t.registry, &t.web, &t.engine);
}

#[test]
fn a_registry_down_on_reboot_with_the_images_present_is_a_warning() {
    let t = one_registry("prelaunch-down", PASSWORD, &[]);
    let first = t.guest.boot(Shell::Strict, BOOT_LIMIT);
    assert!(first.ok);
    // Nothing listens at the registry's address any more.
    drop(t.proxy);
    t.guest.reboot();
    let again = t.guest.boot(Shell::Strict, BOOT_LIMIT);
    assert!(again.ok, "the boot stopped although the image is present");
    assert!(
        has_line(&again, "warning: ghcr.io/acme/web:1")
            && has_line(&again, "the engine holds it from an earlier boot"),
        "{}",
        again.stdout
    );
    let running = running_images(&t.engine);
    assert!(
        running
            .iter()
            .any(|(s, i, _)| s == "web" && *i == config_digest(&t.web)),
        "{running:?}"
    );
    let _ = &t.registry;
}

#[test]
fn a_429_with_retry_after_is_waited_out() {
    let t = one_registry("prelaunch-429", PASSWORD, &[]);
    t.proxy.too_many_requests(Target::Manifests, 1, 1);
    let run = t.guest.boot(Shell::Strict, BOOT_LIMIT);
    assert!(run.ok, "{}", run.stdout);
    assert!(has_line(&run, "attempt"), "no retry line: {}", run.stdout);
    assert!(has_line(&run, "PRELAUNCH OK"));
}

#[test]
fn a_corrupted_blob_on_the_persistent_disk_is_detected_and_fetched_again() {
    let t = one_registry("prelaunch-corrupt", PASSWORD, &[]);
    assert!(t.guest.boot(Shell::Strict, BOOT_LIMIT).ok);
    // The disk flips a layer's bytes, and the engine lost the image.
    let layer = &t.web.image.layers[0].digest;
    let blob = t
        .guest
        .persistent()
        .join("berth/images/blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let _ = t
        .engine
        .docker()
        .args(["rm", "-f"])
        .args(t.engine.docker_out(&["ps", "-aq"]).split_whitespace())
        .output();
    t.engine.docker_out(&["rmi", "-f", "ghcr.io/acme/web:1"]);
    t.proxy.clear_requests();
    t.guest.reboot();
    let run = t.guest.boot(Shell::Strict, BOOT_LIMIT);
    assert!(run.ok, "{}", run.stdout);
    assert!(
        has_line(
            &run,
            &format!("blob {layer} on the persistent disk no longer matches")
        ),
        "{}",
        run.stdout
    );
    assert_eq!(
        t.proxy.count(RequestKind::Blob, "GET"),
        1,
        "the layer is fetched again, only it"
    );
    let running = running_images(&t.engine);
    assert!(
        running
            .iter()
            .any(|(s, i, _)| s == "web" && *i == config_digest(&t.web))
    );
}

#[test]
fn a_binary_whose_sha256_does_not_match_is_not_run_and_the_default_flow_runs() {
    let t = one_registry("prelaunch-badpin", PASSWORD, &[]);
    // The default flow pulls through the engine, which knows the registry
    // by its own address: the compose file names it so.
    let host = t.registry.host_port();
    let (url, _) = agent_binary(&t.guest);
    let wrong = "0".repeat(64);
    t.guest.install(&GuestApp {
        compose: format!(
            "services:\n{}",
            service("web", &format!("{host}/acme/web:1"))
        ),
        pre_launch_script: Some(script(&url, &wrong)),
        env: vec![
            ("DSTACK_DOCKER_USERNAME".into(), "alice".into()),
            ("DSTACK_DOCKER_PASSWORD".into(), PASSWORD.into()),
            ("DSTACK_DOCKER_REGISTRY".into(), host.clone()),
        ],
        ..Default::default()
    });
    let watch = ArgvWatch::start(PASSWORD, None, Duration::from_millis(5));
    let run = t.guest.boot(Shell::Strict, BOOT_LIMIT);
    assert!(run.ok, "{}", run.stdout);
    assert!(
        has_line(&run, &format!("not the pinned {wrong}: it is not run")),
        "{}",
        run.stdout
    );
    assert!(has_line(&run, "falling back to the default flow"));
    assert!(has_line(&run, "docker compose pull completed"));
    assert!(!run.stdout.contains("PRELAUNCH OK"));
    let running = running_images(&t.engine);
    assert!(
        running
            .iter()
            .any(|(s, i, _)| s == "web" && *i == config_digest(&t.web))
    );
    assert!(watch.finish().found.is_empty(), "the password in argv");
    assert_no_secret(&t.guest, &run, &[PASSWORD]);
    // Nothing of the binary stays where the pinned one would be cached.
    let cached: Vec<PathBuf> = std::fs::read_dir(t.guest.persistent().join("berth/bin"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(cached.is_empty(), "{cached:?}");
}

#[test]
fn no_credentials_and_a_hanging_dstack_util_do_not_stop_the_boot() {
    let engine = Dockerd::start();
    let registry = Registry::start();
    push_image(
        &PushTarget::new(&registry.host_port()),
        "pub/web",
        "1",
        &runnable(4),
    );
    let guest = DstackGuest::new("prelaunch-nocreds", &engine);
    guest.install(&GuestApp {
        compose: format!(
            "services:\n{}",
            service("web", "registry.example/pub/web:1")
        ),
        pre_launch_script: Some(guest_script(&guest)),
        env: vec![("BERTH_PRELAUNCH_NOTIFY_TIMEOUT".into(), "1".into())],
        sys_config: Some(serde_json::json!({
            "registry_endpoints": { "registry.example": registry.base_url() },
        })),
        ..Default::default()
    });
    guest.notify_mode(NotifyMode::Hang);
    let run = guest.boot(Shell::Strict, BOOT_LIMIT);
    assert!(run.ok, "{}", run.stdout);
    assert!(has_line(&run, "no registry credentials"));
    assert!(has_line(&run, "did not answer within"));
    assert!(run.elapsed < Duration::from_secs(60));
    guest.notify_mode(NotifyMode::Fail);
    guest.reboot();
    let run = guest.boot(Shell::Strict, BOOT_LIMIT);
    assert!(run.ok, "{}", run.stdout);
}

/// A stand-in agent (a shell script whose sha256 is pinned): the script's
/// own behaviour, without Docker.
fn fake_agent(dir: &Path, body: &str) -> (String, String) {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("agent");
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    let sha = testkit::sha256_hex(&std::fs::read(&p).unwrap());
    (format!("file://{}", p.display()), sha)
}

/// Sources `script` in bash with `options` and `env`, in `root`, and
/// prints what the sourcing shell holds before and after.
fn source_and_compare(
    root: &Path,
    script_text: &str,
    options: &str,
    env: &[(&str, &str)],
) -> (String, String, Run) {
    let file = root.join("script.sh");
    std::fs::write(&file, script_text).unwrap();
    let probe = format!(
        r#"{options}
snap() {{ declare -p | grep -v -E '^declare -[-a-zA-Z]* (BASH_[A-Z_]*|_|PIPESTATUS|FUNCNAME|LINENO|RANDOM|SECONDS|EPOCH[A-Z]*|SRANDOM|BASHPID|COLUMNS|LINES)=' ; declare -F; set -o; shopt; trap -p; }}
snap > "$OUT.before"
source "$SCRIPT"
snap > "$OUT.after"
echo "sourced: ok"
"#
    );
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c")
        .arg(probe)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("SCRIPT", &file)
        .env("OUT", root.join("snap"))
        .env("BERTH_GUEST_ROOT", root);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd, b"");
    let before = std::fs::read_to_string(root.join("snap.before")).unwrap_or_default();
    let after = std::fs::read_to_string(root.join("snap.after")).unwrap_or_default();
    assert!(
        out.stdout.contains("sourced: ok"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    (before, after, out)
}

fn diff(before: &str, after: &str) -> Vec<String> {
    let b: std::collections::BTreeSet<&str> = before.lines().collect();
    after
        .lines()
        .filter(|l| !b.contains(l))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_script_leaves_nothing_behind_but_its_exports_with_and_without_strict_options() {
    let dir = tempdir("prelaunch-script-leaks");
    let (url, sha) = fake_agent(&dir.join("dl"), "echo fake agent ran; exit 0");
    let text = script(&url, &sha);
    for options in ["set -euo pipefail", ""] {
        let root = dir.join(if options.is_empty() { "lax" } else { "strict" });
        std::fs::create_dir_all(root.join("dstack/persistent")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        std::fs::write(
            root.join("dstack/app-compose.json"),
            r#"{"runner":"docker-compose","docker_compose_file":"services: {}","default_gateway_domain":"gw.example"}"#,
        )
        .unwrap();
        // HOME unset, no credentials at all: the env is cleared.
        let (before, after, run) = source_and_compare(
            &root,
            &text,
            options,
            &[(
                "DSTACK_AUTHORIZED_KEYS",
                "ssh-ed25519 AAAAC3Nza test@example",
            )],
        );
        assert_eq!(run.code, 0);
        let added = diff(&before, &after);
        let allowed = ["DSTACK_GATEWAY_DOMAIN="];
        for line in &added {
            assert!(
                allowed.iter().any(|a| line.contains(a)),
                "the sourcing shell ({options:?}) gained: {line}\nall: {added:?}"
            );
        }
        let removed = diff(&after, &before);
        for line in &removed {
            assert!(
                line.contains("DSTACK_AUTHORIZED_KEYS="),
                "the sourcing shell ({options:?}) lost: {line}"
            );
        }
        let keys = std::fs::read_to_string(root.join("home/root/.ssh/authorized_keys")).unwrap();
        assert_eq!(keys, "ssh-ed25519 AAAAC3Nza test@example\n");
        // The cached binary was run.
        assert!(
            root.join(format!("dstack/persistent/berth/bin/berth-{sha}"))
                .is_file()
        );
    }
}

#[test]
fn an_agent_that_fails_fails_the_sourcing_shell_with_its_code() {
    let dir = tempdir("prelaunch-script-fails");
    let (url, sha) = fake_agent(
        &dir.join("dl"),
        "echo 'BOOT FAILED: credentials_rejected: no'; exit 3",
    );
    let text = script(&url, &sha);
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("dstack/persistent")).unwrap();
    let file = root.join("script.sh");
    std::fs::write(&file, text).unwrap();
    for options in ["set -euo pipefail", ""] {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg("-c")
            .arg(format!("{options}\nsource \"$SCRIPT\"\necho still running"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("SCRIPT", &file)
            .env("BERTH_GUEST_ROOT", &root);
        let out = run(&mut cmd, b"");
        assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
        assert!(!out.stdout.contains("still running"));
        assert!(out.stdout.contains("pre-launch failed (exit 3)"));
    }
}

#[test]
fn an_agent_that_does_not_serve_the_runner_hands_over_to_the_default_flow() {
    let dir = tempdir("prelaunch-script-runner");
    // Exit 64: "not for this runner" (nerdctl-compose).
    let (url, sha) = fake_agent(&dir.join("dl"), "exit 64");
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("dstack/persistent")).unwrap();
    std::fs::write(
        root.join("dstack/app-compose.json"),
        r#"{"runner":"nerdctl-compose","docker_compose_file":"services: {}"}"#,
    )
    .unwrap();
    let (_, _, out) = source_and_compare(
        &root,
        &script(&url, &sha),
        "set -euo pipefail",
        &[("DOCKER_HOST", "unix:///nonexistent.sock")],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("the agent cannot serve this boot (exit 64)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("falling back to the default flow"),
        "{}",
        out.stdout
    );
}
