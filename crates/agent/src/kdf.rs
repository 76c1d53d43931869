//! Key derivation exactly as dstack's `ra-tls::kdf` and KMS do it, and the
//! recoverable signatures of its signature chains.

use hkdf::Hkdf;
use k256::ecdsa::SigningKey;
use sha2::Sha256;
use sha3::{Digest, Keccak256};
use zeroize::Zeroizing;

/// HKDF-SHA256 with salt `"RATLS"`, the pieces of `info` concatenated:
/// dstack's `derive_key(ikm, context, 32)`.
pub(crate) fn derive_key(ikm: &[u8], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let mut okm = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(b"RATLS"), ikm)
        .expand_multi_info(info, okm.as_mut())
        .unwrap_or_else(|_| unreachable!("32 bytes is within HKDF-SHA256's output limit"));
    okm
}

/// The secp256k1 key `GetKey` derives for `path` from the app key.
pub(crate) fn derive_k256(app_key: &[u8; 32], path: &str) -> Result<SigningKey, KeyError> {
    let bytes = derive_key(app_key, &[path.as_bytes()]);
    SigningKey::from_slice(bytes.as_ref()).map_err(|_| KeyError::OutOfRange)
}

/// A P-256 secret key derived from `seed` and `info` as dstack's
/// `derive_p256_key_pair_from_bytes` does.
pub(crate) fn derive_p256(seed: &[u8], info: &[&[u8]]) -> Result<p256::SecretKey, KeyError> {
    let bytes = derive_key(seed, info);
    p256::SecretKey::from_slice(bytes.as_ref()).map_err(|_| KeyError::OutOfRange)
}

/// A 65-byte recoverable signature `r ‖ s ‖ v` over `keccak256(message)`.
pub(crate) fn sign_recoverable(key: &SigningKey, message: &[u8]) -> [u8; 65] {
    let digest = Keccak256::new_with_prefix(message);
    let (signature, recid) = key
        .sign_digest_recoverable(digest)
        .unwrap_or_else(|_| unreachable!("signing a 32-byte digest with a valid key"));
    let mut out = [0u8; 65];
    out[..64].copy_from_slice(&signature.to_bytes());
    out[64] = recid.to_byte();
    out
}

/// The message the KMS signs for an app key:
/// `"dstack-kms-issued" ":" app_id app_pubkey_compressed`.
pub(crate) fn kms_issued_message(app_id: &[u8], app_pubkey_compressed: &[u8]) -> Vec<u8> {
    [
        b"dstack-kms-issued:".as_slice(),
        app_id,
        app_pubkey_compressed,
    ]
    .concat()
}

/// A derived key that is not a valid scalar (probability about 2^-128).
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("the derived key is out of the curve's range; use another path")]
    OutOfRange,
}
