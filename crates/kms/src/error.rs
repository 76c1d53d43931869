//! The crate's error types. None of them can hold a secret: they carry paths,
//! lengths, file modes, timestamps and public keys only.

use std::io;
use std::path::PathBuf;

/// Text could not be read as an app id, a public key or a signature.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not hex.
    #[error("the {what} is not hex")]
    NotHex {
        /// What was being read.
        what: &'static str,
    },
    /// Valid hex of the wrong length.
    #[error("the {what} is {got} bytes long; expected {expected}")]
    WrongLength {
        /// What was being read.
        what: &'static str,
        /// Decoded length.
        got: usize,
        /// The accepted length(s), in words.
        expected: &'static str,
    },
    /// The right length, but not a valid value (e.g. not a point on the curve).
    #[error("the {what} is invalid: {reason}")]
    Invalid {
        /// What was being read.
        what: &'static str,
        /// Why.
        reason: &'static str,
    },
}

/// The KMS root key file could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum RootKeyError {
    /// Reading an existing file failed.
    #[error("cannot read the KMS root key at {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Creating a new file failed.
    #[error("cannot create the KMS root key at {path}: {source}")]
    Create {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file exists but does not hold a root key.
    #[error(
        "the KMS root key at {path} is malformed: {reason} (expected 64 hex characters); \
         it was not changed"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, without the content.
        reason: &'static str,
    },
    /// The file belongs to another user, who may have planted it.
    #[error(
        "the KMS root key at {path} belongs to {owner}, not to this user ({me}), so another user may have put it there: \
         if it is yours, chown it to this user; otherwise remove it"
    )]
    NotOwned {
        /// The file.
        path: PathBuf,
        /// Its owner, e.g. `nobody (uid 65534)`.
        owner: String,
        /// The user this process runs as.
        me: String,
    },
    /// A folder on the way to the file lets another user replace it.
    #[error(
        "the KMS root key at {path} is in {folder}, which {problem}, so another user could put a key of their own there: \
         keep the key in a folder that only this user or root can write to"
    )]
    UnsafeFolder {
        /// The file.
        path: PathBuf,
        /// The folder.
        folder: PathBuf,
        /// What is wrong with it, e.g. `is mode 0777: writable by every user`.
        problem: String,
    },
    /// The file is readable or writable by other users.
    #[error(
        "the KMS root key at {path} has mode {mode:04o}; group and others must have no \
         access (chmod 600 it)"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// A signature over an env public key did not check out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No public key can be recovered from the signature (bad `r`/`s`, bad
    /// recovery id, or a high-`s` signature).
    #[error("the env public key signature is invalid: no signer can be recovered from it")]
    Unrecoverable,
    /// The signature is valid but was made by another key.
    #[error("the env public key was signed by {recovered}, not by the expected KMS key {expected}")]
    WrongSigner {
        /// The pinned KMS public key (compressed, hex).
        expected: String,
        /// The key that made the signature (compressed, hex).
        recovered: String,
    },
    /// The signed timestamp is older than the accepted window.
    #[error(
        "the env public key signature is {age_secs} s old; at most {max_age_secs} s is accepted"
    )]
    TooOld {
        /// How old, in seconds.
        age_secs: u64,
        /// The limit.
        max_age_secs: u64,
    },
    /// The signed timestamp is further in the future than clock skew explains.
    #[error(
        "the env public key signature is dated {ahead_secs} s in the future; at most \
         {max_ahead_secs} s of clock skew is accepted"
    )]
    FromTheFuture {
        /// How far ahead, in seconds.
        ahead_secs: u64,
        /// The limit.
        max_ahead_secs: u64,
    },
}
