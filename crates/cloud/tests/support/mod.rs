//! The API in process for the tests of the audit's findings: a real KMS on
//! a Unix socket, a real SQLite file, no node (its socket does not exist,
//! so node calls answer 503), users `admin`, `alice` and `mallory`; and the
//! API served on a loopback port by the real `serve`.

#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cloud::db::{DbOptions, Limits};
use cloud::serve::ServeOptions;
use cloud::{AppState, Db, NodeClient};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tower::ServiceExt as _;

pub struct Fixture {
    pub dir: PathBuf,
    pub state: Arc<AppState>,
    /// admin, alice, mallory.
    pub keys: Vec<String>,
    _kms: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub const COMPOSE: &str = "services:\n  web:\n    image: nginx:1.27\n";

pub async fn fixture(limits: Limits) -> Fixture {
    fixture_with(limits, DbOptions::default(), "mallory").await
}

/// [`fixture`] with the database's options, and the third user named
/// `third` (`keys[2]`).
pub async fn fixture_with(limits: Limits, opts: DbOptions, third: &str) -> Fixture {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("berth-audit-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("kms")).unwrap();
    std::fs::set_permissions(dir.join("kms"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let sock = dir.join("kms/kms.sock");
    let listener = kms::server::bind_socket(&sock).unwrap();
    let k = Arc::new(kms::server::Kms::new(kms::KmsRootKey::generate(), None));
    let kms_task = tokio::spawn(async move {
        let _ = kms::server::serve(listener, k).await;
    });
    let db = Arc::new(Db::open_with(&dir.join("berth.db"), opts).unwrap());
    let mut keys = Vec::new();
    for (name, admin) in [("admin", true), ("alice", false), (third, false)] {
        let key = cloud::new_api_key();
        db.create_user(name, &key, admin).await.unwrap();
        keys.push(key);
    }
    let state = Arc::new(AppState {
        db,
        node: NodeClient::new(&dir.join("node/no-such.sock")),
        kms: contract::kms::KmsEndpoint::Unix(sock.clone()),
        cvms_root: dir.join("cvms"),
        public_url: "http://127.0.0.1:9".into(),
        http: reqwest::Client::builder()
            .unix_socket(sock)
            .build()
            .unwrap(),
        log_secret: [9; 32],
        limits,
    });
    Fixture {
        dir,
        state,
        keys,
        _kms: kms_task,
    }
}

/// One request through the router in process: status, headers, JSON body.
pub async fn call(
    f: &Fixture,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = cloud::router(f.state.clone()).oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub async fn provision(f: &Fixture, key: &str, name: &str, compose: &str) -> (StatusCode, Value) {
    let (s, _, v) = call(
        f,
        Some(key),
        "POST",
        "/api/v1/cvms/provision",
        Some(json!({"name": name, "compose_file": {"docker_compose_file": compose}})),
    )
    .await;
    (s, v)
}

pub async fn commit(f: &Fixture, key: &str, p: &Value, name: &str) -> (StatusCode, Value) {
    let body = json!({"app_id": p["app_id"], "compose_hash": p["compose_hash"], "name": name});
    let (s, _, v) = call(f, Some(key), "POST", "/api/v1/cvms", Some(body)).await;
    (s, v)
}

/// The router served by the real `serve` on a loopback port, until the
/// returned sender is dropped or sent to.
pub async fn serve(
    f: &Fixture,
    opts: ServeOptions,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = cloud::router(f.state.clone());
    tokio::spawn(async move {
        let _ = cloud::serve::serve(listener, app, opts, async move {
            let _ = stop_rx.await;
        })
        .await;
    });
    (addr, stop_tx)
}
