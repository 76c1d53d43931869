//! [`CvmStatus`]: the life of a CVM as the control plane records it.
//!
//! The API writes `provisioning` when a CVM is committed; the node writes
//! `starting` when it starts a boot agent and `running` or `boot_failed`
//! when the agent's confirmed final line says so; stop writes `stopped`;
//! delete writes `deleting` before it removes anything, then `deleted`, so
//! a node that dies in between finishes the delete when it starts again
//! instead of booting the CVM. `deleted` is final. The same words are the
//! `status` field of the Phala-compatible API and the database column, so
//! they live here once.

use std::fmt;
use std::str::FromStr;

/// Where a CVM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CvmStatus {
    /// Committed; the node has not started its boot yet.
    Provisioning,
    /// The boot agent runs (pulling, loading, starting the compose app).
    Starting,
    /// The boot ended with `BOOT OK`.
    Running,
    /// The boot ended with `BOOT FAILED: <category>`.
    BootFailed,
    /// Stopped by its owner (or the node); a start boots it again.
    Stopped,
    /// Being deleted: the node recorded the intent and removes its
    /// containers and folders; a node restart finishes the delete. Only
    /// `deleted` follows.
    Deleting,
    /// Deleted: its containers and folders are gone. Final.
    Deleted,
}

/// A status word that is not one of [`CvmStatus`]'s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a CVM status (provisioning, starting, running, boot_failed, stopped, deleting, deleted)"
)]
pub struct UnknownStatus(pub String);

impl CvmStatus {
    /// Every status, in life order.
    pub const ALL: [CvmStatus; 7] = [
        CvmStatus::Provisioning,
        CvmStatus::Starting,
        CvmStatus::Running,
        CvmStatus::BootFailed,
        CvmStatus::Stopped,
        CvmStatus::Deleting,
        CvmStatus::Deleted,
    ];

    /// Every status but `deleting` and `deleted`: those a start, a stop or
    /// a boot's end can move a CVM from (a delete, once begun, only ends in
    /// `deleted`).
    pub const LIVE: [CvmStatus; 5] = [
        CvmStatus::Provisioning,
        CvmStatus::Starting,
        CvmStatus::Running,
        CvmStatus::BootFailed,
        CvmStatus::Stopped,
    ];

    /// The word in the API and the database (`boot_failed`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            CvmStatus::Provisioning => "provisioning",
            CvmStatus::Starting => "starting",
            CvmStatus::Running => "running",
            CvmStatus::BootFailed => "boot_failed",
            CvmStatus::Stopped => "stopped",
            CvmStatus::Deleting => "deleting",
            CvmStatus::Deleted => "deleted",
        }
    }

    /// Whether a boot is pending or under way (the API's `in_progress`).
    pub fn in_progress(self) -> bool {
        matches!(self, CvmStatus::Provisioning | CvmStatus::Starting)
    }

    /// Whether the CVM still exists (anything but `deleted`; a `deleting`
    /// CVM is still there until its delete ends).
    pub fn is_live(self) -> bool {
        self != CvmStatus::Deleted
    }
}

impl fmt::Display for CvmStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CvmStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.chars().take(40).collect()))
    }
}

impl PartialEq<str> for CvmStatus {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for CvmStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for CvmStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for CvmStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for s in CvmStatus::ALL {
            assert_eq!(s.as_str().parse::<CvmStatus>().unwrap(), s);
            assert_eq!(s.to_string(), s.as_str());
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<CvmStatus>(&json).unwrap(), s);
        }
        let err = "Running".parse::<CvmStatus>().unwrap_err();
        assert!(err.to_string().contains("`Running` is not a CVM status"));
        let err = serde_json::from_str::<CvmStatus>("\"paused\"").unwrap_err();
        assert!(
            err.to_string().contains("`paused` is not a CVM status"),
            "{err}"
        );
    }

    #[test]
    fn progress_and_liveness() {
        let busy: Vec<_> = CvmStatus::ALL
            .into_iter()
            .filter(|s| s.in_progress())
            .collect();
        assert_eq!(busy, [CvmStatus::Provisioning, CvmStatus::Starting]);
        assert!(!CvmStatus::Deleted.is_live());
        assert!(!CvmStatus::LIVE.contains(&CvmStatus::Deleted));
        assert!(!CvmStatus::LIVE.contains(&CvmStatus::Deleting));
        assert!(CvmStatus::Deleting.is_live() && !CvmStatus::Deleting.in_progress());
        assert_eq!(CvmStatus::LIVE.len() + 2, CvmStatus::ALL.len());
        assert!(CvmStatus::BootFailed == "boot_failed");
    }
}
