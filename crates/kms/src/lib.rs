//! `kms`: the keys Berth's key management service holds and the signatures it
//! gives out, as values.
//!
//! The central type is [`KmsRootKey`], 32 random bytes from which everything
//! else is derived:
//!
//! - the KMS **signing key** (secp256k1), whose public half
//!   ([`KmsPublicKey`]) clients pin;
//! - each app's **env key** ([`KmsRootKey::env_key_for`]), the X25519 key pair
//!   that `envseal` seals to and that the KMS releases only to the app's CVM;
//! - a **signature over each env public key**
//!   ([`KmsRootKey::sign_env_public_key`]), so a client can check that the key
//!   it is about to seal credentials to comes from the KMS it trusts and not
//!   from a control plane that swapped it for its own;
//! - each app's **app key** ([`KmsRootKey::app_key_for`]), the secp256k1 key
//!   the guest agent derives the app's keys from, with the KMS's signature
//!   over it, both exactly as dstack's KMS makes them ([`app_key`]).
//!
//! # Why derive instead of store
//!
//! Every key is a deterministic function of the root key (HKDF-SHA256 with a
//! fixed label, plus the 20-byte [`AppId`] for env keys). The KMS therefore
//! keeps exactly one secret on disk, needs no per-app database, gives the same
//! key after a restart, and two apps can never share an env key. Backing up or
//! replicating the KMS is copying one file.
//!
//! # Why dstack's signature layout
//!
//! The signature format is not ours to choose: it is the one dstack's KMS
//! answers `GetAppEnvEncryptPubKey` with and that the official SDKs verify
//! (`verifyEnvEncryptPublicKey` in `@phala/dstack-sdk`, and the Python and Go
//! twins), so that an official client can check a Berth KMS. The signed
//! message is
//!
//! ```text
//! keccak256("dstack-env-encrypt-pubkey" || ":" || app_id (20 bytes)
//!           || timestamp (u64, big-endian; absent in the legacy form)
//!           || env public key (32 bytes))
//! ```
//!
//! signed with recoverable ECDSA over secp256k1 and encoded as 65 bytes
//! `r || s || v` with `v` the recovery id (0 or 1, not 27/28). The verifier
//! recovers the signer's public key (compressed SEC1) and compares it with the
//! pinned one; [`SignedEnvPublicKey::verify`] does the same here, including the
//! SDK's freshness window for the timestamp.
//!
//! # The two edges
//!
//! [`server`] is the KMS's HTTP edge and the `berth kms serve` process
//! ([`server::run`]); [`trust`] is the client's edge: verify the signature
//! over an offered env key, then seal to it ([`trust::seal_env`]).
//!
//! # Upgrades
//!
//! An app keeps its app id, and so its env key, across updates of its
//! compose file. The KMS therefore keeps one piece of state besides the root
//! key: for each app that was updated, the compose hash its boots may have
//! the key for, and who may change it (`apps`, files in `STATE/kms/apps/`).
//! Owner-authorized apps change it only with the owner's signature
//! ([`owner`]); see [`contract::upgrade`].
//!
//! # What this crate does not do
//!
//! No network, no clock, no logging outside [`server`] (and its upgrade
//! registry). The only other I/O is in the explicitly named key file
//! functions, [`KmsRootKey::load`], [`KmsRootKey::load_or_create`] and
//! [`owner::OwnerKey::load_or_create`]; the only outside resource besides them is
//! the operating system's random generator in [`KmsRootKey::generate`].
//! Callers pass the current time in. Deciding *whom* to give an env private
//! key to (attestation, the registered compose hash) is the caller's job.
//! No error or `Debug` output of this crate contains a secret.
#![deny(missing_docs)]

mod app_id;
pub mod app_key;
mod apps;
mod error;
mod keyfile;
pub mod owner;
mod root;
pub mod server;
mod signature;
pub mod trust;

pub use app_id::AppId;
pub use app_key::{AppKey, recover_app_key_signer};
pub use error::{ParseError, RootKeyError, VerifyError};
pub use root::KmsRootKey;
pub use signature::{
    EnvKeySignature, KmsPublicKey, MAX_SIGNATURE_AGE_SECS, MAX_SIGNATURE_FUTURE_SKEW_SECS,
    SignedEnvPublicKey, recover_env_key_signer, recover_env_key_signer_legacy,
};
