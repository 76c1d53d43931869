//! The official Python SDK (`dstack-sdk` 0.5.4 from PyPI, in the project's
//! venv `.deps/venv`) against a socket served by this crate.

mod common;

use std::process::Command;

use common::{App, Served, recover};

#[test]
fn official_python_sdk_calls_every_route_and_its_answers_verify() {
    let python = testkit::repo_root().join(".deps/venv/bin/python");
    let check = Command::new(&python)
        .args(["-c", "import dstack_sdk"])
        .output();
    assert!(
        check.is_ok_and(|o| o.status.success()),
        "dstack-sdk 0.5.4 is missing from .deps/venv: `.deps/venv/bin/python -m pip install dstack-sdk==0.5.4`"
    );
    let app = App::new(3, 4);
    let s = Served::start(&app);
    let script = testkit::interop_path("guest-agent-sdk.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&s.dstack)
        .arg(&s.tappd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the SDK script failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["info"]["app_id"], hex::encode(app.app_id));
    assert_eq!(v["info"]["compose_hash"], app.compose_hash());
    assert_eq!(v["info"]["app_compose"], app.app_compose);

    let key = hex::decode(v["get_key"]["key"].as_str().unwrap()).unwrap();
    let derived = k256::ecdsa::SigningKey::from_slice(&key).unwrap();
    let pub_hex = hex::encode(derived.verifying_key().to_sec1_bytes());
    let chain: Vec<Vec<u8>> = v["get_key"]["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| hex::decode(s.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(
        recover(format!("signing:{pub_hex}").as_bytes(), &chain[0]),
        app.app_pubkey()
    );
    let kms_msg = [
        b"dstack-kms-issued:".as_slice(),
        &app.app_id,
        &app.app_pubkey(),
    ]
    .concat();
    assert_eq!(recover(&kms_msg, &chain[1]), app.kms_pubkey().to_vec());

    assert_eq!(v["get_quote"]["replay_matches"], true);
    let quote = hex::decode(v["get_quote"]["quote"].as_str().unwrap()).unwrap();
    let q = agent::verify_quote(
        &quote,
        &common::attestation_key().public_key(),
        &app.compose_hash(),
    )
    .unwrap();
    q.check_event_log(v["get_quote"]["event_log"].as_str().unwrap())
        .unwrap();
    assert_eq!(&q.report_data[..13], b"berth-py-test");
    assert_eq!(v["get_tls_key"]["chain_len"], 3);
    assert_eq!(v["sign"]["chain_len"], 3);
    assert_eq!(v["sign"]["valid"], true);
    assert_eq!(v["tappd"]["derive_chain_len"], 3);
    assert_eq!(v["tappd"]["replay_matches"], true);
}
