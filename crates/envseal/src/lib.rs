//! `envseal`: a CVM's environment, from a `.env` file to sealed bytes and back.
//!
//! The central types are [`Env`] (an ordered list of [`EnvVar`]s whose values
//! are [`SecretValue`]s), [`EnvPublicKey`] / [`EnvPrivateKey`] (an app's
//! X25519 env key pair) and [`SealedEnv`] (the ciphertext the control plane
//! stores and the CVM opens).
//!
//! The sealed format is the one dstack and the official Phala SDKs produce
//! (`encryptEnvVars`), so that an env sealed by any official client opens here
//! and the other way round: a fresh ephemeral X25519 key per sealing, the raw
//! 32-byte shared secret used directly as the AES-256-GCM key (no KDF, no AAD),
//! a 12-byte random nonce, and bytes `eph_pub || nonce || ciphertext || tag`.
//! Compatibility, not taste, fixes every one of those choices.
//!
//! This crate does no I/O: callers read files and pass bytes or text in. The
//! one outside resource it touches is the operating system's random number
//! generator, through [`EnvPublicKey::seal`] and [`EnvPrivateKey::generate`];
//! the `_with_rng` variants take the generator as an argument.
#![deny(missing_docs)]

mod dotenv;
mod env;
mod seal;

/// Re-exported from [`contract`], where every crate that handles a secret
/// (the registry client too) finds it without linking the sealing code.
pub use contract::SecretValue;
pub use dotenv::{ParseError, ParseErrorKind, parse_dotenv, render_dotenv};
pub use env::{Env, EnvVar, Limits, Origin, ValidationError, is_valid_key};
pub use seal::{
    EnvPrivateKey, EnvPublicKey, KeyError, MIN_SEALED_LEN, OpenError, SealedEnv, plaintext_json,
};
