//! The official SDKs (`@phala/dstack-sdk` 0.5.8 from npm and Python
//! `dstack-sdk` 0.5.4 from PyPI, both installed by scripts/deps.sh) and
//! curl, run INSIDE a container of a CVM of a real `berth up`, whose compose
//! file mounts the guest agent exactly as Phala's examples do
//! (`/var/run/dstack.sock:/var/run/dstack.sock`, and
//! `/var/run/tappd.sock:/var/run/tappd.sock` for the legacy client).
//!
//! The image is built from this host's files (nothing is downloaded):
//! busybox; `node` and `curl` with their shared libraries, the JS SDK and
//! the two `@noble` packages it needs; the venv's base Python interpreter
//! with its standard library, `dstack_sdk` and what it imports; and the two
//! scripts `interop/guest-agent-sdk-cvm.{mjs,py}`. What they print (public
//! keys and signatures only) is read back through Berth's container log URL
//! and checked here: the app id is the CVM's, each `GetKey` chain recovers
//! (with k256 alone) to an app key and to `berth up`'s KMS key, the SDKs'
//! RTMR replays equal the quotes' RTMRs, and both curl calls (run by the JS
//! script, as dstack's docs write them) answer 200 JSON with a quote over
//! the report data they sent.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
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
fn sdk_image() -> (ImageSpec, String) {
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
    files.push((
        testkit::interop_path("guest-agent-sdk-cvm.py"),
        "/sdk/guest-agent-sdk-cvm.py".into(),
    ));
    let node: Vec<(&Path, &str)> = files
        .iter()
        .map(|(host, image)| (host.as_path(), image.as_str()))
        .collect();
    let (interpreter, python) = python_files();
    let python: Vec<(&Path, &str)> = python
        .iter()
        .map(|(host, image)| (host.as_path(), image.as_str()))
        .collect();
    let spec = ImageSpec::new()
        .busybox()
        .host_files(&node)
        .host_files(&python);
    (spec, interpreter)
}

/// The packages of the venv's site-packages that `dstack_sdk` imports.
const PY_PACKAGES: &[&str] = &[
    "dstack_sdk",
    "annotated_types",
    "anyio",
    "certifi",
    "click",
    "cryptography",
    "cytoolz",
    "eth_hash",
    "eth_keys",
    "eth_typing",
    "eth_utils",
    "h11",
    "httpcore",
    "httpx",
    "idna",
    "pydantic",
    "pydantic_core",
    "toolz",
    "typing_extensions",
    "typing_inspection",
    "_cffi_backend",
];

/// The folders of the standard library a container has no use for.
const PY_STDLIB_SKIPPED: &[&str] = &[
    "test",
    "site-packages",
    "idlelib",
    "tkinter",
    "ensurepip",
    "lib2to3",
    "turtledemo",
    "pydoc_data",
    "unittest",
    "distutils",
];

/// The extension modules (`*.so`) at or under `path`.
fn shared_objects(path: &Path, found: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap().flatten() {
            shared_objects(&entry.path(), found);
        }
    } else if path.extension().is_some_and(|e| e == "so") {
        found.push(path.to_path_buf());
    }
}

/// The venv's base interpreter (at its own path, so it finds its prefix),
/// its libraries, its standard library (no tests, no tools) and, in its own
/// site-packages, the venv's `dstack_sdk` and what it imports.
fn python_files() -> (String, Vec<(PathBuf, String)>) {
    let venv = testkit::repo_root().join(".deps/venv");
    let out = std::process::Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import sys, sysconfig; print(sys.base_prefix); print(sysconfig.get_python_version()); print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .expect("the venv's python runs (scripts/deps.sh makes it)");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (prefix, version, site) = (lines[0], lines[1], Path::new(lines[2]));
    let binary = format!("{prefix}/bin/python{version}");
    let mut files = host_programs(&[&binary]);
    let stdlib = format!("{prefix}/lib/python{version}");
    let mut shared = Vec::new();
    for entry in std::fs::read_dir(&stdlib).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if PY_STDLIB_SKIPPED.contains(&name.as_str()) || name.starts_with("config-") {
            continue;
        }
        files.push((entry.path(), format!("{stdlib}/{name}")));
    }
    for entry in std::fs::read_dir(format!("{stdlib}/lib-dynload"))
        .unwrap()
        .flatten()
    {
        shared.push(entry.path());
    }
    for entry in std::fs::read_dir(site).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let package = name
            .split(['.', '-'])
            .next()
            .unwrap_or_default()
            .to_lowercase()
            .replace('-', "_");
        if PY_PACKAGES.contains(&package.as_str()) {
            shared_objects(&entry.path(), &mut shared);
            files.push((entry.path(), format!("{stdlib}/site-packages/{name}")));
        }
    }
    // The libraries the extension modules link to (libssl, libffi, …).
    let shared: Vec<String> = shared
        .iter()
        .map(|p| p.display().to_string())
        .filter(|p| p.ends_with(".so"))
        .collect();
    let shared: Vec<&str> = shared.iter().map(String::as_str).collect();
    for (host, image) in host_programs(&shared) {
        if !shared.contains(&image.as_str()) && !files.iter().any(|(_, i)| *i == image) {
            files.push((host, image));
        }
    }
    (binary, files)
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

/// Checks a `getKey` answer's chain as an outside verifier would, with
/// k256 alone: `signature_chain[0]` recovers to an app key over
/// `purpose ":" hex(derived pubkey)`, and `signature_chain[1]` over
/// `"dstack-kms-issued:" app_id app_pub` to `kms_pubkey`.
fn check_chain(answer: &Value, purpose: &str, app_id: &str, kms_pubkey: &str) {
    let chain: Vec<&str> = answer["signature_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(chain.len(), 2, "{answer}");
    let derived = answer["derived_pubkey"].as_str().unwrap();
    let app_pub = recover(format!("{purpose}:{derived}").as_bytes(), chain[0]);
    let mut kms_msg = b"dstack-kms-issued:".to_vec();
    kms_msg.extend(hex::decode(app_id).unwrap());
    kms_msg.extend(hex::decode(&app_pub).unwrap());
    assert_eq!(
        recover(&kms_msg, chain[1]),
        kms_pubkey.trim_start_matches("0x").to_lowercase(),
        "the chain does not end at the KMS key: {answer}"
    );
}

/// The container log through the URL the API hands out, until it holds
/// both scripts' lines (or a failure); the JSON of the `BERTH-SDK ` and
/// `BERTH-PY-SDK ` lines.
fn sdk_output(cloud: &Cloud, id: &str) -> (Value, Value) {
    let (code, comp) = admin(cloud, "GET", &format!("/cvms/{id}/composition"), None);
    assert_eq!(code, 200, "{comp}");
    let url = comp["containers"][0]["log_endpoint"]
        .as_str()
        .unwrap_or_else(|| panic!("no log_endpoint: {comp}"))
        .to_owned();
    let line = |log: &str, prefix: &str| -> Option<Value> {
        let json = log.lines().find_map(|l| l.split_once(prefix))?.1;
        Some(serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}")))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, log) = curl(&[], &format!("{url}&tail=all"));
        assert!(
            !log.contains("SDK-FAILED"),
            "an SDK script failed in the container:\n{log}"
        );
        if let (Some(js), Some(py)) = (line(&log, "BERTH-SDK "), line(&log, "BERTH-PY-SDK ")) {
            return (js, py);
        }
        assert!(
            Instant::now() < deadline,
            "no SDK lines within 60 s ({status}):\n{log}"
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
    let (spec, python) = sdk_image();
    let pushed = push_image(&PushTarget::new(&host), "acme/sdk", "1", &spec);
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

    // The volumes of a Phala example: both sockets, short syntax. No
    // network: the agent is reached by its sockets alone (and a busy test
    // host may have no address pool left for one).
    let compose = format!(
        "services:\n  app:\n    image: {host}/acme/sdk:1\n    network_mode: none\n    command: [\"sh\", \"-c\", \"node /sdk/guest-agent-sdk-cvm.mjs || echo BERTH-SDK-FAILED; {python} /sdk/guest-agent-sdk-cvm.py || echo BERTH-PY-SDK-FAILED; exec sleep 600\"]\n    volumes:\n      - /var/run/dstack.sock:/var/run/dstack.sock\n      - /var/run/tappd.sock:/var/run/tappd.sock\n"
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

    let (v, py) = sdk_output(&cloud, &id);
    eprintln!("{}", serde_json::to_string_pretty(&v).unwrap());
    eprintln!("{}", serde_json::to_string_pretty(&py).unwrap());

    // Info: this CVM's identity, and honest about the TEE.
    assert_eq!(v["reachable"], true);
    assert_eq!(v["info"]["app_id"], app_id.as_str());
    assert_eq!(v["info"]["compose_hash"], p["compose_hash"]);
    assert_eq!(v["info"]["simulated_tee"], true);

    // getKey(path, purpose): the chain recovers, with k256 alone, to an app
    // key (over `purpose ":" hex(derived pubkey)`) and that app key to the
    // KMS key `berth up` printed (over `"dstack-kms-issued:" app_id app_pub`).
    check_chain(&v["getKey"], "signing", &app_id, &cloud.kms_pubkey);

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
    // The official Python SDK, in the same container.
    assert_eq!(py["info"]["app_id"], app_id.as_str());
    assert_eq!(py["info"]["compose_hash"], p["compose_hash"]);
    check_chain(&py["get_key"], "signing", &app_id, &cloud.kms_pubkey);
    let gq = &py["get_quote"];
    assert_eq!(gq["replayed"], gq["rtmrs_in_quote"], "{gq}");
    assert_eq!(
        gq["report_data_in_quote"],
        format!("{:0<128}", hex::encode("berth-py-in-cvm")).as_str()
    );
    assert_eq!(py["get_tls_key"]["chain_len"], 3);
    assert_eq!(py["sign"]["valid"], true);
    assert_eq!(py["tappd"]["derive_chain_len"], 3);
    assert_eq!(py["tappd"]["replayed"], py["tappd"]["rtmrs_in_quote"]);

    eprintln!(
        "the SDK inside a CVM: {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
}
