//! [`PullEvent`]: what a pull reports while it runs. The library never
//! prints; front ends (the CLI's progress bars, the guest's serial log)
//! subscribe with an [`EventSink`].

use crate::ratelimit::RateLimit;
use crate::reference::Digest;
use std::sync::Arc;
use std::time::Duration;

/// A callback receiving progress events. Must be cheap: it is called from
/// the download loop.
pub type EventSink = Arc<dyn Fn(&PullEvent) + Send + Sync>;

/// An event that discards everything.
pub fn no_events() -> EventSink {
    Arc::new(|_| {})
}

/// Something that happened during a pull. Never carries a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullEvent {
    /// The manifest of `image` resolved to `digest`.
    Resolved {
        /// The normalised reference.
        image: String,
        /// The digest of the platform's image manifest.
        digest: Digest,
        /// Whether the manifest came from the store (no GET).
        cached: bool,
    },
    /// A blob is needed by `image`.
    BlobQueued {
        /// The normalised reference.
        image: String,
        /// The blob.
        digest: Digest,
        /// Its size in bytes.
        size: u64,
        /// Whether the store already has it.
        cached: bool,
    },
    /// Bytes of a blob arrived.
    BlobProgress {
        /// The blob.
        digest: Digest,
        /// Bytes on disk so far.
        done: u64,
        /// Its size.
        size: u64,
    },
    /// A blob was verified and stored.
    BlobDone {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// Bytes downloaded by this pull (less than `size` after a resume).
        downloaded: u64,
        /// Time from the start of this blob's download to its commit.
        elapsed: std::time::Duration,
    },
    /// A request failed and is tried again.
    Retrying {
        /// The registry.
        registry: String,
        /// What was requested.
        what: String,
        /// The attempt about to be made.
        attempt: u32,
        /// The wait before it.
        delay: Duration,
        /// Why.
        reason: String,
    },
    /// A registry reported its pull quota.
    RateLimit {
        /// The registry.
        registry: String,
        /// The quota.
        limit: RateLimit,
    },
    /// `image` is complete in the store.
    Done {
        /// The normalised reference.
        image: String,
        /// Its manifest digest.
        digest: Digest,
    },
}

/// Sends [`PullEvent::Retrying`] to `events`: the one place retries are
/// reported, for every loop that retries.
pub(crate) fn retrying(
    events: &EventSink,
    registry: &str,
    what: impl Into<String>,
    attempt: u32,
    delay: Duration,
    reason: &str,
) {
    events(&PullEvent::Retrying {
        registry: registry.to_owned(),
        what: what.into(),
        attempt,
        delay,
        reason: reason.to_owned(),
    });
}
