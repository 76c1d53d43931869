//! [`BootError`]: why a boot failed, in the pull engine's taxonomy.

use registry::{Category, PullError};

/// A failed boot step: a category (which decides the exit code), one
/// sentence, and the troubleshooting steps that apply. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BootError {
    /// What kind of failure.
    pub category: Category,
    /// One sentence.
    pub message: String,
    /// What to do.
    pub hints: Vec<Hint>,
}

/// What to do about a failed boot. Like [`registry::Hint`], it names no
/// front end's options: `Display` words it for whoever reads a CVM's serial
/// log (the tenant, the node's operator, in terms of the sys-config), and a
/// front end that runs the boot agent otherwise (`berth guest boot` with
/// its own flags) may word a variant in its own terms.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hint {
    /// Advice in plain words that holds in every front end.
    Text(String),
    /// The pull engine's advice.
    Pull(registry::Hint),
    /// There is nowhere to get the env key from: give the boot agent a key
    /// file, or let the node name the KMS in sys-config.json.
    EnvKeySource,
}

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use registry::Hint as P;
        f.write_str(match self {
            Hint::Text(t) => t,
            Hint::EnvKeySource => {
                "give the boot agent an env key file, or let the node write kms_url into sys-config.json"
            }
            Hint::Pull(P::Text(t)) => t,
            Hint::Pull(P::CheckNetwork) => {
                "check the registry's address, the network and DNS; a mirror or test registry needs a registry_endpoints mapping in the sys-config, a private CA its certificate in ca_certs"
            }
            Hint::Pull(P::MapRegistry) => {
                "only the node's operator can map a registry to a loopback or private address (registry_endpoints in the sys-config); otherwise use a registry on a public address"
            }
            Hint::Pull(P::TrustCa) => {
                "the registry's TLS certificate is not trusted: the node's operator can add its CA to ca_certs in the sys-config; or check the registry address"
            }
            Hint::Pull(P::RaiseRetryBudget) => {
                "the registry accepted and then said nothing: boot again later, or give the boot agent a larger retry budget; check the registry address and the network"
            }
            Hint::Pull(P::FreeSpace) => {
                "the disk of the CVM's state is full: free space, then boot again (downloads in progress are resumed)"
            }
            Hint::Pull(P::StoreWritable) => {
                "the CVM's state folder must be writable and its disk have room"
            }
            Hint::Pull(P::PickPlatform) => {
                "the image has no variant for this CVM's platform: push one for it"
            }
            Hint::Pull(_) => "check the registry, the image reference and the credentials",
        })
    }
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

    /// Adds a troubleshooting step in plain words.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(Hint::Text(hint.into()));
        self
    }

    /// Adds a structured troubleshooting step.
    pub fn with_hint(mut self, hint: Hint) -> Self {
        self.hints.push(hint);
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
        let mut hints = vec![Hint::Pull(e.hint.clone())];
        if e.category == Category::AccessDenied && e.registry.as_deref() == Some("ghcr.io") {
            hints.push(Hint::Text("GHCR: a private package needs a token with read:packages, and the package must be visible to that account".into()));
        }
        Self {
            category: e.category,
            message: e.message,
            hints,
        }
    }
}
