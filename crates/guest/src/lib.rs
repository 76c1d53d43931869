//! `guest`: Berth's CVM boot agent, from a sealed env to a running app.
//!
//! It replaces the shell pre-launch script confidential clouds use (`docker
//! login`, an AWS CLI fetched at boot, a fail-soft `docker compose pull`, one
//! generic "docker login failed" line) with one program whose every step is a
//! line of the serial log and whose failure names its cause.
//!
//! The central function is [`boot::boot`]: measure the app
//! ([`shared::Measurement`]), get the env key from an
//! [`keys::EnvKeyProvider`] (the seam where hardware attestation plugs in),
//! open and filter the env, resolve credentials, pull with the `registry`
//! engine into the CVM's persistent state, hand the images to the Docker
//! engine layer by layer while the pull still runs ([`handoff`],
//! [`runtime`]) and run the compose tool without letting it pull.
//!
//! Why it is built this way: the pull happens here, not in the compose tool,
//! so that a restart with unchanged digests costs only HEAD requests, every
//! failure maps to one category of `registry::Category`, and the decrypted
//! env never leaves this process except as the compose tool's environment.
//! Every line written passes through a [`redact::Redactor`] holding every
//! value of the decrypted env.
//!
//! The CVM's second process, the guest agent (`berth guest agent`), is
//! [`agent_process::run`]: it redeems its own ticket for the app key and
//! serves the `agent` crate's API on the sockets the node handed it.
#![deny(missing_docs)]

pub mod agent_process;
pub mod boot;
pub mod error;
pub mod handoff;
pub mod keys;
pub mod prelaunch;
pub mod redact;
pub mod runtime;
pub mod serial;
pub mod shared;

pub use boot::{BOOT_DEADLINE, BootOptions, BootReport, boot, boot_within, final_lines, outcome};
pub use error::{BootError, Hint};
pub use keys::{EnvKeyProvider, KeyFile, Kms};
pub use serial::SerialLog;
