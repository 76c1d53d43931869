//! `berth guest boot` against a real Docker engine (Debian's dockerd, private
//! socket), a real registry behind the fault proxy, and ECR via moto.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;
use testkit::images::{ImageSpec, PushTarget, push_image};
use testkit::{Dockerd, FaultProxy, Registry, Target};

const CANARY: &str = "canary-boot-pw-93b7e1";
const ECR_SECRET: &str = "canary-aws-secret-0a1b";

struct App {
    dir: TestDir,
    shared: PathBuf,
    state: PathBuf,
    key: PathBuf,
    pubkey: String,
}

impl App {
    fn new(name: &str) -> App {
        let dir = tempdir(name);
        let shared = dir.join("shared");
        let state = dir.join("state");
        std::fs::create_dir_all(&shared).unwrap();
        let (key, pubkey) = keygen(&dir);
        App {
            dir,
            shared,
            state,
            key,
            pubkey,
        }
    }

    fn compose(&self, name: &str, yaml: &str, allowed: &[&str], sys: serde_json::Value) {
        let app = serde_json::json!({
            "manifest_version": 2,
            "name": name,
            "runner": "docker-compose",
            "docker_compose_file": yaml,
            "allowed_envs": allowed,
            "kms_enabled": true,
            "public_logs": false,
            "public_sysinfo": false,
            "features": ["kms"],
        });
        std::fs::write(
            self.shared.join("app-compose.json"),
            serde_json::to_vec_pretty(&app).unwrap(),
        )
        .unwrap();
        std::fs::write(self.shared.join("sys-config.json"), sys.to_string()).unwrap();
    }

    /// Seals `vars` to the app's key with `berth seal`, from a .env file.
    fn seal(&self, vars: &[(&str, &str)], pubkey: &str) {
        let envfile = self.dir.join("secrets.env");
        let text: String = vars.iter().map(|(k, v)| format!("{k}='{v}'\n")).collect();
        std::fs::write(&envfile, text).unwrap();
        let out = berth(
            &["seal", "--pubkey", pubkey, "-e", envfile.to_str().unwrap()],
            b"",
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        std::fs::write(self.shared.join("encrypted-env"), out.stdout).unwrap();
        std::fs::remove_file(envfile).unwrap();
    }

    fn boot(&self, docker_host: &str, extra: &[&str]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args(["guest", "boot", "--shared"])
            .arg(&self.shared)
            .arg("--state")
            .arg(&self.state)
            .arg("--env-key-file")
            .arg(&self.key)
            .args(extra)
            .env("DOCKER_HOST", docker_host);
        for (k, _) in std::env::vars() {
            if k.starts_with("DSTACK_") || k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        let out = run(&mut cmd, b"");
        assert!(
            !out.stdout.contains(CANARY) && !out.stderr.contains(CANARY),
            "canary in the serial log:\n{}",
            out.stdout
        );
        assert!(!out.stdout.contains(ECR_SECRET) && !out.stderr.contains(ECR_SECRET));
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        out
    }
}

fn last_line(out: &Run) -> String {
    let line = out.stdout.lines().last().unwrap_or_default();
    // Drop the timestamp: "[2026-…Z] BOOT OK …".
    line.split_once("] ")
        .map(|(_, l)| l.to_owned())
        .unwrap_or_default()
}

fn container_logs(engine: &Dockerd, project: &str, service: &str) -> String {
    let id = engine.docker_out(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        &format!("label=com.docker.compose.service={service}"),
    ]);
    let id = id
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("no container for {service}"));
    // The container echoes at start; give it a moment.
    for _ in 0..50 {
        let out = engine.docker().args(["logs", id]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if !text.is_empty() {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    String::new()
}

#[test]
fn boot_pulls_two_registries_runs_the_app_and_restarts_for_free() {
    let engine = Dockerd::start();
    // Docker-style private registry, behind the counting proxy.
    let reg = Registry::with_htpasswd(&[("alice", CANARY)]);
    let proxy = FaultProxy::start(&reg);
    let host = reg.host_port();
    push_image(
        &PushTarget::new(&host).with_creds("alice", CANARY),
        "app/web",
        "1",
        &ImageSpec::new().busybox(),
    );
    // ECR (moto for GetAuthorizationToken), a digest-pinned image.
    let ecr = Ecr::start();
    let (moto, ecr_host) = (&ecr.moto, ecr.host.clone());
    let api = ecr.push("svc/api", "1", &ImageSpec::new().busybox().layer(1000));

    let app = App::new("boot-main");
    let yaml = format!(
        "services:\n  web:\n    image: {host}/app/web:1\n    network_mode: none\n    environment:\n      - GREETING=${{GREETING}}\n    command: [\"sh\", \"-c\", \"echo GREETING=$$GREETING; sleep 600\"]\n  api:\n    image: {ecr_host}/svc/api@{}\n    network_mode: none\n    command: [\"sh\", \"-c\", \"echo api up; sleep 600\"]\n",
        api.digest
    );
    let allowed = [
        "GREETING",
        "DSTACK_DOCKER_USERNAME",
        "DSTACK_DOCKER_PASSWORD",
        "DSTACK_DOCKER_REGISTRY",
        "DSTACK_AWS_ACCESS_KEY_ID",
        "DSTACK_AWS_SECRET_ACCESS_KEY",
        "DSTACK_AWS_REGION",
        "DSTACK_AWS_ECR_REGISTRY",
    ];
    app.compose(
        "Boot Main",
        &yaml,
        &allowed,
        serde_json::json!({
            "registry_endpoints": {host.clone(): proxy.base_url(), ecr_host.clone(): ecr.registry.base_url()},
            "aws_endpoint_url_ecr": moto.endpoint(),
        }),
    );
    app.seal(
        &[
            ("GREETING", "hello-from-the-sealed-env"),
            ("DSTACK_DOCKER_USERNAME", "alice"),
            ("DSTACK_DOCKER_PASSWORD", CANARY),
            ("DSTACK_DOCKER_REGISTRY", &host),
            ("DSTACK_AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
            ("DSTACK_AWS_SECRET_ACCESS_KEY", ECR_SECRET),
            ("DSTACK_AWS_REGION", "us-east-1"),
            ("DSTACK_AWS_ECR_REGISTRY", &ecr_host),
            ("NOT_ALLOWED", "dropped-value"),
        ],
        &app.pubkey,
    );

    let first = app.boot(&engine.host(), &[]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert!(
        last_line(&first).starts_with("BOOT OK in "),
        "{}",
        first.stdout
    );
    assert!(
        first
            .stdout
            .contains("warning: env variable NOT_ALLOWED is not in allowed_envs; dropped"),
        "{}",
        first.stdout
    );
    assert!(
        first.stdout.contains("compose_hash ")
            && first.stdout.contains("[7/7] start the app: done"),
        "{}",
        first.stdout
    );
    let logs = container_logs(&engine, "bootmain", "web");
    assert!(
        logs.contains("GREETING=hello-from-the-sealed-env"),
        "web logs: {logs}\nserial:\n{}",
        first.stdout
    );
    assert!(container_logs(&engine, "bootmain", "api").contains("api up"));
    // Every service runs the image ID this boot pulled, never a name another
    // tenant of the shared engine could have tagged.
    let handed = std::fs::read_to_string(app.state.join("compose/docker-compose.yml")).unwrap();
    let images: Vec<&str> = handed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .collect();
    assert_eq!(images.len(), 2, "{handed}");
    assert!(images.iter().all(|i| i.starts_with("sha256:")), "{handed}");

    // The canary is nowhere: docker inspect, files outside the key material.
    let ids = engine.docker_out(&["ps", "-aq"]);
    for id in ids.split_whitespace() {
        let inspect = engine.docker_out(&["inspect", id]);
        assert!(
            !inspect.contains(CANARY) && !inspect.contains(ECR_SECRET),
            "docker inspect {id} holds a secret"
        );
    }
    for f in files_under(&app.dir)
        .into_iter()
        .chain(files_under(engine.dir()))
    {
        if f == app.key {
            continue;
        }
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(CANARY) && !text.contains(ECR_SECRET),
            "secret found in {}",
            f.display()
        );
    }

    // Restart: zero manifest GETs, zero blob bytes, nothing loaded again.
    proxy.clear_requests();
    let again = app.boot(&engine.host(), &[]);
    assert_eq!(again.code, 0, "{}", again.stdout);
    assert_eq!(proxy.manifest_gets(), 0, "{:?}", proxy.requests());
    assert_eq!(proxy.blob_gets(), 0);
    // One HEAD answered 200 (the other was the 401 that carries the auth challenge).
    let ok_heads = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "HEAD" && r.status == 200)
        .count();
    assert_eq!(ok_heads, 1, "{:?}", proxy.requests());
    assert!(
        again.stdout.contains("(already in the engine)"),
        "{}",
        again.stdout
    );
    assert!(
        again.stdout.contains("0 bytes downloaded"),
        "{}",
        again.stdout
    );
    assert!(
        again.stdout.contains("compose tool not needed"),
        "{}",
        again.stdout
    );
    // The registry host is not a secret and stays readable in the log.
    assert!(
        again
            .stdout
            .contains(&format!("service web: {host}/app/web:1")),
        "{}",
        again.stdout
    );

    // A CVM reboot leaves the containers stopped: they are started again.
    let ids = engine.docker_out(&["ps", "-q"]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), 2);
    engine.docker_out(&[&["stop", "--time", "0"][..], &ids].concat());
    let rebooted = app.boot(&engine.host(), &[]);
    assert_eq!(rebooted.code, 0, "{}", rebooted.stdout);
    assert!(
        rebooted
            .stdout
            .contains("2 containers, 2 started through the engine API"),
        "{}",
        rebooted.stdout
    );
    assert_eq!(
        engine.docker_out(&["ps", "-q"]).split_whitespace().count(),
        2
    );

    // A changed tag is noticed by the HEAD and pulled.
    let v2 = push_image(
        &PushTarget::new(&host).with_creds("alice", CANARY),
        "app/web",
        "1",
        &ImageSpec::new().busybox().layer(2000),
    );
    proxy.clear_requests();
    let third = app.boot(&engine.host(), &[]);
    assert_eq!(third.code, 0, "{}", third.stdout);
    assert!(third.stdout.contains(&v2.digest), "{}", third.stdout);
    assert_eq!(proxy.manifest_gets(), 1);
    assert!(
        third.stdout.contains("(loaded into the engine)"),
        "{}",
        third.stdout
    );
}

#[test]
fn each_failure_ends_the_boot_with_its_category_and_exit_code() {
    let reg = Registry::with_htpasswd(&[("alice", CANARY)]);
    let proxy = FaultProxy::start(&reg);
    let host = reg.host_port();
    push_image(
        &PushTarget::new(&host).with_creds("alice", CANARY),
        "app/web",
        "1",
        &ImageSpec::new().busybox(),
    );
    let yaml =
        |image: &str| format!("services:\n  web:\n    image: {image}\n    network_mode: none\n");
    let allowed = [
        "DSTACK_DOCKER_USERNAME",
        "DSTACK_DOCKER_PASSWORD",
        "DSTACK_DOCKER_REGISTRY",
    ];
    // Registries on loopback are reachable from a CVM only when mapped.
    let sys = serde_json::json!({"registry_endpoints": {
        host.clone(): proxy.base_url(),
        "127.0.0.1:9": "http://127.0.0.1:9",
    }});
    let good = format!("{host}/app/web:1");
    let creds = |pw: &str| {
        vec![
            ("DSTACK_DOCKER_USERNAME", "alice".to_owned()),
            ("DSTACK_DOCKER_PASSWORD", pw.to_owned()),
            ("DSTACK_DOCKER_REGISTRY", host.clone()),
        ]
    };

    struct Case {
        name: &'static str,
        yaml: String,
        env: Vec<(&'static str, String)>,
        wrong_key: bool,
        docker_host: &'static str,
        fault: Option<fn(&FaultProxy)>,
        want: (&'static str, i32, &'static str),
    }
    let cases = vec![
        Case {
            name: "build-only",
            yaml: "services:\n  web:\n    build: .\n".into(),
            env: creds(CANARY),
            wrong_key: false,
            docker_host: "unix:///nonexistent",
            fault: None,
            want: ("config", 2, "only `build:`"),
        },
        Case {
            name: "wrong-key",
            yaml: yaml(&good),
            env: creds(CANARY),
            wrong_key: true,
            docker_host: "unix:///nonexistent",
            fault: None,
            want: ("integrity", 9, "wrong key, or the data was altered"),
        },
        Case {
            name: "bad-password",
            yaml: yaml(&good),
            env: creds(&format!("{CANARY}x")),
            wrong_key: false,
            docker_host: "unix:///nonexistent",
            fault: None,
            want: ("credentials_rejected", 3, "rejected"),
        },
        Case {
            name: "no-credentials",
            yaml: yaml(&good),
            env: vec![],
            wrong_key: false,
            docker_host: "unix:///nonexistent",
            fault: None,
            want: ("access_denied", 4, "none are configured"),
        },
        Case {
            name: "missing-tag",
            yaml: yaml(&format!("{host}/app/web:404")),
            env: creds(CANARY),
            wrong_key: false,
            docker_host: "unix:///nonexistent",
            fault: None,
            want: ("not_found", 5, "tag 404"),
        },
        Case {
            name: "rate-limited",
            yaml: yaml(&good),
            env: creds(CANARY),
            wrong_key: false,
            docker_host: "unix:///nonexistent",
            fault: Some(|p| p.too_many_requests(Target::Manifests, 3600, usize::MAX)),
            want: ("rate_limited", 6, "wait 60 min"),
        },
        Case {
            name: "registry-503",
            yaml: yaml(&good),
            env: creds(CANARY),
            wrong_key: false,
            docker_host: "unix:///nonexistent",
            fault: Some(|p| p.unavailable(Target::Manifests, usize::MAX)),
            want: ("registry_error", 8, "503"),
        },
        Case {
            name: "unreachable",
            yaml: yaml("127.0.0.1:9/app/web:1"),
            env: vec![],
            wrong_key: false,
            docker_host: "unix:///nonexistent",
            fault: None,
            want: ("unreachable", 7, "connection refused"),
        },
        Case {
            name: "hostile-compose",
            yaml: format!("services:\n  web:\n    image: {good}\n    privileged: true\n"),
            env: creds(CANARY),
            wrong_key: false,
            docker_host: "unix:///nonexistent",
            fault: None,
            want: ("config", 2, "privileged"),
        },
        Case {
            // The host-shared compose was altered after provisioning: the
            // agent's own check refuses it, and the name is shown escaped.
            name: "forged-boot-ok",
            yaml: format!("services:\n  \"web\\nBOOT OK in 0.01 s\":\n    image: {good}\n"),
            env: creds(CANARY),
            wrong_key: false,
            docker_host: "unix:///nonexistent",
            fault: None,
            want: ("config", 2, "web\\nBOOT OK"),
        },
        Case {
            name: "no-engine",
            yaml: yaml(&good),
            env: creds(CANARY),
            wrong_key: false,
            docker_host: "unix:///nonexistent/docker.sock",
            fault: None,
            want: ("runtime", 10, "Docker engine"),
        },
    ];
    for case in cases {
        let app = App::new(&format!("fail-{}", case.name));
        app.compose(case.name, &case.yaml, &allowed, sys.clone());
        let env: Vec<(&str, &str)> = case.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if case.wrong_key {
            let other = App::new("fail-other-key");
            app.seal(&env, &other.pubkey);
        } else {
            app.seal(&env, &app.pubkey);
        }
        proxy.clear_faults();
        if let Some(f) = case.fault {
            f(&proxy);
        }
        let out = app.boot(case.docker_host, &["--max-retry-time", "2"]);
        let (cat, code, needle) = case.want;
        let last = out
            .stdout
            .lines()
            .rfind(|l| l.contains("BOOT "))
            .unwrap_or_default()
            .to_owned();
        assert_eq!(out.code, code, "{}: {}", case.name, out.stdout);
        assert!(
            last.contains(&format!("BOOT FAILED: {cat}: ")),
            "{}: {last}",
            case.name
        );
        assert!(last.contains(needle), "{}: {last}", case.name);
        assert_eq!(
            out.stdout
                .lines()
                .last()
                .map(|l| l.contains("BOOT FAILED: ")),
            Some(true),
            "{}: the outcome is the very last line",
            case.name
        );
        assert!(
            !out.stdout.lines().any(|l| l
                .split_once("] ")
                .is_some_and(|(_, t)| t.starts_with("BOOT OK"))),
            "{}: a BOOT OK line in a failed boot:\n{}",
            case.name,
            out.stdout
        );
        assert!(
            out.stdout.contains("troubleshooting: "),
            "{}: {}",
            case.name,
            out.stdout
        );
    }
}

/// The serial log's lines as (timestamp, text); the RFC 3339 timestamps
/// (UTC, milliseconds) sort as text.
fn stamped(out: &Run) -> Vec<(String, String)> {
    out.stdout
        .lines()
        .filter_map(|l| {
            let (stamp, text) = l.strip_prefix('[')?.split_once("] ")?;
            Some((stamp.to_owned(), text.to_owned()))
        })
        .collect()
}

fn first_line<'a>(lines: &'a [(String, String)], what: &str) -> &'a (String, String) {
    lines
        .iter()
        .find(|(_, t)| t.contains(what))
        .unwrap_or_else(|| panic!("no line with {what:?}:\n{lines:#?}"))
}

/// An image whose last layer comes slowly: busybox, 1 MB, then 2 MB at
/// 1 MB/s. Anonymous registry behind the fault proxy, mapped for the CVM.
fn slow_late_layer_app(name: &str) -> (Registry, FaultProxy, testkit::images::PushedImage, App) {
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg);
    let host = reg.host_port();
    let pushed = push_image(
        &PushTarget::new(&host),
        "app/slow",
        "1",
        &ImageSpec::new().busybox().layer(1_000_000).layer(2_000_000),
    );
    let late = &pushed.image.layers[2].digest;
    proxy.throttle(Target::PathContains(late.clone()), 1_000_000);
    let app = App::new(name);
    let yaml = format!(
        "services:\n  web:\n    image: {host}/app/slow:1\n    network_mode: none\n    command: [\"sh\", \"-c\", \"echo web up; sleep 600\"]\n"
    );
    app.compose(
        name,
        &yaml,
        &[],
        serde_json::json!({"registry_endpoints": {host.clone(): proxy.base_url()}}),
    );
    (reg, proxy, pushed, app)
}

#[test]
fn the_engine_unpacks_the_first_layers_while_a_late_layer_still_downloads() {
    let engine = Dockerd::start();
    let (reg, proxy, pushed, app) = slow_late_layer_app("handoff-overlap");
    let late = pushed.image.layers[2].digest[7..19].to_owned();

    let first = app.boot(&engine.host(), &[]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let lines = stamped(&first);
    // The engine held busybox and the 1 MB layer (a load that the agent
    // reports once the engine has answered) before the last layer was
    // verified: the serial log's timestamps show the overlap.
    let (handed_at, handed) = first_line(&lines, "hand-off: ");
    assert!(
        handed.contains(" of 3 in the engine") && !handed.contains("1-3 of 3"),
        "{handed}"
    );
    let (late_at, _) = first_line(&lines, &format!("pull: {late} downloaded"));
    let (pulled_at, _) = first_line(&lines, "[5/7] pull images: done");
    assert!(
        handed_at < late_at && handed_at < pulled_at,
        "the hand-off began at {handed_at}, the late layer was verified at {late_at}:\n{}",
        first.stdout
    );
    assert!(
        first.stdout.contains("(loaded into the engine)"),
        "{}",
        first.stdout
    );
    assert!(container_logs(&engine, "handoff-overlap", "web").contains("web up"));
    // Nothing for the next boot to clean up.
    assert!(!app.state.join("handoff-prefixes").exists());

    // The service runs the image ID of the verified config, and the engine
    // keeps that image and nothing else: no prefix image, no extra name.
    let image_id = pushed.image.config.digest.clone();
    let handed_file =
        std::fs::read_to_string(app.state.join("compose/docker-compose.yml")).unwrap();
    assert!(
        handed_file.contains(&format!("image: {image_id}")),
        "{handed_file}"
    );
    let ids = engine.docker_out(&["images", "-a", "--no-trunc", "--format", "{{.ID}}"]);
    assert_eq!(
        ids.split_whitespace().collect::<Vec<_>>(),
        [image_id.as_str()]
    );
    let names = engine.docker_out(&[
        "image",
        "inspect",
        "--format",
        "{{.RepoTags}} {{.RepoDigests}}",
        &image_id,
    ]);
    assert_eq!(names.trim(), format!("[{}/app/slow:1] []", reg.host_port()));

    // A restart is still free: no blob fetched, nothing loaded.
    proxy.clear_requests();
    let again = app.boot(&engine.host(), &[]);
    assert_eq!(again.code, 0, "{}", again.stdout);
    assert_eq!(proxy.blob_gets(), 0, "{:?}", proxy.requests());
    assert!(!again.stdout.contains("hand-off: "), "{}", again.stdout);
    assert!(
        again.stdout.contains("(already in the engine)")
            && again.stdout.contains("compose tool not needed"),
        "{}",
        again.stdout
    );
}

#[test]
fn a_late_layer_that_fails_its_digest_check_never_reaches_the_engine() {
    let engine = Dockerd::start();
    let (_reg, proxy, pushed, app) = slow_late_layer_app("handoff-corrupt");
    let late = pushed.image.layers[2].digest.clone();
    proxy.update_faults(|f| {
        f.corrupt = Some(testkit::Corrupt {
            target: Target::PathContains(late.clone()),
            offset: 1_500_000,
            remaining: usize::MAX,
        })
    });

    let out = app.boot(&engine.host(), &["--max-retry-time", "2"]);
    assert_eq!(out.code, 9, "{}", out.stdout);
    assert!(
        last_line(&out).starts_with("BOOT FAILED: integrity: "),
        "{}",
        out.stdout
    );
    // The first layers went to the engine while the late one was fetched…
    assert!(out.stdout.contains("hand-off: "), "{}", out.stdout);
    // …and the boot took them back: no image, no layer of this boot stays.
    let ids = engine.docker_out(&["images", "-a", "-q"]);
    assert_eq!(ids.trim(), "", "{}", out.stdout);
    let layerdb = engine.dir().join("data/image/overlay2/layerdb/sha256");
    let layers = std::fs::read_dir(&layerdb).map(|d| d.count()).unwrap_or(0);
    assert_eq!(layers, 0, "layers left in {}", layerdb.display());
}

#[test]
fn a_killed_boot_leaves_no_prefix_image_behind_the_next_boot() {
    use std::io::BufRead;
    let engine = Dockerd::start();
    let (_reg, _proxy, pushed, app) = slow_late_layer_app("handoff-killed");
    // Killed while the late layer downloads, after the engine got the first
    // layers under a prefix image.
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["guest", "boot", "--shared"])
        .arg(&app.shared)
        .arg("--state")
        .arg(&app.state)
        .arg("--env-key-file")
        .arg(&app.key)
        .env("DOCKER_HOST", engine.host())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("hand-off: ") {
            child.kill().unwrap();
            break;
        }
    }
    child.wait().unwrap();
    assert!(seen.contains("hand-off: "), "{seen}");
    let left = engine.docker_out(&["images", "-a", "-q"]);
    assert_ne!(left.trim(), "", "the kill came too late to test anything");

    let again = app.boot(&engine.host(), &[]);
    assert_eq!(again.code, 0, "{}", again.stdout);
    let ids = engine.docker_out(&["images", "-a", "--no-trunc", "--format", "{{.ID}}"]);
    assert_eq!(
        ids.split_whitespace().collect::<Vec<_>>(),
        [pushed.image.config.digest.as_str()],
        "{}",
        again.stdout
    );
}
