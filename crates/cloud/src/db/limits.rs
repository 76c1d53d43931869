//! The operator's caps on what users may hold and start ([`Limits`]), and
//! how long a provisioned app no CVM uses is kept: what the `apps` and
//! `cvms` tables both enforce, kept apart so that neither uses the other
//! for it.

use super::DbError;

/// The operator's caps (`berth up --max-cvms-per-user`, `--max-boots`,
/// `--max-boots-per-user`, `--max-requests-per-user`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most CVMs (not deleted) one user may have.
    pub max_cvms_per_user: usize,
    /// The node's boot slots: the most boots running at once, all users
    /// together (`--max-boots`). More wait in the node's boot queue, their
    /// CVMs `starting` with "waiting for a boot slot (N ahead)"; a commit or
    /// a start is never refused for it (load is not a quota).
    pub max_boots_in_flight: usize,
    /// The most boots of one user running at once (`--max-boots-per-user`),
    /// so that one user's stuck boots cannot take every slot of
    /// [`Limits::max_boots_in_flight`]; the user's other CVMs wait in the
    /// queue (which shares the slots round-robin between users).
    pub max_boots_per_user: usize,
    /// The most apps one user may have provisioned and never committed
    /// (`POST /cvms/provision` without `POST /cvms`); each also expires
    /// after [`UNCOMMITTED_APP_TTL`].
    pub max_uncommitted_apps_per_user: usize,
    /// The most requests one user's API keys may have in progress at once
    /// (a slow body holds one until the server's body timeout).
    pub max_requests_per_user: usize,
    /// What a CVM is on this cloud (`berth up --isolation`): the compose
    /// rules a tenant's file is checked with follow from it.
    pub isolation: contract::Isolation,
    /// Refuse, at provisioning and update, a compose file naming an image
    /// without a digest (`berth up --require-digests`).
    pub require_digests: bool,
}

/// How long a provisioned app that no CVM uses is kept: it is dropped at
/// the user's next provisioning after that.
pub const UNCOMMITTED_APP_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_cvms_per_user: 50,
            max_boots_in_flight: 8,
            max_boots_per_user: 4,
            max_uncommitted_apps_per_user: 20,
            max_requests_per_user: 64,
            isolation: contract::Isolation::Shared,
            require_digests: false,
        }
    }
}

impl Limits {
    /// A user with `have` CVMs is at the CVM cap.
    pub fn too_many_cvms(&self, have: usize) -> DbError {
        DbError::TooManyCvms {
            have,
            max: self.max_cvms_per_user,
        }
    }
}
