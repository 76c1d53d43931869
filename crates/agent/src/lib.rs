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

mod api;
mod decode;
mod eventlog;
mod identity;
mod kdf;
mod quote;
mod server;
mod tls;

pub use identity::{AgentIdentity, AttestationKey, AttestationPublicKey};
pub use quote::{QuoteError, SIMULATED_QE_VENDOR_ID, VerifiedQuote, verify_quote};

/// What `Info` (and a boot's serial log) says about the TEE: it is
/// simulated.
pub const SIMULATED_NOTICE: &str = "simulated TEE (Berth): keys, signature chains and the event log are real; quotes are signed by Berth's attestation key, not by Intel TDX hardware";

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
/// The identity is checked first: `app_id`, `compose_hash` (the sha256 of
/// `app_compose`) and the KMS signature over the app key (it must recover
/// to `kms_root_public_key`); a mismatch is an `InvalidInput` error.
pub async fn serve(config: AgentConfig, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let AgentConfig {
        identity,
        sockets,
        attestation_key,
    } = config;
    let state = api::AgentState::new(identity, attestation_key)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    server::run(state, sockets, shutdown).await
}

/// [`serve`] on sockets someone else bound and keeps (a node that holds a
/// CVM's sockets across restarts of its agent, so the containers' mounts
/// stay the same inode); they are left in place at the end. The identity
/// is checked as [`serve`] checks it.
pub async fn serve_listeners(
    identity: AgentIdentity,
    attestation_key: AttestationKey,
    listeners: Vec<tokio::net::UnixListener>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let state = api::AgentState::new(identity, attestation_key)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    server::serve_listeners(state, listeners, shutdown).await;
    Ok(())
}
