//! `cloud`: Berth's control plane and local node.
//!
//! What goes in: deployments from the official Phala clients or `berth
//! deploy` (a compose file, `allowed_envs`, and a sealed env). What comes
//! out: CVMs running on the local node, their status and their logs.
//!
//! - [`api`]: the Phala-compatible HTTP API (`axum`), the only module that
//!   knows its JSON field names.
//! - [`db`]: SQLite with migrations, portable SQL.
//! - [`node`]: CVMs as `berth guest boot` processes with their own folders,
//!   run in the node's own process; [`nodeapi`]: the narrow interface the
//!   API uses to tell it what to do.
//! - [`console`]: the web console served at `/` (embedded assets).
//! - [`appcompose`]: provisioning checks and the byte-exact `app-compose.json`.
//! - [`serve`]: the API's listener (header timeout, connection cap, TLS);
//!   [`logs`]: log files read from disk with a tail, a byte cap and an offset.
//! - [`up`]: the whole local cloud (`berth up`) as one call, and the node
//!   process's entry point, for every front end.
//!
//! Why it looks like this: the control plane is on the wrong side of the
//! trust boundary. It stores the sealed env as opaque bytes and asks the KMS
//! (a separate process) only for *public* keys; this crate depends on no
//! crate that can derive an env private key or open a sealed env.
#![deny(missing_docs)]

pub mod api;
pub mod appcompose;
pub mod client;
pub mod console;
pub mod db;
pub mod error;
pub mod logs;
pub mod node;
pub mod nodeapi;
pub mod serve;
pub mod up;

pub use api::{AppState, router};
pub use client::{ApiClient, ClientError, CvmInfo, PreparedUpdate, Provisioned};
pub use db::{Db, DbError};
pub use error::ApiError;
pub use node::{Node, NodeConfig, NodeError, NodeSecret};
pub use nodeapi::NodeClient;

/// A new random API key (`berth_` + 32 random bytes, hex).
pub fn new_api_key() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut b);
    format!("berth_{}", hex::encode(b))
}
