//! [`EnvKeyProvider`]: where the app's env private key comes from.
//!
//! A small trait on purpose: it is the seam where hardware attestation plugs
//! in. Today there are two providers: a key file (standalone use and tests),
//! and the local KMS, which releases the key to a CVM presenting the
//! registered compose hash (simulated TEE: the measurement is computed, not
//! attested by hardware).

use crate::error::BootError;
use contract::Measurement;
use contract::kms::{
    Attestation, ENV_KEY_PATH, EnvKeyAnswer, EnvKeyRequest, ErrorAnswer, KmsEndpoint,
};
use envseal::EnvPrivateKey;
use registry::Category;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use zeroize::Zeroizing;

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
            let text = Zeroizing::new(std::fs::read_to_string(&self.0).map_err(|e| {
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

/// Asks the KMS for the env key, presenting the app's measurement and the
/// one-time boot ticket the node handed to this boot.
///
/// Simulated TEE: the measurement is computed from `app-compose.json`, not
/// attested by hardware, and the KMS takes it on trust from a caller holding
/// a ticket only the node can mint. With TDX, this is where a quote carrying
/// the measurement would be sent instead
/// ([`contract::kms::Attestation`]).
pub struct Kms {
    /// The KMS (from `sys-config.json`): `unix:/path/kms.sock` or a URL.
    pub url: String,
    /// The boot ticket (from the node, on the agent's standard input).
    pub ticket: Option<Zeroizing<String>>,
}

/// The longest KMS answer read (an env key answer is ~150 bytes).
const MAX_KMS_ANSWER: usize = 64 * 1024;

impl EnvKeyProvider for Kms {
    fn env_key<'a>(&'a self, measurement: &'a Measurement) -> KeyFuture<'a> {
        Box::pin(async move {
            let bytes = self.redeem(ENV_KEY_PATH, measurement, "env key").await?;
            let answer: EnvKeyAnswer = serde_json::from_slice(&bytes).map_err(|_| {
                BootError::new(Category::RegistryError, "the KMS answered without a key")
            })?;
            let key = Zeroizing::new(answer.env_private_key);
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

impl Kms {
    /// Redeems the ticket at the KMS's `path` for the app measured as
    /// `measurement`: the answer's bytes (a secret), or why not. `what`
    /// names the key in errors.
    pub(crate) async fn redeem(
        &self,
        path: &str,
        measurement: &Measurement,
        what: &str,
    ) -> Result<Zeroizing<Vec<u8>>, BootError> {
        let endpoint = KmsEndpoint::parse(&self.url).ok_or_else(|| {
            BootError::new(
                Category::Config,
                "sys-config.json names a KMS that is neither `unix:/path` nor an http(s) URL",
            )
        })?;
        let Some(ticket) = &self.ticket else {
            return Err(BootError::new(
                Category::AccessDenied,
                format!("no boot ticket: the KMS releases the {what} only to a process the node started with a ticket"),
            )
            .hint("start CVMs through the node (berth up), or give the boot agent a key file"));
        };
        let body = Zeroizing::new(
            serde_json::to_vec(&EnvKeyRequest {
                app_id: measurement.app_id.clone(),
                compose_hash: measurement.compose_hash.clone(),
                ticket: ticket.to_string(),
                attestation: Attestation {
                    kind: "simulated".into(),
                },
            })
            .expect("json"),
        );
        let unreachable = |e: reqwest::Error| {
            BootError::new(
                Category::Unreachable,
                format!(
                    "cannot reach the KMS at {}: {}",
                    self.url,
                    registry_free(&e)
                ),
            )
            .hint("check that the KMS is running (berth up) and that sys-config.json names it")
        };
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let KmsEndpoint::Unix(path) = &endpoint {
            builder = builder.unix_socket(path.clone());
        }
        let client = builder.build().map_err(unreachable)?;
        let mut resp = client
            .post(endpoint.url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        let mut bytes = Zeroizing::new(Vec::new());
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            if bytes.len() + chunk.len() > MAX_KMS_ANSWER {
                return Err(BootError::new(
                    Category::RegistryError,
                    format!("the KMS answered with more than {MAX_KMS_ANSWER} bytes"),
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let detail = serde_json::from_slice::<ErrorAnswer>(&bytes)
                .map(|e| e.detail.chars().take(300).collect::<String>())
                .unwrap_or_default();
            return Err(BootError::new(
                Category::AccessDenied,
                format!("the KMS refused the {what} ({status}): {detail}"),
            )
            .hint("the KMS releases an app's key once per boot ticket, only to a CVM running the app-compose.json registered for it"));
        }
        Ok(bytes)
    }
}

/// A transport error's kind, without a URL or anything the server sent.
fn registry_free(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection refused or socket missing"
    } else {
        "the request failed"
    }
}
