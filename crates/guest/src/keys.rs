//! [`EnvKeyProvider`]: where the app's env private key comes from.
//!
//! A small trait on purpose: it is the seam where hardware attestation plugs
//! in. Today there are two providers: a key file (standalone use and tests),
//! and the local KMS, which releases the key to a CVM presenting the
//! registered compose hash (simulated TEE: the measurement is computed, not
//! attested by hardware).

use crate::error::BootError;
use crate::shared::Measurement;
use envseal::EnvPrivateKey;
use registry::Category;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

/// A boxed future returned by [`EnvKeyProvider::env_key`].
pub type KeyFuture<'a> =
    Pin<Box<dyn Future<Output = Result<EnvPrivateKey, BootError>> + Send + 'a>>;

/// Supplies the env private key for a measured app.
pub trait EnvKeyProvider: Send + Sync {
    /// The key for the app measured as `measurement`.
    fn env_key<'a>(&'a self, measurement: &'a Measurement) -> KeyFuture<'a>;
    /// A short description for the serial log (`key file /x`, `KMS at …`).
    fn describe(&self) -> String;
}

/// Reads the key from a file written by `berth keygen`.
pub struct KeyFile(pub PathBuf);

impl EnvKeyProvider for KeyFile {
    fn env_key<'a>(&'a self, _measurement: &'a Measurement) -> KeyFuture<'a> {
        Box::pin(async move {
            let text = zeroize::Zeroizing::new(std::fs::read_to_string(&self.0).map_err(|e| {
                BootError::new(
                    Category::Config,
                    format!("cannot read the env key file {}: {e}", self.0.display()),
                )
            })?);
            EnvPrivateKey::from_hex(&text).map_err(|e| {
                BootError::new(
                    Category::Config,
                    format!("the env key file {}: {e}", self.0.display()),
                )
            })
        })
    }

    fn describe(&self) -> String {
        format!("key file {}", self.0.display())
    }
}
