//! Opening a sealed env (`envseal::EnvPrivateKey::open`), for any bytes:
//! - never panics, whether the bytes are the sealed blob itself (as read
//!   from a file) or the plaintext inside a correctly encrypted blob;
//! - a blob that decrypts opens to exactly the JSON's `env` entries, in
//!   order, or fails with `BadPlaintext` whose reason quotes no value;
//! - hex parsing of sealed envs and keys: an accepted text round-trips, a
//!   refused one names the position of a character that is really bad.
//!
//! Shared by the fuzz target `fuzz/fuzz_targets/sealed_env.rs` and the
//! property test `crates/envseal/tests/fuzz_sealed_env.rs`.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use envseal::{EnvPrivateKey, EnvPublicKey, OpenError, SealedEnv};
use x25519_dalek::{PublicKey, StaticSecret};

const KEY: [u8; 32] = [0x42; 32];
const EPH: [u8; 32] = [0x17; 32];

/// `eph_pub || nonce || AES-GCM(plaintext)` to the key `KEY`, as the
/// official sealers do it, but with any plaintext bytes.
fn seal_raw(plaintext: &[u8]) -> Vec<u8> {
    let eph = StaticSecret::from(EPH);
    let recipient = PublicKey::from(&StaticSecret::from(KEY));
    let shared = eph.diffie_hellman(&recipient);
    let cipher = Aes256Gcm::new_from_slice(shared.as_bytes()).unwrap();
    let nonce = [9u8; 12];
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), plaintext)
        .unwrap();
    let mut out = PublicKey::from(&eph).as_bytes().to_vec();
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn key() -> EnvPrivateKey {
    EnvPrivateKey::from_hex(&hex_of(&KEY)).unwrap()
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            // The blob as read from a file: hex text or raw bytes.
            if let Ok(sealed) = SealedEnv::from_file_contents(rest.to_vec()) {
                match key().open(&sealed) {
                    Ok(_) => {}
                    Err(OpenError::TooShort { len }) => assert!(len < envseal::MIN_SEALED_LEN),
                    Err(e) => {
                        let _ = e.to_string();
                    }
                }
            }
        }
        1 => check_plaintext(rest),
        _ => check_hex(&String::from_utf8_lossy(rest)),
    }
}

fn check_plaintext(plaintext: &[u8]) {
    let sealed = SealedEnv::from_bytes(seal_raw(plaintext));
    let opened = key().open(&sealed);
    let json: Option<serde_json::Value> = serde_json::from_slice(plaintext).ok();
    // serde also reads a struct from an array of its fields in order
    // (`[[["K","V"]]]`): harmless, and accepted here too.
    let field = |j: &serde_json::Value, name: &str, i: usize| -> Option<serde_json::Value> {
        match j {
            serde_json::Value::Object(o) => o.get(name).cloned(),
            serde_json::Value::Array(a) if a.len() == i + 1 || name == "key" => a.get(i).cloned(),
            _ => None,
        }
    };
    let entries: Option<Vec<(String, String)>> = json.as_ref().and_then(|j| {
        field(j, "env", 0)?
            .as_array()?
            .iter()
            .map(|e| {
                Some((
                    field(e, "key", 0)?.as_str()?.to_owned(),
                    field(e, "value", 1)?.as_str()?.to_owned(),
                ))
            })
            .collect()
    });
    match opened {
        Ok(env) => {
            let got: Vec<(String, String)> = env
                .vars()
                .iter()
                .map(|v| (v.key.clone(), v.value.expose().to_owned()))
                .collect();
            let want = entries.expect("opened, so the plaintext is {\"env\":[..]}");
            assert_eq!(got, want);
        }
        Err(OpenError::BadPlaintext { reason }) => {
            // No value (a secret) is quoted; keys may be.
            if let Some(entries) = entries {
                for (_, v) in &entries {
                    let quoted_as_key = entries.iter().any(|(k, _)| k.contains(v.as_str()));
                    if v.len() >= 8 && !quoted_as_key {
                        assert!(!reason.contains(v.as_str()), "value in {reason:?}");
                    }
                }
            }
            assert!(!reason.contains('\n'));
        }
        Err(e) => panic!("a correctly encrypted blob fails with {e:?}"),
    }
}

fn check_hex(text: &str) {
    match SealedEnv::from_hex(text) {
        Ok(sealed) => {
            let t = text.trim();
            let t = t
                .strip_prefix("0x")
                .or_else(|| t.strip_prefix("0X"))
                .unwrap_or(t);
            assert_eq!(sealed.to_hex(), t.to_ascii_lowercase());
            assert_eq!(SealedEnv::from_hex(&sealed.to_hex()).unwrap(), sealed);
        }
        Err(OpenError::NotHex { position }) => {
            // The position points at a byte that is not a hex digit, or at
            // the end of an odd-length hex text.
            let b = text.as_bytes();
            assert!(position <= b.len(), "position {position} of {}", b.len());
            if let Some(&c) = b.get(position) {
                let trimmed_end = text.trim_end().len();
                assert!(
                    !c.is_ascii_hexdigit() || position == trimmed_end,
                    "position {position} is a hex digit in {text:?}"
                );
            }
        }
        Err(e) => panic!("from_hex: {e:?}"),
    }
    if let Ok(k) = EnvPrivateKey::from_hex(text) {
        let again = EnvPrivateKey::from_hex(&k.to_hex()).unwrap();
        assert_eq!(again.public_key(), k.public_key());
    }
    if let Ok(k) = EnvPublicKey::from_hex(text) {
        assert_eq!(EnvPublicKey::from_hex(&k.to_hex()).unwrap(), k);
        let _ = k.is_usable();
    }
}
