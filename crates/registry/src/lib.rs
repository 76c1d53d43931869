//! Everything Berth needs to pull a private image: what an image name means,
//! which credentials apply to it, and (in the pull engine modules) how to
//! talk to the registry.
//!
//! - [`reference`](mod@reference): [`reference::ImageReference`], the Docker reference
//!   grammar normalised the way the Docker CLI does it (`busybox` is
//!   `docker.io/library/busybox:latest`), and [`reference::Digest`].
//! - [`credentials`]: [`credentials::CredentialSet`], resolved from exactly
//!   the documented `DSTACK_DOCKER_*` and `DSTACK_AWS_*` variables of a
//!   decrypted env; each login applies only to its own registry.
//! - [`docker_config`]: the same logins read from a developer's Docker
//!   client configuration (`config.json` and credential helpers).
//! - [`ratelimit`]: Docker Hub's `ratelimit-*` headers and `Retry-After`.
//! - [`cosign`]: an app's image policy with its keys parsed
//!   ([`cosign::SignaturePolicy`]); a pull checks the cosign signature of
//!   each image it governs before fetching anything of the image.
//! - [`targets`]: [`PrivateTargets`], which addresses a pull may reach (in a
//!   CVM, loopback and private addresses only where the operator mapped a
//!   registry). Every body read into memory goes through one capped reader
//!   (`body`: 64 KiB error bodies, 1 MiB token/ECR answers, 4 MiB manifests).
//!
//! Why the crate looks the way it does: it runs inside the CVM with the
//! user's registry passwords in memory, so every secret is held in
//! [`contract::SecretValue`] (redacting `Debug`/`Display`, zeroized on drop)
//! from the moment it is read, and no error message in this crate ever
//! carries a secret value; errors name the variable, file entry or helper
//! at fault instead. Parsing is hand-written and dependency-light because
//! this code is part of the guest image.
//!
//! Architecture invariants: this crate knows nothing about the sealed env
//! format, the control plane, terminals or exit codes; it never logs.

#![deny(missing_docs)]

pub mod credentials;
pub mod docker_config;
pub mod ratelimit;
pub use contract::reference;

// The pull engine.
mod auth;
mod body;
mod challenge;
pub mod client;
pub mod cosign;
mod download;
pub mod ecr;
pub mod endpoint;
pub mod error;
pub mod events;
mod helpers;
pub mod manifest;
pub mod pull;
pub mod retry;
pub mod store;
pub mod targets;
mod transport;

pub use client::RequestCounts;
pub use credentials::CredentialSet;
pub use endpoint::Endpoints;
pub use error::{Category, Hint, PullError};
pub use events::{EventSink, PullEvent, no_events};
pub use manifest::Platform;
pub use pull::{CheckedImage, PullOptions, PulledImage, Puller, RangedOptions};
pub use reference::{Digest, ImageReference};
pub use retry::RetryPolicy;
pub use store::OciStore;
pub use targets::PrivateTargets;
