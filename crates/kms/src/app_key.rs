//! The app key: each app's secp256k1 key, derived from the KMS's own k256
//! signing key exactly as dstack's KMS derives it, and the KMS's signature
//! over its public half.
//!
//! dstack (`kms/src/crypto.rs`, `derive_k256_key`; `ra-tls/src/kdf.rs`,
//! `derive_key`):
//!
//! ```text
//! app_key   = HKDF-SHA256(ikm = KMS k256 secret scalar (32 bytes),
//!                         salt = "RATLS",
//!                         info = app_id (20 bytes) || "app-key")[..32]
//! signature = secp256k1-recoverable(KMS k256 key,
//!               keccak256("dstack-kms-issued" || ":" || app_id (20 bytes)
//!                         || app public key (compressed SEC1, 33 bytes)))
//! ```
//!
//! The signature is 65 bytes `r || s || v` (`v` the recovery id, 0 or 1).
//! The guest agent derives every `GetKey` key from the app key and hands out
//! `[signature by the derived key's parent, this signature]`, so anyone
//! holding the KMS public key can check a chain without asking Berth.

use crate::AppId;
use hkdf::Hkdf;
use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};
use sha2::Sha256;
use sha3::{Digest, Keccak256};
use std::fmt;
use zeroize::Zeroizing;

/// dstack's HKDF salt (`ra_tls::kdf::derive_key`).
const APP_KEY_SALT: &[u8] = b"RATLS";
/// The HKDF info after the app id.
const APP_KEY_INFO: &[u8] = b"app-key";
/// The prefix of the message the KMS signs over an app public key.
const APP_KEY_SIGNATURE_PREFIX: &[u8] = b"dstack-kms-issued";

/// An app's secp256k1 key as the KMS issues it: the secret, its public half
/// (compressed) and the KMS's signature over it.
///
/// `Debug` prints the public key only; the secret is zeroized when dropped.
pub struct AppKey {
    secret: Zeroizing<[u8; 32]>,
    public_key: [u8; 33],
    signature: [u8; 65],
}

impl AppKey {
    /// The 32-byte secret scalar (what dstack's `k256_key` carries).
    pub fn secret(&self) -> &Zeroizing<[u8; 32]> {
        &self.secret
    }

    /// The public key, compressed SEC1 (33 bytes).
    pub fn public_key(&self) -> &[u8; 33] {
        &self.public_key
    }

    /// The KMS's signature over the public key (dstack's `k256_signature`).
    pub fn signature(&self) -> &[u8; 65] {
        &self.signature
    }
}

impl fmt::Debug for AppKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AppKey([redacted], public_key: {})",
            hex::encode(self.public_key)
        )
    }
}

/// The app key of `app_id` under the KMS signing key `kms`, with the KMS's
/// signature over its public half.
pub(crate) fn derive(kms: &SigningKey, app_id: &AppId) -> AppKey {
    let parent = Zeroizing::new(<[u8; 32]>::from(kms.to_bytes()));
    let hk = Hkdf::<Sha256>::new(Some(APP_KEY_SALT), &*parent);
    let mut secret = Zeroizing::new([0u8; 32]);
    hk.expand_multi_info(&[app_id.as_bytes(), APP_KEY_INFO], &mut *secret)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    // dstack fails here too; an HKDF output outside the scalar range has
    // probability about 2^-128.
    let key = SigningKey::from_slice(&*secret)
        .expect("an HKDF-SHA256 output is a valid secp256k1 scalar");
    let public_key: [u8; 33] = key
        .verifying_key()
        .to_encoded_point(true)
        .as_bytes()
        .try_into()
        .expect("a compressed secp256k1 point is 33 bytes");
    let (sig, recid) = kms
        .sign_prehash_recoverable(&app_key_digest(app_id, &public_key))
        .expect("signing a 32-byte prehash with a valid key cannot fail");
    let mut signature = [0u8; 65];
    signature[..64].copy_from_slice(&sig.to_bytes());
    signature[64] = recid.to_byte();
    AppKey {
        secret,
        public_key,
        signature,
    }
}

/// keccak256(`"dstack-kms-issued" || ":" || app_id || app_public_key`).
pub fn app_key_digest(app_id: &AppId, app_public_key: &[u8; 33]) -> [u8; 32] {
    let mut h = Keccak256::new();
    h.update(APP_KEY_SIGNATURE_PREFIX);
    h.update(b":");
    h.update(app_id.as_bytes());
    h.update(app_public_key);
    h.finalize().into()
}

/// The signer (compressed SEC1) of `signature` over `app_public_key` as the
/// app key of `app_id`, or `None` when no key can be recovered. The caller
/// compares it with the KMS key it trusts.
pub fn recover_app_key_signer(
    app_id: &AppId,
    app_public_key: &[u8; 33],
    signature: &[u8; 65],
) -> Option<[u8; 33]> {
    let sig = Signature::from_slice(&signature[..64]).ok()?;
    let recid = RecoveryId::from_byte(signature[64])?;
    let key =
        VerifyingKey::recover_from_prehash(&app_key_digest(app_id, app_public_key), &sig, recid)
            .ok()?;
    key.to_encoded_point(true).as_bytes().try_into().ok()
}

#[cfg(test)]
mod tests {
    use crate::{AppId, KmsRootKey};
    use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};

    fn app(n: u8) -> AppId {
        AppId::from_bytes([n; 20])
    }

    #[test]
    fn same_app_same_key_other_app_other_key() {
        let (a, b) = (
            KmsRootKey::from_bytes([0x42; 32]),
            KmsRootKey::from_bytes([0x42; 32]),
        );
        let k1 = a.app_key_for(&app(1));
        assert_eq!(**k1.secret(), **b.app_key_for(&app(1)).secret());
        assert_eq!(k1.signature(), b.app_key_for(&app(1)).signature());
        assert_ne!(**k1.secret(), **a.app_key_for(&app(2)).secret());
        assert_ne!(k1.public_key(), a.app_key_for(&app(2)).public_key());
        // Another KMS root gives the same app another key.
        let other = KmsRootKey::from_bytes([0x43; 32]);
        assert_ne!(**k1.secret(), **other.app_key_for(&app(1)).secret());
        // The env key and the app key are unrelated secrets.
        assert_ne!(*a.env_key_for(&app(1)).to_hex(), hex::encode(**k1.secret()));
        assert!(!format!("{k1:?}").contains(&hex::encode(**k1.secret())));
    }

    /// Recomputes dstack's derivation and message with the primitives
    /// alone (hkdf, k256, sha3), and recovers the signer with k256: it must
    /// be the KMS public key.
    #[test]
    fn derivation_and_signature_are_dstacks() {
        use hkdf::Hkdf;
        use sha3::Digest as _;
        let root = KmsRootKey::from_bytes([0x42; 32]);
        let app_id = AppId::from_hex("0123456789abcdef0123456789abcdef01234567").unwrap();
        let key = root.app_key_for(&app_id);

        // HKDF-SHA256, salt "RATLS", ikm the KMS k256 scalar, info app_id || "app-key".
        let kms_scalar = root.signing_key_bytes_for_tests();
        let mut expected = [0u8; 32];
        let mut info = app_id.as_bytes().to_vec();
        info.extend_from_slice(b"app-key");
        Hkdf::<sha2::Sha256>::new(Some(b"RATLS"), &kms_scalar)
            .expand(&info, &mut expected)
            .unwrap();
        assert_eq!(**key.secret(), expected);
        let sk = SigningKey::from_slice(&expected).unwrap();
        assert_eq!(
            key.public_key().as_slice(),
            sk.verifying_key().to_encoded_point(true).as_bytes()
        );

        // keccak256("dstack-kms-issued" || ":" || app_id || pubkey (33)).
        let mut msg = b"dstack-kms-issued:".to_vec();
        msg.extend_from_slice(app_id.as_bytes());
        msg.extend_from_slice(key.public_key());
        assert_eq!(msg.len(), 17 + 1 + 20 + 33);
        let digest: [u8; 32] = sha3::Keccak256::digest(&msg).into();
        let sig = key.signature();
        assert!(sig[64] <= 1, "v is the recovery id, 0 or 1");
        let recovered = VerifyingKey::recover_from_prehash(
            &digest,
            &Signature::from_slice(&sig[..64]).unwrap(),
            RecoveryId::from_byte(sig[64]).unwrap(),
        )
        .unwrap();
        assert_eq!(
            recovered.to_encoded_point(true).as_bytes(),
            root.public_key().to_compressed_bytes().as_slice()
        );
        assert_eq!(
            super::recover_app_key_signer(&app_id, key.public_key(), sig),
            Some(root.public_key().to_compressed_bytes())
        );
        // Another app id does not recover the KMS.
        assert_ne!(
            super::recover_app_key_signer(&app(9), key.public_key(), sig),
            Some(root.public_key().to_compressed_bytes())
        );
    }

    #[test]
    fn derivation_is_pinned() {
        // Changing the salt, the info or the KMS key's derivation would
        // silently change every app's keys (and wallets) in the field. The
        // value was computed independently with Python's `cryptography`
        // (HKDF-SHA256 twice: Berth's KMS key from the root, then dstack's
        // app key; the public point on SECP256K1).
        let key = KmsRootKey::from_bytes([0x42; 32]).app_key_for(&app(1));
        assert_eq!(hex::encode(key.public_key()), PINNED_APP_PUBKEY);
    }

    const PINNED_APP_PUBKEY: &str =
        "03863341d67685aca783a14b7253bc6e9fa7335dc0dec398751518c2b5bfeb3a75";
}
