//! The web console end to end: a real headless Chromium (Debian's
//! `chromium`, driven by `e2e/console.mjs` with playwright-core) against one
//! real `berth up` (API, KMS, node on a private Docker engine), a GHCR-style
//! registry with a password (`ghcr.io` mapped to it with
//! `--registry-endpoint`) and a private ECR (moto). The browser deploys
//! through the form with GHCR and with AWS ECR, fails a boot with a wrong
//! password, updates secrets, and records every request it sends; this
//! side then checks what a user or an auditor would: the script's verdicts,
//! that no recorded request, nothing `berth up` said and nothing in its
//! database holds a password,
//! that `berth unseal` opens what the page sealed and refuses it tampered,
//! and that the page's checks agree with the rules' definitions
//! (`contract::env_rules`, `registry::credentials`).
//! Screenshots go to `target/test-artifacts/console/`.

mod common;
use common::*;
use serde_json::{Value, json};
use std::process::Command;
use testkit::Dockerd;
use testkit::Registry;
use testkit::images::{ImageSpec, PushTarget, push_image};

const GHCR_PW: &str = "canary-console-ghcr-pat-41c9";
const WRONG_PW: &str = "canary-console-wrong-pat-77d0";
const AWS_SECRET: &str = "canary-console-aws-secret-0b3e";
const GREETING: &str = "hello-from-the-console-5a1";
const GREETING2: &str = "updated-from-the-console-9f2";
const MESSAGE: &str = "ecr-says-hi-3c7";
const OTHER_GREETING: &str = "other-registry-says-hi-8e4";
const HUB_GREETING: &str = "docker-hub-says-hi-c71";
const UNSEAL_VALUE: &str = "sealed in the browser: é \"quoted\"\nsecond line";
const ADMIN_KEY: &str = "berth_console_admin_key_0123456789";

#[test]
fn console_deploys_updates_and_never_sends_a_plaintext_secret() {
    let engine = Dockerd::start();
    let ghcr = Registry::with_htpasswd(&[("octocat", GHCR_PW)]);
    push_image(
        &PushTarget::new(&ghcr.host_port()).with_creds("octocat", GHCR_PW),
        "octocat/web",
        "1",
        &ImageSpec::new().busybox(),
    );
    let ecr = Ecr::start();
    ecr.push("team/api", "2", &ImageSpec::new().busybox());

    let dir = tempdir("console-e2e");
    let mut cmd = Cloud::command(
        &dir.join("state"),
        &engine.host(),
        Some(ADMIN_KEY),
        &[
            &format!("--registry-endpoint=ghcr.io={}", ghcr.base_url()),
            &format!("--registry-endpoint=docker.io={}", ghcr.base_url()),
            &format!(
                "--registry-endpoint={}={}",
                ghcr.host_port(),
                ghcr.base_url()
            ),
            &format!(
                "--registry-endpoint={}={}",
                ecr.host,
                ecr.registry.base_url()
            ),
        ],
    );
    cmd.env("AWS_ENDPOINT_URL_ECR", ecr.moto.endpoint());
    let cloud = Cloud::spawn(cmd).unwrap_or_else(|out| panic!("berth up did not start:\n{out}"));
    assert!(
        cloud
            .output()
            .contains(&format!("Web console:    {}/", cloud.listening)),
        "berth up prints the console URL:\n{}",
        cloud.output()
    );

    // A second `berth up`, over HTTPS (`--tls-cert`), for the check that the
    // page seals in a secure context on a name that is not loopback. Chromium
    // trusts the test CA's certificate by its key (SPKI hash flag) and
    // resolves the name to 127.0.0.1.
    let ca = testkit::TestCa::new("berth console test CA");
    let cert = ca.issue_server_cert(&["berth-console.test"]);
    let (cert_file, cert_key) = (dir.join("console.pem"), dir.join("console.key"));
    std::fs::write(&cert_file, &cert.cert_pem).unwrap();
    std::fs::write(&cert_key, &cert.key_pem).unwrap();
    let tls_cloud = Cloud::start(
        &dir.join("tls-state"),
        &engine.host(),
        Some(ADMIN_KEY),
        &[
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            cert_key.to_str().unwrap(),
        ],
    );
    assert!(tls_cloud.listening.starts_with("https://127.0.0.1:"));
    let spki = Command::new("sh")
        .arg("-c")
        .arg("openssl x509 -in \"$1\" -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64")
        .arg("sh")
        .arg(&cert_file)
        .output()
        .expect("openssl");
    let spki = String::from_utf8_lossy(&spki.stdout).trim().to_owned();
    assert_eq!(spki.len(), 44, "SPKI hash of the test certificate");
    let https_url = tls_cloud
        .listening
        .replace("https://127.0.0.1:", "https://berth-console.test:");

    let (key_file, pubkey) = keygen(&dir);
    let artifacts = repo_root().join("target/test-artifacts/console");
    let _ = std::fs::remove_dir_all(&artifacts);
    let results_file = dir.join("results.json");
    let ecr_corpus = ecr_corpus(&ecr.host);
    let key_corpus = [
        "GREETING",
        "_x",
        "A1",
        "1A",
        "A-B",
        "A B",
        "",
        "ÄB",
        &"K".repeat(255),
        &"K".repeat(256),
    ];
    let compose = |image: &str, var: &str| {
        format!(
            "services:\n  app:\n    image: {image}\n    network_mode: none\n    environment:\n      - {var}=${{{var}}}\n    command: [\"sh\", \"-c\", \"echo app says $${var}; sleep 600\"]\n"
        )
    };
    let config = json!({
        "url": cloud.listening,
        "key": ADMIN_KEY,
        "artifacts": artifacts,
        "out": results_file,
        "ghcr": {
            "name": "ghcr-app",
            "compose": compose("ghcr.io/octocat/web:1", "GREETING"),
            "user": "octocat",
            "password": GHCR_PW,
            "greeting": GREETING,
            "greeting2": GREETING2,
        },
        "ecr": {
            "name": "ecr-app",
            "compose": compose(&format!("{}/team/api:2", ecr.host), "MESSAGE"),
            "host": ecr.host,
            "region": "us-east-1",
            "secret": AWS_SECRET,
            "message": MESSAGE,
        },
        "other": {
            "name": "other-app",
            "compose": compose(&format!("{}/octocat/web:1", ghcr.host_port()), "GREETING"),
            "registry": ghcr.host_port(),
            "greeting": OTHER_GREETING,
        },
        "hub": {
            "name": "hub-app",
            "compose": compose("octocat/web:1", "GREETING"),
            "greeting": HUB_GREETING,
        },
        "wrong": {"name": "wrong-pat", "password": WRONG_PW},
        "https": {"url": https_url, "spki": spki},
        "secrets": [GHCR_PW, WRONG_PW, AWS_SECRET, GREETING, GREETING2, MESSAGE, OTHER_GREETING, HUB_GREETING],
        "unseal_pubkey": pubkey,
        "unseal_vars": [{"key": "FIRST", "value": UNSEAL_VALUE}, {"key": "EMPTY", "value": ""}],
        "ecr_corpus": ecr_corpus,
        "key_corpus": key_corpus,
        "dotenv_corpus": DOTENV_CORPUS,
    });
    let config_file = dir.join("config.json");
    std::fs::write(&config_file, config.to_string()).unwrap();

    let script = repo_root().join("e2e/console.mjs");
    assert!(
        repo_root()
            .join("e2e/node_modules/playwright-core")
            .exists(),
        "e2e/node_modules is missing: run `make test` (scripts/deps.sh runs npm ci in e2e/)"
    );
    let out = Command::new("node")
        .arg(&script)
        .arg(&config_file)
        .current_dir(repo_root().join("e2e"))
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    let summary = stdout.lines().last().unwrap_or("");
    assert!(
        out.status.success() && summary.ends_with(" passed, 0 failed"),
        "browser checks failed: {summary}\n{stdout}\n{stderr}\nberth up:\n{}",
        cloud.output()
    );
    let passed: usize = summary.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 24, "{summary}");

    // Screenshots of the form, the list and a CVM page.
    for png in [
        "deploy-form",
        "cvm-list",
        "cvm-page-running",
        "cvm-page-boot-failed",
    ] {
        let p = artifacts.join(format!("{png}.png"));
        assert!(
            std::fs::metadata(&p).is_ok_and(|m| m.len() > 1000),
            "{}",
            p.display()
        );
    }

    // What the browser sent, and what berth up said: no plaintext secret.
    let sent = std::fs::read_to_string(artifacts.join("requests.json")).unwrap();
    assert!(sent.contains("/api/v1/cvms/provision") && sent.contains("encrypted_env"));
    let said = cloud.output();
    let stored = stored_data(&dir.join("state"));
    assert!(!stored.is_empty(), "no database for the state folder");
    let stored = String::from_utf8_lossy(&stored);
    for secret in [
        GHCR_PW,
        WRONG_PW,
        AWS_SECRET,
        GREETING,
        GREETING2,
        MESSAGE,
        OTHER_GREETING,
    ] {
        assert!(!sent.contains(secret), "a request carried {secret}");
        assert!(!said.contains(secret), "berth up printed {secret}");
        assert!(!stored.contains(secret), "the database holds {secret}");
    }

    // The app's output, read through the API as a user would.
    for (name, text) in [
        ("ghcr-app", GREETING2),
        ("ecr-app", MESSAGE),
        ("other-app", OTHER_GREETING),
    ] {
        let (code, comp) = cloud.call(ADMIN_KEY, "GET", &format!("/cvms/{name}/composition"), None);
        assert_eq!(code, 200, "{comp}");
        let url = comp["containers"][0]["log_endpoint"].as_str().unwrap();
        let (_, logs) = curl(&[], url);
        assert!(logs.contains(&format!("app says {text}")), "{name}: {logs}");
    }
    // The page deleted the CVM whose boot failed.
    let (code, _) = cloud.call(ADMIN_KEY, "GET", "/cvms/wrong-pat", None);
    assert_eq!(code, 404, "wrong-pat was not deleted");

    let results: Value = serde_json::from_str(&std::fs::read_to_string(&results_file).unwrap())
        .expect("the script wrote its results");

    // berth unseal opens what the page sealed (on loopback, and over HTTPS
    // on another name), and refuses it tampered.
    let key_arg = key_file.to_str().unwrap();
    let over_https = results["sealed_https"].as_str().unwrap().to_owned();
    let opened = berth(
        &["unseal", "--key-file", key_arg, "--json"],
        over_https.as_bytes(),
    );
    assert_eq!(opened.code, 0, "{}", opened.stderr);
    assert!(opened.stdout.contains("FIRST"), "{}", opened.stdout);
    drop(tls_cloud);
    let sealed = results["sealed"].as_str().unwrap().to_owned();
    let opened = berth(
        &["unseal", "--key-file", key_arg, "--json"],
        sealed.as_bytes(),
    );
    assert_eq!(opened.code, 0, "{}", opened.stderr);
    let env: Value = serde_json::from_str(&opened.stdout).unwrap();
    assert_eq!(
        env,
        json!({"env": [{"key": "FIRST", "value": UNSEAL_VALUE}, {"key": "EMPTY", "value": ""}]})
    );
    let mut tampered = sealed.into_bytes();
    let at = tampered.len() - 40; // inside the ciphertext
    tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
    let refused = berth(&["unseal", "--key-file", key_arg, "--json"], &tampered);
    assert_ne!(
        refused.code, 0,
        "a tampered env was opened: {}",
        refused.stdout
    );
    assert!(!refused.stdout.contains("sealed in the browser"));

    // The page's checks are the rules' definitions.
    let rules = &results["rules"];
    let limits = contract::env_rules::Limits::GUEST;
    assert_eq!(rules["env"]["max_vars"], limits.max_vars);
    assert_eq!(rules["env"]["max_value_bytes"], limits.max_value_bytes);
    assert_eq!(rules["env"]["max_total_bytes"], limits.max_total_bytes);
    assert_eq!(rules["env"]["max_key_bytes"], limits.max_key_bytes);
    use registry::credentials as c;
    let told = &rules["registry"];
    assert_eq!(
        [
            &told["docker"]["username"],
            &told["docker"]["password"],
            &told["docker"]["registry"],
            &told["ecr"]["access_key_id"],
            &told["ecr"]["secret_access_key"],
            &told["ecr"]["region"],
            &told["ecr"]["registry"],
            &told["ecr"]["session_token"],
        ]
        .map(|v| v.as_str().unwrap().to_owned()),
        c::CREDENTIAL_VARIABLES.map(str::to_owned)
    );
    for (i, (host, region)) in ecr_corpus.iter().enumerate() {
        let vars: Vec<(String, contract::SecretValue)> = [
            (c::AWS_ACCESS_KEY_ID, "AKIAEXAMPLE"),
            (c::AWS_SECRET_ACCESS_KEY, "x"),
            (c::AWS_REGION, region.as_str()),
            (c::AWS_ECR_REGISTRY, host.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into()))
        .collect();
        let accepted = c::CredentialSet::from_env_pairs(&vars).is_ok();
        assert_eq!(
            results["ecr"][i], accepted,
            "the page and registry::credentials disagree on {host} in {region}"
        );
    }
    // The page's Text mode reads `.env` as `berth seal` does.
    for (i, text) in DOTENV_CORPUS.iter().enumerate() {
        let ours = envseal::parse_dotenv("t", text).ok().map(|env| {
            env.vars()
                .iter()
                .map(|v| json!([v.key, v.value.expose()]))
                .collect::<Vec<_>>()
        });
        assert_eq!(
            results["dotenv"][i],
            json!(ours),
            "the page and envseal read {text:?} differently"
        );
    }
    for (i, key) in key_corpus.iter().enumerate() {
        let valid = contract::env_rules::is_valid_key(key) && key.len() <= limits.max_key_bytes;
        assert_eq!(
            results["keys"][i], valid,
            "the page and contract disagree on `{key}`"
        );
    }
    cloud.stop();
}

/// `.env` texts on both sides of envseal's dialect.
const DOTENV_CORPUS: &[&str] = &[
    "A=1\nB=two words  \n",
    "# comment\n\n  export   KEY = value # trailing comment\nX=a#b\n",
    "Q='single $literal \\n'\nD=\"double \\n \\t \\\" \\\\ \\q\"\n",
    "M=\"line one\nline two\"\nN='a\r\nb'\r\n",
    "E=\nF=''\nG=\"\"\n",
    "export=1\nexportX=2\n",
    "DUP=1\nDUP=2\n",
    "NOEQUALS\n",
    "=value\n",
    "U='never closed\n",
    "T=\"closed\" trailing\n",
    "T2=\"closed\"   # ok\n",
    "UNI=héllo wörld ✓\n",
    "P=$HOME ${X} `cmd`\n",
];

/// (registry host, region) pairs on both sides of registry::credentials'
/// ECR rule.
fn ecr_corpus(moto_host: &str) -> Vec<(String, String)> {
    [
        (moto_host, "us-east-1"),
        (moto_host, "us-west-2"),
        ("123456789012.dkr.ecr.eu-west-1.amazonaws.com", "eu-west-1"),
        ("123456789012.dkr.ecr.eu-west-1.amazonaws.com", "eu-west-2"),
        (
            "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
            "cn-north-1",
        ),
        (
            "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com",
            "us-gov-west-1",
        ),
        (
            "HTTPS://123456789012.DKR.ECR.US-EAST-1.AMAZONAWS.COM/",
            "us-east-1",
        ),
        ("12345678901.dkr.ecr.us-east-1.amazonaws.com", "us-east-1"),
        (
            "123456789012.dkr.ecr.-us-east-1.amazonaws.com",
            "-us-east-1",
        ),
        (
            "123456789012.dkr.ecr.us-east-1-.amazonaws.com",
            "us-east-1-",
        ),
        ("123456789012.dkr.ecr..amazonaws.com", ""),
        ("ghcr.io", "us-east-1"),
        ("123456789012.dkr.ecr.us_east_1.amazonaws.com", "us_east_1"),
        (
            "123456789012.dkr.ecr.us-east-1.amazonaws.com",
            " us-east-1 ",
        ),
    ]
    .iter()
    .map(|(h, r)| (h.to_string(), r.to_string()))
    .collect()
}
