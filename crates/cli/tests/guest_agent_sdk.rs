//! The official JS SDK (`@phala/dstack-sdk` 0.5.8, from npm into interop/)
//! and curl, run INSIDE a container of a CVM of a real `berth up`, whose
//! compose file mounts the guest agent exactly as Phala's examples do
//! (`/var/run/dstack.sock:/var/run/dstack.sock`, and
//! `/var/run/tappd.sock:/var/run/tappd.sock` for the legacy client).
//!
//! The image is built from this host's files (nothing is downloaded):
//! busybox, `node` and `curl` with their shared libraries, the SDK and the
//! two `@noble` packages it needs, and `interop/guest-agent-sdk-cvm.mjs`.
//! What the script prints is read back through Berth's container log URL
//! and checked here: the app id is the CVM's, the `GetKey` chain recovers
//! (with k256 alone) to an app key and to `berth up`'s KMS key, the SDK's
//! `replayRtmrs` equals the quote's RTMRs, and both curl calls answer 200
//! JSON with a quote over the report data they sent.

mod common;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};
use testkit::images::{ImageSpec, PushTarget, host_programs, push_image};
use testkit::{Dockerd, Registry};

const ADMIN_KEY: &str = "berth_test_admin_key_0123456789";

fn admin(cloud: &Cloud, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let (code, text) = cloud.request(ADMIN_KEY, None, method, path, body);
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// busybox, `node` and `curl` (with their libraries), the SDK and the
/// script at `/sdk/`.
fn sdk_image() -> ImageSpec {
    let modules = testkit::interop_path("node_modules");
    let mut files = host_programs(&["/usr/bin/node", "/usr/bin/curl"]);
    for package in ["@phala/dstack-sdk", "@noble/curves", "@noble/hashes"] {
        files.push((
            modules.join(package),
            format!("/sdk/node_modules/{package}"),
        ));
    }
    files.push((
        testkit::interop_path("guest-agent-sdk-cvm.mjs"),
        "/sdk/guest-agent-sdk-cvm.mjs".into(),
    ));
    let files: Vec<(&std::path::Path, &str)> = files
        .iter()
        .map(|(host, image)| (host.as_path(), image.as_str()))
        .collect();
    ImageSpec::new().busybox().host_files(&files)
}

/// The signer (compressed, hex) of the 65-byte recoverable `sig` (hex) over
/// keccak256(`message`), with k256 alone.
fn recover(message: &[u8], sig: &str) -> String {
    use sha3::Digest as _;
    let sig = hex::decode(sig.trim_start_matches("0x")).unwrap();
    assert_eq!(sig.len(), 65);
    let digest: [u8; 32] = sha3::Keccak256::digest(message).into();
    let key = k256::ecdsa::VerifyingKey::recover_from_prehash(
        &digest,
        &k256::ecdsa::Signature::from_slice(&sig[..64]).unwrap(),
        k256::ecdsa::RecoveryId::from_byte(sig[64]).unwrap(),
    )
    .unwrap();
    hex::encode(key.to_encoded_point(true).as_bytes())
}

/// The container log through the URL the API hands out, until it holds the
/// script's line (or its failure); that line's JSON.
fn sdk_output(cloud: &Cloud, id: &str) -> Value {
    let (code, comp) = admin(cloud, "GET", &format!("/cvms/{id}/composition"), None);
    assert_eq!(code, 200, "{comp}");
    let url = comp["containers"][0]["log_endpoint"]
        .as_str()
        .unwrap_or_else(|| panic!("no log_endpoint: {comp}"))
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, log) = curl(&[], &format!("{url}&tail=all"));
        if let Some(line) = log.lines().find_map(|l| l.split_once("BERTH-SDK ")) {
            return serde_json::from_str(line.1).unwrap_or_else(|e| panic!("{e}: {}", line.1));
        }
        assert!(
            !log.contains("BERTH-SDK-FAILED"),
            "the SDK script failed in the container:\n{log}"
        );
        assert!(
            Instant::now() < deadline,
            "no SDK line within 60 s ({status}):\n{log}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn official_js_sdk_and_curl_inside_a_cvm_reach_its_agent() {
    let started = Instant::now();
    let engine = Dockerd::start();
    let reg = Registry::start();
    let host = reg.host_port();
    let built = Instant::now();
    let pushed = push_image(&PushTarget::new(&host), "acme/sdk", "1", &sdk_image());
    let size: u64 = pushed.image.layers.iter().map(|l| l.size).sum();
    eprintln!(
        "SDK image: {:.1} MB compressed in {} layers, built and pushed in {:.1} s",
        size as f64 / 1e6,
        pushed.image.layers.len(),
        built.elapsed().as_secs_f64()
    );
    let endpoint = format!("--registry-endpoint={host}={}", reg.base_url());
    let dir = tempdir("gsdk");
    let cloud = Cloud::start(
        &dir.join("state"),
        &engine.host(),
        Some(ADMIN_KEY),
        &[&endpoint],
    );

    // The compose file of a Phala example: both sockets, short syntax.
    let compose = format!(
        "services:\n  app:\n    image: {host}/acme/sdk:1\n    command: [\"sh\", \"-c\", \"node /sdk/guest-agent-sdk-cvm.mjs || echo BERTH-SDK-FAILED; exec sleep 600\"]\n    volumes:\n      - /var/run/dstack.sock:/var/run/dstack.sock\n      - /var/run/tappd.sock:/var/run/tappd.sock\n"
    );
    let (code, p) = admin(
        &cloud,
        "POST",
        "/cvms/provision",
        Some(
            &serde_json::json!({"name": "sdk-app", "compose_file": {"docker_compose_file": compose, "allowed_envs": []}}),
        ),
    );
    assert_eq!(code, 200, "provision: {p}");
    let (code, c) = admin(
        &cloud,
        "POST",
        "/cvms",
        Some(
            &serde_json::json!({"app_id": p["app_id"], "compose_hash": p["compose_hash"], "name": "sdk-app"}),
        ),
    );
    assert_eq!(code, 200, "commit: {c}");
    let (_, cvm) = admin(&cloud, "GET", "/cvms/sdk-app", None);
    let id = cvm["id"].as_str().unwrap().to_owned();
    let app_id = cvm["app_id"].as_str().unwrap().to_owned();
    eventually(120, "the CVM to boot", || {
        !admin(&cloud, "GET", &format!("/cvms/{id}"), None).1["in_progress"]
            .as_bool()
            .unwrap_or(true)
    });
    let (_, cvm) = admin(&cloud, "GET", &format!("/cvms/{id}"), None);
    assert_eq!(
        cvm["status"],
        "running",
        "{cvm}\n{}",
        cloud.serial_log(ADMIN_KEY, &id, "no secret in this test")
    );

    let v = sdk_output(&cloud, &id);
    eprintln!("{}", serde_json::to_string_pretty(&v).unwrap());

    // Info: this CVM's identity, and honest about the TEE.
    assert_eq!(v["reachable"], true);
    assert_eq!(v["info"]["app_id"], app_id.as_str());
    assert_eq!(v["info"]["compose_hash"], p["compose_hash"]);
    assert_eq!(v["info"]["simulated_tee"], true);

    // getKey(path, purpose): the chain recovers, with k256 alone, to an app
    // key (over `purpose ":" hex(derived pubkey)`) and that app key to the
    // KMS key `berth up` printed (over `"dstack-kms-issued:" app_id app_pub`).
    let gk = &v["getKey"];
    let chain: Vec<&str> = gk["signature_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(chain.len(), 2, "{gk}");
    let derived = gk["derived_pubkey"].as_str().unwrap();
    let app_pub = recover(format!("signing:{derived}").as_bytes(), chain[0]);
    let mut kms_msg = b"dstack-kms-issued:".to_vec();
    kms_msg.extend(hex::decode(&app_id).unwrap());
    kms_msg.extend(hex::decode(&app_pub).unwrap());
    assert_eq!(
        recover(&kms_msg, chain[1]),
        cloud.kms_pubkey.trim_start_matches("0x").to_lowercase(),
        "the chain does not end at the KMS key"
    );

    // getQuote: report data at its place, the SDK's replay equals the
    // quote's RTMRs, and the emitted event is in the log it replayed.
    let gq = &v["getQuote"];
    assert_eq!(gq["report_data_in_quote"], gq["report_data_expected"]);
    assert_eq!(gq["replayed"], gq["rtmrs_in_quote"], "{gq}");
    assert!(
        gq["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "berth-sdk-event"),
        "{gq}"
    );
    for event in ["app-id", "compose-hash"] {
        assert!(
            gq["events"].as_array().unwrap().iter().any(|e| e == event),
            "{gq}"
        );
    }

    // getTlsKey, sign/verify, and the legacy TappdClient.
    assert_eq!(v["getTlsKey"]["key_is_pkcs8_pem"], true);
    assert_eq!(v["getTlsKey"]["chain_len"], 3);
    assert_eq!(v["sign"]["valid"], true);
    assert_eq!(v["sign"]["tampered_valid"], false);
    assert_eq!(v["tappdDeriveKey"]["deterministic"], true);
    let tq = &v["tappdTdxQuote"];
    assert_eq!(tq["hash_algorithm"], "sha512");
    assert_eq!(tq["replayed"], tq["rtmrs_in_quote"], "{tq}");

    // The two curl commands of dstack's docs: 200, JSON, a quote over the
    // report data they sent.
    let expected = format!("{:0<128}", "1234deadbeef");
    for call in ["curlTdxQuote", "curlGetQuote"] {
        let c = &v[call];
        assert_eq!(c["status"], 200, "{call}: {c}");
        assert_eq!(c["json"], true, "{call}: {c}");
        assert!(
            c["content_type"]
                .as_str()
                .unwrap_or("")
                .starts_with("application/json"),
            "{call}: {c}"
        );
        assert!(c["quote_bytes"].as_u64().unwrap() > 632, "{call}: {c}");
        assert_eq!(c["report_data_in_quote"], expected.as_str(), "{call}: {c}");
    }
    eprintln!(
        "the SDK inside a CVM: {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
}
