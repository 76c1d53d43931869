//! The root key, the keys derived from it, and its file.

use crate::signature::{EnvKeySignature, KmsPublicKey, SignedEnvPublicKey, env_key_digest};
use crate::{AppId, RootKeyError};
use envseal::{EnvPrivateKey, EnvPublicKey};
use hkdf::Hkdf;
use k256::ecdsa::SigningKey;
use rand_core::{CryptoRngCore, OsRng};
use sha2::Sha256;
use std::fmt;
use std::path::Path;
use zeroize::Zeroizing;

/// HKDF salt: names the scheme, so the same root bytes used by another tool
/// could never give the same keys.
const HKDF_SALT: &[u8] = b"berth-kms/v1";
/// HKDF info of the KMS signing key (a counter byte follows).
const SIGNING_KEY_INFO: &[u8] = b"berth-kms/v1/k256-signing-key:";
/// HKDF info of an app's env key (the app id's 20 bytes follow).
const ENV_KEY_INFO: &[u8] = b"berth-kms/v1/env-encrypt-key:";
/// HKDF info of the seed of the simulated TEE's attestation key.
const ATTESTATION_SEED_INFO: &[u8] = b"berth-kms/v1/simulated-attestation-seed";

/// The KMS root key: 32 random bytes from which the signing key and every
/// app's env key are derived.
///
/// Redacted when printed, zeroized when dropped (the derived signing key
/// too). There is deliberately no way to export the bytes: the only copy
/// outside memory is the file [`KmsRootKey::load_or_create`] writes.
pub struct KmsRootKey {
    root: Zeroizing<[u8; 32]>,
    signing: SigningKey,
}

impl KmsRootKey {
    /// A new random root key from the operating system's generator.
    pub fn generate() -> Self {
        Self::generate_with_rng(&mut OsRng)
    }

    /// A new random root key from `rng`.
    pub fn generate_with_rng(rng: &mut impl CryptoRngCore) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut *bytes);
        Self::from_zeroizing(bytes)
    }

    /// A root key from its bytes (tests, and key ceremonies that bring their
    /// own randomness). Prefer [`KmsRootKey::load_or_create`].
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut bytes = bytes;
        let out = Self::from_zeroizing(Zeroizing::new(bytes));
        zeroize::Zeroize::zeroize(&mut bytes);
        out
    }

    fn from_zeroizing(root: Zeroizing<[u8; 32]>) -> Self {
        let signing = derive_signing_key(&root);
        Self { root, signing }
    }

    /// Reads the root key from `path`, which must exist, hold 64 hex
    /// characters (surrounding whitespace allowed) and be accessible to its
    /// owner only (on Unix: no group or other permission bits).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, RootKeyError> {
        crate::keyfile::read_secret32(path.as_ref()).map(Self::from_zeroizing)
    }

    /// Reads the root key from `path`, or, if there is no file there,
    /// generates one and writes it (64 hex characters and a newline, mode
    /// `0600`).
    ///
    /// An existing file is never overwritten, whatever it holds: a malformed
    /// one is an error. The new file appears atomically and complete (it is
    /// written and synced under a temporary name in the same directory, then
    /// hard-linked into place, which fails if the name is taken), so two
    /// processes starting at once agree on one key. The directory must exist.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<Self, RootKeyError> {
        let (bytes, _) = crate::keyfile::load_or_create_secret32(path.as_ref(), || {
            use rand_core::RngCore as _;
            let mut bytes = Zeroizing::new([0u8; 32]);
            OsRng.fill_bytes(&mut *bytes);
            bytes
        })?;
        Ok(Self::from_zeroizing(bytes))
    }

    /// The KMS's public key: what clients pin to check env key signatures.
    pub fn public_key(&self) -> KmsPublicKey {
        KmsPublicKey::from_verifying_key(*self.signing.verifying_key())
    }

    /// The env private key of `app_id` (X25519): the key the KMS releases to
    /// the app's CVM, and only to it.
    ///
    /// HKDF-SHA256 of the root key, info `"berth-kms/v1/env-encrypt-key:"`
    /// followed by the app id's 20 bytes.
    pub fn env_key_for(&self, app_id: &AppId) -> EnvPrivateKey {
        let bytes = hkdf32(&self.root, &[ENV_KEY_INFO, app_id.as_bytes()]);
        let text = Zeroizing::new(hex::encode(*bytes));
        EnvPrivateKey::from_hex(&text).expect("64 hex characters make an X25519 key")
    }

    /// The env public key of `app_id`: what clients seal the app's env to.
    pub fn env_public_key_for(&self, app_id: &AppId) -> EnvPublicKey {
        self.env_key_for(app_id).public_key()
    }

    /// Signs `public_key` as the env public key of `app_id` at `timestamp`
    /// (Unix seconds): dstack's `signature_v1`, which
    /// `verifyEnvEncryptPublicKey(publicKey, signature, appId, timestamp)`
    /// of the official SDK accepts for 300 s.
    pub fn sign_env_public_key(
        &self,
        app_id: &AppId,
        public_key: &EnvPublicKey,
        timestamp: u64,
    ) -> EnvKeySignature {
        self.sign_digest(&env_key_digest(app_id, public_key, Some(timestamp)))
    }

    /// Signs `public_key` as the env public key of `app_id` without a
    /// timestamp: dstack's legacy `signature`, which
    /// `verifyEnvEncryptPublicKeyLegacy` accepts. It can be replayed forever;
    /// it exists for older clients.
    pub fn sign_env_public_key_legacy(
        &self,
        app_id: &AppId,
        public_key: &EnvPublicKey,
    ) -> EnvKeySignature {
        self.sign_digest(&env_key_digest(app_id, public_key, None))
    }

    /// The KMS's whole answer to "what is the env public key of `app_id`":
    /// the key, `timestamp`, and both signatures, like dstack's
    /// `GetAppEnvEncryptPubKey`.
    pub fn signed_env_public_key(&self, app_id: &AppId, timestamp: u64) -> SignedEnvPublicKey {
        let public_key = self.env_public_key_for(app_id);
        SignedEnvPublicKey {
            signature: self.sign_env_public_key_legacy(app_id, &public_key),
            signature_v1: self.sign_env_public_key(app_id, &public_key, timestamp),
            public_key,
            timestamp,
        }
    }

    /// The app key of `app_id`: a secp256k1 key derived from the KMS's
    /// k256 signing key as dstack's KMS derives it, with the KMS's signature
    /// over its public half (see [`crate::app_key`]). Released, like the env
    /// key, only against a boot ticket.
    pub fn app_key_for(&self, app_id: &AppId) -> crate::AppKey {
        crate::app_key::derive(&self.signing, app_id)
    }

    /// The seed of the key that signs the simulated TEE's quotes: one per
    /// KMS (every CVM's guest agent gets it with its app key), so a quote
    /// can be checked against one Berth attestation key. It is not Intel's:
    /// a real DCAP verifier rejects every quote it signs.
    pub fn attestation_seed(&self) -> Zeroizing<[u8; 32]> {
        hkdf32(&self.root, &[ATTESTATION_SEED_INFO])
    }

    /// The signing key's scalar, for tests that recompute a derivation.
    #[cfg(test)]
    pub(crate) fn signing_key_bytes_for_tests(&self) -> [u8; 32] {
        self.signing.to_bytes().into()
    }

    fn sign_digest(&self, digest: &[u8; 32]) -> EnvKeySignature {
        let (signature, recovery_id) = self
            .signing
            .sign_prehash_recoverable(digest)
            .expect("signing a 32-byte prehash with a valid key cannot fail");
        let mut bytes = [0u8; 65];
        bytes[..64].copy_from_slice(&signature.to_bytes());
        bytes[64] = recovery_id.to_byte();
        EnvKeySignature::from_bytes(bytes)
    }
}

impl fmt::Debug for KmsRootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The public key identifies which root this is without revealing it.
        write!(
            f,
            "KmsRootKey([redacted], public_key: {})",
            self.public_key().to_hex()
        )
    }
}

fn hkdf32(root: &[u8; 32], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), root);
    let mut out = Zeroizing::new([0u8; 32]);
    hk.expand_multi_info(info, &mut *out)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// The signing key: the first HKDF output (counter 0, 1, ...) that is a valid
/// secp256k1 scalar. Counter 0 fails with probability about 2^-128.
fn derive_signing_key(root: &[u8; 32]) -> SigningKey {
    (0u8..=u8::MAX)
        .find_map(|counter| {
            let bytes = hkdf32(root, &[SIGNING_KEY_INFO, &[counter]]);
            SigningKey::from_slice(&*bytes).ok()
        })
        .expect("256 HKDF outputs cannot all be invalid secp256k1 scalars")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn app(n: u8) -> AppId {
        AppId::from_bytes([n; 20])
    }

    fn root() -> KmsRootKey {
        KmsRootKey::from_bytes([0x42; 32])
    }

    #[test]
    fn same_root_and_app_give_same_keys() {
        let (a, b) = (root(), root());
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(
            *a.env_key_for(&app(1)).to_hex(),
            *b.env_key_for(&app(1)).to_hex()
        );
        assert_eq!(a.env_public_key_for(&app(1)), b.env_public_key_for(&app(1)));
        assert_eq!(
            a.env_public_key_for(&app(1)),
            a.env_key_for(&app(1)).public_key()
        );
    }

    #[test]
    fn derivation_is_pinned() {
        // Changing a label or the KDF would silently change every deployed
        // app's key; these values make that a visible test failure. They were
        // computed independently (Python: hmac/hashlib HKDF, pyca/cryptography
        // for secp256k1 and X25519).
        let r = root();
        assert_eq!(
            r.public_key().to_hex(),
            "02428f212b67789e67ba5447b15e9b467c9f8dbebcdb42834205113a3f541cef0c",
        );
        assert_eq!(
            r.env_public_key_for(&app(1)).to_hex(),
            "9b3385c5d5da3e0644ab014a964ef0caed9469d1082e0f7c82423524cd61a43c",
        );
    }

    #[test]
    fn different_apps_and_roots_give_different_keys() {
        let r = root();
        assert_ne!(r.env_public_key_for(&app(1)), r.env_public_key_for(&app(2)));
        let other = KmsRootKey::from_bytes([0x43; 32]);
        assert_ne!(
            r.env_public_key_for(&app(1)),
            other.env_public_key_for(&app(1))
        );
        assert_ne!(r.public_key(), other.public_key());
        // The signing key is not one of the env keys reinterpreted.
        assert_ne!(
            r.public_key().to_compressed_bytes()[1..],
            r.env_public_key_for(&app(1)).as_bytes()[..]
        );
    }

    #[test]
    fn debug_is_redacted() {
        let r = root();
        let shown = format!("{r:?}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert!(!shown.contains(&hex::encode([0x42u8; 32])), "{shown}");
        assert!(!shown.contains(&hex::encode([0x42u8; 4])), "{shown}");
        let env = format!("{:?}", r.env_key_for(&app(1)));
        assert!(!env.contains(&**r.env_key_for(&app(1)).to_hex()), "{env}");
    }

    #[test]
    fn file_is_created_0600_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        let created = KmsRootKey::load_or_create(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        assert_eq!(text.trim(), hex::encode(*created.root));
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        let again = KmsRootKey::load_or_create(&path).unwrap();
        assert_eq!(again.public_key(), created.public_key());
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        let loaded = KmsRootKey::load(&path).unwrap();
        assert_eq!(loaded.public_key(), created.public_key());
    }

    #[test]
    fn existing_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        let mine = format!("  {}\r\n", hex::encode([7u8; 32]));
        fs::write(&path, &mine).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let key = KmsRootKey::load_or_create(&path).unwrap();
        assert_eq!(
            key.public_key(),
            KmsRootKey::from_bytes([7; 32]).public_key()
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), mine);

        // Even a malformed file is left alone, and the error names the path
        // but not the content.
        let secretish = "ab".repeat(31) + "zz";
        fs::write(&path, &secretish).unwrap();
        let err = KmsRootKey::load_or_create(&path).unwrap_err();
        assert!(
            matches!(
                err,
                RootKeyError::Malformed {
                    reason: "not hex",
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(!msg.contains("abab"), "{msg}");
        assert!(!format!("{err:?}").contains("abab"));
        assert_eq!(fs::read_to_string(&path).unwrap(), secretish);

        fs::write(&path, "").unwrap();
        assert!(matches!(
            KmsRootKey::load_or_create(&path),
            Err(RootKeyError::Malformed {
                reason: "the file is empty",
                ..
            })
        ));
        fs::write(&path, "ab".repeat(31)).unwrap();
        assert!(matches!(
            KmsRootKey::load(&path),
            Err(RootKeyError::Malformed {
                reason: "wrong length",
                ..
            })
        ));
        fs::write(&path, "ab".repeat(1000)).unwrap();
        assert!(matches!(
            KmsRootKey::load(&path),
            Err(RootKeyError::Malformed {
                reason: "the file is too long",
                ..
            })
        ));
    }

    #[test]
    fn readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        fs::write(&path, hex::encode([7u8; 32])).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = KmsRootKey::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, RootKeyError::InsecurePermissions { mode: 0o644, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("0644"), "{err}");
    }

    #[test]
    fn missing_file_and_directory_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        let err = KmsRootKey::load(&path).unwrap_err();
        assert!(matches!(err, RootKeyError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));

        let path = dir.path().join("no-such-dir/root.key");
        let err = KmsRootKey::load_or_create(&path).unwrap_err();
        assert!(matches!(err, RootKeyError::Create { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn concurrent_creators_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        let keys: Vec<KmsPublicKey> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| KmsRootKey::load_or_create(&path).unwrap().public_key()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
