//! Interop with the official dstack SDK and with an independent implementation.
//! The node and python dependencies are installed by `make test`
//! (`scripts/deps.sh`); these tests fail, rather than skip, without them.

mod common;
use common::*;
use std::process::Command;

/// The variables the official client must get across unchanged.
fn tricky_vars() -> serde_json::Value {
    serde_json::json!([
        {"key": "DSTACK_DOCKER_USERNAME", "value": "alice"},
        {"key": "DSTACK_DOCKER_PASSWORD", "value": "p=ss==word"},
        {"key": "QUOTES", "value": "it's \"quoted\" `too`"},
        {"key": "SPACES", "value": "  leading and trailing  "},
        {"key": "NEWLINES", "value": "line1\nline2\r\nline3\n"},
        {"key": "UNICODE", "value": "ünïcødé ☃ 🔐 中文"},
        {"key": "EMPTY", "value": ""},
        {"key": "BACKSLASH", "value": "C:\\path\\n\\t $HOME ${X} #not-a-comment"},
        {"key": "BIG", "value": "0123456789abcdef".repeat(100 * 1024 / 16)},
    ])
}

#[test]
fn env_sealed_by_official_dstack_sdk_opens_with_berth() {
    let root = repo_root();
    testkit::interop_path("node_modules/@phala/dstack-sdk");
    let dir = tempdir("interop-sdk");
    let (key, pubkey) = keygen(&dir);
    let vars = tricky_vars();
    let sealed = run(
        Command::new("node")
            .arg(root.join("interop/seal-with-dstack-sdk.mjs"))
            .arg(&pubkey),
        vars.to_string().as_bytes(),
    );
    assert_eq!(sealed.code, 0, "node: {}", sealed.stderr);
    let hex = sealed.stdout.trim();
    let opened = berth(
        &["unseal", "--key-file", key.to_str().unwrap(), "--json"],
        hex.as_bytes(),
    );
    assert_eq!(opened.code, 0, "{}", opened.stderr);
    let got: serde_json::Value = serde_json::from_str(&opened.stdout).unwrap();
    assert_eq!(got, serde_json::json!({ "env": vars }));

    // The .env rendering of the same env reads back identically.
    let dotenv = berth(
        &["unseal", "--key-file", key.to_str().unwrap()],
        hex.as_bytes(),
    );
    assert_eq!(dotenv.code, 0, "{}", dotenv.stderr);
    assert_eq!(
        reseal_to_json(&dir, "back.env", &key, &pubkey, &dotenv.stdout),
        got
    );
}

#[test]
fn env_sealed_by_berth_opens_with_python_cryptography() {
    let root = repo_root();
    let dir = tempdir("interop-py");
    let (key, pubkey) = keygen(&dir);
    let vars = tricky_vars();
    let envfile = dir.join("in.env");
    // Write the variables as a .env through Berth's own renderer: seal with
    // KEY=VALUE for the simple ones and a file for the rest is covered
    // elsewhere; here every variable goes through a .env file.
    let mut text = String::new();
    for v in vars.as_array().unwrap() {
        let value = v["value"].as_str().unwrap();
        let escaped: String = value
            .chars()
            .flat_map(|c| match c {
                '\\' => vec!['\\', '\\'],
                '"' => vec!['\\', '"'],
                '\n' => vec!['\\', 'n'],
                '\r' => vec!['\\', 'r'],
                c => vec![c],
            })
            .collect();
        text.push_str(&format!("{}=\"{}\"\n", v["key"].as_str().unwrap(), escaped));
    }
    std::fs::write(&envfile, text).unwrap();
    let sealed = berth(
        &["seal", "--pubkey", &pubkey, "-e", envfile.to_str().unwrap()],
        b"",
    );
    assert_eq!(sealed.code, 0, "{}", sealed.stderr);
    // pyca/cryptography is in the project's venv (scripts/deps.sh).
    let mut py = Command::new(root.join(".deps/venv/bin/python"));
    py.arg(root.join("interop/open-with-python.py")).arg(&key);
    let opened = run(&mut py, sealed.stdout.as_bytes());
    assert_eq!(opened.code, 0, "python: {}", opened.stderr);
    let got: serde_json::Value = serde_json::from_str(&opened.stdout).unwrap();
    assert_eq!(got, serde_json::json!({ "env": vars }));
}
