//! Upgrades: who may authorize a new compose hash for an existing app, and
//! the exact bytes an owner signs to do so.
//!
//! The KMS derives an app's env key from its app id, and the app id is fixed
//! by the app's first manifest. Whoever can make the KMS accept a new compose
//! hash under an app id can therefore run new code with that app's secrets.
//! Two models, as dstack offers them (without a blockchain):
//!
//! - [`UpgradeAuthority::Cloud`]: the control plane may register a new
//!   compose hash for an app it manages (Phala's own KMS works this way):
//!   **the operator can upgrade the code**;
//! - [`UpgradeAuthority::Owner`]: the first manifest names the owner's
//!   public key (`berth_owner_key`, so the app id commits to it), and the
//!   KMS accepts a new compose hash only with the owner's signature over
//!   [`upgrade_message`] — app id, compose hash and a counter that must grow,
//!   so an old signature cannot be replayed and a signature for one app is
//!   worth nothing for another.
//!
//! This module holds no cryptography: the signature is made and checked by
//! the `kms` crate; what is signed is defined here, once.

use crate::hex_text::normalize_hex;

/// Who may authorize a new compose hash for an app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpgradeAuthority {
    /// The control plane registers new compose hashes (the operator can
    /// upgrade the code).
    Cloud,
    /// Only compose hashes signed by this key (compressed secp256k1, hex).
    Owner {
        /// The owner's public key, lowercase hex.
        public_key: String,
    },
}

impl UpgradeAuthority {
    /// The model a manifest's `berth_owner_key` field names: a non-empty
    /// key makes the app owner-authorized.
    pub fn of_owner_key(berth_owner_key: Option<&str>) -> Self {
        match berth_owner_key.map(str::trim) {
            Some(k) if !k.is_empty() => Self::Owner {
                public_key: normalize_hex(k),
            },
            _ => Self::Cloud,
        }
    }

    /// `cloud` or `owner`: the name the API and the serial log use.
    pub fn model(&self) -> &'static str {
        match self {
            Self::Cloud => "cloud",
            Self::Owner { .. } => "owner",
        }
    }

    /// The owner's public key, for an owner-authorized app.
    pub fn owner_key(&self) -> Option<&str> {
        match self {
            Self::Cloud => None,
            Self::Owner { public_key } => Some(public_key),
        }
    }
}

impl std::fmt::Display for UpgradeAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cloud => f.write_str("cloud-authorized (the operator may register new code)"),
            Self::Owner { public_key } => write!(
                f,
                "owner-authorized (only code signed by owner key {}… runs with the app's keys)",
                &public_key[..public_key.len().min(16)]
            ),
        }
    }
}

/// The domain label of an upgrade signature.
pub const UPGRADE_SIGNATURE_LABEL: &[u8] = b"berth-upgrade-v1\0";

/// An owner's authorization of one compose hash for one app.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OwnerAuthorization {
    /// Must be greater than the counter of every update the KMS accepted
    /// for this app before.
    pub counter: u64,
    /// The owner's ECDSA signature (secp256k1, `r || s`, 64 bytes hex) over
    /// the sha256 of [`upgrade_message`].
    pub signature: String,
}

/// Why [`upgrade_message`] cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeMessageError {
    /// The app id is not 40 hex characters.
    #[error("the app id must be 40 hex characters")]
    AppId,
    /// The compose hash is not 64 hex characters.
    #[error("the compose hash must be 64 hex characters")]
    ComposeHash,
}

/// The bytes an owner signs to authorize `compose_hash` for `app_id`:
/// `"berth-upgrade-v1\0" || app id (20 bytes) || compose hash (32 bytes) ||
/// counter (u64, big-endian)`.
pub fn upgrade_message(
    app_id: &str,
    compose_hash: &str,
    counter: u64,
) -> Result<Vec<u8>, UpgradeMessageError> {
    let app = hex::decode(normalize_hex(app_id)).map_err(|_| UpgradeMessageError::AppId)?;
    if app.len() != 20 {
        return Err(UpgradeMessageError::AppId);
    }
    let hash =
        hex::decode(normalize_hex(compose_hash)).map_err(|_| UpgradeMessageError::ComposeHash)?;
    if hash.len() != 32 {
        return Err(UpgradeMessageError::ComposeHash);
    }
    let mut m = Vec::with_capacity(UPGRADE_SIGNATURE_LABEL.len() + 20 + 32 + 8);
    m.extend_from_slice(UPGRADE_SIGNATURE_LABEL);
    m.extend_from_slice(&app);
    m.extend_from_slice(&hash);
    m.extend_from_slice(&counter.to_be_bytes());
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_binds_app_hash_and_counter() {
        let app = "11".repeat(20);
        let hash = "22".repeat(32);
        let m = upgrade_message(&app, &hash, 7).unwrap();
        assert_eq!(m.len(), UPGRADE_SIGNATURE_LABEL.len() + 60);
        assert!(m.starts_with(UPGRADE_SIGNATURE_LABEL));
        assert_eq!(&m[m.len() - 8..], &7u64.to_be_bytes());
        assert_ne!(m, upgrade_message(&app, &hash, 8).unwrap());
        assert_ne!(m, upgrade_message(&"33".repeat(20), &hash, 7).unwrap());
        assert_eq!(
            m,
            upgrade_message(&format!("0x{}", app.to_uppercase()), &hash, 7).unwrap()
        );
        assert_eq!(
            upgrade_message(&hash, &hash, 1),
            Err(UpgradeMessageError::AppId)
        );
        assert_eq!(
            upgrade_message(&app, &app, 1),
            Err(UpgradeMessageError::ComposeHash)
        );
    }

    #[test]
    fn the_first_manifest_decides_the_model() {
        let parse = |extra: &str| -> crate::AppCompose {
            serde_json::from_str(&format!(
                r#"{{"name":"a","runner":"docker-compose"{extra}}}"#
            ))
            .unwrap()
        };
        assert_eq!(parse("").upgrade_authority(), UpgradeAuthority::Cloud);
        assert_eq!(
            parse(r#","berth_owner_key":"0xAB""#).upgrade_authority(),
            UpgradeAuthority::Owner {
                public_key: "ab".into()
            }
        );
        assert_eq!(
            parse(r#","berth_owner_key":"""#).upgrade_authority(),
            UpgradeAuthority::Cloud
        );
    }
}
