//! `berth keygen`, `seal` and `unseal` as a user runs them.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;

const CANARY: &str = "canary-s3cr3t-7f1e";

#[test]
fn keygen_writes_private_key_0600_and_never_overwrites() {
    let dir = tempdir("keygen");
    let (key, pubkey) = keygen(&dir);
    assert_eq!(pubkey.len(), 64);
    assert!(
        pubkey
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let before = std::fs::read(&key).unwrap();
    let again = berth(&["keygen", "--out", key.to_str().unwrap()], b"");
    assert_eq!(again.code, 1, "an I/O failure on the user's machine");
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    assert!(
        again.stderr.contains("never overwrites"),
        "{}",
        again.stderr
    );
    assert_eq!(
        std::fs::read(&key).unwrap(),
        before,
        "the old key must be untouched"
    );
}

#[test]
fn seal_then_unseal_round_trips_tricky_values() {
    let dir = tempdir("roundtrip");
    let (key, pubkey) = keygen(&dir);
    let envfile = dir.join("app.env");
    std::fs::write(
        &envfile,
        format!(
            "# registry credentials\nexport DSTACK_DOCKER_USERNAME=alice\nDSTACK_DOCKER_PASSWORD='{CANARY}'\n\
             MULTI=\"line one\nline two\"\nQUOTES=\"say \\\"hi\\\" it's\"\nEQ=a=b=c\nOVERRIDDEN=old\nEMPTY=\n"
        ),
    )
    .unwrap();
    let sealed = berth(
        &[
            "seal",
            "--pubkey",
            &pubkey,
            "-e",
            envfile.to_str().unwrap(),
            "-e",
            "OVERRIDDEN=new",
            "-e",
            "UNI=ünï €",
        ],
        b"",
    );
    assert_eq!(sealed.code, 0, "{}", sealed.stderr);
    assert!(!sealed.stdout.contains(CANARY));
    let hex = sealed.stdout.trim();
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));

    let json = berth(
        &["unseal", "--key-file", key.to_str().unwrap(), "--json"],
        hex.as_bytes(),
    );
    assert_eq!(json.code, 0, "{}", json.stderr);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let want = serde_json::json!({"env": [
        {"key": "DSTACK_DOCKER_USERNAME", "value": "alice"},
        {"key": "DSTACK_DOCKER_PASSWORD", "value": CANARY},
        {"key": "MULTI", "value": "line one\nline two"},
        {"key": "QUOTES", "value": "say \"hi\" it's"},
        {"key": "EQ", "value": "a=b=c"},
        {"key": "OVERRIDDEN", "value": "new"},
        {"key": "EMPTY", "value": ""},
        {"key": "UNI", "value": "ünï €"},
    ]});
    assert_eq!(v, want);

    // .env output parses back to the same variables: seal it again and compare.
    let sealed_file = dir.join("sealed.bin");
    std::fs::write(&sealed_file, hex::decode(hex).unwrap()).unwrap();
    let dotenv = berth(
        &[
            "unseal",
            "--key-file",
            key.to_str().unwrap(),
            sealed_file.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(dotenv.code, 0, "{}", dotenv.stderr);
    assert_eq!(
        reseal_to_json(&dir, "again.env", &key, &pubkey, &dotenv.stdout),
        want
    );
}

#[test]
fn bad_input_gets_one_clear_error_and_never_the_secret() {
    let dir = tempdir("errors");
    let (key, pubkey) = keygen(&dir);
    let (other_key, _) = {
        let d = dir.join("other");
        std::fs::create_dir_all(&d).unwrap();
        keygen(&d)
    };
    let bad_env = dir.join("bad.env");
    std::fs::write(&bad_env, format!("A=1\n{CANARY}\n")).unwrap();
    let bad_key = dir.join("bad.env2");
    std::fs::write(&bad_key, format!("9BAD={CANARY}\n")).unwrap();
    let sealed = berth(
        &["seal", "--pubkey", &pubkey, "-e", &format!("P={CANARY}")],
        b"",
    )
    .stdout;

    let zero_key = "00".repeat(32);
    let k = key.to_str().unwrap();
    let ok = other_key.to_str().unwrap();
    // (arguments, standard input, what the error says, exit code: 1 I/O, 2 input)
    let cases: Vec<(Vec<&str>, &[u8], &str, i32)> = vec![
        (
            vec!["seal", "--pubkey", "xyz", "-e", "A=1"],
            b"",
            "--pubkey: the public key is not hex",
            2,
        ),
        (
            vec!["seal", "--pubkey", &zero_key, "-e", "A=1"],
            b"",
            "low-order",
            2,
        ),
        (
            vec!["seal", "--pubkey", &pubkey, "-e", bad_env.to_str().unwrap()],
            b"",
            "bad.env:2: expected KEY=VALUE",
            2,
        ),
        (
            vec!["seal", "--pubkey", &pubkey, "-e", bad_key.to_str().unwrap()],
            b"",
            "bad.env2:1: `9BAD` is not a valid variable name",
            2,
        ),
        (
            vec!["seal", "--pubkey", &pubkey, "-e", "missing.env"],
            b"",
            "-e missing.env: no such file",
            2,
        ),
        (
            vec!["unseal", "--key-file", ok],
            sealed.as_bytes(),
            "wrong key, or the data was altered",
            2,
        ),
        (vec!["unseal", "--key-file", k], b"A=1\n", "is not hex", 2),
        (
            vec!["unseal", "--key-file", k],
            b"abcd",
            "at least 60 bytes",
            2,
        ),
        (
            vec!["unseal", "--key-file", "/nonexistent/key"],
            b"",
            "cannot read the key file /nonexistent/key: no such file",
            1,
        ),
        (
            vec!["unseal", "--key-file", bad_env.to_str().unwrap()],
            sealed.as_bytes(),
            "private key is not hex",
            2,
        ),
    ];
    for (args, stdin, needle, code) in cases {
        let out = berth(&args, stdin);
        assert_eq!(out.code, code, "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
        assert!(
            out.stderr.starts_with("error: "),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("\nhint: ") || out.code == 1,
            "{args:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains(CANARY), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{args:?}: {}", out.stderr);
    }
}
