//! [`PullError`] and its [`Category`]: the one failure taxonomy of Berth.
//!
//! Every failure of a pull, a check or a boot is exactly one category. The
//! category decides the hint a person gets here, and the exit code in the
//! `berth` binary (the only place that knows exit codes). What is retried
//! and what never is, is decided in one place: `client::send` and the
//! [`crate::retry`] policy, not at call sites.

use std::fmt;
use std::time::Duration;

/// What kind of failure this is, in words a person can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    /// Berth was configured wrongly: a bad reference, variable or option.
    Config,
    /// The registry (or ECR) refused the credentials themselves.
    CredentialsRejected,
    /// The credentials are valid but may not pull this image.
    AccessDenied,
    /// The image, tag or repository does not exist.
    NotFound,
    /// The registry limits pulls and the limit is reached.
    RateLimited,
    /// The registry could not be reached (DNS, connection, TLS, timeouts).
    Unreachable,
    /// The registry answered with an error Berth cannot act on.
    RegistryError,
    /// Content did not match its digest or declared size.
    Integrity,
    /// The container runtime or the compose tool failed (boot only).
    Runtime,
}

impl Category {
    /// Every category, in the documented order (the CLI's exit codes 2 to 10).
    pub const ALL: [Category; 9] = [
        Category::Config,
        Category::CredentialsRejected,
        Category::AccessDenied,
        Category::NotFound,
        Category::RateLimited,
        Category::Unreachable,
        Category::RegistryError,
        Category::Integrity,
        Category::Runtime,
    ];

    /// The machine-readable name (`credentials_rejected`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Config => "config",
            Category::CredentialsRejected => "credentials_rejected",
            Category::AccessDenied => "access_denied",
            Category::NotFound => "not_found",
            Category::RateLimited => "rate_limited",
            Category::Unreachable => "unreachable",
            Category::RegistryError => "registry_error",
            Category::Integrity => "integrity",
            Category::Runtime => "runtime",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed pull or check: the category, where it happened, one sentence and
/// a hint. Never holds a secret: messages are built from registry names,
/// image references, status codes and registry error codes only.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PullError {
    /// What kind of failure.
    pub category: Category,
    /// The registry involved, when there is one (`docker.io`, `ghcr.io`, …).
    pub registry: Option<String>,
    /// The image involved, normalised, when there is one.
    pub image: Option<String>,
    /// One sentence saying what happened.
    pub message: String,
    /// What to do next.
    pub hint: String,
    /// How long the registry asked us to wait, for [`Category::RateLimited`].
    pub retry_after: Option<Duration>,
}

impl PullError {
    /// A new error with the category's default hint.
    pub fn new(category: Category, message: impl Into<String>) -> Self {
        Self {
            category,
            registry: None,
            image: None,
            message: message.into(),
            hint: default_hint(category).to_owned(),
            retry_after: None,
        }
    }

    /// A configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(Category::Config, message)
    }

    /// Names the registry.
    pub fn registry(mut self, registry: impl Into<String>) -> Self {
        self.registry = Some(registry.into());
        self
    }

    /// Names the image.
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }

    /// Replaces the hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = hint.into();
        self
    }

    /// Fills in registry and image where they are still unknown.
    pub fn context(mut self, registry: &str, image: &str) -> Self {
        if self.registry.is_none() {
            self.registry = Some(registry.to_owned());
        }
        if self.image.is_none() {
            self.image = Some(image.to_owned());
        }
        self
    }
}

/// The documented troubleshooting step for each category.
pub fn default_hint(category: Category) -> &'static str {
    match category {
        Category::Config => "fix the configuration named above",
        Category::CredentialsRejected => {
            "check that the username and password or token are valid and not expired \
             (DSTACK_DOCKER_USERNAME/DSTACK_DOCKER_PASSWORD; for GHCR a personal access token \
             with the read:packages scope; for ECR the DSTACK_AWS_* access key and region)"
        }
        Category::AccessDenied => {
            "check that this account may pull the image: the repository's permissions, for GHCR \
             the package's visibility and the token's read:packages scope, for ECR the IAM \
             policy (ecr:BatchGetImage, ecr:GetDownloadUrlForLayer)"
        }
        Category::NotFound => "check that the image path and tag exist in the registry",
        Category::RateLimited => "wait for the limit to reset, then retry",
        Category::Unreachable => {
            "check the registry address, the network and DNS; for a mirror or test registry \
             use --registry-endpoint, for a private CA --ca-cert"
        }
        Category::RegistryError => "the registry failed; retry later or contact its operator",
        Category::Integrity => {
            "the content did not match its digest: something between Berth and the registry \
             altered it, or the registry is corrupt; nothing was stored"
        }
        Category::Runtime => {
            "check that the Docker engine is running (DOCKER_HOST) and read the compose tool's \
             lines above"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_documented_ones() {
        let names: Vec<_> = Category::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "config",
                "credentials_rejected",
                "access_denied",
                "not_found",
                "rate_limited",
                "unreachable",
                "registry_error",
                "integrity",
                "runtime",
            ]
        );
    }
}
