mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{OCI_ACCEPT, curl};
use testkit::images::{self, ImageSpec, PushTarget};
use testkit::{Registry, TokenField, TokenIssuer};

fn issuer() -> TokenIssuer {
    TokenIssuer::builder()
        .user("alice", "alice-pw", &[("team/*", &["pull", "push"])])
        .user("bob", "bob-pw", &[("other/app", &["pull"])])
        .start()
}

fn get_token(issuer: &TokenIssuer, creds: Option<&str>, scope: &str) -> common::Resp {
    let url = format!(
        "{}?service={}&scope={}",
        issuer.realm(),
        issuer.service(),
        scope
    );
    match creds {
        Some(c) => curl(&["-u", c, &url]),
        None => curl(&[&url]),
    }
}

fn claims(token: &str) -> serde_json::Value {
    let part = token.split('.').nth(1).unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

#[test]
fn token_flow_push_pull_and_denial() {
    let iss = issuer();
    let reg = Registry::with_token_auth(&iss);
    assert_eq!(reg.token_service(), Some("berth-test-registry"));

    // The challenge points at the issuer.
    let ch = curl(&[&format!("{}/v2/", reg.base_url())]);
    assert_eq!(ch.status, 401);
    let www = ch.header("www-authenticate").unwrap();
    assert!(www.starts_with("Bearer "), "{www}");
    assert!(www.contains(&format!("realm=\"{}\"", iss.realm())), "{www}");
    assert!(www.contains("service=\"berth-test-registry\""), "{www}");

    // skopeo does the whole token flow to push.
    let target = PushTarget::new(&reg.host_port()).with_creds("alice", "alice-pw");
    let pushed = images::push_image(&target, "team/app", "v1", &ImageSpec::with_layers(&[3000]));
    assert!(iss.request_count() >= 1);
    assert!(
        iss.requests()
            .iter()
            .all(|r| r.user.as_deref() == Some("alice"))
    );

    // Manual pull with a token.
    let t = get_token(&iss, Some("alice:alice-pw"), "repository:team/app:pull");
    assert_eq!(t.status, 200);
    let body = t.json();
    let token = body["token"].as_str().unwrap().to_string();
    assert_eq!(body["expires_in"], 300);
    assert!(body.get("access_token").is_none());
    let c = claims(&token);
    assert_eq!(c["aud"], "berth-test-registry");
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["access"][0]["name"], "team/app");
    assert_eq!(c["access"][0]["actions"], serde_json::json!(["pull"]));
    assert_eq!(iss.request_count_for_scope("repository:team/app:pull"), 1);

    let murl = format!("{}/v2/team/app/manifests/v1", reg.base_url());
    let auth = format!("Authorization: Bearer {token}");
    let m = curl(&["-H", &auth, "-H", OCI_ACCEPT, &murl]);
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(
        m.header("docker-content-digest"),
        Some(pushed.digest.as_str())
    );

    // The pull token does not allow pushing: 401 insufficient_scope.
    let up = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        &format!("{}/v2/team/app/blobs/uploads/", reg.base_url()),
    ]);
    assert_eq!(up.status, 401);
    assert!(
        up.header("www-authenticate")
            .unwrap()
            .contains("error=\"insufficient_scope\"")
    );

    // bob may not read team/app: the issuer still answers 200 but grants
    // nothing, and distribution answers 401 UNAUTHORIZED with
    // error="insufficient_scope" (not 403 DENIED).
    let t = get_token(&iss, Some("bob:bob-pw"), "repository:team/app:pull");
    assert_eq!(t.status, 200);
    let token = t.json()["token"].as_str().unwrap().to_string();
    assert_eq!(
        claims(&token)["access"][0]["actions"],
        serde_json::json!([])
    );
    let denied = curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        OCI_ACCEPT,
        &murl,
    ]);
    assert_eq!(denied.status, 401);
    let www = denied.header("www-authenticate").unwrap();
    assert!(www.contains("error=\"insufficient_scope\""), "{www}");
    assert!(www.contains("scope=\"repository:team/app:pull\""), "{www}");
    assert_eq!(denied.json()["errors"][0]["code"], "UNAUTHORIZED");
    eprintln!("denied pull: 401 {www}\n{}", denied.text());

    // Wrong credentials: 401 from the issuer.
    let bad = get_token(&iss, Some("alice:nope"), "repository:team/app:pull");
    assert_eq!(bad.status, 401);
    assert_eq!(iss.requests().last().unwrap().status, 401);

    // Anonymous: a token that grants nothing.
    let anon = get_token(&iss, None, "repository:team/app:pull");
    assert_eq!(anon.status, 200);
    assert_eq!(claims(anon.json()["token"].as_str().unwrap())["sub"], "");

    // An expired token (beyond distribution's 60 s leeway): invalid_token.
    let expired = iss.mint_expired("alice", &[("team/app", &["pull"])]);
    let r = curl(&[
        "-H",
        &format!("Authorization: Bearer {expired}"),
        "-H",
        OCI_ACCEPT,
        &murl,
    ]);
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );

    // A minted valid token works.
    let ok = iss.mint("alice", &[("team/app", &["pull"])], Duration::from_secs(60));
    let r = curl(&[
        "-H",
        &format!("Authorization: Bearer {ok}"),
        "-H",
        OCI_ACCEPT,
        &murl,
    ]);
    assert_eq!(r.status, 200);
}

#[test]
fn ghcr_style_access_token_without_expiry_and_post() {
    let iss = TokenIssuer::builder()
        .user("u", "p", &[("*", &["*"])])
        .token_field(TokenField::AccessToken)
        .expires_in(false)
        .require_credentials()
        .start();
    let t = get_token(&iss, Some("u:p"), "repository:x/y:pull");
    let body = t.json();
    assert!(body.get("token").is_none());
    assert!(body.get("expires_in").is_none());
    assert!(body["access_token"].as_str().unwrap().split('.').count() == 3);
    assert_eq!(get_token(&iss, None, "repository:x/y:pull").status, 401);

    // OAuth2 password grant (POST form).
    let r = curl(&[
        "-X",
        "POST",
        "--data",
        "grant_type=password&username=u&password=p&service=berth-test-registry&scope=repository%3Ax%2Fy%3Apull%2Cpush",
        &iss.realm(),
    ]);
    assert_eq!(r.status, 200);
    let c = claims(r.json()["access_token"].as_str().unwrap());
    assert_eq!(
        c["access"][0]["actions"],
        serde_json::json!(["pull", "push"])
    );
    assert_eq!(iss.requests().last().unwrap().method, "POST");

    let both = TokenIssuer::builder().token_field(TokenField::Both).start();
    let b = get_token(&both, None, "repository:a:pull").json();
    assert_eq!(b["token"], b["access_token"]);
}

#[test]
fn concurrent_requests_are_counted() {
    let iss = TokenIssuer::builder()
        .user("u", "p", &[("*", &["pull"])])
        .response_delay(Duration::from_millis(400))
        .start();
    let scope = "repository:a/b:pull";
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| assert_eq!(get_token(&iss, Some("u:p"), scope).status, 200));
        }
    });
    assert_eq!(iss.request_count_for_scope(scope), 3);
    assert_eq!(iss.max_in_flight_for_scope(scope), 3);
    assert_eq!(iss.max_in_flight(), 3);
    iss.reset_counters();
    get_token(&iss, Some("u:p"), scope);
    assert_eq!(iss.max_in_flight_for_scope(scope), 1);
    assert_eq!(iss.request_count(), 1);
}

#[test]
fn exact_expiry_makes_registry_reject_after_lifetime() {
    let iss = TokenIssuer::builder()
        .user("u", "p", &[("*", &["pull", "push"])])
        .lifetime(Duration::from_secs(2))
        .exact_expiry(true)
        .start();
    let reg = Registry::with_token_auth(&iss);
    let t = get_token(&iss, Some("u:p"), "registry:catalog:*");
    assert_eq!(t.json()["expires_in"], 2);
    let token = t.json()["token"].as_str().unwrap().to_string();
    let url = format!("{}/v2/", reg.base_url());
    let auth = format!("Authorization: Bearer {token}");
    assert_eq!(curl(&["-H", &auth, &url]).status, 200);
    std::thread::sleep(Duration::from_millis(3100));
    let r = curl(&["-H", &auth, &url]);
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
}
