//! [`DbError`]: why a call of [`super::Db`] failed. The API maps it to an
//! HTTP status (`crate::error`); the database knows none.

use std::time::Duration;

/// Why a database call failed: a rule a write keeps, a database busy for
/// longer than the call's patience, or SQLite itself. The API maps these
/// to HTTP statuses (`crate::error`); this module knows none. No variant
/// holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Another process held the database's lock for the call's whole patience.
    #[error(
        "the database is busy (another process has held its lock for over {:.1} s): try again in a moment",
        .waited.as_secs_f64()
    )]
    Busy {
        /// How long the call waited.
        waited: Duration,
    },
    /// `create_user` with a name already taken.
    #[error("a user named {username} already exists")]
    UserExists {
        /// The name.
        username: String,
    },
    /// The user already has a live CVM with this name.
    #[error("you already have a CVM named `{name}`: delete it first, or choose another name")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// The user is at the operator's cap on CVMs per user.
    #[error(
        "you have {have} CVMs, the most one user may have (the operator's cap, berth up --max-cvms-per-user {max}): delete a CVM you no longer need, or ask the operator to raise the cap"
    )]
    TooManyCvms {
        /// The user's live CVMs.
        have: usize,
        /// The cap.
        max: usize,
    },
    /// The user is at the cap on apps provisioned and never committed.
    #[error(
        "you have {have} provisioned apps that no CVM uses yet, the most one user may keep ({max}): commit one (POST /cvms), provision the same compose file and name again (which reuses its app), or wait: each is dropped an hour after it was provisioned"
    )]
    TooManyUncommittedApps {
        /// The user's uncommitted apps.
        have: usize,
        /// The cap.
        max: usize,
    },
    /// The provisioned app is gone (it expired before it was committed).
    #[error("no provisioned app with this app_id: call POST /cvms/provision first")]
    AppGone,
    /// The database server could not be reached for the call's whole
    /// patience (PostgreSQL down, restarting, or refusing connections).
    #[error(
        "the database ({server}) cannot be reached: {why}; Berth keeps trying, so try again in a moment (operator: check that the database server is running and reachable)"
    )]
    Unavailable {
        /// `HOST:PORT` (or the SQLite file), never a URL.
        server: String,
        /// The engine's reason, first line.
        why: String,
    },
    /// A database URL that cannot be used.
    #[error("the database URL cannot be used: {why}")]
    BadUrl {
        /// What is wrong (never the URL's text).
        why: &'static str,
    },
    /// The engine failed.
    #[error("database error: {0}")]
    Sql(#[from] super::SqlError),
    /// The pool or a blocking task failed.
    #[error("{0}")]
    Internal(&'static str),
}
