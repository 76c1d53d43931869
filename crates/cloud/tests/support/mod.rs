//! The API in process for the tests of the audit's findings: a real KMS on
//! a Unix socket, a real database ([`open_db`]: SQLite, or PostgreSQL with
//! `BERTH_TEST_DATABASE=postgres`), no node (its socket does not exist,
//! so node calls answer 503), users `admin`, `alice` and `mallory`; and the
//! API served on a loopback port by the real `serve`.

#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cloud::db::{DbLocation, DbOptions, DbUrl, Limits};
use cloud::serve::ServeOptions;
use cloud::{AppState, Db, NodeClient};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tower::ServiceExt as _;

pub struct Fixture {
    pub dir: PathBuf,
    /// The PostgreSQL database's URL (`None`: SQLite, `dir/berth.db`).
    pub db_url: Option<String>,
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

/// The API's database for a test whose folder is `dir`: SQLite at
/// `dir/berth.db`, or with `BERTH_TEST_DATABASE=postgres` a fresh database
/// on the PostgreSQL server of `BERTH_TEST_PG_URL` (`make test` runs these
/// tests on both).
pub fn open_db(dir: &Path, opts: DbOptions) -> Db {
    open_db_at(dir, opts).0
}

/// [`open_db`], and the PostgreSQL database's URL (`None`: SQLite).
pub fn open_db_at(dir: &Path, opts: DbOptions) -> (Db, Option<String>) {
    match testkit::pg::TestDatabase::from_env() {
        testkit::pg::TestDatabase::Sqlite => {
            (Db::open_with(&dir.join("berth.db"), opts).unwrap(), None)
        }
        testkit::pg::TestDatabase::Postgres => {
            let url = testkit::pg::fresh_database();
            let location = DbLocation::Postgres(DbUrl::parse(&url).unwrap());
            (Db::open_location(&location, opts).unwrap(), Some(url))
        }
    }
}

impl Fixture {
    /// Runs `sql` on the fixture's database from outside the API (as an
    /// operator's `sqlite3` or `psql` would); the first column of its
    /// first row, as text (empty when it returns none).
    pub fn sql(&self, sql: &str) -> String {
        match &self.db_url {
            Some(url) => testkit::pg::query(url, sql).unwrap(),
            None => {
                let db = rusqlite::Connection::open(self.dir.join("berth.db")).unwrap();
                let mut stmt = db.prepare(sql).unwrap();
                let mut rows = stmt.query([]).unwrap();
                use rusqlite::types::Value;
                match rows.next().unwrap().map(|r| r.get::<_, Value>(0).unwrap()) {
                    Some(Value::Integer(i)) => i.to_string(),
                    Some(Value::Real(f)) => f.to_string(),
                    Some(Value::Text(t)) => t,
                    _ => String::new(),
                }
            }
        }
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
    let (db, db_url) = open_db_at(&dir, opts);
    let db = Arc::new(db);
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
        db_url,
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
