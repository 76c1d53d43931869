//! `berth up` as an operator would break it: a second start on the same
//! state, `kill -9` of the node, the KMS and `berth up` itself, key rotation
//! and revocation, slow clients, too many connections, tampered log URLs,
//! TLS. Each test runs the real binary on loopback; CVMs whose boot fails
//! (no Docker engine) are enough for the control plane's side.

mod common;
use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// No engine: the control plane runs, boots fail (fast) at the engine.
const NO_ENGINE: &str = "unix:///nonexistent/docker.sock";

/// `berth up` on no engine, with no admin key handed in.
fn up(state: &Path, args: &[&str]) -> Cloud {
    Cloud::start(state, NO_ENGINE, None, args)
}

impl Cloud {
    /// The child of `berth up` whose command line contains `what`.
    fn child_pid(&self, what: &str) -> u32 {
        children_of(self.pid())
            .into_iter()
            .find(|(_, cmdline)| cmdline.contains(what))
            .unwrap_or_else(|| panic!("no child `{what}` of berth up"))
            .0
    }
}

/// (pid, command line) of every live process whose parent is `parent`.
fn children_of(parent: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces, so split after ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) && fields[0] != "Z" {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            out.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    out
}

/// Whether `pid` is alive (a zombie is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_owned()))
        .is_some_and(|r| !r.starts_with('Z'))
}

fn kill9(pid: u32) {
    let st = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn admin_key(state: &Path) -> String {
    std::fs::read_to_string(state.join("api-key"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Provisions and commits a CVM named `name` (its boot fails: no engine).
fn deploy(cloud: &Cloud, key: &str, name: &str) -> Value {
    let compose = "services:\n  web:\n    image: 127.0.0.1:9/nothing:latest\n";
    let (code, p) = cloud.call(
        key,
        "POST",
        "/cvms/provision",
        Some(&json!({"name": name, "compose_file": {"docker_compose_file": compose}})),
    );
    assert_eq!(code, 200, "provision: {p}\n{}", cloud.output());
    let (code, c) = cloud.call(
        key,
        "POST",
        "/cvms",
        Some(&json!({"app_id": p["app_id"], "compose_hash": p["compose_hash"]})),
    );
    assert_eq!(code, 200, "commit: {c}\n{}", cloud.output());
    c
}

#[test]
fn one_berth_up_per_state_and_its_children_die_with_it() {
    let dir = tempdir("up-lock");
    let state = dir.join("state");
    let cloud = up(&state, &[]);
    let first = cloud.output();
    let key = admin_key(&state);
    assert!(
        first.contains(&format!("Admin API key:  {key}")),
        "the first start shows the admin key:\n{first}"
    );

    // A second `berth up` on the same state fails at once, naming the first.
    let t = Instant::now();
    let second = berth(
        &[
            "up",
            "--state",
            state.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        b"",
    );
    assert_ne!(second.code, 0);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        second.stderr.contains(&format!(
            "another `berth up` (PID {}) is running",
            cloud.pid()
        )),
        "{}",
        second.stderr
    );
    // The first one is unharmed.
    assert_eq!(cloud.call(&key, "GET", "/auth/me", None).0, 200);

    // kill -9 of `berth up`: its KMS and node go with it.
    let kms = cloud.child_pid("kms serve");
    let node = cloud.child_pid("node serve");
    let up_pid = cloud.pid();
    kill9(up_pid);
    eventually(5, "the KMS and the node end with berth up", || {
        !alive(kms) && !alive(node)
    });
    drop(cloud);

    // A new `berth up` on the same state takes over; the key is not shown again.
    let cloud = up(&state, &[]);
    let again = cloud.output();
    assert!(
        !again.contains(&key),
        "the admin key is printed again:\n{again}"
    );
    assert!(
        again.contains(&format!(
            "Admin API key:  in {}",
            state.join("api-key").display()
        )),
        "{again}"
    );
    assert_eq!(cloud.call(&key, "GET", "/auth/me", None).0, 200);
    assert_eq!(
        std::fs::read_to_string(state.join("berth.lock"))
            .unwrap()
            .trim(),
        cloud.pid().to_string()
    );
    cloud.stop();
}

#[test]
fn a_dead_node_or_kms_is_restarted_and_the_api_answers_503_meanwhile() {
    let dir = tempdir("up-supervise");
    let state = dir.join("state");
    let cloud = up(&state, &[]);
    let key = admin_key(&state);
    let cvm = deploy(&cloud, &key, "supervised");
    let stop = format!("/cvms/{}/stop", cvm["vm_uuid"].as_str().unwrap());
    assert_eq!(cloud.call(&key, "POST", &stop, None).0, 200);

    // The node.
    let node = cloud.child_pid("node serve");
    kill9(node);
    let (code, v) = cloud.call(&key, "POST", &stop, None);
    assert_eq!(code, 503, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("the node is not running"),
        "{v}"
    );
    eventually(20, "the node answers again", || {
        cloud.call(&key, "POST", &stop, None).0 == 200
    });
    let new_node = cloud.child_pid("node serve");
    assert_ne!(new_node, node);
    assert!(
        cloud
            .output()
            .contains(&format!("the node (PID {node}) was killed by signal 9")),
        "{}",
        cloud.output()
    );

    // The KMS.
    let app_id = cvm["app_id"].as_str().unwrap();
    let pubkey = format!("/kms/phala/pubkey/{app_id}");
    let (code, before) = cloud.call(&key, "GET", &pubkey, None);
    assert_eq!(code, 200, "{before}");
    let kms = cloud.child_pid("kms serve");
    kill9(kms);
    let (code, v) = cloud.call(&key, "GET", &pubkey, None);
    assert_eq!(code, 503, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("the KMS is not answering"),
        "{v}"
    );
    let mut after = Value::Null;
    eventually(20, "the KMS answers again", || {
        let (code, v) = cloud.call(&key, "GET", &pubkey, None);
        after = v;
        code == 200
    });
    // The same root key: the same env key for the app.
    assert_eq!(after["public_key"], before["public_key"]);
    // Its socket stayed in the private folder.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("kms"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(
        cloud.output().contains("the KMS is back"),
        "{}",
        cloud.output()
    );
    cloud.stop();
}

#[test]
fn admin_creates_rotates_and_revokes_keys() {
    let dir = tempdir("up-users");
    let state = dir.join("state");
    let cloud = up(&state, &[]);
    let admin = admin_key(&state);
    let users = |key: &str, args: &[&str]| {
        run(
            Command::new(env!("CARGO_BIN_EXE_berth"))
                .arg("users")
                .args(args)
                .env("BERTH_API_URL", &cloud.api)
                .env("BERTH_API_KEY", key),
            b"",
        )
    };
    let created = users(&admin, &["create", "bob"]);
    assert_eq!(created.code, 0, "{}", created.stderr);
    let bob1 = created.stdout.trim().to_owned();
    assert!(bob1.starts_with("berth_"), "{}", created.stdout);
    assert_eq!(cloud.call(&bob1, "GET", "/auth/me", None).0, 200);

    // Bob rotates his own key: the old one stops working at once.
    let rotated = users(&bob1, &["rotate", "bob"]);
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    let bob2 = rotated.stdout.trim().to_owned();
    assert_ne!(bob1, bob2);
    assert_eq!(cloud.call(&bob1, "GET", "/auth/me", None).0, 401);
    assert_eq!(cloud.call(&bob2, "GET", "/auth/me", None).0, 200);

    // Bob may not revoke or rotate others.
    let denied = users(&bob2, &["revoke", "admin"]);
    assert_ne!(denied.code, 0);
    assert!(
        denied.stderr.contains("only the admin"),
        "{}",
        denied.stderr
    );
    assert_eq!(users(&bob2, &["rotate", "admin"]).code, 2);

    // The admin revokes Bob; the admin cannot revoke itself.
    let revoked = users(&admin, &["revoke", "bob"]);
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    assert_eq!(cloud.call(&bob2, "GET", "/auth/me", None).0, 401);
    let own = users(&admin, &["revoke", "admin"]);
    assert_ne!(own.code, 0);
    assert!(own.stderr.contains("rotate it instead"), "{}", own.stderr);
    assert_eq!(users(&admin, &["revoke", "nobody"]).code, 2);

    // Rotating the admin's key: the file's key is stale, the next start says so.
    let new_admin = users(&admin, &["rotate", "admin"]).stdout.trim().to_owned();
    assert_eq!(cloud.call(&admin, "GET", "/auth/me", None).0, 401);
    assert_eq!(cloud.call(&new_admin, "GET", "/auth/me", None).0, 200);
    let out = cloud.stop();
    assert!(!out.contains(&bob1) && !out.contains(&bob2) && !out.contains(&new_admin));
    let cloud = up(&state, &[]);
    assert!(
        cloud.output().contains("Admin API key:  rotated since"),
        "{}",
        cloud.output()
    );
    cloud.stop();
}

/// Reads from `s` until EOF or `limit`; returns how long the server kept it open.
fn open_for(s: &mut std::net::TcpStream, limit: Duration) -> Duration {
    let t = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return t.elapsed(),
            Ok(_) => {}
            Err(_) => return t.elapsed(),
        }
        if t.elapsed() >= limit {
            return t.elapsed();
        }
    }
}

#[test]
fn slow_clients_are_cut_off_connections_are_capped_and_log_tokens_are_macs() {
    let dir = tempdir("up-edge");
    let state = dir.join("state");
    let cloud = up(&state, &["--header-timeout", "2", "--max-connections", "3"]);
    let key = admin_key(&state);
    let addr = format!("127.0.0.1:{}", cloud.port());

    // Half a request line, then nothing: disconnected within the timeout.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /api/v1/auth/me HT").unwrap();
    let held = open_for(&mut slow, Duration::from_secs(10));
    assert!(
        held >= Duration::from_millis(1500) && held < Duration::from_secs(5),
        "a half-sent request was held {held:?}"
    );

    // Three silent connections fill the cap: a fourth client waits until
    // the header timeout frees a slot.
    let mut silent: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (code, _) = curl(&["--max-time", "1"], &format!("{}/auth/me", cloud.api));
    assert_eq!(code, 0, "a connection past the cap was served at once");
    let t = Instant::now();
    let (code, _) = curl(
        &["--max-time", "10", "-H", &format!("X-API-Key: {key}")],
        &format!("{}/auth/me", cloud.api),
    );
    assert_eq!(code, 200);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    for s in &mut silent {
        assert!(open_for(s, Duration::from_secs(5)) < Duration::from_secs(5));
    }

    // Log URLs: the token works, a tampered or missing one does not.
    let cvm = deploy(&cloud, &key, "logged-app");
    let id = cvm["vm_uuid"].as_str().unwrap().to_owned();
    let url = cvm["syslog_endpoint"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&cloud.api), "{url}");
    let serial = state.join("cvms").join(&id).join("serial.log");
    // The boot must be over, or its own lines interleave with ours.
    eventually(60, "the boot wrote its last serial line", || {
        std::fs::read_to_string(&serial)
            .map(|t| t.contains("BOOT OK") || t.contains("BOOT FAILED"))
            .unwrap_or(false)
    });
    // The node's own lines after it (the guest agent's start, …): the
    // log is quiet for a second before ours go in.
    let mut size = 0;
    eventually(30, "the serial log stopped growing", || {
        std::thread::sleep(Duration::from_secs(1));
        let now = std::fs::metadata(&serial).map(|m| m.len()).unwrap_or(0);
        std::mem::replace(&mut size, now) == now
    });
    // 3000 lines more: a request without `tail` gets the last 1000.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&serial)
        .unwrap();
    for i in 0..3000 {
        writeln!(f, "operator line {i}").unwrap();
    }
    drop(f);
    let (code, text) = curl(&[], &format!("{url}&ch=serial"));
    assert_eq!(code, 200, "{text}");
    assert_eq!(
        text.lines().count(),
        1000,
        "{}",
        &text[..200.min(text.len())]
    );
    assert!(text.starts_with("operator line 2000\n") && text.ends_with("operator line 2999\n"));
    let (_, five) = curl(&[], &format!("{url}&ch=serial&tail=5"));
    assert_eq!(five.lines().collect::<Vec<_>>()[0], "operator line 2995");

    let token = url.rsplit_once("token=").unwrap().1.to_owned();
    let mut tampered = token.clone().into_bytes();
    tampered[0] = if tampered[0] == b'0' { b'1' } else { b'0' };
    let bad = url.replace(&token, std::str::from_utf8(&tampered).unwrap());
    assert_eq!(curl(&[], &bad).0, 403);
    assert_eq!(curl(&[], &url.replace(&token, "zz")).0, 403);
    let (code, _) = curl(&[], &format!("{}/cvms/{id}/syslog", cloud.api));
    assert_eq!(code, 401);
    // Another CVM's token does not open this one.
    let other = deploy(&cloud, &key, "other-app");
    let other_token = other["syslog_endpoint"]
        .as_str()
        .unwrap()
        .rsplit_once("token=")
        .unwrap()
        .1;
    assert_eq!(curl(&[], &url.replace(&token, other_token)).0, 403);
    cloud.stop();

    // Rotating the log secret: old URLs stop working, new ones work.
    let cloud = up(&state, &["--rotate-log-secret"]);
    assert!(
        cloud.output().contains("Log secret rotated"),
        "{}",
        cloud.output()
    );
    let old = url.replace(
        &format!("127.0.0.1:{}", url_port(&url)),
        &format!("127.0.0.1:{}", cloud.port()),
    );
    assert_eq!(curl(&[], &old).0, 403);
    let (_, v) = cloud.call(&key, "GET", &format!("/cvms/{id}"), None);
    let fresh = v["syslog_endpoint"].as_str().unwrap();
    assert_ne!(fresh.rsplit_once("token=").unwrap().1, token);
    assert_eq!(curl(&[], fresh).0, 200);
    cloud.stop();
}

fn url_port(url: &str) -> u16 {
    let after = url.split("127.0.0.1:").nth(1).unwrap();
    after.split('/').next().unwrap().parse().unwrap()
}

#[test]
fn other_machines_get_tls_or_an_explicit_insecure_and_the_public_url() {
    let dir = tempdir("up-tls");
    let state = dir.join("state");
    let up_alone = |args: &[&str]| {
        let mut all = vec![
            "up",
            "--isolation",
            "shared",
            "--state",
            state.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        run(
            Command::new(env!("CARGO_BIN_EXE_berth"))
                .args(&all)
                .env("DOCKER_HOST", NO_ENGINE),
            b"",
        )
    };
    // Refused before anything starts (nothing is bound).
    let plain = up_alone(&["--listen", "0.0.0.0:0"]);
    assert_eq!(plain.code, 2, "{}", plain.stderr);
    assert!(plain.stderr.contains("without TLS"), "{}", plain.stderr);
    assert!(plain.stderr.contains("--tls-cert"), "{}", plain.stderr);
    let unnamed = up_alone(&["--listen", "0.0.0.0:0", "--insecure"]);
    assert_eq!(unnamed.code, 2, "{}", unnamed.stderr);
    assert!(
        unnamed.stderr.contains("--public-url"),
        "{}",
        unnamed.stderr
    );
    let half = up_alone(&["--listen", "0.0.0.0:0", "--tls-cert", "/nonexistent"]);
    assert_ne!(half.code, 0);

    // --public-url names the URLs the API hands out.
    let mut cloud = up(
        &state,
        &["--public-url", "https://berth.example.test:8443/"],
    );
    assert_eq!(cloud.api, "https://berth.example.test:8443/api/v1");
    let key = admin_key(&state);
    // Calls go to the listener itself; the URLs handed out name the public one.
    cloud.api = format!("http://127.0.0.1:{}/api/v1", cloud.port());
    let cvm = deploy(&cloud, &key, "public-app");
    assert!(
        cvm["syslog_endpoint"]
            .as_str()
            .unwrap()
            .starts_with("https://berth.example.test:8443/api/v1/cvms/"),
        "{cvm}"
    );
    cloud.stop();

    // HTTPS with a certificate from a test CA.
    let ca = testkit::TestCa::new("berth test CA");
    let cert = ca.issue_server_cert(&["127.0.0.1", "localhost"]);
    let ca_file = ca.write_cert(&dir, "ca.pem");
    let cert_file = dir.join("api.pem");
    let key_file = dir.join("api.key");
    std::fs::write(&cert_file, &cert.cert_pem).unwrap();
    std::fs::write(&key_file, &cert.key_pem).unwrap();
    let cloud = up(
        &state,
        &[
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ],
    );
    assert!(cloud.api.starts_with("https://127.0.0.1:"), "{}", cloud.api);
    let (code, body) = curl(
        &[
            "--cacert",
            ca_file.to_str().unwrap(),
            "-H",
            &format!("X-API-Key: {key}"),
        ],
        &format!("{}/auth/me", cloud.api),
    );
    assert_eq!(code, 200, "{body}");
    // Without the CA: refused by curl; plain HTTP on the TLS port: no answer.
    assert_eq!(curl(&[], &format!("{}/auth/me", cloud.api)).0, 0);
    let plain_url = cloud.api.replace("https://", "http://");
    assert_ne!(
        curl(&["--max-time", "5"], &format!("{plain_url}/auth/me")).0,
        200
    );
    cloud.stop();
}
