//! Each route of the guest agent over a real Unix socket, with its bad
//! inputs: 400 and a sentence, 404 for unknown routes, the 1 MiB cap.

mod common;

use common::{App, Served, post, recover, request};
use sha2::Digest;

fn served() -> (App, Served) {
    let app = App::new(1, 2);
    let s = Served::start(&app);
    (app, s)
}

#[test]
fn get_key_chain_recovers_to_the_app_key_and_the_kms_root() {
    let (app, s) = served();
    let r = post(
        &s.dstack,
        "/GetKey",
        r#"{"path":"wallet/eth","purpose":"signing"}"#,
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    let key = hex::decode(v["key"].as_str().unwrap()).unwrap();
    let derived = k256::ecdsa::SigningKey::from_slice(&key).unwrap();
    let pub_hex = hex::encode(derived.verifying_key().to_sec1_bytes());
    let chain: Vec<Vec<u8>> = v["signature_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| hex::decode(s.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(chain.len(), 2);
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
    // The derivation itself, recomputed: HKDF-SHA256(app key, salt RATLS, info path).
    let mut okm = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(b"RATLS"), &app.app_key())
        .expand(b"wallet/eth", &mut okm)
        .unwrap();
    assert_eq!(key, okm);
}

#[test]
fn every_answer_has_content_length_and_ascii_json() {
    let (_app, s) = served();
    for path in ["/Info", "/Version", "/prpc/Tappd.Info", "/NoSuchRoute"] {
        let r = post(&s.dstack, path, "{}");
        let len: usize = r
            .header("content-length")
            .expect("content-length")
            .parse()
            .unwrap();
        assert_eq!(len, r.body.len(), "{path}");
        assert!(r.header("transfer-encoding").is_none(), "{path}: chunked");
        assert!(r.body.is_ascii(), "{path}: non-ASCII JSON");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
}

#[test]
fn info_says_simulated_and_carries_tcb_info() {
    let (app, s) = served();
    let v = post(&s.tappd, "/Info", "").json();
    assert_eq!(v["app_id"], hex::encode(app.app_id));
    assert_eq!(v["compose_hash"], app.compose_hash());
    assert_eq!(v["app_name"], "agent-test");
    assert_eq!(v["simulated_tee"], true);
    let tcb: serde_json::Value = serde_json::from_str(v["tcb_info"].as_str().unwrap()).unwrap();
    assert_eq!(tcb["app_compose"], app.app_compose);
    assert!(tcb["tee"].as_str().unwrap().contains("simulated"));
    let names: Vec<&str> = tcb["event_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for want in [
        "app-id",
        "compose-hash",
        "instance-id",
        "key-provider",
        "system-ready",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
}

#[test]
fn quote_verifies_and_its_event_log_replays_to_rtmr3() {
    let (app, s) = served();
    let r = post(
        &s.dstack,
        "/EmitEvent",
        r#"{"event":"my-app","payload":"0x0102"}"#,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = post(&s.dstack, "/GetQuote", r#"{"report_data":"0xdeadbeef"}"#).json();
    let quote = hex::decode(v["quote"].as_str().unwrap()).unwrap();
    let key = common::attestation_key().public_key();
    let q = agent::verify_quote(&quote, &key, &app.compose_hash()).unwrap();
    assert_eq!(&q.report_data[..4], &[0xde, 0xad, 0xbe, 0xef]);
    assert!(q.report_data[4..].iter().all(|b| *b == 0));
    q.check_event_log(v["event_log"].as_str().unwrap()).unwrap();
    // RTMR3 replayed here independently: sha384(mr ‖ digest) over imr-3 events,
    // each digest recomputed as sha384(type_le ":" name ":" payload).
    let events: Vec<serde_json::Value> =
        serde_json::from_str(v["event_log"].as_str().unwrap()).unwrap();
    let mut mr = [0u8; 48];
    for e in events.iter().filter(|e| e["imr"] == 3) {
        let mut d = sha2::Sha384::new();
        d.update(0x0800_0001u32.to_le_bytes());
        d.update(format!(":{}:", e["event"].as_str().unwrap()));
        d.update(hex::decode(e["event_payload"].as_str().unwrap()).unwrap());
        let digest = d.finalize();
        assert_eq!(hex::encode(digest), e["digest"].as_str().unwrap());
        let mut h = sha2::Sha384::new();
        h.update(mr);
        h.update(digest);
        mr = h.finalize().into();
    }
    assert_eq!(mr, q.rtmrs[3]);
    assert_eq!(events.last().unwrap()["event"], "my-app");
    // Another compose hash or another key is refused.
    assert!(matches!(
        agent::verify_quote(&quote, &key, &"00".repeat(32)),
        Err(agent::QuoteError::OtherComposeHash { .. })
    ));
    let other = agent::AttestationKey::from_seed(&[8u8; 32]).public_key();
    assert_eq!(
        agent::verify_quote(&quote, &other, &app.compose_hash()),
        Err(agent::QuoteError::OtherKey)
    );
    let mut tampered = quote.clone();
    tampered[600] ^= 1;
    assert_eq!(
        agent::verify_quote(&tampered, &key, &app.compose_hash()),
        Err(agent::QuoteError::BadSignature)
    );
}

#[test]
fn get_quote_by_get_with_a_query_string() {
    let (_app, s) = served();
    let r = request(&s.dstack, "GET", "/GetQuote?report_data=0x0a0b", None, b"");
    assert_eq!(r.status, 200);
    assert_eq!(&r.json()["report_data"].as_str().unwrap()[..4], "0a0b");
}

#[test]
fn tdx_quote_hashes_with_its_algorithm_and_prefix() {
    let (_app, s) = served();
    // curl -d sends a form content type; the `?json` marks it as JSON.
    let r = request(
        &s.tappd,
        "POST",
        "/prpc/Tappd.TdxQuote?json",
        Some("application/x-www-form-urlencoded"),
        br#"{"report_data":"68656c6c6f","hash_algorithm":"sha256"}"#,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["hash_algorithm"], "sha256");
    assert_eq!(v["prefix"], "app-data");
    let quote = hex::decode(v["quote"].as_str().unwrap()).unwrap();
    let report = &quote[568..632];
    let want = sha2::Sha256::digest(b"app-data:hello");
    assert_eq!(&report[..32], want.as_slice());
    assert!(report[32..].iter().all(|b| *b == 0));
    // Default sha512; raw passes through.
    let v = post(
        &s.tappd,
        "/prpc/Tappd.TdxQuote",
        r#"{"report_data":"68656c6c6f"}"#,
    )
    .json();
    let quote = hex::decode(v["quote"].as_str().unwrap()).unwrap();
    assert_eq!(
        &quote[568..632],
        sha2::Sha512::digest(b"app-data:hello").as_slice()
    );
    let v = post(
        &s.tappd,
        "/prpc/Tappd.RawQuote",
        r#"{"report_data":"68656c6c6f"}"#,
    )
    .json();
    assert_eq!(v["hash_algorithm"], "raw");
    let quote = hex::decode(v["quote"].as_str().unwrap()).unwrap();
    assert_eq!(&quote[568..573], b"hello");
}

#[test]
fn tls_key_chain_has_three_certificates() {
    let (_app, s) = served();
    let v = post(
        &s.dstack,
        "/GetTlsKey",
        r#"{"subject":"app.example","alt_names":["app.example","10.0.0.1"],"usage_server_auth":true,"usage_ra_tls":true}"#,
    )
    .json();
    assert!(
        v["key"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    let chain = v["certificate_chain"].as_array().unwrap();
    assert_eq!(chain.len(), 3);
    for c in chain {
        assert!(
            c.as_str()
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
    }
    // The app CA is the same on every call; the leaf key is fresh.
    let again = post(&s.dstack, "/GetTlsKey", "{}").json();
    assert_eq!(again["certificate_chain"][1], chain[1]);
    assert_ne!(again["key"], v["key"]);
    // Tappd.DeriveKey is deterministic per path.
    let a = post(
        &s.tappd,
        "/prpc/Tappd.DeriveKey",
        r#"{"path":"/x","subject":"x"}"#,
    )
    .json();
    let b = post(&s.tappd, "/prpc/Tappd.DeriveKey", r#"{"path":"/x"}"#).json();
    assert_eq!(a["key"], b["key"]);
}

#[test]
fn sign_and_verify_round_trip() {
    let (app, s) = served();
    let v = post(
        &s.dstack,
        "/Sign",
        r#"{"algorithm":"secp256k1","data":"68656c6c6f"}"#,
    )
    .json();
    let chain = v["signature_chain"].as_array().unwrap();
    assert_eq!(chain.len(), 3);
    let pubkey = v["public_key"].as_str().unwrap();
    let sig1 = hex::decode(chain[1].as_str().unwrap()).unwrap();
    assert_eq!(
        recover(format!("signing:{pubkey}").as_bytes(), &sig1),
        app.app_pubkey()
    );
    let body = format!(
        r#"{{"algorithm":"secp256k1","data":"68656c6c6f","signature":"{}","public_key":"{pubkey}"}}"#,
        v["signature"].as_str().unwrap()
    );
    assert_eq!(post(&s.dstack, "/Verify", &body).json()["valid"], true);
    let body = body.replace("68656c6c6f", "68656c6c6e");
    assert_eq!(post(&s.dstack, "/Verify", &body).json()["valid"], false);
}

#[test]
fn derive_k256_key_equals_get_key() {
    let (_app, s) = served();
    let a = post(
        &s.tappd,
        "/prpc/Tappd.DeriveK256Key",
        r#"{"path":"p","purpose":"q"}"#,
    )
    .json();
    let b = post(&s.dstack, "/GetKey", r#"{"path":"p","purpose":"q"}"#).json();
    assert_eq!(a["k256_key"], b["key"]);
    assert_eq!(a["k256_signature_chain"], b["signature_chain"]);
}

#[test]
fn bad_input_is_a_400_with_a_sentence() {
    let (_app, s) = served();
    let cases = [
        (
            "/GetQuote",
            format!(r#"{{"report_data":"{}"}}"#, "00".repeat(65)),
            "at most 64",
        ),
        (
            "/GetQuote",
            r#"{"report_data":"zz"}"#.to_string(),
            "not hex",
        ),
        (
            "/prpc/Tappd.TdxQuote",
            r#"{"report_data":"00","hash_algorithm":"md5"}"#.to_string(),
            "unknown hash_algorithm",
        ),
        (
            "/GetKey",
            r#"{"path":"x","algorithm":"rsa"}"#.to_string(),
            "unknown algorithm",
        ),
        ("/GetKey", "{not json".to_string(), "not valid JSON"),
        (
            "/EmitEvent",
            r#"{"event":"","payload":""}"#.to_string(),
            "empty",
        ),
        (
            "/EmitEvent",
            r#"{"event":"app-id","payload":""}"#.to_string(),
            "reserved",
        ),
        (
            "/Attest",
            "{}".to_string(),
            "not available in a simulated CVM",
        ),
        (
            "/GetTlsKey",
            r#"{"not_before":20,"not_after":10}"#.to_string(),
            "earlier",
        ),
    ];
    for (path, body, words) in cases {
        let r = post(&s.dstack, path, &body);
        assert_eq!(r.status, 400, "{path} {body}");
        let e = r.error();
        assert!(e.contains(words), "{path}: {e:?} lacks {words:?}");
    }
    let r = request(
        &s.dstack,
        "POST",
        "/GetKey",
        Some("application/x-www-form-urlencoded"),
        b"garbage",
    );
    assert_eq!(r.status, 400);
}

#[test]
fn unknown_route_is_404() {
    let (_app, s) = served();
    let r = post(&s.dstack, "/prpc/Tappd.Nope", "{}");
    assert_eq!(r.status, 404);
    assert!(r.error().contains("no such route"));
    assert_eq!(post(&s.dstack, "/a/b", "{}").status, 404);
}

#[test]
fn body_over_one_mib_is_refused() {
    let (_app, s) = served();
    let big = format!(r#"{{"event":"x","payload":"{}"}}"#, "00".repeat(600 * 1024));
    let r = post(&s.dstack, "/EmitEvent", &big);
    assert_eq!(r.status, 400);
    assert!(r.error().contains("over 1 MiB"));
}

#[test]
fn missing_fields_default_and_unknown_fields_are_ignored() {
    let (_app, s) = served();
    let r = post(&s.dstack, "/GetKey", r#"{"whatever":1}"#);
    assert_eq!(r.status, 200);
    let r = request(
        &s.dstack,
        "POST",
        "/GetKey",
        Some("application/x-www-form-urlencoded"),
        b"",
    );
    assert_eq!(r.status, 200);
}

#[test]
fn socket_is_not_world_writable_and_a_stale_one_is_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let (app, s) = served();
    let mode = std::fs::metadata(&s.dstack).unwrap().permissions().mode();
    assert_eq!(mode & 0o002, 0, "mode {mode:o}");
    drop(s);
    let dir_keep = testkit::tempdir("agent-stale");
    // A stale socket left by a killed agent: bound again.
    let stale = dir_keep.join("dstack.sock");
    let _l = std::os::unix::net::UnixListener::bind(&stale).unwrap();
    drop(_l);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = agent::AgentConfig {
        identity: app.identity(),
        sockets: vec![stale.clone()],
        attestation_key: common::attestation_key(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let t = std::thread::spawn(move || {
        rt.block_on(agent::serve(config, async {
            let _ = rx.await;
        }))
    });
    let mut ok = false;
    for _ in 0..300 {
        if std::os::unix::net::UnixStream::connect(&stale).is_ok() {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(ok, "the stale socket was not replaced");
    tx.send(()).unwrap();
    t.join().unwrap().unwrap();
    assert!(!stale.exists(), "the socket is removed on stop");
}

#[test]
fn debug_never_shows_the_app_key() {
    let app = App::new(1, 2);
    let identity = app.identity();
    let text = format!("{identity:?} {:?}", common::attestation_key());
    assert!(!text.contains(&hex::encode(app.app_key())));
    assert!(text.contains("redacted"));
}

#[test]
fn a_wrong_kms_signature_is_refused_at_start() {
    let app = App::new(1, 2);
    let mut identity = app.identity();
    identity.app_key_kms_signature[3] ^= 1;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = testkit::tempdir("agent-bad");
    let err = rt
        .block_on(agent::serve(
            agent::AgentConfig {
                identity,
                sockets: vec![dir.join("s")],
                attestation_key: common::attestation_key(),
            },
            async {},
        ))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("KMS"), "{err}");
}
