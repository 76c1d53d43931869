//! The local cloud end to end: `berth up` (API, KMS, node on a real Docker
//! engine), driven by the OFFICIAL `phala` CLI (npm, pinned in interop/) and
//! by `berth deploy`, with private images in real registries.

mod common;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::images::{ImageSpec, PushTarget, push_image};
use testkit::{Dockerd, Registry};

const CANARY: &str = "canary-cloud-pw-5e2f77";
const AWS_CANARY: &str = "canary-cloud-aws-9d0c";
const ADMIN_KEY: &str = "berth_test_admin_key_0123456789";

/// `berth up` with the test's admin key and `env` added to its environment.
fn up(state: &Path, docker_host: &str, env: &[(&str, String)], args: &[&str]) -> Cloud {
    let mut cmd = Cloud::command(state, docker_host, Some(ADMIN_KEY), args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Cloud::spawn(cmd).unwrap_or_else(|out| panic!("berth up exited before it was up:\n{out}"))
}

/// The official `phala` CLI, hermetic: its own HOME, no update check.
fn phala(cloud: &Cloud, key: &str, cwd: &Path, args: &[&str]) -> Run {
    cloud.phala(key, cwd, args, CANARY)
}

fn api_get(cloud: &Cloud, key: &str, path: &str) -> (u16, Value) {
    cloud.get_without(key, path, CANARY)
}

fn wait_status(cloud: &Cloud, key: &str, name: &str) -> Value {
    cloud.settled(key, name, CANARY)
}

fn serial_log(cloud: &Cloud, key: &str, name: &str) -> String {
    cloud.serial_log(key, name, CANARY)
}

#[test]
fn official_phala_cli_deploys_private_images_end_to_end() {
    let engine = Dockerd::start();
    // A GHCR-style registry (token-less htpasswd here, DSTACK_DOCKER_REGISTRY set).
    let reg = Registry::with_htpasswd(&[("octocat", CANARY)]);
    let host = reg.host_port();
    push_image(
        &PushTarget::new(&host).with_creds("octocat", CANARY),
        "octocat/web",
        "1",
        &ImageSpec::new().busybox(),
    );
    // ECR through moto.
    let ecr = Ecr::start();
    let (moto, ecr_host) = (&ecr.moto, ecr.host.clone());
    ecr.push("team/api", "2", &ImageSpec::new().busybox().layer(500));

    let dir = tempdir("cloud-e2e");
    let state = dir.join("state");
    // The ECR host name is mapped to the local registry through the endpoint
    // mapping `berth up` passes to every CVM; moto answers GetAuthorizationToken.
    let endpoint_arg = format!("--registry-endpoint={ecr_host}={}", ecr.registry.base_url());
    // The GHCR-style registry listens on loopback: the operator maps it.
    let ghcr_arg = format!("--registry-endpoint={host}={}", reg.base_url());
    let cloud = up(
        &state,
        &engine.host(),
        &[("AWS_ENDPOINT_URL_ECR", moto.endpoint())],
        &[&endpoint_arg, &ghcr_arg],
    );

    let work = dir.join("app");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(
        work.join("docker-compose.yml"),
        format!(
            "services:\n  web:\n    image: {host}/octocat/web:1\n    network_mode: none\n    environment:\n      - GREETING=${{GREETING}}\n    command: [\"sh\", \"-c\", \"echo web says $$GREETING; sleep 600\"]\n  api:\n    image: {ecr_host}/team/api:2\n    network_mode: none\n    command: [\"sh\", \"-c\", \"echo api from ecr; sleep 600\"]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        work.join(".env"),
        format!(
            "GREETING=hello-private-registry\nDSTACK_DOCKER_USERNAME=octocat\nDSTACK_DOCKER_PASSWORD={CANARY}\nDSTACK_DOCKER_REGISTRY={host}\n\
             DSTACK_AWS_ACCESS_KEY_ID=AKIAEXAMPLE\nDSTACK_AWS_SECRET_ACCESS_KEY={AWS_CANARY}\nDSTACK_AWS_REGION=us-east-1\nDSTACK_AWS_ECR_REGISTRY={ecr_host}\n"
        ),
    )
    .unwrap();

    // Watch every process's arguments while the deployment runs.
    let watch = ArgvWatch::start(CANARY, None, Duration::from_millis(20));

    let out = phala(
        &cloud,
        ADMIN_KEY,
        &work,
        &[
            "deploy",
            "-n",
            "my-private-app",
            "-c",
            "docker-compose.yml",
            "-e",
            ".env",
        ],
    );
    assert_eq!(
        out.code,
        0,
        "phala deploy:\n{}\n{}\nberth up:\n{}",
        out.stdout,
        out.stderr,
        cloud.output()
    );
    let cvm = wait_status(&cloud, ADMIN_KEY, "my-private-app");
    assert_eq!(
        cvm["status"],
        "running",
        "{cvm}\nserial:\n{}",
        serial_log(&cloud, ADMIN_KEY, "my-private-app")
    );

    // The app runs with its env, from both private registries.
    let project_filter = |svc: &str| {
        let id = engine.docker_out(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.service={svc}"),
        ]);
        id.split_whitespace()
            .next()
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no running {svc}"))
    };
    let web = project_filter("web");
    let mut logs = String::new();
    for _ in 0..50 {
        logs = engine.docker_out(&["logs", &web]);
        if !logs.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(logs.contains("web says hello-private-registry"), "{logs}");
    let _ = project_filter("api");

    // The official CLI lists and shows it; serial logs show the pull.
    let list = phala(&cloud, ADMIN_KEY, &work, &["cvms", "list"]);
    assert_eq!(list.code, 0, "{}\n{}", list.stdout, list.stderr);
    assert!(
        list.stdout.contains(cvm["app_id"].as_str().unwrap()),
        "{}",
        list.stdout
    );
    let get = phala(
        &cloud,
        ADMIN_KEY,
        &work,
        &["cvms", "get", "my-private-app", "--json"],
    );
    assert_eq!(get.code, 0, "{}\n{}", get.stdout, get.stderr);
    assert!(get.stdout.contains("running"), "{}", get.stdout);
    let serial = phala(
        &cloud,
        ADMIN_KEY,
        &work,
        &["logs", "--serial", "--cvm-id", "my-private-app"],
    );
    assert_eq!(serial.code, 0, "{}\n{}", serial.stdout, serial.stderr);
    assert!(
        serial.stdout.contains("pull: ") && serial.stdout.contains("BOOT OK"),
        "{}",
        serial.stdout
    );
    assert!(
        serial
            .stdout
            .contains(&format!("service api: {ecr_host}/team/api:2")),
        "{}",
        serial.stdout
    );
    // The registry user name `octocat` is a credential, but inside the
    // image reference it is public text and stays readable.
    assert!(
        serial
            .stdout
            .contains(&format!("service web: {host}/octocat/web:1")),
        "{}",
        serial.stdout
    );

    // Container logs through the composition's log endpoints.
    let web_logs = phala(
        &cloud,
        ADMIN_KEY,
        &work,
        &["logs", "web", "--cvm-id", "my-private-app"],
    );
    assert_eq!(web_logs.code, 0, "{}\n{}", web_logs.stdout, web_logs.stderr);
    assert!(
        web_logs.stdout.contains("web says hello-private-registry"),
        "{}",
        web_logs.stdout
    );
    // The KMS's signed env key, in the strict two-key shape the SDK expects.
    let (code, kms) = api_get(
        &cloud,
        ADMIN_KEY,
        &format!("/kms/phala/pubkey/{}", cvm["app_id"].as_str().unwrap()),
    );
    assert_eq!(code, 200);
    assert_eq!(kms["public_key"], cvm["encrypted_env_pubkey"]);
    assert_eq!(kms.as_object().unwrap().len(), 2, "{kms}");

    // Env update with the official CLI: sealed anew, the CVM reboots with it.
    std::fs::write(
        work.join("new.env"),
        format!("GREETING=updated-greeting\nDSTACK_DOCKER_USERNAME=octocat\nDSTACK_DOCKER_PASSWORD={CANARY}\nDSTACK_DOCKER_REGISTRY={host}\n\
                 DSTACK_AWS_ACCESS_KEY_ID=AKIAEXAMPLE\nDSTACK_AWS_SECRET_ACCESS_KEY={AWS_CANARY}\nDSTACK_AWS_REGION=us-east-1\nDSTACK_AWS_ECR_REGISTRY={ecr_host}\n"),
    )
    .unwrap();
    let upd = phala(
        &cloud,
        ADMIN_KEY,
        &work,
        &["envs", "update", "my-private-app", "-e", "new.env"],
    );
    assert_eq!(upd.code, 0, "{}\n{}", upd.stdout, upd.stderr);
    assert_eq!(
        wait_status(&cloud, ADMIN_KEY, "my-private-app")["status"],
        "running"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let id = engine.docker_out(&[
            "ps",
            "-q",
            "--filter",
            "label=com.docker.compose.service=web",
        ]);
        let logs = id
            .split_whitespace()
            .next()
            .map(|id| engine.docker_out(&["logs", id]))
            .unwrap_or_default();
        if logs.contains("web says updated-greeting") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new env did not reach the app: {logs}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Wrong credentials: boot_failed with the category, in status and log.
    std::fs::write(
        work.join("bad.env"),
        format!("GREETING=x\nDSTACK_DOCKER_USERNAME=octocat\nDSTACK_DOCKER_PASSWORD={CANARY}-wrong\nDSTACK_DOCKER_REGISTRY={host}\n"),
    )
    .unwrap();
    std::fs::write(
        work.join("web-only.yml"),
        format!("services:\n  web:\n    image: {host}/octocat/web:1\n    network_mode: none\n    command: [\"sleep\", \"600\"]\n"),
    )
    .unwrap();
    let out = phala(
        &cloud,
        ADMIN_KEY,
        &work,
        &[
            "deploy",
            "-n",
            "bad-creds-app",
            "-c",
            "web-only.yml",
            "-e",
            "bad.env",
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let bad = wait_status(&cloud, ADMIN_KEY, "bad-creds-app");
    assert_eq!(bad["status"], "boot_failed", "{bad}");
    assert_eq!(bad["boot_category"], "credentials_rejected", "{bad}");
    assert!(
        serial_log(&cloud, ADMIN_KEY, "bad-creds-app")
            .contains("BOOT FAILED: credentials_rejected")
    );

    // User isolation: bob sees nothing of the admin's.
    let created = Command::new("curl")
        .args([
            "-sf",
            "-X",
            "POST",
            "-H",
            &format!("X-API-Key: {ADMIN_KEY}"),
            "-H",
            "Content-Type: application/json",
        ])
        .args(["-d", r#"{"username":"bob"}"#])
        .arg(format!("{}/users", cloud.api))
        .output()
        .unwrap();
    let bob: Value = serde_json::from_slice(&created.stdout).unwrap();
    let bob_key = bob["api_key"].as_str().unwrap().to_owned();
    let bob_list = phala(&cloud, &bob_key, &work, &["cvms", "list", "--json"]);
    assert_eq!(bob_list.code, 0, "{}\n{}", bob_list.stdout, bob_list.stderr);
    assert!(
        !bob_list.stdout.contains("my-private-app"),
        "{}",
        bob_list.stdout
    );
    assert_eq!(api_get(&cloud, &bob_key, "/cvms/my-private-app").0, 404);
    let stop_other = phala(
        &cloud,
        &bob_key,
        &work,
        &["cvms", "stop", cvm["vm_uuid"].as_str().unwrap()],
    );
    assert_ne!(stop_other.code, 0);
    assert_eq!(api_get(&cloud, "wrong-key", "/cvms").0, 401);
    assert_eq!(api_get(&cloud, ADMIN_KEY, "/no/such/thing").0, 501);

    let scan = watch.finish();
    assert!(
        scan.found.is_empty(),
        "the canary password appeared in these processes' arguments: {:?}",
        scan.found
    );

    // Restart `berth up`: nothing lost, the running CVM picked up again.
    let first_output = cloud.stop();
    let cloud = up(
        &state,
        &engine.host(),
        &[("AWS_ENDPOINT_URL_ECR", moto.endpoint())],
        &[&endpoint_arg, &ghcr_arg],
    );
    let again = wait_status(&cloud, ADMIN_KEY, "my-private-app");
    assert_eq!(again["status"], "running");
    assert_eq!(again["vm_uuid"], cvm["vm_uuid"]);
    assert_eq!(
        wait_status(&cloud, ADMIN_KEY, "bad-creds-app")["boot_category"],
        "credentials_rejected"
    );
    assert!(serial_log(&cloud, ADMIN_KEY, "my-private-app").contains("BOOT OK"));

    // Stop, start, delete through the official CLI.
    let stop = phala(
        &cloud,
        ADMIN_KEY,
        &work,
        &["cvms", "stop", "my-private-app"],
    );
    assert_eq!(stop.code, 0, "{}\n{}", stop.stdout, stop.stderr);
    assert_eq!(
        wait_status(&cloud, ADMIN_KEY, "my-private-app")["status"],
        "stopped"
    );
    let start = phala(
        &cloud,
        ADMIN_KEY,
        &work,
        &["cvms", "start", "my-private-app"],
    );
    assert_eq!(start.code, 0, "{}\n{}", start.stdout, start.stderr);
    assert_eq!(
        wait_status(&cloud, ADMIN_KEY, "my-private-app")["status"],
        "running"
    );
    let del = phala(
        &cloud,
        ADMIN_KEY,
        &work,
        &["cvms", "delete", "bad-creds-app", "--force"],
    );
    assert_eq!(del.code, 0, "{}\n{}", del.stdout, del.stderr);
    assert_eq!(api_get(&cloud, ADMIN_KEY, "/cvms/bad-creds-app").0, 404);

    // The canary is nowhere: the database, the control plane's output.
    let second_output = cloud.stop();
    for (what, text) in [
        ("first berth up output", &first_output),
        ("second berth up output", &second_output),
    ] {
        assert!(
            !text.contains(CANARY) && !text.contains(AWS_CANARY),
            "{what} holds a secret:\n{text}"
        );
    }
    let db = stored_data(&state);
    assert!(!db.is_empty(), "nothing stored for {}", state.display());
    let db_text = String::from_utf8_lossy(&db);
    assert!(
        !db_text.contains(CANARY) && !db_text.contains(AWS_CANARY),
        "the database holds a secret"
    );
    for f in files_under(&state) {
        if f.ends_with("kms/root.key")
            || f.starts_with(state.join("cvms")) && f.to_string_lossy().contains("/state/")
        {
            continue;
        }
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap_or_default()).into_owned();
        assert!(
            !text.contains(CANARY) && !text.contains(AWS_CANARY),
            "{} holds a secret",
            f.display()
        );
    }
}

#[test]
fn berth_deploy_verifies_the_kms_and_waits_for_the_boot() {
    let engine = Dockerd::start();
    let (_reg, host, mapped) = busybox_registry(Some(("alice", CANARY)), "alice/app");
    let dir = tempdir("cloud-berth-deploy");
    let cloud = up(&dir.join("state"), &engine.host(), &[], &[&mapped]);
    // The state folder's secrets are readable by their owner only.
    for secret in ["api-key", "log-secret", "kms/root.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("state").join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{secret}");
    }
    std::fs::write(
        dir.join("compose.yml"),
        format!("services:\n  app:\n    image: {host}/alice/app:1\n    network_mode: none\n    command: [\"sh\", \"-c\", \"echo up; sleep 600\"]\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("creds.env"),
        format!("DSTACK_DOCKER_USERNAME=alice\nDSTACK_DOCKER_PASSWORD={CANARY}\nDSTACK_DOCKER_REGISTRY={host}\n"),
    )
    .unwrap();
    let deploy = |name: &str, env: &str, kms: &str| {
        run(
            Command::new(env!("CARGO_BIN_EXE_berth"))
                .args(["deploy", "-n", name, "-c"])
                .arg(dir.join("compose.yml"))
                .arg("-e")
                .arg(dir.join(env))
                .args(["--wait", "--kms-pubkey", kms])
                .env("BERTH_API_URL", &cloud.api)
                .env("BERTH_API_KEY", ADMIN_KEY)
                .env("BERTH_OWNER_KEY", dir.join("owner-key"))
                .env("DOCKER_CONFIG", dir.join("no-docker-config")),
            b"",
        )
    };
    // A KMS key the user does not trust: nothing is sealed or sent.
    // A real, valid KMS key, just not the one that signed: the signature
    // check is what refuses.
    let other = kms::KmsRootKey::generate().public_key().to_hex();
    let refused = deploy("wrong-kms-app", "creds.env", &other);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("the env public key is not signed by the trusted KMS"),
        "{}",
        refused.stderr
    );
    assert_eq!(api_get(&cloud, ADMIN_KEY, "/cvms/wrong-kms-app").0, 404);

    let ok = deploy("berth-deployed", "creds.env", &cloud.kms_pubkey);
    assert_eq!(ok.code, 0, "{}\n{}", ok.stdout, ok.stderr);
    assert!(
        ok.stderr.contains("Pre-flight") && ok.stderr.contains("verified against KMS"),
        "{}",
        ok.stderr
    );
    assert!(ok.stdout.contains("BOOT OK"), "{}", ok.stdout);
    assert!(!ok.stdout.contains(CANARY) && !ok.stderr.contains(CANARY));

    // A bad password is caught by the pre-flight on the user's machine...
    std::fs::write(
        dir.join("bad.env"),
        format!("DSTACK_DOCKER_USERNAME=alice\nDSTACK_DOCKER_PASSWORD={CANARY}x\nDSTACK_DOCKER_REGISTRY={host}\n"),
    )
    .unwrap();
    let pre = deploy("preflight-fails", "bad.env", &cloud.kms_pubkey);
    assert_eq!(pre.code, 3, "{}\n{}", pre.stdout, pre.stderr);
    assert!(
        pre.stderr.contains("nothing was deployed"),
        "{}",
        pre.stderr
    );
    // ...and with --no-check, the boot fails with the same category and exit code.
    let no_check = run(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args([
                "deploy",
                "-n",
                "boot-fails",
                "--no-check",
                "--wait",
                "--kms-pubkey",
                &cloud.kms_pubkey,
                "-c",
            ])
            .arg(dir.join("compose.yml"))
            .arg("-e")
            .arg(dir.join("bad.env"))
            .env("BERTH_API_URL", &cloud.api)
            .env("BERTH_API_KEY", ADMIN_KEY)
            .env("BERTH_OWNER_KEY", dir.join("owner-key")),
        b"",
    );
    assert_eq!(no_check.code, 3, "{}\n{}", no_check.stdout, no_check.stderr);
    assert!(
        no_check
            .stdout
            .contains("BOOT FAILED: credentials_rejected"),
        "{}",
        no_check.stdout
    );

    // berth cvms: list, logs, stop.
    let list = run(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["cvms", "list"])
            .env("BERTH_API_URL", &cloud.api)
            .env("BERTH_API_KEY", ADMIN_KEY),
        b"",
    );
    assert!(
        list.stdout.contains("berth-deployed") && list.stdout.contains("running"),
        "{}",
        list.stdout
    );
    assert!(
        list.stdout.contains("boot-fails") && list.stdout.contains("credentials_rejected"),
        "{}",
        list.stdout
    );
    let logs = run(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["cvms", "logs", "berth-deployed", "--stdout"])
            .env("BERTH_API_URL", &cloud.api)
            .env("BERTH_API_KEY", ADMIN_KEY),
        b"",
    );
    assert!(logs.stdout.contains("up"), "{}", logs.stdout);
    // Following the serial log of a CVM that has finished booting prints it
    // and ends by itself.
    let started = Instant::now();
    let follow = run(
        Command::new("timeout")
            .args([
                "20",
                env!("CARGO_BIN_EXE_berth"),
                "cvms",
                "logs",
                "berth-deployed",
                "--serial",
                "-f",
            ])
            .env("BERTH_API_URL", &cloud.api)
            .env("BERTH_API_KEY", ADMIN_KEY),
        b"",
    );
    assert_eq!(
        follow.code, 0,
        "follow did not end by itself: {}",
        follow.stderr
    );
    assert!(follow.stdout.contains("BOOT OK"), "{}", follow.stdout);
    assert!(started.elapsed() < Duration::from_secs(10));
    let _ = cloud.stop();
}

/// A command run as the unprivileged user `nobody` (`setpriv`). The tests
/// that check what another local user can reach fail, rather than pass
/// unchecked, when not run as root (switching users needs it).
pub fn as_nobody(program: &str) -> Command {
    let euid = Command::new("id").arg("-u").output().unwrap().stdout;
    assert_eq!(
        euid.trim_ascii(),
        b"0",
        "this test checks what another local user can reach, as user nobody; switching users needs root: run it as root"
    );
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--",
        program,
    ]);
    cmd
}

#[test]
fn kms_releases_an_env_key_only_to_a_boot_the_node_started() {
    let dir = tempdir("kms-serve");
    let kms_dir = dir.join("kms");
    std::fs::create_dir_all(&kms_dir).unwrap();
    std::fs::set_permissions(
        &kms_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let socket = kms_dir.join("kms.sock");
    let node_secret = "test-node-secret-1f9c";
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["kms", "serve", "--node-secret-stdin", "--root-key"])
        .arg(kms_dir.join("root.key"))
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{node_secret}").unwrap();
    }
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = lines.next().unwrap().unwrap();
    assert_eq!(
        url,
        format!("kms listening on unix:{}", socket.display()),
        "the KMS listens on its socket, not on a TCP port"
    );
    // Then the attestation key of its CVMs' simulated quotes, and last the
    // KMS public key.
    let attestation = lines.next().unwrap().unwrap();
    assert!(
        attestation.starts_with("kms attestation key ") && attestation.len() == 20 + 128,
        "{attestation}"
    );
    let kms_pub = lines
        .next()
        .unwrap()
        .unwrap()
        .trim_start_matches("kms public key ")
        .to_owned();
    let sock = socket.to_string_lossy().into_owned();
    let curl = |args: &[&str]| -> (u16, Value) {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--unix-socket", &sock])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (
            code.trim().parse().unwrap(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    };
    let post = |path: &str, auth: Option<&str>, body: &str| {
        let mut args = vec![
            "-X".to_owned(),
            "POST".into(),
            "-H".into(),
            "Content-Type: application/json".into(),
            "-d".into(),
            body.to_owned(),
        ];
        if let Some(a) = auth {
            args.extend(["-H".into(), format!("Authorization: Bearer {a}")]);
        }
        args.push(format!("http://kms{path}"));
        curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let compose_hash = "ab".repeat(32);
    let app_id = &compose_hash[..40];
    // The public key, signed so that the trusted KMS key verifies it.
    let (code, signed) = curl(&[&format!("http://kms/kms/v1/apps/{app_id}/env-pubkey")]);
    assert_eq!(code, 200);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let s = kms::SignedEnvPublicKey {
        public_key: envseal::EnvPublicKey::from_hex(signed["public_key"].as_str().unwrap())
            .unwrap(),
        timestamp: signed["timestamp"].as_u64().unwrap(),
        signature: kms::EnvKeySignature::from_hex(signed["signature"].as_str().unwrap()).unwrap(),
        signature_v1: kms::EnvKeySignature::from_hex(signed["signature_v1"].as_str().unwrap())
            .unwrap(),
    };
    s.verify(
        &kms::AppId::from_hex(app_id).unwrap(),
        &kms::KmsPublicKey::from_hex(&kms_pub).unwrap(),
        now,
    )
    .unwrap();
    let key_req = |hash: &str, ticket: &str| {
        format!(
            r#"{{"app_id":"{app_id}","compose_hash":"{hash}","ticket":"{ticket}","attestation":{{"type":"simulated"}}}}"#
        )
    };
    // The trick that used to work: the app id plus any 24 hex characters.
    let forged = format!("{app_id}{}", "f".repeat(24));
    let (code, refused) = post("/kms/v1/env-key", None, &key_req(&forged, ""));
    assert_eq!(code, 403, "{refused}");
    assert!(refused.get("env_private_key").is_none());
    let (code, _) = post("/kms/v1/env-key", None, &key_req(&compose_hash, ""));
    assert_eq!(
        code, 403,
        "the registered hash without a ticket opens nothing"
    );
    // Tickets are minted for the node only.
    let ticket_req = format!(r#"{{"app_id":"{app_id}","compose_hash":"{compose_hash}"}}"#);
    assert_eq!(post("/kms/v1/boot-tickets", None, &ticket_req).0, 403);
    assert_eq!(
        post("/kms/v1/boot-tickets", Some("guessed"), &ticket_req).0,
        403
    );
    let mint = || {
        let (code, t) = post("/kms/v1/boot-tickets", Some(node_secret), &ticket_req);
        assert_eq!(code, 200, "{t}");
        t["ticket"].as_str().unwrap().to_owned()
    };
    // A ticket presented with another hash: refused, and burnt.
    let ticket = mint();
    assert_eq!(
        post("/kms/v1/env-key", None, &key_req(&forged, &ticket)).0,
        403
    );
    assert_eq!(
        post("/kms/v1/env-key", None, &key_req(&compose_hash, &ticket)).0,
        403
    );
    // The boot the node started gets the key matching the published public key, once.
    let ticket = mint();
    let (code, released) = post("/kms/v1/env-key", None, &key_req(&compose_hash, &ticket));
    assert_eq!(code, 200, "{released}");
    let key =
        envseal::EnvPrivateKey::from_hex(released["env_private_key"].as_str().unwrap()).unwrap();
    assert_eq!(
        key.public_key().to_hex(),
        signed["public_key"].as_str().unwrap()
    );
    let (code, replay) = post("/kms/v1/env-key", None, &key_req(&compose_hash, &ticket));
    assert_eq!(code, 403, "a ticket opens once: {replay}");
    // Another local user cannot even connect.
    {
        let mut cmd = as_nobody("curl");
        let out = cmd
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--unix-socket",
                &sock,
            ])
            .arg("http://kms/kms/v1/pubkey")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "000",
            "user nobody reached the KMS socket"
        );
        assert_ne!(out.status.code(), Some(0));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// POSTs `body` to the API; (status, JSON).
fn api_post(cloud: &Cloud, key: &str, path: &str, body: &Value) -> (u16, Value) {
    let (code, text) = cloud.request(key, None, "POST", path, Some(body));
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

const OPERATOR_CANARY: &str = "canary-operator-key-77ab01";

/// Issue #8's repros against a real `berth up`: a hostile tenant and a
/// hostile local user get nothing.
#[test]
fn tenants_and_local_users_cannot_reach_keys_state_or_host() {
    let engine = Dockerd::start();
    let (_reg, host, endpoint_arg) = busybox_registry(Some(("alice", CANARY)), "alice/app");
    let dir = tempdir("cloud-hostile");
    let state = dir.join("state");
    // The operator has API keys in their environment (the README tells them
    // to export them); a tenant must not be able to interpolate them.
    let cloud = up(
        &state,
        &engine.host(),
        &[
            ("PHALA_CLOUD_API_KEY", OPERATOR_CANARY.to_owned()),
            ("BERTH_API_KEY", OPERATOR_CANARY.to_owned()),
        ],
        &[&endpoint_arg],
    );

    // 1. A hostile compose file is refused at provisioning, naming the
    //    service and the key.
    let hostile = [
        ("privileged: true", "privileged"),
        ("network_mode: host", "network_mode"),
        ("pid: host", "pid"),
        ("cap_add: [ALL]", "cap_add"),
        ("volumes: [\"/:/host\"]", "volumes"),
        (
            "volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]",
            "volumes",
        ),
        ("env_file: ../../../../api-key", "env_file"),
    ];
    for (line, key) in hostile {
        let compose = format!("services:\n  evil:\n    image: {host}/alice/app:1\n    {line}\n");
        let (code, body) = api_post(
            &cloud,
            ADMIN_KEY,
            "/cvms/provision",
            &serde_json::json!({"name": "hostile-app", "compose_file": {"docker_compose_file": compose, "allowed_envs": []}}),
        );
        assert_eq!(code, 422, "{line}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("evil") && detail.contains(key),
            "{line}: {detail}"
        );
    }
    let secrets_file = format!(
        "services:\n  evil:\n    image: {host}/alice/app:1\n    secrets: [k]\nsecrets:\n  k:\n    file: ../../../../kms/root.key\n"
    );
    let (code, body) = api_post(
        &cloud,
        ADMIN_KEY,
        "/cvms/provision",
        &serde_json::json!({"name": "hostile-app", "compose_file": {"docker_compose_file": secrets_file, "allowed_envs": []}}),
    );
    assert_eq!(code, 422, "{body}");
    // The dstack guest-agent socket is mapped to the CVM's own agent; the
    // same file name anywhere else on the host is refused with its own
    // explanation.
    let dstack = format!(
        "services:\n  app:\n    image: {host}/alice/app:1\n    volumes:\n      - /var/run/dstack.sock:/var/run/dstack.sock\n"
    );
    let (code, body) = api_post(
        &cloud,
        ADMIN_KEY,
        "/cvms/provision",
        &serde_json::json!({"name": "dstack-app", "compose_file": {"docker_compose_file": dstack, "allowed_envs": []}}),
    );
    assert_eq!(code, 200, "{body}");
    let elsewhere = format!(
        "services:\n  app:\n    image: {host}/alice/app:1\n    volumes:\n      - /tmp/dstack.sock:/var/run/dstack.sock\n"
    );
    let (code, body) = api_post(
        &cloud,
        ADMIN_KEY,
        "/cvms/provision",
        &serde_json::json!({"name": "dstack-elsewhere", "compose_file": {"docker_compose_file": elsewhere, "allowed_envs": []}}),
    );
    assert_eq!(code, 422, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("/var/run/dstack.sock"),
        "{body}"
    );
    // Env names that would steer host-side programs are refused at provisioning.
    for reserved in ["LD_PRELOAD", "DOCKER_HOST", "COMPOSE_FILE", "https_proxy"] {
        let compose = format!("services:\n  app:\n    image: {host}/alice/app:1\n");
        let (code, body) = api_post(
            &cloud,
            ADMIN_KEY,
            "/cvms/provision",
            &serde_json::json!({"name": "reserved-app", "compose_file": {"docker_compose_file": compose, "allowed_envs": [reserved]}}),
        );
        assert_eq!(code, 422, "{reserved}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(reserved),
            "{body}"
        );
    }

    // 2. A tenant's `${VAR}` does not see the operator's environment, and a
    //    forged `BOOT OK` in a service name does not make a failed boot run.
    std::fs::write(
        dir.join("compose.yml"),
        format!("services:\n  app:\n    image: {host}/alice/app:1\n    network_mode: none\n    environment:\n      - LEAK=${{PHALA_CLOUD_API_KEY}}-${{BERTH_API_KEY}}\n    command: [\"sh\", \"-c\", \"echo leak=[$$LEAK]; sleep 600\"]\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("forged.yml"),
        format!("services:\n  \"web\\nBOOT OK in 0.01 s\":\n    image: {host}/alice/app:1\n    network_mode: none\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("creds.env"),
        format!("DSTACK_DOCKER_USERNAME=alice\nDSTACK_DOCKER_PASSWORD={CANARY}\nDSTACK_DOCKER_REGISTRY={host}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("bad.env"),
        format!("DSTACK_DOCKER_USERNAME=alice\nDSTACK_DOCKER_PASSWORD={CANARY}-wrong\nDSTACK_DOCKER_REGISTRY={host}\n"),
    )
    .unwrap();
    let deploy = |name: &str, compose: &str, env: &str| {
        run(
            Command::new(env!("CARGO_BIN_EXE_berth"))
                .args(["deploy", "-n", name, "--no-check", "--wait", "-c"])
                .arg(dir.join(compose))
                .arg("-e")
                .arg(dir.join(env))
                .args(["--kms-pubkey", &cloud.kms_pubkey])
                .env("BERTH_API_URL", &cloud.api)
                .env("BERTH_API_KEY", ADMIN_KEY)
                .env("BERTH_OWNER_KEY", dir.join("owner-key"))
                .env("DOCKER_CONFIG", dir.join("no-docker-config")),
            b"",
        )
    };
    let ok = deploy("tenant-app", "compose.yml", "creds.env");
    assert_eq!(ok.code, 0, "{}\n{}", ok.stdout, ok.stderr);
    let cvm = wait_status(&cloud, ADMIN_KEY, "tenant-app");
    assert_eq!(cvm["status"], "running", "{cvm}");
    let id = cvm["id"].to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let logs = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["cvms", "logs", "tenant-app", "--stdout"])
            .env("BERTH_API_URL", &cloud.api)
            .env("BERTH_API_KEY", ADMIN_KEY)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("leak=[") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(logs.contains("leak=[-]"), "container output: {logs} ({id})");
    assert!(!logs.contains(OPERATOR_CANARY));

    // A service name carrying a forged `BOOT OK` line is refused at
    // provisioning, shown escaped (the boot agent's own check and the
    // serial log's escaping are tested in boot.rs).
    let forged = deploy("forged-app", "forged.yml", "bad.env");
    assert_eq!(forged.code, 2, "{}\n{}", forged.stdout, forged.stderr);
    assert!(
        forged.stderr.contains("web\\nBOOT OK") && !forged.stderr.contains("web\nBOOT OK"),
        "{}",
        forged.stderr
    );
    assert_eq!(api_get(&cloud, ADMIN_KEY, "/cvms/forged-app").0, 404);
    // A failed boot stays failed.
    let failed = deploy("failing-app", "compose.yml", "bad.env");
    assert_eq!(failed.code, 3, "{}\n{}", failed.stdout, failed.stderr);
    let cvm = wait_status(&cloud, ADMIN_KEY, "failing-app");
    assert_eq!(cvm["status"], "boot_failed", "{cvm}");
    let serial = serial_log(&cloud, ADMIN_KEY, "failing-app");
    let last = serial.lines().last().unwrap_or_default();
    assert!(
        last.contains("BOOT FAILED: credentials_rejected: "),
        "{serial}"
    );

    // 3. The state folder is closed to other local users.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    if database_url(&state).is_none() {
        assert_eq!(mode(&state.join("berth.db")), 0o600);
    }
    let cvm_dirs: Vec<PathBuf> = std::fs::read_dir(state.join("cvms"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!cvm_dirs.is_empty());
    for d in &cvm_dirs {
        assert_eq!(mode(d), 0o700, "{}", d.display());
        assert_eq!(mode(&d.join("serial.log")), 0o600);
        assert_eq!(mode(&d.join("shared/encrypted-env")), 0o600);
        assert_eq!(mode(&d.join("shared/app-compose.json")), 0o600);
    }
    {
        let mut cmd = as_nobody("cat");
        let env_file = cvm_dirs[0].join("shared/encrypted-env");
        let out = cmd
            .arg(&env_file)
            .arg(state.join("berth.db"))
            .arg(state.join("api-key"))
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(0), "nobody read the state");
        assert!(out.stdout.is_empty());
        let ls = as_nobody("ls").arg(&state).output().unwrap();
        assert_ne!(ls.status.code(), Some(0), "nobody listed the state folder");
    }
    // No process's arguments or the KMS socket path leak the operator's key.
    let out = cloud.stop();
    assert!(
        !out.contains(OPERATOR_CANARY) && !out.contains(CANARY),
        "{out}"
    );
}
