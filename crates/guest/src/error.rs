//! [`BootError`]: why a boot failed, in the pull engine's taxonomy.

use registry::{Category, PullError};

/// A failed boot step: a category (which decides the exit code), one
/// sentence, and the troubleshooting lines that apply. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BootError {
    /// What kind of failure.
    pub category: Category,
    /// One sentence.
    pub message: String,
    /// What to do.
    pub hints: Vec<String>,
}

impl BootError {
    /// A new error.
    pub fn new(category: Category, message: impl Into<String>) -> Self {
        Self {
            category,
            message: message.into(),
            hints: Vec::new(),
        }
    }

    /// Adds a troubleshooting line.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }
}

impl From<contract::ComposeError> for BootError {
    fn from(e: contract::ComposeError) -> Self {
        BootError::new(Category::Config, e.message).hint(
            "every CVM of this node shares one Docker engine: host namespaces, mounts, devices, capabilities and host files are refused (see the compose policy in the README)",
        )
    }
}

impl From<PullError> for BootError {
    fn from(e: PullError) -> Self {
        let mut hints = vec![e.hint.clone()];
        if e.category == Category::AccessDenied && e.registry.as_deref() == Some("ghcr.io") {
            hints.push("GHCR: a private package needs a token with read:packages, and the package must be visible to that account".into());
        }
        Self {
            category: e.category,
            message: e.message,
            hints,
        }
    }
}
