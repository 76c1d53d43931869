//! The official JS SDK (`@phala/dstack-sdk` 0.5.8 from npm, pinned in
//! interop/) against a socket served by this crate. What the SDK returns is
//! checked here with k256/sha2 directly, not with the agent's own code
//! (except `verify_quote`, which is what it is for).

mod common;

use std::process::Command;

use common::{App, Served, recover};
use sha2::Digest;

fn run_sdk(s: &Served) -> serde_json::Value {
    let script = testkit::interop_path("guest-agent-sdk.mjs");
    let out = Command::new("node")
        .arg(&script)
        .arg(&s.dstack)
        .arg(&s.tappd)
        .current_dir(script.parent().unwrap())
        .output()
        .expect("node runs (scripts/deps.sh installs it)");
    assert!(
        out.status.success(),
        "the SDK script failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

#[test]
fn official_js_sdk_calls_every_route_and_its_answers_verify() {
    let app = App::new(3, 4);
    let s = Served::start(&app);
    let v = run_sdk(&s);
    eprintln!("{}", serde_json::to_string_pretty(&v).unwrap());

    assert_eq!(v["reachable"], true);
    assert_eq!(v["tappdReachable"], true);
    assert_eq!(v["info"]["app_id"], hex::encode(app.app_id));
    assert_eq!(v["info"]["compose_hash"], app.compose_hash());
    assert_eq!(v["info"]["simulated_tee"], true);
    assert_eq!(v["info"]["tcb_app_compose"], app.app_compose);
    assert_eq!(v["version"]["version"], "0.5.8");

    // getKey: the key is HKDF(app key, path); the chain recovers (in JS
    // with @noble/curves, and here with k256) to the app key and the KMS.
    let gk = &v["getKey"];
    let mut okm = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(b"RATLS"), &app.app_key())
        .expand(b"wallet/eth", &mut okm)
        .unwrap();
    assert_eq!(gk["key"], hex::encode(okm));
    assert_eq!(gk["chain_len"], 2);
    assert_eq!(gk["app_signer"], hex::encode(app.app_pubkey()));
    let kms_sig = hex::decode(gk["kms_signature"].as_str().unwrap()).unwrap();
    let kms_msg = [
        b"dstack-kms-issued:".as_slice(),
        &app.app_id,
        &app.app_pubkey(),
    ]
    .concat();
    assert_eq!(recover(&kms_msg, &kms_sig), app.kms_pubkey().to_vec());

    // getQuote: the SDK's replayRtmrs equals the quote's RTMRs; the quote
    // checks out against the attestation key and the compose hash.
    let gq = &v["getQuote"];
    assert_eq!(
        gq["replay_matches"], true,
        "replayed {} vs {}",
        gq["replayed"], gq["rtmrs_in_quote"]
    );
    let quote = hex::decode(gq["quote"].as_str().unwrap()).unwrap();
    let verified = agent::verify_quote(
        &quote,
        &common::attestation_key().public_key(),
        &app.compose_hash(),
    )
    .unwrap();
    verified
        .check_event_log(gq["event_log"].as_str().unwrap())
        .unwrap();
    assert_eq!(&verified.report_data[..14], b"berth-sdk-test");
    assert!(gq["event_log"].as_str().unwrap().contains("sdk-test-event"));

    let tls = &v["getTlsKey"];
    assert_eq!(tls["key_is_pkcs8_pem"], true);
    assert_eq!(tls["chain"].as_array().unwrap().len(), 3);

    assert_eq!(v["sign"]["chain_len"], 3);
    assert_eq!(v["sign"]["valid"], true);
    assert_eq!(v["sign"]["tampered_valid"], false);

    let dk = &v["tappdDeriveKey"];
    assert_eq!(dk["deterministic"], true);
    assert_eq!(dk["chain_len"], 3);

    let tq = &v["tappdTdxQuote"];
    assert_eq!(tq["hash_algorithm"], "sha512");
    assert_eq!(tq["prefix"], "app-data");
    assert_eq!(tq["replay_matches"], true);
    let quote = hex::decode(tq["quote"].as_str().unwrap()).unwrap();
    assert_eq!(
        &quote[568..632],
        sha2::Sha512::digest(b"app-data:legacy report data").as_slice()
    );
    let raw = hex::decode(tq["raw_quote"].as_str().unwrap()).unwrap();
    // The SDK left-pads raw report data to 64 bytes: "0102" as text is 30313032.
    assert_eq!(&raw[628..632], b"0102");
}
