//! Same app identity → same keys across two agents (a restart or update);
//! another app key → other keys.

mod common;

use common::{App, Served, post};

fn keys(app: &App) -> (String, String, String) {
    let s = Served::start(app);
    let k = post(
        &s.dstack,
        "/GetKey",
        r#"{"path":"db","purpose":"encryption"}"#,
    )
    .json();
    let tls = post(&s.tappd, "/prpc/Tappd.DeriveKey", r#"{"path":"tls"}"#).json();
    (
        k["key"].as_str().unwrap().to_string(),
        k["signature_chain"][0].as_str().unwrap().to_string(),
        tls["key"].as_str().unwrap().to_string(),
    )
}

#[test]
fn same_app_same_keys_across_two_agents() {
    let app = App::new(5, 6);
    let first = keys(&app);
    let second = keys(&app);
    assert_eq!(first, second);
}

#[test]
fn another_app_gets_other_keys() {
    let a = keys(&App::new(5, 6));
    let b = keys(&App::new(5, 7));
    assert_ne!(a.0, b.0);
    assert_ne!(a.2, b.2);
    let c = keys(&App::new(9, 6));
    assert_ne!(a.0, c.0);
}
