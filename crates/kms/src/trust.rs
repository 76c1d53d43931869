//! The client's side of the KMS: check that the env public key a control
//! plane hands out was signed by the KMS the user trusts, and only then seal
//! the env to it ([`seal_env`]).
//!
//! A control plane that could swap in a key of its own would read every
//! secret sealed to it; the KMS's signature is what stops it, so no front end
//! (`berth deploy`, an operator tool) may seal without this check, and none
//! should write it again.
//!
//! # Why here and not in a crate of its own
//!
//! The check is the inverse of [`KmsRootKey::sign_env_public_key`](crate::KmsRootKey::sign_env_public_key):
//! it rebuilds the same dstack message layout ([`SignedEnvPublicKey::verify`]),
//! and this crate already depends on `envseal` (an env key *is* an
//! `envseal` key). A separate crate would have to depend on `kms` anyway or
//! write the layout out a second time. What a client links with it — the
//! root-key derivation — is harmless on a user's machine, which holds no root
//! key. The control plane must never seal (it never sees a plaintext env), so
//! `cloud` not linking this module is as it should be.
//!
//! Like the rest of the crate, no clock: the caller passes the time in.

use crate::{AppId, EnvKeySignature, KmsPublicKey, ParseError, SignedEnvPublicKey, VerifyError};
use envseal::{Env, EnvPublicKey, SealedEnv};

/// What a control plane answered to a provisioning: an app's env public key
/// and the KMS's signatures over it, as text (hex), the signatures optional
/// because not every control plane sends them.
#[derive(Clone, Copy, Debug)]
pub struct EnvKeyOffer<'a> {
    /// The app id (hex, 20 bytes).
    pub app_id: &'a str,
    /// The env public key to seal to (hex, X25519).
    pub env_pubkey: &'a str,
    /// The legacy signature (without a timestamp).
    pub signature: Option<&'a str>,
    /// The timestamped signature: the one checked.
    pub signature_v1: Option<&'a str>,
    /// When the KMS signed, in Unix seconds.
    pub timestamp: Option<u64>,
}

/// Why nothing was sealed. No variant holds an env value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// The env public key is not a valid key.
    #[error("the env public key is not valid: {0}")]
    BadEnvKey(String),
    /// The key came without a KMS signature (or without its timestamp).
    #[error("the env public key comes without a KMS signature")]
    Unsigned,
    /// A signature is not a signature.
    #[error("the KMS signature is not valid: {0}")]
    BadSignature(ParseError),
    /// The app id is not an app id.
    #[error("the app id is not valid: {0}")]
    BadAppId(ParseError),
    /// No signer can be recovered from the signature.
    #[error("the env public key signature is invalid: no signer can be recovered from it")]
    Unrecoverable,
    /// The key was signed, but not by the trusted KMS.
    #[error("the env public key was signed by {recovered}, not by the trusted KMS {expected}")]
    WrongSigner {
        /// The trusted KMS public key (hex).
        expected: String,
        /// The key that made the signature (hex).
        recovered: String,
    },
    /// The signature is older than the accepted window (a replayed answer).
    #[error(
        "the env public key signature is {age_secs} s old; at most {max_age_secs} s is accepted"
    )]
    Stale {
        /// How old, in seconds.
        age_secs: u64,
        /// The limit.
        max_age_secs: u64,
    },
    /// The signature is dated further ahead than clock skew explains.
    #[error(
        "the env public key signature is dated {ahead_secs} s in the future; at most {max_ahead_secs} s of clock skew is accepted"
    )]
    FromTheFuture {
        /// How far ahead, in seconds.
        ahead_secs: u64,
        /// The limit.
        max_ahead_secs: u64,
    },
    /// A signed key anyone could read what is sealed to (a low-order point).
    #[error(
        "the env public key is a low-order X25519 point; anything sealed to it could be read by anyone"
    )]
    Unusable,
}

impl TrustError {
    /// Whether the key came with signatures that did not check out (as
    /// opposed to a key or an answer that is malformed or unsigned).
    pub fn is_verification_failure(&self) -> bool {
        matches!(
            self,
            Self::Unrecoverable
                | Self::WrongSigner { .. }
                | Self::Stale { .. }
                | Self::FromTheFuture { .. }
        )
    }
}

impl From<VerifyError> for TrustError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Unrecoverable => Self::Unrecoverable,
            VerifyError::WrongSigner {
                expected,
                recovered,
            } => Self::WrongSigner {
                expected,
                recovered,
            },
            VerifyError::TooOld {
                age_secs,
                max_age_secs,
            } => Self::Stale {
                age_secs,
                max_age_secs,
            },
            VerifyError::FromTheFuture {
                ahead_secs,
                max_ahead_secs,
            } => Self::FromTheFuture {
                ahead_secs,
                max_ahead_secs,
            },
        }
    }
}

/// The offered env public key, once its timestamped signature shows the
/// `trusted` KMS signed it for this app within the freshness window at
/// `now_unix_secs`.
pub fn verify_offer(
    offer: &EnvKeyOffer<'_>,
    trusted: &KmsPublicKey,
    now_unix_secs: u64,
) -> Result<EnvPublicKey, TrustError> {
    let public_key = EnvPublicKey::from_hex(offer.env_pubkey)
        .map_err(|e| TrustError::BadEnvKey(e.to_string()))?;
    let (Some(sig), Some(sig_v1), Some(timestamp)) =
        (offer.signature, offer.signature_v1, offer.timestamp)
    else {
        return Err(TrustError::Unsigned);
    };
    let signed = SignedEnvPublicKey {
        public_key,
        timestamp,
        signature: EnvKeySignature::from_hex(sig).map_err(TrustError::BadSignature)?,
        signature_v1: EnvKeySignature::from_hex(sig_v1).map_err(TrustError::BadSignature)?,
    };
    let app = AppId::from_hex(offer.app_id).map_err(TrustError::BadAppId)?;
    signed.verify(&app, trusted, now_unix_secs)?;
    if !signed.public_key.is_usable() {
        return Err(TrustError::Unusable);
    }
    Ok(signed.public_key)
}

/// Verifies the offer ([`verify_offer`]), then seals `env` to its key;
/// `None` for an empty env (nothing to seal; the key was still checked).
pub fn seal_env(
    offer: &EnvKeyOffer<'_>,
    trusted: &KmsPublicKey,
    env: &Env,
    now_unix_secs: u64,
) -> Result<Option<SealedEnv>, TrustError> {
    let key = verify_offer(offer, trusted, now_unix_secs)?;
    Ok((!env.is_empty()).then(|| key.seal(env)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KmsRootKey, MAX_SIGNATURE_AGE_SECS};

    const NOW: u64 = 1_760_000_000;

    struct Answer {
        app_id: String,
        env_pubkey: String,
        signature: String,
        signature_v1: String,
        timestamp: u64,
    }

    impl Answer {
        fn offer(&self) -> EnvKeyOffer<'_> {
            EnvKeyOffer {
                app_id: &self.app_id,
                env_pubkey: &self.env_pubkey,
                signature: Some(&self.signature),
                signature_v1: Some(&self.signature_v1),
                timestamp: Some(self.timestamp),
            }
        }
    }

    fn answer(root: &KmsRootKey, signed_at: u64) -> Answer {
        let app = AppId::from_bytes([9; 20]);
        let s = root.signed_env_public_key(&app, signed_at);
        Answer {
            app_id: app.to_hex(),
            env_pubkey: s.public_key.to_hex(),
            signature: s.signature.to_hex(),
            signature_v1: s.signature_v1.to_hex(),
            timestamp: s.timestamp,
        }
    }

    fn env() -> Env {
        envseal::parse_dotenv("test", "TOKEN=s3cret\n").unwrap()
    }

    #[test]
    fn a_key_of_the_trusted_kms_seals_what_its_app_opens() {
        let root = KmsRootKey::from_bytes([1; 32]);
        let a = answer(&root, NOW - 10);
        let sealed = seal_env(&a.offer(), &root.public_key(), &env(), NOW)
            .unwrap()
            .unwrap();
        let opened = root
            .env_key_for(&AppId::from_bytes([9; 20]))
            .open(&sealed)
            .unwrap();
        assert_eq!(opened.get("TOKEN").unwrap().expose(), "s3cret");
        assert!(matches!(
            seal_env(&a.offer(), &root.public_key(), &Env::new(), NOW),
            Ok(None)
        ));
    }

    #[test]
    fn another_kms_is_the_wrong_signer() {
        let theirs = KmsRootKey::from_bytes([2; 32]);
        let ours = KmsRootKey::from_bytes([1; 32]);
        let a = answer(&theirs, NOW);
        let err = verify_offer(&a.offer(), &ours.public_key(), NOW).unwrap_err();
        assert_eq!(
            err,
            TrustError::WrongSigner {
                expected: ours.public_key().to_hex(),
                recovered: theirs.public_key().to_hex(),
            }
        );
        assert!(err.is_verification_failure());
    }

    #[test]
    fn an_old_answer_is_stale_and_a_swapped_key_is_refused() {
        let root = KmsRootKey::from_bytes([1; 32]);
        let old = answer(&root, NOW - MAX_SIGNATURE_AGE_SECS - 1);
        assert!(matches!(
            verify_offer(&old.offer(), &root.public_key(), NOW),
            Err(TrustError::Stale { .. })
        ));
        // A control plane's own key under the KMS's signatures.
        let mut swapped = answer(&root, NOW);
        swapped.env_pubkey = envseal::EnvPrivateKey::generate().public_key().to_hex();
        assert!(matches!(
            verify_offer(&swapped.offer(), &root.public_key(), NOW),
            Err(TrustError::WrongSigner { .. } | TrustError::Unrecoverable)
        ));
    }

    #[test]
    fn an_unsigned_or_malformed_answer_is_refused_before_any_check() {
        let root = KmsRootKey::from_bytes([1; 32]);
        let a = answer(&root, NOW);
        let unsigned = EnvKeyOffer {
            signature_v1: None,
            ..a.offer()
        };
        assert_eq!(
            verify_offer(&unsigned, &root.public_key(), NOW),
            Err(TrustError::Unsigned)
        );
        let bad_sig = EnvKeyOffer {
            signature_v1: Some("zz"),
            ..a.offer()
        };
        assert!(matches!(
            verify_offer(&bad_sig, &root.public_key(), NOW),
            Err(TrustError::BadSignature(_))
        ));
        let bad_key = EnvKeyOffer {
            env_pubkey: "abcd",
            ..a.offer()
        };
        assert!(matches!(
            verify_offer(&bad_key, &root.public_key(), NOW),
            Err(TrustError::BadEnvKey(_))
        ));
        let bad_app = EnvKeyOffer {
            app_id: "app",
            ..a.offer()
        };
        assert!(matches!(
            verify_offer(&bad_app, &root.public_key(), NOW),
            Err(TrustError::BadAppId(_))
        ));
    }
}
