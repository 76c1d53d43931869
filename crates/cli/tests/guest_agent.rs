//! The guest agent of every CVM, through a real `berth up`, a private
//! engine and a registry: a compose file that mounts `/var/run/dstack.sock`
//! (or `tappd.sock`) boots, its container's mount is the CVM's own agent
//! socket and answers with the CVM's app id, two apps get two different
//! keys, no unprivileged host user can connect, a killed agent is started
//! again on the same socket with the same identity, a restart and an
//! update in place keep the keys, and stop and delete end the agent.
//!
//! The container's side is reached from the host through
//! `/proc/<container pid>/root`, i.e. in the container's own mount
//! namespace at the path its compose file named (busybox has no Unix
//! socket client).

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::Dockerd;

const ADMIN_KEY: &str = "berth_test_admin_key_0123456789";

fn admin(cloud: &Cloud, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let (code, text) = cloud.request(ADMIN_KEY, None, method, path, body);
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Provisions and commits `name`; its CVM id once its boot has ended
/// `running`.
fn deploy_running(cloud: &Cloud, name: &str, compose: &str) -> String {
    let (code, p) = admin(
        cloud,
        "POST",
        "/cvms/provision",
        Some(
            &serde_json::json!({"name": name, "compose_file": {"docker_compose_file": compose, "allowed_envs": []}}),
        ),
    );
    assert_eq!(code, 200, "provision {name}: {p}");
    let (code, c) = admin(
        cloud,
        "POST",
        "/cvms",
        Some(
            &serde_json::json!({"app_id": p["app_id"], "compose_hash": p["compose_hash"], "name": name}),
        ),
    );
    assert_eq!(code, 200, "commit {name}: {c}");
    let id = c["id"].as_str().map(str::to_owned).unwrap_or_else(|| {
        admin(cloud, "GET", &format!("/cvms/{name}"), None).1["id"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    wait_running(cloud, &id);
    id
}

fn wait_running(cloud: &Cloud, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, v) = admin(cloud, "GET", &format!("/cvms/{id}"), None);
        if !v["in_progress"].as_bool().unwrap_or(false) && v["status"] != "starting" {
            let log = cloud.serial_log(ADMIN_KEY, id, "no secret in this test");
            assert_eq!(v["status"], "running", "{v}\n{log}");
            return v;
        }
        assert!(Instant::now() < deadline, "CVM {id} still booting: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn project_of(id: &str) -> String {
    format!(
        "berth-{}",
        id.replace('-', "").chars().take(12).collect::<String>()
    )
}

/// The one container of the CVM `id`: (its id, its pid on the host).
fn container_of(engine: &Dockerd, id: &str) -> (String, u32) {
    let label = format!("label=com.docker.compose.project={}", project_of(id));
    let ids = engine.docker_out(&["ps", "-q", "--filter", &label]);
    let cid = ids.lines().next().expect("a running container").to_owned();
    let pid = engine
        .docker_out(&["inspect", "-f", "{{.State.Pid}}", &cid])
        .trim()
        .parse()
        .unwrap();
    (cid, pid)
}

/// The host source of the container's mount at `target`.
fn mount_source(engine: &Dockerd, container: &str, target: &str) -> String {
    let mounts: Value =
        serde_json::from_str(&engine.docker_out(&["inspect", "-f", "{{json .Mounts}}", container]))
            .unwrap();
    mounts
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Destination"] == target)
        .unwrap_or_else(|| panic!("no mount at {target}: {mounts}"))["Source"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `POST route` (or `GET` without a body) on the agent socket at `socket`:
/// (curl's exit code, HTTP status, JSON body).
fn call_as(
    setpriv: Option<&str>,
    socket: &Path,
    route: &str,
    body: Option<&str>,
) -> (i32, u16, Value) {
    let mut cmd = match setpriv {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "curl",
            ]);
            c
        }
        None => Command::new("curl"),
    };
    cmd.args([
        "-s",
        "--max-time",
        "5",
        "-w",
        "\n%{http_code}",
        "--unix-socket",
    ])
    .arg(socket);
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "-d", b]);
    }
    let out = cmd
        .arg(format!("http://localhost{route}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn call(socket: &Path, route: &str, body: Option<&str>) -> Value {
    let (rc, code, v) = call_as(None, socket, route, body);
    assert_eq!((rc, code), (0, 200), "{} {route}: {v}", socket.display());
    v
}

/// The socket at `target` as the container with host pid `pid` sees it.
fn in_container(pid: u32, target: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{target}"))
}

/// `(pid, args)` of the guest agent processes of CVM `id`.
fn agents_of(id: &str) -> Vec<(i32, String)> {
    let out = Command::new("ps")
        .args(["-eo", "pid=,args="])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("guest agent") && l.contains(id))
        .filter_map(|l| {
            let (pid, args) = l.trim().split_once(' ')?;
            Some((pid.parse().ok()?, args.to_owned()))
        })
        .collect()
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

const GET_KEY: &str = r#"{"path":"/wallet/0","purpose":"ethereum"}"#;

/// The signer (compressed, hex) of the 65-byte recoverable `sig` (hex) over
/// keccak256(`message`), with k256 alone.
fn recover(message: &[u8], sig: &str) -> String {
    use sha3::Digest as _;
    let sig = hex::decode(sig.trim_start_matches("0x")).unwrap();
    assert_eq!(sig.len(), 65);
    let digest: [u8; 32] = sha3::Keccak256::digest(message).into();
    let key = k256::ecdsa::VerifyingKey::recover_from_prehash(
        &digest,
        &k256::ecdsa::Signature::from_slice(&sig[..64]).unwrap(),
        k256::ecdsa::RecoveryId::from_byte(sig[64]).unwrap(),
    )
    .unwrap();
    hex::encode(key.to_encoded_point(true).as_bytes())
}

/// Checks a `GetKey` answer's chain as an outside verifier would: the
/// derived key's public half signed by the app key (`purpose ":" hex(pub)`),
/// the app key signed by the KMS (`"dstack-kms-issued:" app_id app_pub`).
fn check_chain(answer: &Value, purpose: &str, app_id: &str, kms_pubkey: &str) {
    let secret = hex::decode(answer["key"].as_str().unwrap()).unwrap();
    let derived = k256::ecdsa::SigningKey::from_slice(&secret).unwrap();
    let derived_pub = hex::encode(derived.verifying_key().to_encoded_point(true).as_bytes());
    let chain = answer["signature_chain"].as_array().unwrap();
    let app_pub = recover(
        format!("{purpose}:{derived_pub}").as_bytes(),
        chain[0].as_str().unwrap(),
    );
    let mut kms_msg = b"dstack-kms-issued:".to_vec();
    kms_msg.extend(hex::decode(app_id).unwrap());
    kms_msg.extend(hex::decode(&app_pub).unwrap());
    assert_eq!(
        recover(&kms_msg, chain[1].as_str().unwrap()),
        kms_pubkey.trim_start_matches("0x").to_lowercase(),
        "the chain does not end at the KMS key"
    );
}

fn compose(host: &str, volume: &str) -> String {
    format!(
        "services:\n  app:\n    image: {host}/acme/tiny:1\n    command: [\"sleep\", \"600\"]\n    volumes:\n{volume}"
    )
}

#[test]
fn each_cvm_reaches_its_own_agent_and_no_one_else_does() {
    let engine = Dockerd::start();
    let (_reg, host, endpoint) = busybox_registry(None, "acme/tiny");
    // A short folder: the sockets' paths stay well under `sun_path`'s 108
    // bytes, so a refused connection below is the folder's permission.
    let dir = tempdir("ga");
    let state = dir.join("state");
    let cloud = Cloud::start(&state, &engine.host(), Some(ADMIN_KEY), &[&endpoint]);

    let a = deploy_running(
        &cloud,
        "agent-a",
        &compose(&host, "      - /var/run/dstack.sock:/var/run/dstack.sock\n"),
    );
    let b = deploy_running(
        &cloud,
        "agent-b",
        &compose(
            &host,
            "      - type: bind\n        source: /run/tappd.sock\n        target: /app/tappd.sock\n        read_only: true\n",
        ),
    );
    let app_id = |id: &str| {
        admin(&cloud, "GET", &format!("/cvms/{id}"), None).1["app_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (app_a, app_b) = (app_id(&a), app_id(&b));
    assert_ne!(app_a, app_b);

    // Each container's mount is its own CVM's socket.
    let (ca, pid_a) = container_of(&engine, &a);
    let (cb, pid_b) = container_of(&engine, &b);
    let sock_a = state.join("cvms").join(&a).join("agent/dstack.sock");
    let sock_b = state.join("cvms").join(&b).join("agent/tappd.sock");
    assert_eq!(
        mount_source(&engine, &ca, "/var/run/dstack.sock"),
        sock_a.display().to_string()
    );
    assert_eq!(
        mount_source(&engine, &cb, "/app/tappd.sock"),
        sock_b.display().to_string()
    );

    // In each container, at the path its file named, the agent answers
    // with that CVM's app id (and says the TEE is simulated).
    let info_a = call(&in_container(pid_a, "/var/run/dstack.sock"), "/Info", None);
    assert_eq!(info_a["app_id"], app_a.as_str(), "{info_a}");
    assert_eq!(info_a["simulated_tee"], true);
    let info_b = call(&in_container(pid_b, "/app/tappd.sock"), "/Info", None);
    assert_eq!(info_b["app_id"], app_b.as_str(), "{info_b}");
    // Both route sets on the legacy socket.
    let tappd = call(
        &in_container(pid_b, "/app/tappd.sock"),
        "/prpc/Tappd.Info",
        None,
    );
    assert_eq!(tappd["app_id"], app_b.as_str(), "{tappd}");

    // Two apps, two keys (same path and purpose).
    let key_a = call(
        &in_container(pid_a, "/var/run/dstack.sock"),
        "/GetKey",
        Some(GET_KEY),
    );
    let key_b = call(
        &in_container(pid_b, "/app/tappd.sock"),
        "/GetKey",
        Some(GET_KEY),
    );
    assert_eq!(key_a["key"].as_str().unwrap().len(), 64, "{key_a}");
    assert_ne!(key_a["key"], key_b["key"]);
    assert_eq!(key_a["signature_chain"].as_array().unwrap().len(), 2);
    // Each chain ends at this KMS's public key, checked with k256 alone.
    check_chain(&key_a, "ethereum", &app_a, &cloud.kms_pubkey);
    check_chain(&key_b, "ethereum", &app_b, &cloud.kms_pubkey);

    // The folders are private; the sockets open only through them.
    use std::os::unix::fs::PermissionsExt;
    let agent_dir = sock_a.parent().unwrap();
    assert_eq!(
        std::fs::metadata(agent_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // The socket itself is open to any user of a container that mounts it
    // (a non-root app user too); the folder is what keeps the host out.
    assert_eq!(
        std::fs::metadata(&sock_a).unwrap().permissions().mode() & 0o777,
        0o666
    );
    // Root on the host reaches the socket by its path (so the path is
    // usable); `nobody` does not (curl: exit 7, could not connect).
    assert!(sock_a.as_os_str().len() < 100, "{}", sock_a.display());
    assert_eq!(call(&sock_a, "/Info", None)["app_id"], app_a.as_str());
    let (rc, code, _) = call_as(Some("65534"), &sock_a, "/Info", None);
    assert_eq!((rc, code), (7, 0), "nobody connected to the agent socket");
    let (rc, _, _) = call_as(Some("65534"), &sock_b, "/Info", None);
    assert_eq!(rc, 7, "nobody connected to the tappd socket");

    // Idle memory of an agent.
    let agents = agents_of(&a);
    assert_eq!(agents.len(), 1, "{agents:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", agents[0].0)).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned())
            .unwrap_or_default()
    };
    eprintln!(
        "guest agent idle RSS: {} KiB (anonymous {} KiB, file {} KiB, threads {})",
        rss_kib(agents[0].0),
        field("RssAnon:"),
        field("RssFile:"),
        field("Threads:")
    );
    // No key or ticket on any command line.
    assert!(!agents[0].1.contains(key_a["key"].as_str().unwrap()));
}

#[test]
fn a_killed_agent_comes_back_with_its_identity_and_ends_with_its_cvm() {
    let engine = Dockerd::start();
    let (_reg, host, endpoint) = busybox_registry(None, "acme/tiny");
    let dir = tempdir("gk");
    let state = dir.join("state");
    let cloud = Cloud::start(&state, &engine.host(), Some(ADMIN_KEY), &[&endpoint]);
    let id = deploy_running(
        &cloud,
        "agent-kill",
        &compose(&host, "      - /var/run/dstack.sock:/var/run/dstack.sock\n"),
    );
    let app = admin(&cloud, "GET", &format!("/cvms/{id}"), None).1["app_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, pid) = container_of(&engine, &id);
    let sock = in_container(pid, "/var/run/dstack.sock");
    let key = call(&sock, "/GetKey", Some(GET_KEY))["key"].clone();

    // kill -9: the node starts it again, on the socket the container
    // already holds, with the same identity and keys.
    let agents = agents_of(&id);
    assert_eq!(agents.len(), 1, "{agents:?}");
    let killed_at = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-9", &agents[0].0.to_string()])
            .status()
            .unwrap()
            .success()
    );
    eventually(30, "the agent to be started again", || {
        agents_of(&id).iter().any(|(p, _)| *p != agents[0].0)
            && call_as(None, &sock, "/Info", None).1 == 200
    });
    eprintln!(
        "guest agent answering again {} ms after kill -9",
        killed_at.elapsed().as_millis()
    );
    assert_eq!(call(&sock, "/Info", None)["app_id"], app.as_str());
    assert_eq!(call(&sock, "/GetKey", Some(GET_KEY))["key"], key);

    // A restart: the same keys.
    let (code, body) = admin(&cloud, "POST", &format!("/cvms/{id}/restart"), None);
    assert!(code == 200 || code == 202 || code == 204, "{code} {body}");
    wait_running(&cloud, &id);
    let (_, pid) = container_of(&engine, &id);
    let sock = in_container(pid, "/var/run/dstack.sock");
    assert_eq!(call(&sock, "/Info", None)["app_id"], app.as_str());
    assert_eq!(call(&sock, "/GetKey", Some(GET_KEY))["key"], key);
    assert_eq!(agents_of(&id).len(), 1);

    // An update in place: a new compose hash, the same app, the same keys.
    let hash_before = call(&sock, "/Info", None)["compose_hash"].clone();
    let v2 = compose(&host, "      - /var/run/dstack.sock:/var/run/dstack.sock\n")
        .replace("\"600\"", "\"700\"");
    let (code, body) = admin(
        &cloud,
        "PATCH",
        &format!("/cvms/{id}"),
        Some(&serde_json::json!({"docker_compose_file": v2, "allowed_envs": []})),
    );
    assert!(code == 200 || code == 202, "{code} {body}");
    wait_running(&cloud, &id);
    let (_, pid) = container_of(&engine, &id);
    let sock = in_container(pid, "/var/run/dstack.sock");
    let info = call(&sock, "/Info", None);
    assert_eq!(info["app_id"], app.as_str());
    assert_ne!(info["compose_hash"], hash_before, "{info}");
    assert_eq!(call(&sock, "/GetKey", Some(GET_KEY))["key"], key);

    // Stop ends the agent and removes its sockets; delete too.
    let (code, body) = admin(&cloud, "POST", &format!("/cvms/{id}/stop"), None);
    assert!(code == 200 || code == 202 || code == 204, "{code} {body}");
    eventually(20, "the agent to end with its CVM", || {
        agents_of(&id).is_empty()
    });
    assert!(
        !state
            .join("cvms")
            .join(&id)
            .join("agent/dstack.sock")
            .exists()
    );
    let (code, body) = admin(&cloud, "POST", &format!("/cvms/{id}/start"), None);
    assert!(code == 200 || code == 202 || code == 204, "{code} {body}");
    wait_running(&cloud, &id);
    assert_eq!(agents_of(&id).len(), 1);
    let (code, body) = admin(&cloud, "DELETE", &format!("/cvms/{id}"), None);
    assert!(code == 200 || code == 204, "{code} {body}");
    eventually(20, "the agent to end with its deleted CVM", || {
        agents_of(&id).is_empty()
    });
}

/// `berth attest verify` checks a CVM's quote as a user's verification
/// code would: this cloud's attestation key (asked of the API), the
/// compose hash, the report data and the event log; a wrong hash, other
/// report data, a changed byte or an altered event log each fail with the
/// integrity exit code and a sentence.
#[test]
fn berth_attest_verify_checks_a_cvms_quote() {
    let engine = Dockerd::start();
    let (_reg, host, endpoint) = busybox_registry(None, "acme/tiny");
    let dir = tempdir("gq");
    let state = dir.join("state");
    let cloud = Cloud::start(&state, &engine.host(), Some(ADMIN_KEY), &[&endpoint]);
    assert!(
        cloud.output().contains("Attestation key: "),
        "{}",
        cloud.output()
    );
    let id = deploy_running(
        &cloud,
        "attested",
        &compose(&host, "      - /var/run/dstack.sock:/var/run/dstack.sock\n"),
    );
    let (_, pid) = container_of(&engine, &id);
    let sock = in_container(pid, "/var/run/dstack.sock");
    let report_data = "0xc0ffee";
    let answer = call(&sock, &format!("/GetQuote?report_data={report_data}"), None);
    let info = call(&sock, "/Info", None);
    let compose_hash = info["compose_hash"].as_str().unwrap().to_owned();
    let good = dir.join("quote.json");
    std::fs::write(&good, answer.to_string()).unwrap();
    let verify = |quote: &Path, hash: &str, extra: &[&str]| {
        run(
            Command::new(env!("CARGO_BIN_EXE_berth"))
                .args(["attest", "verify", "--quote"])
                .arg(quote)
                .args(["--compose-hash", hash])
                .args(extra)
                .env("BERTH_API_URL", &cloud.api)
                .env("BERTH_API_KEY", ADMIN_KEY)
                .env_remove("BERTH_ATTESTATION_KEY"),
            b"",
        )
    };
    let ok = verify(
        &good,
        &compose_hash,
        &["--report-data", report_data, "--json"],
    );
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    let v: Value = serde_json::from_str(&ok.stdout).unwrap();
    assert_eq!(v["verified"], true);
    assert_eq!(v["simulated"], true);
    assert_eq!(v["event_log_replayed"], true);
    assert_eq!(v["compose_hash"], compose_hash.as_str());

    let other_hash = "00".repeat(32);
    let wrong = verify(&good, &other_hash, &[]);
    assert_eq!(wrong.code, 9, "{}", wrong.stderr);
    assert!(wrong.stderr.contains("compose hash"), "{}", wrong.stderr);
    let wrong = verify(&good, &compose_hash, &["--report-data", "0xbeef"]);
    assert_eq!(wrong.code, 9, "{}", wrong.stderr);
    assert!(wrong.stderr.contains("report data"), "{}", wrong.stderr);
    // One byte of the quote changed.
    let mut quote = hex::decode(answer["quote"].as_str().unwrap()).unwrap();
    quote[100] ^= 1;
    let tampered = dir.join("tampered.hex");
    std::fs::write(&tampered, hex::encode(&quote)).unwrap();
    let bad = verify(&tampered, &compose_hash, &[]);
    assert_eq!(bad.code, 9, "{}", bad.stderr);
    assert!(bad.stderr.contains("does not verify"), "{}", bad.stderr);
    // An event log that says another compose hash.
    let mut altered = answer.clone();
    let log = answer["event_log"]
        .as_str()
        .unwrap()
        .replace(&compose_hash, &other_hash);
    assert_ne!(log, answer["event_log"].as_str().unwrap());
    altered["event_log"] = Value::from(log);
    let altered_path = dir.join("altered.json");
    std::fs::write(&altered_path, altered.to_string()).unwrap();
    let bad = verify(&altered_path, &compose_hash, &[]);
    assert_eq!(bad.code, 9, "{}", bad.stderr);
    assert!(bad.stderr.contains("event log"), "{}", bad.stderr);
    let _ = cloud.stop();
}

/// `berth up` stopped and started again while a CVM's containers keep
/// running (an engine of its own): the new node binds the agent sockets
/// again and restarts the containers that mount them, so the app reaches
/// its agent again, with the same identity.
#[test]
fn a_restarted_cloud_gives_running_containers_their_agent_again() {
    let engine = Dockerd::start();
    let (_reg, host, endpoint) = busybox_registry(None, "acme/tiny");
    let dir = tempdir("gr");
    let state = dir.join("state");
    let cloud = Cloud::start(&state, &engine.host(), Some(ADMIN_KEY), &[&endpoint]);
    let id = deploy_running(
        &cloud,
        "survivor",
        &compose(&host, "      - /var/run/dstack.sock:/var/run/dstack.sock\n"),
    );
    let (_, pid) = container_of(&engine, &id);
    let before = call(&in_container(pid, "/var/run/dstack.sock"), "/Info", None);
    let _ = cloud.stop();
    let cloud = Cloud::start(&state, &engine.host(), Some(ADMIN_KEY), &[&endpoint]);
    let mut after = Value::Null;
    eventually(60, "the container to reach its agent again", || {
        // The container may be restarting: no pid yet is "not yet".
        let label = format!("label=com.docker.compose.project={}", project_of(&id));
        let ids = engine.docker_out(&["ps", "-q", "--filter", &label]);
        let Some(cid) = ids.lines().next() else {
            return false;
        };
        let Ok(pid) = engine
            .docker_out(&["inspect", "-f", "{{.State.Pid}}", cid])
            .trim()
            .parse::<u32>()
        else {
            return false;
        };
        let (rc, code, v) = call_as(
            None,
            &in_container(pid, "/var/run/dstack.sock"),
            "/Info",
            None,
        );
        after = v;
        rc == 0 && code == 200
    });
    assert_eq!(after["app_id"], before["app_id"]);
    let (code, v) = admin(&cloud, "GET", &format!("/cvms/{id}"), None);
    assert_eq!(code, 200);
    assert_eq!(v["status"], "running", "{v}");
    let _ = cloud.stop();
}
