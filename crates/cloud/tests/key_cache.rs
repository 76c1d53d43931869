//! The API-key cache (`api::auth::KEYS`, at most 1 s): a key rotated or
//! revoked through this process's API is refused at once, even right after
//! it was used (and so remembered).

mod support;

use axum::http::StatusCode;
use cloud::db::Limits;
use support::*;

#[tokio::test]
async fn a_rotated_or_revoked_key_is_refused_at_once() {
    let f = fixture(Limits::default()).await;
    let (admin, alice, mallory) = (&f.keys[0], &f.keys[1], &f.keys[2]);
    for key in [alice, mallory] {
        let (s, _, me) = call(&f, Some(key), "GET", "/api/v1/auth/me", None).await;
        assert_eq!(s, StatusCode::OK, "{me}");
    }
    // Alice rotates her own key: the old one is refused on the next request.
    let (s, _, new) = call(
        &f,
        Some(alice),
        "POST",
        "/api/v1/users/alice/rotate-key",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{new}");
    let (s, _, _) = call(&f, Some(alice), "GET", "/api/v1/auth/me", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let fresh = new["api_key"].as_str().unwrap();
    let (s, _, me) = call(&f, Some(fresh), "GET", "/api/v1/auth/me", None).await;
    assert_eq!(
        (s, &me["user"]["username"]),
        (StatusCode::OK, &serde_json::json!("alice"))
    );
    // The admin revokes Mallory, whose key was just used.
    let (s, _, r) = call(
        &f,
        Some(admin),
        "POST",
        "/api/v1/users/mallory/revoke",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let (s, _, _) = call(&f, Some(mallory), "GET", "/api/v1/auth/me", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}
