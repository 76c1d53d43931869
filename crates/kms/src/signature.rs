//! Signatures over env public keys, in dstack's layout.

use crate::{AppId, ParseError, VerifyError};
use envseal::EnvPublicKey;
use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
use sha3::{Digest, Keccak256};
use std::fmt;
use std::str::FromStr;

/// The domain prefix of the signed message, as dstack's KMS and SDKs spell it.
const ENV_KEY_SIGNATURE_PREFIX: &[u8] = b"dstack-env-encrypt-pubkey";

/// How old a timestamped signature may be, in seconds: the official SDK's
/// default (`DEFAULT_MAX_AGE_SECONDS`).
pub const MAX_SIGNATURE_AGE_SECS: u64 = 300;

/// How far in the future a timestamped signature may be dated, in seconds
/// (clock skew), as the official SDK allows.
pub const MAX_SIGNATURE_FUTURE_SKEW_SECS: u64 = 60;

/// keccak256 of `prefix || ":" || app_id || [timestamp as u64 BE] || public_key`.
pub(crate) fn env_key_digest(
    app_id: &AppId,
    public_key: &EnvPublicKey,
    timestamp: Option<u64>,
) -> [u8; 32] {
    let mut h = Keccak256::new();
    h.update(ENV_KEY_SIGNATURE_PREFIX);
    h.update(b":");
    h.update(app_id.as_bytes());
    if let Some(ts) = timestamp {
        h.update(ts.to_be_bytes());
    }
    h.update(public_key.as_bytes());
    h.finalize().into()
}

fn strip_0x(text: &str) -> &str {
    let t = text.trim();
    t.strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t)
}

/// The KMS's public signing key (secp256k1).
///
/// Written as compressed SEC1 (33 bytes, 66 hex characters), the form the
/// official SDK's verifier returns (it prefixes `0x`); read from compressed or
/// uncompressed SEC1, with or without `0x`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KmsPublicKey(VerifyingKey);

impl KmsPublicKey {
    pub(crate) fn from_verifying_key(key: VerifyingKey) -> Self {
        Self(key)
    }

    /// Reads a public key from hex: compressed (66 characters) or
    /// uncompressed (130 characters) SEC1, optional `0x`.
    pub fn from_hex(text: &str) -> Result<Self, ParseError> {
        const WHAT: &str = "KMS public key";
        let bytes = hex::decode(strip_0x(text)).map_err(|_| ParseError::NotHex { what: WHAT })?;
        if bytes.len() != 33 && bytes.len() != 65 {
            return Err(ParseError::WrongLength {
                what: WHAT,
                got: bytes.len(),
                expected: "33 (compressed) or 65 (uncompressed)",
            });
        }
        VerifyingKey::from_sec1_bytes(&bytes)
            .map(Self)
            .map_err(|_| ParseError::Invalid {
                what: WHAT,
                reason: "not a point on secp256k1",
            })
    }

    /// Compressed SEC1 bytes.
    pub fn to_compressed_bytes(&self) -> [u8; 33] {
        let point = self.0.to_encoded_point(true);
        point
            .as_bytes()
            .try_into()
            .expect("a compressed secp256k1 point is 33 bytes")
    }

    /// Uncompressed SEC1 bytes (`04 || x || y`).
    pub fn to_uncompressed_bytes(&self) -> [u8; 65] {
        let point = self.0.to_encoded_point(false);
        point
            .as_bytes()
            .try_into()
            .expect("an uncompressed secp256k1 point is 65 bytes")
    }

    /// Compressed SEC1 as lowercase hex, no prefix (66 characters). The SDK
    /// prints the same with `0x` in front.
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_compressed_bytes())
    }
}

impl FromStr for KmsPublicKey {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

impl fmt::Display for KmsPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for KmsPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KmsPublicKey({})", self.to_hex())
    }
}

/// A recoverable ECDSA signature over an env public key: 65 bytes
/// `r (32) || s (32) || v (1)`, `v` the recovery id (0 or 1), carried as hex.
///
/// Only the length is checked when reading; whether a signer can be
/// recovered is decided by [`recover_env_key_signer`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EnvKeySignature([u8; 65]);

impl EnvKeySignature {
    /// The length in bytes.
    pub const LEN: usize = 65;

    /// A signature from its bytes.
    pub fn from_bytes(bytes: [u8; 65]) -> Self {
        Self(bytes)
    }

    /// Reads a signature from hex (130 characters, optional `0x`).
    pub fn from_hex(text: &str) -> Result<Self, ParseError> {
        const WHAT: &str = "env public key signature";
        let bytes = hex::decode(strip_0x(text)).map_err(|_| ParseError::NotHex { what: WHAT })?;
        let bytes: [u8; 65] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| ParseError::WrongLength {
                what: WHAT,
                got: bytes.len(),
                expected: "65 (r || s || v)",
            })?;
        Ok(Self(bytes))
    }

    /// The 65 bytes.
    pub fn as_bytes(&self) -> &[u8; 65] {
        &self.0
    }

    /// Lowercase hex, no prefix (130 characters), as dstack's KMS sends it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn recover(&self, digest: &[u8; 32]) -> Result<KmsPublicKey, VerifyError> {
        let signature =
            Signature::from_slice(&self.0[..64]).map_err(|_| VerifyError::Unrecoverable)?;
        let recovery_id = RecoveryId::from_byte(self.0[64]).ok_or(VerifyError::Unrecoverable)?;
        VerifyingKey::recover_from_prehash(digest, &signature, recovery_id)
            .map(KmsPublicKey)
            .map_err(|_| VerifyError::Unrecoverable)
    }
}

impl FromStr for EnvKeySignature {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

impl fmt::Display for EnvKeySignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for EnvKeySignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnvKeySignature({})", self.to_hex())
    }
}

/// The public key that made `signature` over `public_key` as the env key of
/// `app_id` at `timestamp` (dstack's `signature_v1`). The counterpart of the
/// SDK's `verifyEnvEncryptPublicKey`, without its clock check (see
/// [`SignedEnvPublicKey::verify`] for that).
///
/// Any well-formed signature recovers *some* key: the caller must compare the
/// result with the KMS key it trusts.
pub fn recover_env_key_signer(
    app_id: &AppId,
    public_key: &EnvPublicKey,
    timestamp: u64,
    signature: &EnvKeySignature,
) -> Result<KmsPublicKey, VerifyError> {
    signature.recover(&env_key_digest(app_id, public_key, Some(timestamp)))
}

/// The public key that made the legacy (untimestamped) `signature` over
/// `public_key` as the env key of `app_id`. The counterpart of the SDK's
/// `verifyEnvEncryptPublicKeyLegacy`.
pub fn recover_env_key_signer_legacy(
    app_id: &AppId,
    public_key: &EnvPublicKey,
    signature: &EnvKeySignature,
) -> Result<KmsPublicKey, VerifyError> {
    signature.recover(&env_key_digest(app_id, public_key, None))
}

/// An app's env public key as the KMS hands it out: the key, when it was
/// signed, and two signatures (field names as in dstack's
/// `PublicKeyResponse`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedEnvPublicKey {
    /// The app's env public key (X25519).
    pub public_key: EnvPublicKey,
    /// When the KMS signed it, in Unix seconds.
    pub timestamp: u64,
    /// Legacy signature, without the timestamp (replayable).
    pub signature: EnvKeySignature,
    /// Signature including the timestamp: the one [`Self::verify`] checks.
    pub signature_v1: EnvKeySignature,
}

impl SignedEnvPublicKey {
    /// Checks, as a client must before sealing anything to
    /// [`Self::public_key`], that the KMS holding `expected` signed it as the
    /// env key of `app_id`, and that the timestamp is fresh at `now_unix_secs`
    /// (at most [`MAX_SIGNATURE_AGE_SECS`] old and
    /// [`MAX_SIGNATURE_FUTURE_SKEW_SECS`] ahead, the official SDK's window).
    ///
    /// Only `signature_v1` is checked; the legacy signature cannot show
    /// freshness.
    pub fn verify(
        &self,
        app_id: &AppId,
        expected: &KmsPublicKey,
        now_unix_secs: u64,
    ) -> Result<(), VerifyError> {
        if self.timestamp > now_unix_secs {
            let ahead_secs = self.timestamp - now_unix_secs;
            if ahead_secs > MAX_SIGNATURE_FUTURE_SKEW_SECS {
                return Err(VerifyError::FromTheFuture {
                    ahead_secs,
                    max_ahead_secs: MAX_SIGNATURE_FUTURE_SKEW_SECS,
                });
            }
        } else {
            let age_secs = now_unix_secs - self.timestamp;
            if age_secs > MAX_SIGNATURE_AGE_SECS {
                return Err(VerifyError::TooOld {
                    age_secs,
                    max_age_secs: MAX_SIGNATURE_AGE_SECS,
                });
            }
        }
        let recovered =
            recover_env_key_signer(app_id, &self.public_key, self.timestamp, &self.signature_v1)?;
        if recovered != *expected {
            return Err(VerifyError::WrongSigner {
                expected: expected.to_hex(),
                recovered: recovered.to_hex(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KmsRootKey;

    const NOW: u64 = 1_760_000_000;

    fn app(n: u8) -> AppId {
        AppId::from_bytes([n; 20])
    }

    fn root() -> KmsRootKey {
        KmsRootKey::from_bytes([0x42; 32])
    }

    #[test]
    fn message_layout_is_dstacks() {
        let app_id = AppId::from_hex("0123456789abcdef0123456789abcdef01234567").unwrap();
        let pk = EnvPublicKey::from_hex(&"11".repeat(32)).unwrap();
        let ts: u64 = 0x0102_0304_0506_0708;
        let mut msg = b"dstack-env-encrypt-pubkey:".to_vec();
        msg.extend_from_slice(app_id.as_bytes());
        let legacy: [u8; 32] = Keccak256::digest([&msg[..], &[0x11; 32]].concat()).into();
        msg.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        msg.extend_from_slice(&[0x11; 32]);
        let v1: [u8; 32] = Keccak256::digest(&msg).into();
        assert_eq!(env_key_digest(&app_id, &pk, Some(ts)), v1);
        assert_eq!(env_key_digest(&app_id, &pk, None), legacy);
        // Keccak-256 (Ethereum's), not SHA3-256.
        assert_eq!(
            hex::encode(Keccak256::digest(b"")),
            "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
    }

    #[test]
    fn signatures_round_trip() {
        let r = root();
        for n in 0..8 {
            let signed = r.signed_env_public_key(&app(n), NOW);
            assert_eq!(signed.public_key, r.env_public_key_for(&app(n)));
            signed.verify(&app(n), &r.public_key(), NOW).unwrap();
            assert_eq!(
                recover_env_key_signer_legacy(&app(n), &signed.public_key, &signed.signature),
                Ok(r.public_key())
            );
            assert!(signed.signature_v1.as_bytes()[64] <= 1);
            // Through hex and back.
            let again = EnvKeySignature::from_hex(&signed.signature_v1.to_hex()).unwrap();
            assert_eq!(again, signed.signature_v1);
        }
    }

    #[test]
    fn signing_is_deterministic() {
        let (a, b) = (root(), root());
        let pk = a.env_public_key_for(&app(1));
        assert_eq!(
            a.sign_env_public_key(&app(1), &pk, NOW),
            b.sign_env_public_key(&app(1), &pk, NOW)
        );
    }

    #[test]
    fn tampering_is_rejected() {
        let r = root();
        let kms = r.public_key();
        let good = r.signed_env_public_key(&app(1), NOW);

        // Every single-bit flip of the signature.
        for byte in 0..65 {
            for bit in 0..8 {
                let mut bytes = *good.signature_v1.as_bytes();
                bytes[byte] ^= 1 << bit;
                let bad = SignedEnvPublicKey {
                    signature_v1: EnvKeySignature::from_bytes(bytes),
                    ..good.clone()
                };
                let err = bad.verify(&app(1), &kms, NOW).unwrap_err();
                assert!(
                    matches!(
                        err,
                        VerifyError::Unrecoverable | VerifyError::WrongSigner { .. }
                    ),
                    "byte {byte} bit {bit}: {err:?}"
                );
            }
        }

        // Another key, another app, another timestamp.
        let swapped = SignedEnvPublicKey {
            public_key: r.env_public_key_for(&app(2)),
            ..good.clone()
        };
        assert!(swapped.verify(&app(1), &kms, NOW).is_err());
        assert!(good.verify(&app(2), &kms, NOW).is_err());
        let redated = SignedEnvPublicKey {
            timestamp: NOW + 1,
            ..good.clone()
        };
        assert!(redated.verify(&app(1), &kms, NOW).is_err());

        // A valid signature by another KMS names both keys.
        let other = KmsRootKey::from_bytes([0x43; 32]);
        let err = good.verify(&app(1), &other.public_key(), NOW).unwrap_err();
        assert_eq!(
            err,
            VerifyError::WrongSigner {
                expected: other.public_key().to_hex(),
                recovered: kms.to_hex(),
            }
        );

        // The legacy signature is not accepted in place of signature_v1.
        let legacy_as_v1 = SignedEnvPublicKey {
            signature_v1: good.signature,
            ..good.clone()
        };
        assert!(legacy_as_v1.verify(&app(1), &kms, NOW).is_err());
    }

    #[test]
    fn freshness_window_matches_the_sdk() {
        let r = root();
        let kms = r.public_key();
        let signed = r.signed_env_public_key(&app(1), NOW);
        signed.verify(&app(1), &kms, NOW + 300).unwrap();
        assert_eq!(
            signed.verify(&app(1), &kms, NOW + 301),
            Err(VerifyError::TooOld {
                age_secs: 301,
                max_age_secs: 300
            })
        );
        signed.verify(&app(1), &kms, NOW - 60).unwrap();
        assert_eq!(
            signed.verify(&app(1), &kms, NOW - 61),
            Err(VerifyError::FromTheFuture {
                ahead_secs: 61,
                max_ahead_secs: 60
            })
        );
        // Extremes do not overflow.
        let r0 = r.signed_env_public_key(&app(1), 0);
        assert!(matches!(
            r0.verify(&app(1), &kms, u64::MAX),
            Err(VerifyError::TooOld { .. })
        ));
        let rmax = r.signed_env_public_key(&app(1), u64::MAX);
        assert!(matches!(
            rmax.verify(&app(1), &kms, 0),
            Err(VerifyError::FromTheFuture { .. })
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        #[test]
        fn any_app_and_time_round_trips(
            a in proptest::prelude::any::<[u8; 20]>(),
            b in proptest::prelude::any::<[u8; 20]>(),
            ts in proptest::prelude::any::<u64>(),
        ) {
            let r = root();
            let (a, b) = (AppId::from_bytes(a), AppId::from_bytes(b));
            let signed = r.signed_env_public_key(&a, ts);
            proptest::prop_assert_eq!(signed.verify(&a, &r.public_key(), ts), Ok(()));
            proptest::prop_assert_eq!(
                recover_env_key_signer_legacy(&a, &signed.public_key, &signed.signature),
                Ok(r.public_key())
            );
            if a != b {
                proptest::prop_assert_ne!(r.env_public_key_for(&a), r.env_public_key_for(&b));
                proptest::prop_assert!(signed.verify(&b, &r.public_key(), ts).is_err());
            }
        }
    }

    #[test]
    fn public_key_encodings() {
        let kms = root().public_key();
        let compressed = kms.to_hex();
        assert_eq!(compressed.len(), 66);
        assert!(compressed.starts_with("02") || compressed.starts_with("03"));
        let uncompressed = hex::encode(kms.to_uncompressed_bytes());
        assert_eq!(uncompressed.len(), 130);
        assert!(uncompressed.starts_with("04"));
        for text in [
            compressed.clone(),
            format!("0x{compressed}"),
            uncompressed.clone(),
            format!("0x{}", uncompressed.to_uppercase()),
        ] {
            assert_eq!(KmsPublicKey::from_hex(&text), Ok(kms), "{text}");
        }
        assert!(matches!(
            KmsPublicKey::from_hex(&"02".repeat(32)),
            Err(ParseError::WrongLength { got: 32, .. })
        ));
        assert!(matches!(
            KmsPublicKey::from_hex(&format!("02{}", "ff".repeat(32))),
            Err(ParseError::Invalid { .. })
        ));
        assert!(matches!(
            KmsPublicKey::from_hex("0xnope"),
            Err(ParseError::NotHex { .. })
        ));
    }

    #[test]
    fn signature_parsing() {
        assert!(matches!(
            EnvKeySignature::from_hex(&"00".repeat(64)),
            Err(ParseError::WrongLength { got: 64, .. })
        ));
        assert!(EnvKeySignature::from_hex("xyz").is_err());
        let zero = EnvKeySignature::from_hex(&format!("0x{}", "00".repeat(65))).unwrap();
        let pk = root().env_public_key_for(&app(1));
        assert_eq!(
            recover_env_key_signer(&app(1), &pk, NOW, &zero),
            Err(VerifyError::Unrecoverable)
        );
        // A recovery id the SDK's noble-curves would also refuse.
        let mut bytes = *root().sign_env_public_key(&app(1), &pk, NOW).as_bytes();
        bytes[64] = 27;
        assert_eq!(
            recover_env_key_signer(&app(1), &pk, NOW, &EnvKeySignature::from_bytes(bytes)),
            Err(VerifyError::Unrecoverable)
        );
    }
}
