//! The files that hold one 32-byte secret as 64 hex characters and a
//! newline (the KMS root key, a user's owner key): read only when no other
//! user may access them, created complete and atomically, never replaced.
//!
//! A key file must belong to the user this process runs as, and every
//! folder from it up to `/` must belong to that user or root and not be
//! writable by every user (unless it has the sticky bit, like `/tmp`):
//! otherwise another user may have planted the key, or may swap it, and
//! the mode of the file alone says nothing about that. (A folder writable
//! by its group is accepted: with user-private groups, the usual umask
//! 002 makes every folder so.)

use crate::RootKeyError;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use zeroize::Zeroizing;

/// A key file is 64 hex characters and a newline; anything much longer is
/// not a key, and is not read into memory.
const MAX_FILE_LEN: u64 = 256;

/// Reads the secret at `path`, which must exist, hold 64 hex characters
/// (surrounding whitespace allowed) and be accessible to its owner only
/// (on Unix: no group or other permission bits).
pub(crate) fn read_secret32(path: &Path) -> Result<Zeroizing<[u8; 32]>, RootKeyError> {
    let read_err = |source| RootKeyError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    check_folders(path)?;
    check_permissions(path, &file)?;
    let mut text = Zeroizing::new(Vec::with_capacity(MAX_FILE_LEN as usize + 1));
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut text)
        .map_err(read_err)?;
    let malformed = |reason| RootKeyError::Malformed {
        path: path.to_owned(),
        reason,
    };
    if text.len() as u64 > MAX_FILE_LEN {
        return Err(malformed("the file is too long"));
    }
    let trimmed = text.trim_ascii();
    if trimmed.is_empty() {
        return Err(malformed("the file is empty"));
    }
    if trimmed.len() != 64 {
        return Err(malformed("wrong length"));
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(trimmed, &mut *bytes).map_err(|_| malformed("not hex"))?;
    Ok(bytes)
}

/// Reads the secret at `path`, or, if there is no file there, writes
/// `generate()`'s (mode `0600`) and returns it with `true`.
///
/// An existing file is never overwritten, whatever it holds: a malformed
/// one is an error. The new file appears atomically and complete (written
/// and synced under a temporary name in the same directory, then
/// hard-linked into place, which fails if the name is taken), so a kill at
/// any moment leaves no half-written key, and two processes starting at
/// once agree on one key. The directory must exist.
pub(crate) fn load_or_create_secret32(
    path: &Path,
    generate: impl FnOnce() -> Zeroizing<[u8; 32]>,
) -> Result<(Zeroizing<[u8; 32]>, bool), RootKeyError> {
    match read_secret32(path) {
        Err(RootKeyError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        other => return other.map(|k| (k, false)),
    }
    check_folders(path)?;
    let bytes = generate();
    match write_new_secret32(path, &bytes) {
        Ok(()) => Ok((bytes, true)),
        // Someone else created it in the meantime: theirs wins.
        Err(WriteError::Taken) => read_secret32(path).map(|k| (k, false)),
        Err(WriteError::Io(source)) => Err(RootKeyError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `bytes` to a new file at `path`, never replacing one
/// ([`ownership::create_atomic`]: complete, synced, mode 0600).
fn write_new_secret32(path: &Path, bytes: &[u8; 32]) -> Result<(), WriteError> {
    let mut text = Zeroizing::new(hex::encode(bytes));
    text.push('\n');
    match ownership::create_atomic(path, text.as_bytes()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(WriteError::Taken),
        Err(e) => Err(e.into()),
    }
}

/// Why [`write_new_secret32`] did not write.
enum WriteError {
    /// The name is taken: another process created the file first.
    Taken,
    /// Anything else.
    Io(io::Error),
}

impl From<io::Error> for WriteError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// The folders from `path`'s up to `/`: each must belong to this user or
/// root, and must not be writable by every user without the sticky bit. A
/// folder that does not exist is left to the caller's open or create.
#[cfg(unix)]
fn check_folders(path: &Path) -> Result<(), RootKeyError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(dir) = dir.canonicalize() else {
        return Ok(());
    };
    for folder in dir.ancestors() {
        if let Some(problem) = ownership::folder_problem(folder) {
            return Err(RootKeyError::UnsafeFolder {
                path: path.to_owned(),
                folder: folder.to_owned(),
                problem,
            });
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_folders(_path: &Path) -> Result<(), RootKeyError> {
    Ok(())
}

#[cfg(unix)]
fn check_permissions(path: &Path, file: &File) -> Result<(), RootKeyError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = file.metadata().map_err(|source| RootKeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let me = ownership::current_uid();
    if meta.uid() != me {
        return Err(RootKeyError::NotOwned {
            path: path.to_owned(),
            owner: ownership::user_name(meta.uid()),
            me: ownership::user_name(me),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(RootKeyError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path, _file: &File) -> Result<(), RootKeyError> {
    Ok(())
}
