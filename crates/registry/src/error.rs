//! [`PullError`] and its [`Category`]: the one failure taxonomy of Berth.
//!
//! Every failure of a pull, a check or a boot is exactly one category. The
//! category decides the hint a person gets here, and the exit code in the
//! `berth` binary (the only place that knows exit codes). What is retried
//! and what never is, is decided in one place: `client::send` and the
//! [`crate::retry`] policy, not at call sites.

use std::time::Duration;

pub use contract::Category;

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
    /// What to do next, for the front end to word in its own terms.
    pub hint: Hint,
    /// How long the registry asked us to wait, for [`Category::RateLimited`].
    pub retry_after: Option<Duration>,
}

/// What to do about a [`PullError`]. The library names no front end's flags
/// or settings: where the fix is a setting (a registry mapping, a CA, the
/// retry budget, the store), the hint says which, and each front end words
/// it in its own terms (the `berth` CLI names its flags; the boot agent
/// tells the tenant or the node's operator what to change).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hint {
    /// Advice in plain words that holds in every front end.
    Text(String),
    /// Check the registry's address, the network and DNS; a mirror or test
    /// registry needs a registry mapping, a private CA needs trusting. The
    /// default for [`Category::Unreachable`].
    CheckNetwork,
    /// Only whoever configures the pull (the operator, in a CVM) may map a
    /// registry to a loopback or private address; otherwise use a registry
    /// on a public address.
    MapRegistry,
    /// The registry's TLS certificate is not trusted: trust its CA, or check
    /// the registry address.
    TrustCa,
    /// The registry (or something in front of it) accepted and then said
    /// nothing: retry later, or raise the retry budget; check the address
    /// and the network.
    RaiseRetryBudget,
    /// The disk holding the store is full: free space, or use a store on a
    /// larger disk, then pull again (downloads in `ingest/` are resumed).
    FreeSpace,
    /// The store directory must be writable and its disk have room.
    StoreWritable,
    /// The image has no image for the platform asked for: ask for one it
    /// has, or push one for this platform.
    PickPlatform,
}

impl Hint {
    /// The documented troubleshooting step for each category.
    pub fn for_category(category: Category) -> Hint {
        match category {
            Category::Unreachable => Hint::CheckNetwork,
            c => Hint::Text(default_hint(c).to_owned()),
        }
    }

    /// The advice, if it is plain text (no setting to word).
    pub fn text(&self) -> Option<&str> {
        match self {
            Hint::Text(t) => Some(t),
            _ => None,
        }
    }
}

impl PullError {
    /// A new error with the category's default hint.
    pub fn new(category: Category, message: impl Into<String>) -> Self {
        Self {
            category,
            registry: None,
            image: None,
            message: message.into(),
            hint: Hint::for_category(category),
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

    /// Replaces the hint with plain advice (no flag or setting named).
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Hint::Text(hint.into());
        self
    }

    /// Replaces the hint with a structured one.
    pub fn with_hint(mut self, hint: Hint) -> Self {
        self.hint = hint;
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

/// The documented troubleshooting step for each category, in plain words
/// (for [`Category::Unreachable`], see [`Hint::CheckNetwork`]).
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
        Category::Unreachable => "check the registry address, the network and DNS",
        Category::RegistryError => "the registry failed; retry later or contact its operator",
        Category::Integrity => {
            "the content did not match its digest: something between Berth and the registry \
             altered it, or the registry is corrupt; nothing was stored"
        }
        Category::Runtime => {
            "check that the Docker engine is running (DOCKER_HOST) and read the compose tool's \
             lines above"
        }
        Category::UntrustedImage => {
            "sign the image's digest with cosign using a key the app's image policy names \
             (cosign sign --key KEY IMAGE@DIGEST) and push the signature to the image's \
             repository, or deploy the image pinned to its digest; to trust another key, change \
             the policy (an owner-authorized app needs the owner's signature for that)"
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
                "untrusted_image",
            ]
        );
    }
}
