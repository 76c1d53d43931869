//! The web console's routes and the API extensions it uses, in process: the
//! page and its files with their security headers, `GET /berth/rules`
//! (told from the rules' definitions) and `POST /berth/compose-images`
//! (the provisioning policy and normalised registries). The browser side is
//! `crates/cli/tests/console.rs`.

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cloud::db::{DbOptions, Limits};
use cloud::{AppState, NodeClient};
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt as _;

struct Fixture {
    dir: std::path::PathBuf,
    state: Arc<AppState>,
    key: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An API with one user and neither KMS nor node (these routes use neither).
async fn fixture() -> Fixture {
    let dir = std::env::temp_dir().join(format!("berth-console-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = Arc::new(support::open_db(&dir, DbOptions::default()));
    let key = cloud::new_api_key();
    db.create_user("alice", &key, false).await.unwrap();
    let state = Arc::new(AppState {
        db,
        node: NodeClient::new(&dir.join("node/no-such.sock")),
        kms: contract::kms::KmsEndpoint::Unix(dir.join("kms/no-such.sock")),
        cvms_root: dir.join("cvms"),
        public_url: "http://127.0.0.1:9".into(),
        http: reqwest::Client::new(),
        log_secret: [9; 32],
        limits: Limits::default(),
    });
    Fixture { dir, state, key }
}

/// (status, headers, body bytes).
async fn send(
    f: &Fixture,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
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
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, headers, bytes.to_vec())
}

#[tokio::test]
async fn the_page_and_its_files_carry_the_security_headers() {
    let f = fixture().await;
    for (path, media) in [
        ("/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/seal.js", "text/javascript"),
        ("/console/style.css", "text/css"),
        ("/favicon.ico", "image/svg+xml"),
    ] {
        let (status, h, body) = send(&f, "GET", path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(
            h["content-type"].to_str().unwrap().starts_with(media),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert!(!body.is_empty());
    }
    // The page shows only a sign-in form before a key: it holds no data.
    let (_, _, page) = send(&f, "GET", "/", None, None).await;
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains(r#"<script type="module" src="/console/app.js">"#));
    let (status, _, _) = send(&f, "GET", "/console/../berth.db", None, None).await;
    assert_ne!(status, StatusCode::OK);
    let (status, h2, _) = send(&f, "GET", "/console/nothing.js", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(h2.contains_key("content-security-policy"));
}

#[tokio::test]
async fn rules_are_told_from_their_definitions() {
    let f = fixture().await;
    let (status, _, _) = send(&f, "GET", "/api/v1/berth/rules", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = send(&f, "GET", "/api/v1/berth/rules", Some(&f.key), None).await;
    assert_eq!(status, StatusCode::OK);
    let rules: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        rules["env"]["max_key_bytes"],
        contract::env_rules::MAX_KEY_LEN
    );
    assert_eq!(
        rules["registry"]["docker_hub"],
        contract::reference::DOCKER_HUB
    );
    // The name rule is the one provisioning applies.
    let pattern = rules["name"]["pattern"].as_str().unwrap();
    assert_eq!(pattern, "^[A-Za-z][A-Za-z0-9-]*[A-Za-z0-9]$");
    for (name, ok) in [
        ("my-app", true),
        ("abcd", false),
        ("1abcde", false),
        ("abcde-", false),
        ("ab_cde", false),
        (&*"a".repeat(63), true),
        (&*"a".repeat(64), false),
    ] {
        assert_eq!(cloud::appcompose::validate_name(name).is_ok(), ok, "{name}");
    }
}

#[tokio::test]
async fn compose_images_names_each_registry_and_applies_the_policy() {
    let f = fixture().await;
    let yaml = "services:\n  web:\n    image: ghcr.io/acme/web:1\n  db:\n    image: postgres:16\n  api:\n    image: 123456789012.dkr.ecr.us-east-1.amazonaws.com/team/api:2\n";
    let (status, _, body) = send(
        &f,
        "POST",
        "/api/v1/berth/compose-images",
        Some(&f.key),
        Some(json!({"docker_compose_file": yaml})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["images"],
        json!([
            {"service": "web", "image": "ghcr.io/acme/web:1", "registry": "ghcr.io"},
            {"service": "db", "image": "postgres:16", "registry": "docker.io"},
            {"service": "api", "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/api:2",
             "registry": "123456789012.dkr.ecr.us-east-1.amazonaws.com"},
        ])
    );
    // Refused as provisioning refuses it.
    let (status, _, body) = send(
        &f,
        "POST",
        "/api/v1/berth/compose-images",
        Some(&f.key),
        Some(json!({"docker_compose_file": "services:\n  web:\n    image: busybox\n    privileged: true\n"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["detail"].as_str().unwrap().contains("privileged"), "{v}");
}
