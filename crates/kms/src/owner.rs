//! The owner's upgrade key: the key on the user's machine whose signature
//! the KMS requires before an owner-authorized app may run a new compose
//! hash ([`contract::upgrade`]).
//!
//! secp256k1 ECDSA (the curve the KMS already signs with, so no second
//! signature crate is linked), over the sha256 of
//! [`contract::upgrade::upgrade_message`], encoded as 64 bytes `r || s` in
//! hex. Signatures are normalised to low-s, and verification refuses high-s
//! forms, so one authorization has exactly one encoding.

use crate::ParseError;
use contract::upgrade::{OwnerAuthorization, upgrade_message};
use k256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use k256::ecdsa::{Signature, SigningKey, VerifyingKey};
use rand_core::OsRng;
use sha2::Digest as _;
use std::fmt;
use std::io;
use std::path::Path;
use zeroize::Zeroizing;

/// Why an upgrade authorization is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnerAuthError {
    /// The app id or compose hash is malformed.
    #[error("{0}")]
    Message(#[from] contract::upgrade::UpgradeMessageError),
    /// The owner key in the manifest is not a secp256k1 public key.
    #[error("the app's owner key is not a compressed secp256k1 public key")]
    OwnerKey,
    /// The signature is not 64 hex-encoded bytes.
    #[error("the signature must be 64 bytes (r || s) in hex")]
    Encoding,
    /// The signature does not verify under the owner key.
    #[error(
        "the signature is not the owner's signature over this app id, compose hash and counter"
    )]
    BadSignature,
}

/// The owner's private upgrade key. `Debug` shows only the public key;
/// the secret is wiped on drop (by `k256`).
pub struct OwnerKey(SigningKey);

impl OwnerKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self(SigningKey::random(&mut OsRng))
    }

    /// Reads the key from `path` (64 hex characters), or creates it there
    /// (mode 0600, in a folder made 0700), complete or not at all (the key
    /// file rules of [`crate::KmsRootKey::load_or_create`]). Never replaces
    /// an existing file; refuses a key file other users can read. `true`
    /// when it was created.
    pub fn load_or_create(path: &Path) -> io::Result<(Self, bool)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let generate = || Zeroizing::new(SigningKey::random(&mut OsRng).to_bytes().into());
        let (bytes, created) =
            crate::keyfile::load_or_create_secret32(path, generate).map_err(owner_words)?;
        let key = SigningKey::from_slice(bytes.as_ref()).map_err(|_| {
            io::Error::other(format!(
                "the owner key at {} is not a valid secp256k1 key",
                path.display()
            ))
        })?;
        Ok((Self(key), created))
    }

    /// The public key, compressed SEC1 hex (what goes into the manifest).
    pub fn public_hex(&self) -> String {
        hex::encode(self.0.verifying_key().to_encoded_point(true).as_bytes())
    }

    /// Authorizes `compose_hash` for `app_id` with `counter`.
    pub fn authorize(
        &self,
        app_id: &str,
        compose_hash: &str,
        counter: u64,
    ) -> Result<OwnerAuthorization, OwnerAuthError> {
        let digest = sha2::Sha256::digest(upgrade_message(app_id, compose_hash, counter)?);
        let sig: Signature = self
            .0
            .sign_prehash(&digest)
            .expect("signing a 32-byte prehash cannot fail");
        let sig = sig.normalize_s().unwrap_or(sig);
        Ok(OwnerAuthorization {
            counter,
            signature: hex::encode(sig.to_bytes()),
        })
    }
}

impl fmt::Debug for OwnerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OwnerKey(public {}, private [redacted])",
            self.public_hex()
        )
    }
}

/// Checks that `auth` is the owner's (`owner_key`, hex) authorization of
/// `compose_hash` for `app_id`. The counter's freshness is the caller's.
pub fn verify_authorization(
    owner_key: &str,
    app_id: &str,
    compose_hash: &str,
    auth: &OwnerAuthorization,
) -> Result<(), OwnerAuthError> {
    let key = parse_owner_key(owner_key).map_err(|_| OwnerAuthError::OwnerKey)?;
    let bytes = hex::decode(contract::app::normalize_hex(&auth.signature))
        .map_err(|_| OwnerAuthError::Encoding)?;
    let sig = Signature::from_slice(&bytes).map_err(|_| OwnerAuthError::Encoding)?;
    if sig.normalize_s().is_some() {
        // A high-s twin of a valid signature: one authorization, one encoding.
        return Err(OwnerAuthError::BadSignature);
    }
    let digest = sha2::Sha256::digest(upgrade_message(app_id, compose_hash, auth.counter)?);
    key.verify_prehash(&digest, &sig)
        .map_err(|_| OwnerAuthError::BadSignature)
}

/// An owner public key from hex (compressed or uncompressed SEC1, `0x` allowed).
pub fn parse_owner_key(text: &str) -> Result<VerifyingKey, ParseError> {
    let bytes = hex::decode(contract::app::normalize_hex(text))
        .map_err(|_| ParseError::NotHex { what: "owner key" })?;
    VerifyingKey::from_sec1_bytes(&bytes).map_err(|_| ParseError::Invalid {
        what: "owner key",
        reason: "not a secp256k1 public key",
    })
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// A key-file error in the owner key's words (the rules are the root
/// key's; the messages name the owner key).
fn owner_words(e: crate::RootKeyError) -> io::Error {
    use crate::RootKeyError as E;
    let (kind, text) = match e {
        E::Read { path, source } => (
            source.kind(),
            format!("cannot read the owner key at {}: {source}", path.display()),
        ),
        E::Create { path, source } => (
            source.kind(),
            format!(
                "cannot create the owner key at {}: {source}",
                path.display()
            ),
        ),
        E::Malformed { path, reason } => (
            io::ErrorKind::InvalidData,
            format!(
                "the owner key at {} is malformed: {reason} (expected 64 hex characters); it was not changed",
                path.display()
            ),
        ),
        E::NotOwned { path, owner, me } => (
            io::ErrorKind::PermissionDenied,
            format!(
                "the owner key at {} belongs to {owner}, not to this user ({me}), so another user may have put it there: if it is yours, chown it to this user; otherwise remove it",
                path.display()
            ),
        ),
        E::UnsafeFolder {
            path,
            folder,
            problem,
        } => (
            io::ErrorKind::PermissionDenied,
            format!(
                "the owner key at {} is in {}, which {problem}, so another user could put a key of their own there: keep the key in a folder that only this user or root can write to",
                path.display(),
                folder.display()
            ),
        ),
        E::InsecurePermissions { path, mode } => (
            io::ErrorKind::PermissionDenied,
            format!(
                "the owner key at {} has mode {mode:04o}; group and others must have no access (chmod 600 it)",
                path.display()
            ),
        ),
    };
    io::Error::new(kind, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "1111111111111111111111111111111111111111";

    fn hash(n: u8) -> String {
        hex::encode([n; 32])
    }

    #[test]
    fn an_authorization_covers_app_hash_and_counter() {
        let owner = OwnerKey::generate();
        let pk = owner.public_hex();
        let auth = owner.authorize(APP, &hash(1), 3).unwrap();
        verify_authorization(&pk, APP, &hash(1), &auth).unwrap();
        let other_app = "2222222222222222222222222222222222222222";
        assert_eq!(
            verify_authorization(&pk, other_app, &hash(1), &auth),
            Err(OwnerAuthError::BadSignature)
        );
        assert_eq!(
            verify_authorization(&pk, APP, &hash(2), &auth),
            Err(OwnerAuthError::BadSignature)
        );
        let bumped = OwnerAuthorization {
            counter: 4,
            ..auth.clone()
        };
        assert_eq!(
            verify_authorization(&pk, APP, &hash(1), &bumped),
            Err(OwnerAuthError::BadSignature)
        );
        let stranger = OwnerKey::generate();
        assert_eq!(
            verify_authorization(&stranger.public_hex(), APP, &hash(1), &auth),
            Err(OwnerAuthError::BadSignature)
        );
        assert!(!format!("{owner:?}").contains(&hex::encode(owner.0.to_bytes())));
    }

    #[test]
    fn the_key_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/owner-key");
        let (a, created) = OwnerKey::load_or_create(&path).unwrap();
        assert!(created);
        let (b, created) = OwnerKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(a.public_hex(), b.public_hex());
        #[cfg(unix)]
        {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
            assert_eq!(
                std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
                0o700
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = OwnerKey::load_or_create(&path).unwrap_err();
            assert!(e.to_string().contains("chmod 600"), "{e}");
            // A file that is not a key is refused, named, and left alone.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::write(&path, b"").unwrap();
            let e = OwnerKey::load_or_create(&path).unwrap_err();
            assert!(e.to_string().contains("the owner key at"), "{e}");
            assert!(e.to_string().contains("malformed"), "{e}");
            assert_eq!(std::fs::read(&path).unwrap(), b"");
        }
    }
}
