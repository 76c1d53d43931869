//! What the official `phala` CLI receives, pinned: the JSON of provision,
//! commit, get (both `X-Phala-Version` shapes), list, apps, the status
//! batch, `auth/me` (both shapes) and an error, compared with the
//! committed files in `tests/snapshots/`.
//!
//! Everything is real and in process: a KMS on a Unix socket, a SQLite
//! file, and a node (`cloud::Node` behind `nodeapi` on its own socket)
//! whose boot agent is a shell script that takes its ticket on standard
//! input and, once the test says so, ends with `BOOT OK`. Volatile values
//! (ids, hashes, keys, tokens, timestamps, the version) are replaced by
//! `<placeholders>` before the comparison.
//!
//! A change in these answers is a change in what the official clients
//! receive: review it, then run with `BERTH_UPDATE_SNAPSHOTS=1` to write
//! the new files.

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cloud::db::{DbOptions, Limits};
use cloud::{AppState, Node, NodeClient, NodeConfig, NodeSecret};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt as _;

const LEGACY: &str = "2025-10-28";
const CURRENT: &str = "2026-01-21";
const COMPOSE: &str = "services:\n  web:\n    image: nginx:1.27\n";

struct Fixture {
    dir: PathBuf,
    state: Arc<AppState>,
    alice: String,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for t in &self._tasks {
            t.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn private_dir(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// The boot agent: reads the ticket, waits for `go`, says `BOOT OK`.
fn fake_agent(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-agent.sh");
    let go = dir.join("go");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nread ticket\nwhile [ ! -e '{}' ]; do sleep 0.05; done\necho 'BOOT OK in 0.10 s'\nexit 0\n",
            go.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    path
}

async fn fixture() -> Fixture {
    let dir = std::env::temp_dir().join(format!("berth-shapes-{}", uuid::Uuid::new_v4()));
    private_dir(&dir.join("kms"));
    private_dir(&dir.join("node"));
    let kms_sock = dir.join("kms/kms.sock");
    let node_secret = cloud::new_api_key();
    let listener = kms::server::bind_socket(&kms_sock).unwrap();
    let k = Arc::new(kms::server::Kms::new(
        kms::KmsRootKey::generate(),
        Some(contract::SecretValue::new(node_secret.clone())),
    ));
    let kms_task = tokio::spawn(async move {
        let _ = kms::server::serve(listener, k).await;
    });
    let db = Arc::new(support::open_db(&dir, DbOptions::default()));
    db.create_user("admin", &cloud::new_api_key(), true)
        .await
        .unwrap();
    let alice = cloud::new_api_key();
    db.create_user("alice", &alice, false).await.unwrap();
    let node = Node::new(
        NodeConfig {
            root: dir.join("cvms"),
            berth_bin: fake_agent(&dir),
            kms_url: format!("unix:{}", kms_sock.display()),
            node_secret: NodeSecret(zeroize::Zeroizing::new(node_secret)),
            docker_host: format!("unix://{}", dir.join("no-docker.sock").display()),
            registry_endpoints: Default::default(),
            ca_certs: vec![],
            aws_endpoint_url_ecr: None,
            reserved_ports: vec![],
            isolation: contract::Isolation::Shared,
            max_boots: 8,
            max_boots_per_user: 4,
        },
        db.clone(),
    );
    let node_sock = dir.join("node/node.sock");
    let listener = tokio::net::UnixListener::bind(&node_sock).unwrap();
    let node_db = db.clone();
    let node_task = tokio::spawn(async move {
        let _ = cloud::nodeapi::serve(listener, node, node_db).await;
    });
    let state = Arc::new(AppState {
        db,
        node: NodeClient::new(&node_sock),
        kms: contract::kms::KmsEndpoint::Unix(kms_sock.clone()),
        cvms_root: dir.join("cvms"),
        public_url: "http://127.0.0.1:8000".into(),
        http: reqwest::Client::builder()
            .unix_socket(kms_sock)
            .build()
            .unwrap(),
        log_secret: [7; 32],
        limits: Limits::default(),
    });
    Fixture {
        dir,
        state,
        alice,
        _tasks: vec![kms_task, node_task],
    }
}

async fn call(
    f: &Fixture,
    version: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("/api/v1{path}"))
        .header("x-api-key", &f.alice);
    if let Some(v) = version {
        req = req.header("x-phala-version", v);
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = cloud::router(f.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
    };
    (status, value)
}

/// The values that change from run to run, and what stands for them.
#[derive(Default)]
struct Volatile(Vec<(String, &'static str)>);

impl Volatile {
    fn add(&mut self, value: &Value, placeholder: &'static str) {
        let v = value
            .as_str()
            .unwrap_or_else(|| panic!("{placeholder}: {value}"));
        assert!(!v.is_empty(), "{placeholder} is empty");
        self.0.push((v.to_owned(), placeholder));
        // Longest first, so that a value inside another is replaced last.
        self.0.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
    }

    /// `v` with every volatile value (in strings and object keys) replaced.
    fn normalise(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => {
                let mut s = s.clone();
                for (value, placeholder) in &self.0 {
                    s = s.replace(value.as_str(), placeholder);
                }
                if is_timestamp(&s) {
                    s = "<timestamp>".into();
                }
                if s == env!("CARGO_PKG_VERSION") {
                    s = "<version>".into();
                }
                Value::String(s)
            }
            Value::Array(a) => Value::Array(a.iter().map(|x| self.normalise(x)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| {
                        let x = match k.as_str() {
                            "app_env_encrypt_pubkey_timestamp" if x.is_u64() => {
                                json!("<unix-seconds>")
                            }
                            _ => self.normalise(x),
                        };
                        let key = match self.normalise(&json!(k)) {
                            Value::String(k) => k,
                            _ => unreachable!("a string stays a string"),
                        };
                        (key, x)
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// `2026-05-01T12:00:00Z`.
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10 | 13 | 16 | 19) || c.is_ascii_digit())
}

/// Compares `actual` with `tests/snapshots/<name>.json` (or writes it with
/// `BERTH_UPDATE_SNAPSHOTS=1`). Says which call changed.
fn check_snapshot(name: &str, actual: &Value) -> Option<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.json"));
    let pretty = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if std::env::var_os("BERTH_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &pretty).unwrap();
        return None;
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "no snapshot {}: run with BERTH_UPDATE_SNAPSHOTS=1",
            path.display()
        )
    });
    let expected: Value = serde_json::from_str(&stored).unwrap();
    (expected != *actual).then(|| {
        format!(
            "{name} changed (what the official CLI receives):\n--- {}\n{stored}+++ now\n{pretty}",
            path.display()
        )
    })
}

async fn wait_for_status(f: &Fixture, id: &str, want: &str) {
    for _ in 0..200 {
        let (_, cvm) = call(f, Some(CURRENT), "GET", &format!("/cvms/{id}"), None).await;
        if cvm["status"] == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("CVM {id} never became {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_response_shapes_match_their_snapshots() {
    let f = fixture().await;
    let mut vol = Volatile::default();
    let mut answers: Vec<(&str, Value)> = Vec::new();

    let (s, me) = call(&f, Some(LEGACY), "GET", "/auth/me", None).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    answers.push(("me-2025-10-28", me));
    let (s, me) = call(&f, Some(CURRENT), "GET", "/auth/me", None).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    answers.push(("me-2026-01-21", me));

    // What the official CLI sends for `phala deploy`.
    let (s, p) = call(
        &f,
        Some(LEGACY),
        "POST",
        "/cvms/provision",
        Some(json!({
            "name": "shop-front",
            "compose_file": {"allowed_envs": ["REGISTRY_PASSWORD"], "docker_compose_file": COMPOSE, "name": "",
                             "public_logs": true, "public_sysinfo": true},
            "listed": false, "kms": "PHALA", "instance_type": "tdx.small",
        })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    vol.add(&p["app_id"], "<app_id>");
    vol.add(&p["compose_hash"], "<compose_hash>");
    vol.add(&p["app_env_encrypt_pubkey"], "<env_pubkey>");
    vol.add(&p["app_env_encrypt_pubkey_signature"], "<signature>");
    vol.add(&p["app_env_encrypt_pubkey_signature_v1"], "<signature_v1>");
    vol.add(&p["kms_public_key"], "<kms_public_key>");
    answers.push(("provision", p.clone()));

    // 60 bytes: long enough to pass for a sealed env (the API cannot open it).
    let (s, c) = call(
        &f,
        Some(LEGACY),
        "POST",
        "/cvms",
        Some(json!({
            "app_id": p["app_id"], "compose_hash": p["compose_hash"],
            "encrypted_env": hex::encode([0x5a; 60]), "env_keys": ["REGISTRY_PASSWORD"],
        })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["status"], "starting", "{c}");
    let id = c["vm_uuid"].as_str().unwrap().to_owned();
    vol.add(&c["vm_uuid"], "<vm_uuid>");
    vol.add(&c["instance_id"], "<vm_uuid_compact>");
    let endpoint = c["syslog_endpoint"].as_str().unwrap();
    vol.add(
        &json!(endpoint.split_once("token=").unwrap().1),
        "<log_token>",
    );
    answers.push(("commit-2025-10-28", c));

    std::fs::write(f.dir.join("go"), "").unwrap();
    wait_for_status(&f, &id, "running").await;
    let (s, g) = call(&f, Some(LEGACY), "GET", &format!("/cvms/{id}"), None).await;
    assert_eq!(s, StatusCode::OK, "{g}");
    answers.push(("get-2025-10-28", g));
    let (s, g) = call(&f, Some(CURRENT), "GET", &format!("/cvms/{id}"), None).await;
    assert_eq!(s, StatusCode::OK, "{g}");
    answers.push(("get-2026-01-21", g));
    let (s, l) = call(&f, Some(CURRENT), "GET", "/cvms", None).await;
    assert_eq!(s, StatusCode::OK, "{l}");
    answers.push(("list", l));
    let (s, a) = call(&f, Some(CURRENT), "GET", "/apps", None).await;
    assert_eq!(s, StatusCode::OK, "{a}");
    answers.push(("apps", a));
    let (s, b) = call(
        &f,
        Some(CURRENT),
        "POST",
        "/status/batch",
        Some(json!({"vm_uuids": [id.replace('-', "")]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    answers.push(("status-batch", b));
    // An error, as the clients print it.
    let (s, e) = call(&f, Some(CURRENT), "GET", "/cvms/no-such-cvm", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    answers.push(("error-not-found", e));

    let changed: Vec<String> = answers
        .iter()
        .filter_map(|(name, v)| check_snapshot(name, &vol.normalise(v)))
        .collect();
    let (s, _) = call(&f, Some(LEGACY), "DELETE", &format!("/cvms/{id}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(changed.is_empty(), "{}", changed.join("\n"));
}
