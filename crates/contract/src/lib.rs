//! `contract`: what Berth's processes agree on, each as a type with its
//! parser and its renderer, in one place that every side uses.
//!
//! Two processes that agree on a format by each writing it out by hand drift
//! apart (the control plane and the boot agent once disagreed on which image
//! references are valid). So every contract that crosses a process boundary
//! lives here:
//!
//! - [`app`]: `app-compose.json` ([`AppCompose`]), its [`Measurement`]
//!   (compose hash and app id), `sys-config.json` ([`SysConfig`]) and the
//!   names of the host-shared files;
//! - [`policy`]: the compose file ([`ComposeFile`]) and the one compose
//!   policy of the shared-engine mode, checked at provisioning and again in
//!   the boot agent;
//! - [`env_rules`]: env variable names (grammar, reserved families);
//! - [`cvm_name`]: the CVM-name grammar;
//! - [`image_policy`]: the app's image policy (digests required, cosign
//!   keys per registry or repository prefix), measured in its manifest;
//! - [`upgrade`]: who may authorize a new compose hash for an app, and the
//!   exact bytes an owner signs to do so;
//! - [`boot`]: the boot's last serial line ([`BootOutcome`]);
//! - [`announce`]: what the KMS process tells `berth up` once it serves;
//! - [`kms`]: the KMS's HTTP messages;
//! - [`login`]: the registry-login variable names and the ECR host grammar;
//! - [`Category`]: the failure taxonomy and its exit codes;
//! - [`reference`](mod@reference): image references and digests (Docker's grammar);
//! - [`status`]: a CVM's status ([`CvmStatus`]), as the API and the
//!   database write it;
//! - [`SecretValue`]: the one type that holds a plaintext secret (an env
//!   value, a registry password), redacted in `Debug`/`Display` and wiped
//!   on drop.
//!
//! **Invariants.** No I/O, no clock, no cryptography beyond the sha256 of a
//! measurement: this crate is linked by the control plane, which must not
//! link anything that can open a sealed env. No error of this crate holds an
//! env value.
#![deny(missing_docs)]

pub mod announce;
pub mod app;
pub mod boot;
mod category;
pub mod cvm_name;
pub mod env_rules;
mod hex_text;
pub mod image_policy;
mod isolation;
pub mod kms;
pub mod login;
pub mod policy;
pub mod reference;
mod secret;
pub mod status;
pub mod upgrade;

pub use app::{AppCompose, AppComposeInput, Isolation, Measurement, SysConfig};
pub use boot::BootOutcome;
pub use category::{Category, UnknownCategory};
pub use image_policy::ImagePolicy;
pub use policy::{BaseImage, ComposeError, ComposeFile, ServiceBuild, ServiceImage};
pub use reference::{Digest, ImageReference};
pub use secret::SecretValue;
pub use status::{CvmStatus, UnknownStatus};
