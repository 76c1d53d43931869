//! [`NodeError`]: why the node (or the API's client of it) failed. The API
//! maps it to an HTTP status (`crate::error`); the node knows none.

use crate::db::DbError;

/// Why the node could not do what it was asked, on either side of
/// [`crate::nodeapi`]. The API maps these to HTTP statuses
/// (`crate::error`); the node's own socket answers with the same mapping,
/// and [`NodeError::Refused`] carries such an answer back.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The node's Docker engine cannot be reached.
    #[error("cannot reach the node's Docker engine: {0}")]
    EngineUnreachable(#[source] bollard::errors::Error),
    /// The engine refused or failed an operation.
    #[error("the node's Docker engine cannot {what}: {source}")]
    Engine {
        /// What the node asked (`list containers`, `remove a network`, …).
        what: &'static str,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// Another node process holds the CVM's boot lock.
    #[error(
        "CVM {id} is already booting: another node process holds its state lock; wait for that boot to end"
    )]
    AlreadyBooting {
        /// The CVM.
        id: String,
    },
    /// The CVM's folders could not be written.
    #[error("cannot prepare the CVM folder: {0}")]
    Folder(#[source] std::io::Error),
    /// The CVM does not exist or is deleted.
    #[error("no such CVM")]
    NoSuchCvm,
    /// The CVM's app row is gone.
    #[error("the CVM's app is gone")]
    AppGone,
    /// The container named is not one of the CVM's.
    #[error("no such container in this CVM")]
    NoSuchContainer,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// (API side) nobody listens on the node's socket.
    #[error(
        "the node is not running: CVMs cannot be started, stopped or inspected until it is back"
    )]
    NotRunning,
    /// (API side) the node did not answer in time.
    #[error("the node did not answer in time")]
    Timeout,
    /// (API side) the node's answer ended early.
    #[error("the node's answer broke off")]
    BrokeOff,
    /// (API side) the node's answer is not what the interface says.
    #[error("the node answered nonsense")]
    Nonsense,
    /// (API side) the node answered with an error body, kept as it was.
    #[error("{detail}")]
    Refused {
        /// Its HTTP status.
        status: u16,
        /// Its machine-readable code.
        code: Option<String>,
        /// Its sentence.
        detail: String,
    },
    /// (API side) the node answered an error without a body that says why.
    #[error("the node answered {status}")]
    Unexplained {
        /// Its HTTP status.
        status: u16,
    },
}
