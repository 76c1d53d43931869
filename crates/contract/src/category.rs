//! [`Category`]: the one failure taxonomy of Berth, and its exit codes.
//!
//! The category crosses process boundaries twice: the boot agent writes it in
//! its last serial line and exits with its code, and the node reads both back
//! to derive a CVM's status. Both directions live here so that they cannot
//! drift.

use std::fmt;
use std::str::FromStr;

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
    /// An image fails the app's image policy (no signature, a signature by
    /// a key the policy does not name, a signed payload for another digest,
    /// or no digest where the policy requires one): nothing of it is run.
    UntrustedImage,
}

impl Category {
    /// Every category, in the documented order (the CLI's exit codes 2 to 11).
    pub const ALL: [Category; 10] = [
        Category::Config,
        Category::CredentialsRejected,
        Category::AccessDenied,
        Category::NotFound,
        Category::RateLimited,
        Category::Unreachable,
        Category::RegistryError,
        Category::Integrity,
        Category::Runtime,
        Category::UntrustedImage,
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
            Category::UntrustedImage => "untrusted_image",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Category {
    /// The process exit code of a run that failed with this category
    /// (`berth pull`, `berth check`, `berth guest boot`): 2 to 11 in the
    /// order of [`Category::ALL`]. 0 is success, 1 an internal error.
    pub fn exit_code(self) -> u8 {
        match self {
            Category::Config => 2,
            Category::CredentialsRejected => 3,
            Category::AccessDenied => 4,
            Category::NotFound => 5,
            Category::RateLimited => 6,
            Category::Unreachable => 7,
            Category::RegistryError => 8,
            Category::Integrity => 9,
            Category::Runtime => 10,
            Category::UntrustedImage => 11,
        }
    }
}

/// A string that names no [`Category`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a failure category")]
pub struct UnknownCategory(pub String);

impl FromStr for Category {
    type Err = UnknownCategory;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCategory(s.chars().take(40).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for (i, c) in Category::ALL.into_iter().enumerate() {
            assert_eq!(c.as_str().parse::<Category>().unwrap(), c);
            assert_eq!(c.exit_code() as usize, i + 2);
        }
        assert_eq!(
            "nope".parse::<Category>(),
            Err(UnknownCategory("nope".into()))
        );
    }
}
