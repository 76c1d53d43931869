//! The API's rules, in process: a real KMS on a Unix socket, a real SQLite
//! file, and no node (its socket does not exist, so node calls answer 503,
//! after the database work a commit does). Plus the API served on a
//! loopback port while another connection holds the database's lock.

use axum::http::StatusCode;
use cloud::db::{DbOptions, Limits};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;
use support::Fixture;

/// An API with users `admin` (keys[0]), `alice` (keys[1]) and `bob`
/// (keys[2]), a KMS, and no node.
async fn fixture(limits: Limits, opts: DbOptions) -> Fixture {
    support::fixture_with(limits, opts, "bob").await
}

/// One request through the router in process: status and JSON body.
async fn call(
    f: &Fixture,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let (status, _, v) = support::call(f, key, method, &format!("/api/v1{path}"), body).await;
    (status, v)
}

const COMPOSE: &str = "services:\n  web:\n    image: nginx:1.27\n";

async fn provision(f: &Fixture, key: &str, name: &str) -> (StatusCode, Value) {
    call(
        f,
        Some(key),
        "POST",
        "/cvms/provision",
        Some(json!({"name": name, "compose_file": {"docker_compose_file": COMPOSE, "allowed_envs": ["A"]}})),
    )
    .await
}

/// Commits the provisioned app `p` (as `name` when given). Without a node
/// the CVM is stored and the answer is the node's 503.
async fn commit(f: &Fixture, key: &str, p: &Value, name: Option<&str>) -> (StatusCode, Value) {
    let mut body = json!({"app_id": p["app_id"], "compose_hash": p["compose_hash"]});
    if let Some(n) = name {
        body["name"] = json!(n);
    }
    call(f, Some(key), "POST", "/cvms", Some(body)).await
}

async fn names(f: &Fixture, key: &str) -> Vec<String> {
    let (s, list) = call(f, Some(key), "GET", "/cvms", None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn commit_validates_the_name_like_provisioning() {
    let f = fixture(Limits::default(), DbOptions::default()).await;
    let alice = &f.keys[1];
    let (s, p) = provision(&f, alice, "good-name").await;
    assert_eq!(s, StatusCode::OK, "{p}");
    let huge = format!("evil\n{}", "x".repeat(1_900_000));
    for bad in [
        huge.as_str(),
        "no",
        "1starts-with-digit",
        "has space",
        "trailing-",
    ] {
        let (s, e) = commit(&f, alice, &p, Some(bad)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad:.40}: {e}");
        let detail = e["detail"].as_str().unwrap();
        assert!(detail.contains("is not valid"), "{detail:.200}");
        assert!(
            detail.len() < 400,
            "the error echoes the whole name: {} bytes",
            detail.len()
        );
    }
    assert!(
        names(&f, alice).await.is_empty(),
        "an invalid name was stored"
    );
    // The provisioned name, and a valid override, are stored.
    let (s, e) = commit(&f, alice, &p, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("the node is not running"),
        "{e}"
    );
    let (s, _) = commit(&f, alice, &p, Some("other-name")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(names(&f, alice).await, ["good-name", "other-name"]);
}

#[tokio::test]
async fn names_are_unique_per_user() {
    let f = fixture(Limits::default(), DbOptions::default()).await;
    let (alice, bob) = (&f.keys[1], &f.keys[2]);
    let (_, p) = provision(&f, alice, "shop-front").await;
    commit(&f, alice, &p, None).await;
    // Committing the name again, or provisioning it again: a 409 naming it.
    let (s, e) = commit(&f, alice, &p, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert_eq!(
        e["detail"],
        "you already have a CVM named `shop-front`: delete it first, or choose another name"
    );
    let (s, e) = provision(&f, alice, "shop-front").await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert_eq!(names(&f, alice).await, ["shop-front"]);
    // Bob's names are his own.
    let (s, bp) = provision(&f, bob, "shop-front").await;
    assert_eq!(s, StatusCode::OK, "{bp}");
    assert_eq!(
        commit(&f, bob, &bp, None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(names(&f, bob).await, ["shop-front"]);
}

#[tokio::test]
async fn the_cvm_cap_is_a_quota_and_boots_in_flight_are_not() {
    let limits = Limits {
        max_cvms_per_user: 2,
        max_boots_in_flight: 3,
        ..Limits::default()
    };
    let f = fixture(limits, DbOptions::default()).await;
    let (alice, bob) = (&f.keys[1], &f.keys[2]);
    let (_, p) = provision(&f, alice, "alice-app").await;
    for n in ["alice-one", "alice-two"] {
        assert_eq!(
            commit(&f, alice, &p, Some(n)).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    let (s, e) = commit(&f, alice, &p, Some("alice-three")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    let detail = e["detail"].as_str().unwrap();
    assert!(
        detail.contains("you have 2 CVMs")
            && detail.contains("--max-cvms-per-user 2")
            && detail.contains("delete a CVM"),
        "{detail}"
    );
    assert_eq!(e["error_code"], "quota_exceeded");
    // Three CVMs booting (the node is away, so they stay `provisioning`):
    // more boots are not refused by the API (the node queues them), only
    // the node's absence answers.
    let (_, bp) = provision(&f, bob, "bob-app").await;
    for n in ["bob-one", "bob-two"] {
        let (s, e) = commit(&f, bob, &bp, Some(n)).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    }
    assert_eq!(names(&f, bob).await, ["bob-one", "bob-two"]);
    // A start of a stopped CVM is not refused either.
    let cvm = f.state.db.cvms_of(2).await.unwrap().remove(0);
    f.state
        .db
        .set_status(&cvm.id, contract::CvmStatus::Stopped, None, None)
        .await
        .unwrap();
    let (s, e) = call(
        &f,
        Some(alice),
        "POST",
        &format!("/cvms/{}/start", cvm.id),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_provisioning_one_manifest_get_their_own_apps() {
    let f = Arc::new(fixture(Limits::default(), DbOptions::default()).await);
    let (alice, bob) = (f.keys[1].clone(), f.keys[2].clone());
    // The same name and compose file, at the same moment.
    let (a, b) = tokio::join!(
        provision(&f, &alice, "same-app"),
        provision(&f, &bob, "same-app")
    );
    assert_eq!(a.0, StatusCode::OK, "{}", a.1);
    assert_eq!(b.0, StatusCode::OK, "{}", b.1);
    let (a, b) = (a.1, b.1);
    assert_ne!(a["app_id"], b["app_id"]);
    assert_ne!(a["app_env_encrypt_pubkey"], b["app_env_encrypt_pubkey"]);
    // The same user provisioning again gets the same app (and key).
    let (s, again) = provision(&f, &alice, "same-app").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["app_id"], a["app_id"]);
    assert_eq!(again["compose_hash"], a["compose_hash"]);
    assert_eq!(again["app_env_encrypt_pubkey"], a["app_env_encrypt_pubkey"]);
    // Each commits their own; nobody can commit the other's.
    let (s, e) = commit(&f, &bob, &a, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    assert_eq!(
        commit(&f, &alice, &a, None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        commit(&f, &bob, &b, None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // The stored manifest carries the owner's salt, and measures to the app id.
    let app = f
        .state
        .db
        .app(a["app_id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    let m: Value = serde_json::from_slice(&app.app_compose).unwrap();
    let salt = f
        .state
        .db
        .user_by_name("alice")
        .await
        .unwrap()
        .unwrap()
        .app_salt;
    assert_eq!(m["berth_owner"], salt);
    assert_eq!(
        contract::Measurement::of(&app.app_compose).app_id,
        app.app_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_database_lock_stalls_no_reader_and_bounds_writers() {
    let opts = DbOptions {
        request_patience: Duration::from_millis(800),
        ..DbOptions::default()
    };
    let f = fixture(Limits::default(), opts).await;
    let alice = f.keys[1].clone();
    let (_, p) = provision(&f, &alice, "locked-app").await;
    commit(&f, &alice, &p, None).await;
    let cvm = f.state.db.cvms_of(2).await.unwrap().remove(0);
    // The API on a loopback port, as `berth up` serves it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/api/v1", listener.local_addr().unwrap());
    let app = cloud::router(f.state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    // An operator's `sqlite3 berth.db` holding `BEGIN EXCLUSIVE`.
    let outside = rusqlite::Connection::open(f.dir.join("berth.db")).unwrap();
    outside.execute_batch("BEGIN EXCLUSIVE").unwrap();

    // Writers (provisions) are waiting for the lock meanwhile.
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let (http, base, key) = (http.clone(), base.clone(), alice.clone());
            tokio::spawn(async move {
                let t = Instant::now();
                let r = http
                    .post(format!("{base}/cvms/provision"))
                    .header("x-api-key", key)
                    .json(&json!({"name": format!("writer-{i}"), "compose_file": {"docker_compose_file": COMPOSE}}))
                    .send()
                    .await
                    .unwrap();
                (r.status(), r.text().await.unwrap(), t.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        // Unauthenticated log requests, and authenticated reads.
        let t = Instant::now();
        let r = http
            .get(format!("{base}/cvms/{}/syslog", cvm.id))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .get(format!("{base}/cvms"))
            .header("x-api-key", &alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = http
            .get(format!("{base}/auth/me"))
            .header("x-api-key", &alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(300),
        "reads stalled: {slowest:?}"
    );
    for w in writers {
        let (status, body, took) = w.await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("the database is busy"), "{body}");
        assert!(
            took < Duration::from_millis(2500),
            "a writer waited {took:?}"
        );
    }
    eprintln!("slowest read round (3 requests) under the lock: {slowest:?}");
    // Released: writes go through again.
    outside.execute_batch("COMMIT").unwrap();
    let (s, e) = provision(&f, &alice, "after-lock").await;
    assert_eq!(s, StatusCode::OK, "{e}");
    server.abort();
}
