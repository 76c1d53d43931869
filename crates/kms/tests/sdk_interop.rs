//! The official dstack SDK (`@phala/dstack-sdk`, `verifyEnvEncryptPublicKey`)
//! accepts the KMS's env public key signatures and recovers exactly the KMS
//! public key this crate reports.
//!
//! The node dependencies are installed by `make test` (`scripts/deps.sh`);
//! these tests fail, rather than skip, without them.

use kms::{AppId, EnvKeySignature, KmsPublicKey, KmsRootKey, VerifyError};
use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What the SDK said: the recovered key (`Some`) or `null` (`None`).
fn sdk_recover(
    public_key: &envseal::EnvPublicKey,
    signature: &EnvKeySignature,
    app_id: &AppId,
    timestamp: Option<u64>,
) -> Option<String> {
    let root = repo_root();
    let sdk = root.join("interop/node_modules/@phala/dstack-sdk");
    assert!(
        sdk.exists(),
        "{} is missing: run `make test` (it installs the pinned SDK)",
        sdk.display()
    );
    let mut cmd = Command::new("node");
    cmd.arg(root.join("interop/verify-kms-signature.mjs"))
        .arg(public_key.to_hex())
        .arg(signature.to_hex())
        .arg(app_id.to_hex());
    if let Some(ts) = timestamp {
        cmd.arg(ts.to_string());
    }
    let out = cmd.output().expect("run node");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Some(stdout.trim().to_owned()),
        Some(1) => {
            assert!(stdout.is_empty(), "{stdout}");
            None
        }
        other => panic!("node exited with {other:?}: {stderr}"),
    }
}

/// A root key as the KMS keeps it: in a file it created.
fn kms_root() -> (tempfile::TempDir, KmsRootKey) {
    let dir = tempfile::tempdir().unwrap();
    let key = KmsRootKey::load_or_create(dir.path().join("kms-root.key")).unwrap();
    (dir, key)
}

fn app(n: u8) -> AppId {
    let mut bytes = [0u8; 20];
    bytes[0] = n;
    bytes[19] = 0xa5;
    AppId::from_bytes(bytes)
}

#[test]
fn official_sdk_recovers_the_kms_key_from_signature_v1() {
    let (_dir, root) = kms_root();
    let kms = root.public_key();
    let expected = format!("0x{}", kms.to_hex());
    // Both recovery ids must occur; each is 0 or 1 with even odds.
    let mut seen = [false; 2];
    for n in 0..40 {
        let app_id = app(n);
        let ts = now();
        let signed = root.signed_env_public_key(&app_id, ts);
        signed.verify(&app_id, &kms, now()).unwrap();
        let got = sdk_recover(&signed.public_key, &signed.signature_v1, &app_id, Some(ts))
            .unwrap_or_else(|| panic!("the SDK rejected the signature for app {app_id}"));
        assert_eq!(got, expected, "app {app_id}");
        assert_eq!(KmsPublicKey::from_hex(&got).unwrap(), kms);
        seen[usize::from(signed.signature_v1.as_bytes()[64])] = true;
        if seen == [true, true] && n >= 3 {
            return;
        }
    }
    panic!("recovery ids seen: {seen:?}");
}

#[test]
fn official_sdk_recovers_the_kms_key_from_the_legacy_signature() {
    let (_dir, root) = kms_root();
    let app_id = AppId::from_hex("0x6f1c2c5e3b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e").unwrap();
    let signed = root.signed_env_public_key(&app_id, now());
    let got = sdk_recover(&signed.public_key, &signed.signature, &app_id, None).unwrap();
    assert_eq!(got, format!("0x{}", root.public_key().to_hex()));
}

#[test]
fn official_sdk_and_crate_agree_on_what_to_refuse() {
    let (_dir, root) = kms_root();
    let kms = root.public_key();
    let expected = format!("0x{}", kms.to_hex());
    let app_id = app(7);

    // A stale timestamp: the SDK returns null, `verify` says too old.
    let ts = now() - 1_000;
    let stale = root.signed_env_public_key(&app_id, ts);
    assert_eq!(
        sdk_recover(&stale.public_key, &stale.signature_v1, &app_id, Some(ts)),
        None
    );
    assert!(matches!(
        stale.verify(&app_id, &kms, now()),
        Err(VerifyError::TooOld { .. })
    ));

    // A tampered signature: the SDK recovers some other key (or none), and
    // `verify` refuses it.
    let ts = now();
    let good = root.signed_env_public_key(&app_id, ts);
    let mut bytes = *good.signature_v1.as_bytes();
    bytes[10] ^= 0x01;
    let tampered = kms::SignedEnvPublicKey {
        signature_v1: EnvKeySignature::from_bytes(bytes),
        ..good.clone()
    };
    let got = sdk_recover(
        &tampered.public_key,
        &tampered.signature_v1,
        &app_id,
        Some(ts),
    );
    assert_ne!(got.as_deref(), Some(expected.as_str()));
    assert!(tampered.verify(&app_id, &kms, now()).is_err());

    // Another app's key under this app's signature: same.
    let swapped = kms::SignedEnvPublicKey {
        public_key: root.env_public_key_for(&app(8)),
        ..good
    };
    let got = sdk_recover(
        &swapped.public_key,
        &swapped.signature_v1,
        &app_id,
        Some(ts),
    );
    assert_ne!(got.as_deref(), Some(expected.as_str()));
    assert!(swapped.verify(&app_id, &kms, now()).is_err());
}
