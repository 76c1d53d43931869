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

/// Asks the KMS for the env key, presenting the app's measurement.
///
/// Simulated TEE: the measurement is computed from `app-compose.json`, not
/// attested by hardware, and the KMS takes it on trust. With TDX, this is
/// where a quote carrying the measurement would be sent instead.
pub struct Kms {
    /// The KMS base URL (from `sys-config.json`).
    pub url: String,
}

impl EnvKeyProvider for Kms {
    fn env_key<'a>(&'a self, measurement: &'a Measurement) -> KeyFuture<'a> {
        Box::pin(async move {
            let url = format!("{}/kms/v1/env-key", self.url.trim_end_matches('/'));
            let body = serde_json::json!({
                "app_id": measurement.app_id,
                "compose_hash": measurement.compose_hash,
                "attestation": {"type": "simulated"},
            });
            let unreachable = |e: reqwest::Error| {
                BootError::new(
                    Category::Unreachable,
                    format!("cannot reach the KMS at {}: {e}", self.url),
                )
                .hint("check that the KMS is running (berth up) and that sys-config.json names it")
            };
            let resp = reqwest::Client::new()
                .post(&url)
                .json(&body)
                .timeout(std::time::Duration::from_secs(30))
                .send()
                .await
                .map_err(unreachable)?;
            let status = resp.status();
            let bytes = zeroize::Zeroizing::new(resp.bytes().await.map_err(unreachable)?.to_vec());
            if !status.is_success() {
                #[derive(serde::Deserialize)]
                struct E {
                    detail: Option<String>,
                }
                let detail = serde_json::from_slice::<E>(&bytes)
                    .ok()
                    .and_then(|e| e.detail)
                    .unwrap_or_default();
                return Err(BootError::new(
                    Category::AccessDenied,
                    format!("the KMS refused the env key ({status}): {detail}"),
                )
                .hint("the KMS releases an app's key only to a CVM running the app-compose.json registered for it"));
            }
            #[derive(serde::Deserialize)]
            struct Answer {
                env_private_key: String,
            }
            let answer: Answer = serde_json::from_slice(&bytes).map_err(|_| {
                BootError::new(Category::RegistryError, "the KMS answered without a key")
            })?;
            let key = zeroize::Zeroizing::new(answer.env_private_key);
            EnvPrivateKey::from_hex(&key).map_err(|e| {
                BootError::new(Category::Integrity, format!("the KMS sent a bad key: {e}"))
            })
        })
    }

    fn describe(&self) -> String {
        format!(
            "the KMS at {} (simulated TEE: measurement computed, not attested)",
            self.url
        )
    }
}
