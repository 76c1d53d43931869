//! What one tenant may take of what all tenants share (audit findings 4 and
//! 11): boot slots (the node's queue, not a refusal), apps provisioned and never committed (a bound per
//! user, and an expiry), and `X-Content-Type-Options: nosniff` on every
//! answer. The API in process, a real KMS, no node (commits store the CVM
//! and answer the node's 503).

mod support;

use axum::http::StatusCode;
use cloud::db::Limits;
use contract::CvmStatus;
use serde_json::Value;
use support::*;

#[tokio::test]
async fn one_user_s_boots_are_queued_by_the_node_not_refused() {
    // The caps on boots are the node's slots (its queue shares them
    // between users, `tests/boot_queue.rs` of the CLI): the API refuses
    // no commit and no start for them.
    let limits = Limits {
        max_boots_in_flight: 4,
        max_boots_per_user: 2,
        ..Limits::default()
    };
    let f = fixture(limits).await;
    let mallory = &f.keys[2];
    let (s, p) = provision(&f, mallory, "busy-app", COMPOSE).await;
    assert_eq!(s, StatusCode::OK, "{p}");
    for name in [
        "busy-one",
        "busy-two",
        "busy-three",
        "busy-four",
        "busy-five",
    ] {
        let (s, e) = commit(&f, mallory, &p, name).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    }
    assert_eq!(f.state.db.boots_in_flight().await.unwrap(), 5);
    let mallory_id = f
        .state
        .db
        .user_by_name("mallory")
        .await
        .unwrap()
        .unwrap()
        .id;
    let stopped = f.state.db.cvms_of(mallory_id).await.unwrap().remove(0);
    f.state
        .db
        .set_status(&stopped.id, CvmStatus::Stopped, None, None)
        .await
        .unwrap();
    let (s, _, e) = call(
        &f,
        Some(mallory),
        "POST",
        &format!("/api/v1/cvms/{}/start", stopped.id),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{e}");
}

fn compose(i: usize) -> String {
    format!("services:\n  web{i}:\n    image: nginx:1.27\n")
}

#[tokio::test]
async fn apps_provisioned_and_never_committed_are_bounded_per_user_and_expire() {
    let limits = Limits {
        max_uncommitted_apps_per_user: 3,
        ..Limits::default()
    };
    let f = fixture(limits).await;
    let (alice, mallory) = (&f.keys[1], &f.keys[2]);
    let mut apps: Vec<Value> = Vec::new();
    for i in 0..3 {
        let (s, p) = provision(&f, mallory, &format!("app-{i}"), &compose(i)).await;
        assert_eq!(s, StatusCode::OK, "{p}");
        apps.push(p);
    }
    let (s, e) = provision(&f, mallory, "app-3", &compose(3)).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{e}");
    let detail = e["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(
            "you have 3 provisioned apps that no CVM uses yet, the most one user may keep (3)"
        ) && detail.contains("dropped an hour after"),
        "{detail}"
    );
    // Provisioning one of them again reuses it; another user is not bound
    // by mallory's apps.
    let (s, again) = provision(&f, mallory, "app-1", &compose(1)).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["app_id"], apps[1]["app_id"]);
    let (s, e) = provision(&f, alice, "app-3", &compose(3)).await;
    assert_eq!(s, StatusCode::OK, "{e}");
    // A committed app no longer counts.
    let (s, e) = commit(&f, mallory, &apps[0], "kept-app").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    let (s, p3) = provision(&f, mallory, "app-3", &compose(3)).await;
    assert_eq!(s, StatusCode::OK, "{p3}");

    // An hour later the uncommitted ones are dropped at her next
    // provisioning; the committed one stays.
    f.sql("UPDATE apps SET created_at = '2000-01-01T00:00:00Z' WHERE user_id = (SELECT id FROM users WHERE username = 'mallory')");
    let (s, e) = provision(&f, mallory, "app-4", &compose(4)).await;
    assert_eq!(s, StatusCode::OK, "{e}");
    let id = |p: &Value| p["app_id"].as_str().unwrap().to_owned();
    assert!(f.state.db.app(&id(&apps[0])).await.unwrap().is_some());
    for gone in [&apps[1], &apps[2], &p3] {
        assert!(f.state.db.app(&id(gone)).await.unwrap().is_none());
    }
    // Committing an expired app says to provision it again.
    let (s, e) = commit(&f, mallory, &apps[1], "too-late").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("call POST /cvms/provision first"),
        "{e}"
    );
    // Alice's app (not aged) is still there.
    let alice_apps = f.sql(
        "SELECT COUNT(*) FROM apps WHERE user_id = (SELECT id FROM users WHERE username = 'alice')",
    );
    assert_eq!(alice_apps, "1");
}

#[tokio::test]
async fn every_answer_says_nosniff() {
    let f = fixture(Limits::default()).await;
    let alice = f.keys[1].clone();
    let uuid = "00000000-0000-0000-0000-000000000000";
    let cases = [
        (Some(alice.as_str()), "/api/v1/auth/me", StatusCode::OK),
        (None, "/api/v1/auth/me", StatusCode::UNAUTHORIZED),
        (
            Some(alice.as_str()),
            "/api/v1/cvms/no-such-cvm",
            StatusCode::NOT_FOUND,
        ),
        (
            None,
            &format!("/api/v1/cvms/{uuid}/syslog?token=forged") as &str,
            StatusCode::NOT_FOUND,
        ),
        (
            None,
            &format!("/api/v1/cvms/{uuid}/containers/web/logs?token=forged"),
            StatusCode::NOT_FOUND,
        ),
        (None, "/api/v1/no-such-route", StatusCode::NOT_IMPLEMENTED),
        (None, "/", StatusCode::OK),
    ];
    for (key, path, _) in &cases {
        let (status, headers, _) = call(&f, *key, "GET", path, None).await;
        assert_eq!(
            headers
                .get_all("x-content-type-options")
                .iter()
                .collect::<Vec<_>>(),
            ["nosniff"],
            "GET {path} ({status})"
        );
    }
}
