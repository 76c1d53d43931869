//! The identity a CVM's agent serves, and the simulated TEE's signing key.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// What a CVM's agent knows: the app's identity and keys, as the KMS
/// released them to this CVM's boot. `Debug` never shows the key.
pub struct AgentIdentity {
    /// The app id: 40 hex digits (20 bytes).
    pub app_id: String,
    /// This CVM's instance id (hex of its bytes, or any text: see `Info`).
    pub instance_id: String,
    /// The compose hash: 64 hex digits, sha256 of `app_compose`.
    pub compose_hash: String,
    /// The exact app-compose.json text.
    pub app_compose: String,
    /// The app's secp256k1 secret key (from the KMS).
    pub app_key: Zeroizing<[u8; 32]>,
    /// The KMS's recoverable signature over
    /// `keccak256("dstack-kms-issued" ":" app_id_bytes app_pubkey_compressed)`.
    pub app_key_kms_signature: [u8; 65],
    /// The KMS root public key, compressed secp256k1.
    pub kms_root_public_key: [u8; 33],
    /// The OS image hash (hex); may be empty.
    pub os_image_hash: String,
}

impl std::fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentIdentity")
            .field("app_id", &self.app_id)
            .field("instance_id", &self.instance_id)
            .field("compose_hash", &self.compose_hash)
            .field("app_key", &"[redacted]")
            .field(
                "kms_root_public_key",
                &hex::encode(self.kms_root_public_key),
            )
            .field("os_image_hash", &self.os_image_hash)
            .finish_non_exhaustive()
    }
}

/// The key that signs Berth's simulated TDX quotes (ECDSA P-256, the curve
/// of a real TDX attestation key). It is not Intel's: a DCAP verifier
/// rejects every quote it signs. `Debug` never shows it.
pub struct AttestationKey {
    key: p256::ecdsa::SigningKey,
}

impl AttestationKey {
    /// The attestation key derived from 32 bytes of seed (HKDF-SHA256), so
    /// that the same seed always gives the same key.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"berth-simulated-tee"), seed);
        for counter in 0u8..=255 {
            let mut okm = Zeroizing::new([0u8; 32]);
            // 32 bytes is far below HKDF-SHA256's limit.
            if hk
                .expand(
                    &[b"attestation-key".as_slice(), &[counter]].concat(),
                    okm.as_mut(),
                )
                .is_ok()
                && let Ok(key) = p256::ecdsa::SigningKey::from_slice(okm.as_ref())
            {
                return Self { key };
            }
        }
        unreachable!("256 HKDF outputs all outside the P-256 scalar range")
    }

    /// The key's public half, what a verifier of the quotes needs.
    pub fn public_key(&self) -> AttestationPublicKey {
        AttestationPublicKey {
            key: *self.key.verifying_key(),
        }
    }

    pub(crate) fn signing_key(&self) -> &p256::ecdsa::SigningKey {
        &self.key
    }

    /// The secret scalar, as seed for keys derived from this one.
    pub(crate) fn seed(&self) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&self.key.to_bytes());
        out
    }
}

impl std::fmt::Debug for AttestationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestationKey")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// The public half of an [`AttestationKey`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AttestationPublicKey {
    key: p256::ecdsa::VerifyingKey,
}

impl AttestationPublicKey {
    /// The 64 bytes `x ‖ y`, as a TDX quote carries its attestation key.
    pub fn to_raw(&self) -> [u8; 64] {
        let point = self.key.to_encoded_point(false);
        let mut raw = [0u8; 64];
        raw.copy_from_slice(&point.as_bytes()[1..65]);
        raw
    }

    /// Parses the 64 bytes `x ‖ y` (or 65 with the `0x04` prefix).
    pub fn from_raw(bytes: &[u8]) -> Option<Self> {
        let key = match bytes.len() {
            64 => p256::ecdsa::VerifyingKey::from_sec1_bytes(&[&[4u8][..], bytes].concat()),
            _ => p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes),
        };
        key.ok().map(|key| Self { key })
    }

    pub(crate) fn verifying_key(&self) -> &p256::ecdsa::VerifyingKey {
        &self.key
    }
}

impl std::fmt::Debug for AttestationPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AttestationPublicKey({})", hex::encode(self.to_raw()))
    }
}
