//! Sealing and opening: X25519 + AES-256-GCM in dstack's byte layout.

use crate::{Env, EnvVar, Origin, SecretValue};
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use rand_core::{CryptoRngCore, OsRng};
use std::fmt;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

const PUB_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// The shortest possible sealed env: ephemeral key, nonce and tag (the
/// control plane refuses shorter uploads with the same constant).
pub use contract::env_rules::MIN_SEALED_LEN;
const _: () = assert!(MIN_SEALED_LEN == PUB_LEN + NONCE_LEN + TAG_LEN);

/// A key could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not hex.
    #[error("the {what} is not hex (expected {expected} hex characters)")]
    NotHex {
        /// Which key.
        what: &'static str,
        /// How many hex characters were expected.
        expected: usize,
    },
    /// Wrong length.
    #[error(
        "the {what} is {got} bytes long; an X25519 key is 32 bytes ({expected} hex characters)"
    )]
    WrongLength {
        /// Which key.
        what: &'static str,
        /// Decoded length.
        got: usize,
        /// Expected hex characters.
        expected: usize,
    },
}

fn decode_key(text: &str, what: &'static str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let t = text.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    let bytes =
        Zeroizing::new(hex::decode(t).map_err(|_| KeyError::NotHex { what, expected: 64 })?);
    if bytes.len() != 32 {
        return Err(KeyError::WrongLength {
            what,
            got: bytes.len(),
            expected: 64,
        });
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// An app's env public key: clients seal to it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EnvPublicKey(PublicKey);

impl EnvPublicKey {
    /// Reads a public key from hex (64 characters, optional `0x`).
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let bytes = decode_key(text, "public key")?;
        Ok(Self(PublicKey::from(*bytes)))
    }

    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// Seals `env` to this key with the operating system's random generator.
    pub fn seal(&self, env: &Env) -> SealedEnv {
        self.seal_with_rng(env, &mut OsRng)
    }

    /// Seals `env` to this key: a fresh ephemeral key and nonce from `rng`.
    pub fn seal_with_rng(&self, env: &Env, rng: &mut impl CryptoRngCore) -> SealedEnv {
        let eph = StaticSecret::random_from_rng(&mut *rng);
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        self.seal_with(env, eph, nonce)
    }

    fn seal_with(&self, env: &Env, eph: StaticSecret, nonce: [u8; NONCE_LEN]) -> SealedEnv {
        let eph_pub = PublicKey::from(&eph);
        let shared = eph.diffie_hellman(&self.0);
        // An all-zero shared secret only comes from a low-order public key;
        // sealing to it would give a key anyone can compute.
        assert!(
            shared.was_contributory(),
            "refusing to seal to a low-order public key"
        );
        let cipher = Aes256Gcm::new_from_slice(shared.as_bytes()).expect("32-byte key");
        let plaintext = plaintext_json(env);
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_slice())
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut bytes = Vec::with_capacity(PUB_LEN + NONCE_LEN + ct.len());
        bytes.extend_from_slice(eph_pub.as_bytes());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&ct);
        SealedEnv(bytes)
    }

    /// Whether sealing to this key is safe (it is not a low-order point).
    pub fn is_usable(&self) -> bool {
        StaticSecret::from([7u8; 32])
            .diffie_hellman(&self.0)
            .was_contributory()
    }
}

impl fmt::Debug for EnvPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnvPublicKey({})", self.to_hex())
    }
}

impl fmt::Display for EnvPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// An app's env private key. Redacted when printed, zeroized when dropped.
#[derive(Clone)]
pub struct EnvPrivateKey(StaticSecret);

impl EnvPrivateKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Self {
        Self::generate_with_rng(&mut OsRng)
    }

    /// A new random key from `rng`.
    pub fn generate_with_rng(rng: &mut impl CryptoRngCore) -> Self {
        Self(StaticSecret::random_from_rng(rng))
    }

    /// Reads a private key from hex (64 characters, optional `0x`, whitespace).
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let bytes = decode_key(text, "private key")?;
        Ok(Self(StaticSecret::from(*bytes)))
    }

    /// The key as lowercase hex, in a buffer wiped on drop.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.as_bytes()))
    }

    /// The matching public key.
    pub fn public_key(&self) -> EnvPublicKey {
        EnvPublicKey(PublicKey::from(&self.0))
    }

    /// Opens `sealed` with this key.
    pub fn open(&self, sealed: &SealedEnv) -> Result<Env, OpenError> {
        let b = &sealed.0;
        if b.len() < MIN_SEALED_LEN {
            return Err(OpenError::TooShort { len: b.len() });
        }
        let mut eph = [0u8; 32];
        eph.copy_from_slice(&b[..PUB_LEN]);
        // X25519 ignores the top bit and reduces mod p, so a non-canonical
        // encoding would let an altered key byte go unnoticed. Real sealers
        // (ours, the dstack SDKs) only produce canonical keys.
        if !is_canonical(&eph) {
            return Err(OpenError::Authentication);
        }
        let shared = self.0.diffie_hellman(&PublicKey::from(eph));
        if !shared.was_contributory() {
            return Err(OpenError::WeakSharedSecret);
        }
        let cipher = Aes256Gcm::new_from_slice(shared.as_bytes()).expect("32-byte key");
        let nonce = Nonce::from_slice(&b[PUB_LEN..PUB_LEN + NONCE_LEN]);
        let plaintext = Zeroizing::new(
            cipher
                .decrypt(nonce, &b[PUB_LEN + NONCE_LEN..])
                .map_err(|_| OpenError::Authentication)?,
        );
        parse_plaintext(&plaintext)
    }
}

impl fmt::Debug for EnvPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvPrivateKey([redacted])")
    }
}

/// Whether `u` is the canonical encoding of a field element (`u < 2^255 - 19`).
fn is_canonical(u: &[u8; 32]) -> bool {
    if u[31] & 0x80 != 0 {
        return false;
    }
    // The only 255-bit values >= p are 0x7fff...ffed ..= 0x7fff...ffff.
    !(u[31] == 0x7f && u[1..31].iter().all(|&b| b == 0xff) && u[0] >= 0xed)
}

#[derive(serde::Serialize)]
struct PlainRef<'a> {
    env: Vec<PlainVarRef<'a>>,
}

#[derive(serde::Serialize)]
struct PlainVarRef<'a> {
    key: &'a str,
    value: &'a str,
}

#[derive(serde::Deserialize)]
struct Plain {
    env: Vec<PlainVar>,
}

#[derive(serde::Deserialize)]
struct PlainVar {
    key: String,
    value: String,
}

/// `{"env":[{"key":..,"value":..}]}` in order, in a buffer wiped on drop:
/// the plaintext of a sealed env (and what `berth unseal --json` prints).
pub fn plaintext_json(env: &Env) -> Zeroizing<Vec<u8>> {
    let plain = PlainRef {
        env: env
            .vars()
            .iter()
            .map(|v| PlainVarRef {
                key: &v.key,
                value: v.value.expose(),
            })
            .collect(),
    };
    Zeroizing::new(serde_json::to_vec(&plain).expect("strings always serialize"))
}

fn parse_plaintext(bytes: &[u8]) -> Result<Env, OpenError> {
    // serde_json's messages can quote the input, so only the position and the
    // kind of problem are kept.
    let plain: Plain = serde_json::from_slice(bytes).map_err(|e| OpenError::BadPlaintext {
        reason: match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                format!(
                    "it is not valid JSON (line {}, column {})",
                    e.line(),
                    e.column()
                )
            }
            _ => format!(
                "it is JSON but not {{\"env\":[{{\"key\":..,\"value\":..}}]}} (line {}, column {})",
                e.line(),
                e.column()
            ),
        },
    })?;
    let vars = plain
        .env
        .into_iter()
        .map(|v| EnvVar::new(v.key, SecretValue::new(v.value), Origin::Sealed))
        .collect();
    Env::from_vars(vars).map_err(|e| OpenError::BadPlaintext {
        reason: e.to_string(),
    })
}

/// A sealed env could not be opened. None of these carry plaintext.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The text is not hex.
    #[error("the sealed env is not hex (bad character at position {position})")]
    NotHex {
        /// 0-based position of the first bad character.
        position: usize,
    },
    /// Too few bytes to hold key, nonce and tag.
    #[error(
        "the sealed env is {len} bytes long; a sealed env is at least {MIN_SEALED_LEN} bytes (key, nonce and tag)"
    )]
    TooShort {
        /// The length found.
        len: usize,
    },
    /// The ephemeral key is a low-order point: the shared secret is zero.
    #[error(
        "the sealed env's ephemeral key gives an all-zero shared secret; it was not made by a real sealer"
    )]
    WeakSharedSecret,
    /// AES-GCM authentication failed.
    #[error("the sealed env does not open with this key: wrong key, or the data was altered")]
    Authentication,
    /// It decrypted, but the plaintext is not the expected JSON.
    #[error("the sealed env decrypted, but its content is not an env: {reason}")]
    BadPlaintext {
        /// What is wrong, without any of the content.
        reason: String,
    },
}

/// Sealed env bytes: `eph_pub(32) || nonce(12) || ciphertext || tag(16)`.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedEnv(Vec<u8>);

impl SealedEnv {
    /// Wraps raw sealed bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Reads hex (optional `0x`, surrounding whitespace).
    pub fn from_hex(text: &str) -> Result<Self, OpenError> {
        let t = text.trim();
        let (t, offset) = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(rest) => (rest, 2),
            None => (t, 0),
        };
        let lead = text.len() - text.trim_start().len();
        if let Some(pos) = t.bytes().position(|b| !b.is_ascii_hexdigit()) {
            return Err(OpenError::NotHex {
                position: lead + offset + pos,
            });
        }
        if t.len() % 2 == 1 {
            return Err(OpenError::NotHex {
                position: lead + offset + t.len(),
            });
        }
        Ok(Self(hex::decode(t).expect("checked above")))
    }

    /// Reads either hex text or raw bytes, as found in a file.
    ///
    /// Input that is printable text is taken as hex (and must be hex); any
    /// other input is taken as raw sealed bytes.
    pub fn from_file_contents(contents: Vec<u8>) -> Result<Self, OpenError> {
        let textual = contents
            .iter()
            .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace());
        if textual && !contents.is_empty() {
            Self::from_hex(std::str::from_utf8(&contents).expect("ASCII"))
        } else {
            Ok(Self(contents))
        }
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lowercase hex, as API bodies carry it.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Debug for SealedEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedEnv({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::pairs;
    use proptest::prelude::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_vars(
            pairs
                .iter()
                .map(|(k, v)| EnvVar::new(*k, *v, Origin::Argument))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn layout_and_round_trip() {
        let key = EnvPrivateKey::generate();
        let e = env(&[("B", "2"), ("A", "x=y \"q\"\nünï")]);
        let sealed = key.public_key().seal(&e);
        let plain_len = plaintext_json(&e).len();
        assert_eq!(sealed.as_bytes().len(), 32 + 12 + plain_len + 16);
        assert_eq!(pairs(&key.open(&sealed).unwrap()), pairs(&e));
        // Fresh ephemeral key and nonce every time.
        let again = key.public_key().seal(&e);
        assert_ne!(sealed.as_bytes()[..44], again.as_bytes()[..44]);
    }

    #[test]
    fn distinct_errors() {
        let key = EnvPrivateKey::generate();
        let other = EnvPrivateKey::generate();
        let sealed = key.public_key().seal(&env(&[("PASSWORD", "CANARY")]));
        assert_eq!(other.open(&sealed), Err(OpenError::Authentication));
        assert_eq!(
            key.open(&SealedEnv::from_bytes(vec![1; 59])),
            Err(OpenError::TooShort { len: 59 })
        );
        assert_eq!(
            SealedEnv::from_hex(" 0xzz"),
            Err(OpenError::NotHex { position: 3 })
        );
        assert_eq!(
            SealedEnv::from_hex("abc"),
            Err(OpenError::NotHex { position: 3 })
        );
        // The all-zero point as the ephemeral key.
        let mut weak = vec![0u8; 80];
        weak[44] = 1;
        assert_eq!(
            key.open(&SealedEnv::from_bytes(weak)),
            Err(OpenError::WeakSharedSecret)
        );
        // Valid encryption of something that isn't an env.
        let eph = StaticSecret::from([9u8; 32]);
        let shared = eph.diffie_hellman(&key.public_key().0);
        let cipher = Aes256Gcm::new_from_slice(shared.as_bytes()).unwrap();
        for (plain, needle) in [
            (
                &br#"{"env":[{"key":"A","value":"CANARY"#[..],
                "not valid JSON",
            ),
            (
                &br#"{"env":[{"key":"A","value":["CANARY"]}]}"#[..],
                "not {\"env\"",
            ),
            (
                &br#"{"env":[{"key":"A","value":"CANARY"},{"key":"A","value":"x"}]}"#[..],
                "defined again",
            ),
        ] {
            let mut bytes = PublicKey::from(&eph).as_bytes().to_vec();
            bytes.extend_from_slice(&[0u8; 12]);
            bytes.extend(
                cipher
                    .encrypt(Nonce::from_slice(&[0u8; 12]), plain)
                    .unwrap(),
            );
            let err = key.open(&SealedEnv::from_bytes(bytes)).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, OpenError::BadPlaintext { .. }), "{msg}");
            assert!(msg.contains(needle), "{msg}");
            assert!(!msg.contains("CANARY"), "{msg}");
        }
    }

    #[test]
    fn file_contents_hex_or_raw() {
        let key = EnvPrivateKey::generate();
        let sealed = key.public_key().seal(&env(&[("A", "1")]));
        let hex_file = format!("0x{}\n", sealed.to_hex()).into_bytes();
        assert_eq!(SealedEnv::from_file_contents(hex_file).unwrap(), sealed);
        assert_eq!(
            SealedEnv::from_file_contents(sealed.as_bytes().to_vec()).unwrap(),
            sealed
        );
        assert!(matches!(
            SealedEnv::from_file_contents(b"A=1\n".to_vec()),
            Err(OpenError::NotHex { position: 1 })
        ));
    }

    #[test]
    fn keys_print_safely() {
        let key = EnvPrivateKey::from_hex(&"ab".repeat(32)).unwrap();
        assert_eq!(format!("{key:?}"), "EnvPrivateKey([redacted])");
        assert_eq!(*key.to_hex(), "ab".repeat(32));
        assert!(matches!(
            EnvPublicKey::from_hex("abcd"),
            Err(KeyError::WrongLength { got: 2, .. })
        ));
        assert!(matches!(
            EnvPublicKey::from_hex("zz"),
            Err(KeyError::NotHex { .. })
        ));
        assert!(
            !EnvPublicKey::from_hex(&"00".repeat(32))
                .unwrap()
                .is_usable()
        );
        assert!(key.public_key().is_usable());
    }

    fn arb_env() -> impl Strategy<Value = Vec<(String, String)>> {
        proptest::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,12}", any::<String>(), 0..8)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn seal_open_round_trip(vars in arb_env()) {
            let key = EnvPrivateKey::generate();
            let e = Env::from_vars(vars.iter().map(|(k, v)| EnvVar::new(k.as_str(), v.as_str(), Origin::Argument)).collect()).unwrap();
            let back = key.open(&key.public_key().seal(&e)).unwrap();
            prop_assert_eq!(pairs(&back), vars);
        }

        #[test]
        fn any_flipped_byte_is_rejected(vars in arb_env(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let key = EnvPrivateKey::generate();
            let e = Env::from_vars(vars.iter().map(|(k, v)| EnvVar::new(k.as_str(), v.as_str(), Origin::Argument)).collect()).unwrap();
            let mut bytes = key.public_key().seal(&e).as_bytes().to_vec();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            // Any flipped bit fails the tag (a key whose low-order bits changed
            // may also be caught earlier, as a weak shared secret).
            let err = key.open(&SealedEnv::from_bytes(bytes)).unwrap_err();
            prop_assert!(
                matches!(err, OpenError::Authentication | OpenError::WeakSharedSecret),
                "{:?}",
                err
            );
        }
    }
}
