//! Who owns a file or folder, and whether a folder is safe to keep private
//! files under.
//!
//! A secret in a file is only as private as the folders above it: a folder
//! another user owns, or one every user may write without the sticky bit,
//! lets that user rename the file away and plant their own (a KMS root key
//! they know, a state folder they read). [`folder_problem`] is that one
//! rule; `berth up`'s state folder (`cloud::up::state`) and the KMS's key
//! files (`kms::keyfile`) both call it. It lives in a crate of its own
//! because `cloud` must not link `kms` (see ARCHITECTURE.md), and
//! `contract` does no I/O.
//!
//! The same reason keeps here the two ways Berth's processes write what
//! other users must not reach: [`bind_private_socket`] (the node's and the
//! KMS's sockets, in a folder only their owner can enter) and
//! [`write_atomic`] / [`create_atomic`] (a file written under a temporary
//! name unique to the process and the call, synced, then renamed or linked
//! into place, and its folder synced: a crash or a full disk never leaves a
//! half-written file under the real name).

#![deny(missing_docs)]

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The user this process runs as (its effective uid).
pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// `name (uid N)`, or `uid N` for a uid with no name.
pub fn user_name(uid: u32) -> String {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: an all-zero passwd is a valid out-parameter.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, the buffer's length is
    // its own, and the result is read only when `found` points at `pw`.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc == 0 && !found.is_null() {
        // SAFETY: getpwuid_r filled pw_name with a NUL-terminated string in `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
        return format!("{} (uid {uid})", name.to_string_lossy());
    }
    format!("uid {uid}")
}

/// Why `folder` is not safe to keep this user's private files under, as
/// the end of a sentence ("belongs to nobody (uid 65534)", "is mode 0777:
/// writable by every user, without the sticky bit"); `None` when it
/// belongs to this user or root and is not writable by every user (or has
/// the sticky bit, like `/tmp`), or does not exist. Group-writable folders
/// pass: the common umask 002 makes every folder so.
pub fn folder_problem(folder: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(folder).ok()?;
    if meta.uid() != current_uid() && meta.uid() != 0 {
        return Some(format!("belongs to {}", user_name(meta.uid())));
    }
    let mode = meta.mode() & 0o7777;
    (mode & 0o002 != 0 && mode & 0o1000 == 0)
        .then(|| format!("is mode {mode:04o}: writable by every user, without the sticky bit"))
}

/// Binds a Unix socket at `path`, whose folder must exist and be closed to
/// everyone but its owner (mode 0700); the socket is made mode 0600. A
/// stale socket file left by a killed process is replaced; anything else at
/// `path` is an error. `what` names the socket in errors ("the KMS socket").
/// The listener is a standard one: tokio's `UnixListener::from_std` takes
/// it (after `set_nonblocking(true)`).
pub fn bind_private_socket(
    path: &Path,
    what: &str,
) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{what} path has no folder")))?;
    let mode = std::fs::metadata(dir)?.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "{} is open to other users (mode {mode:o}); {what} needs a folder only its owner can enter (chmod 700)",
            dir.display()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::other(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
        Err(_) => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Writes `bytes` to `path` atomically, replacing what is there: a new file
/// of mode `mode` (0o600 for a private file; the umask still applies, as
/// with `File::create`'s 0o666) under a temporary name next to `path`,
/// synced, renamed over `path`, and the folder synced. The temporary file
/// is removed on failure.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temporary_name(path)?;
    let result = (|| {
        let mut f = new_file(&tmp, mode)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_folder_of(path);
    Ok(())
}

/// Writes `bytes` to a new private file (mode 0600 exactly) at `path`,
/// never replacing one: written and synced under a temporary name, then
/// linked into place, and the folder synced. An
/// [`io::ErrorKind::AlreadyExists`] error when `path` exists (another
/// process created it first); nothing is left behind either way.
pub fn create_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = temporary_name(path)?;
    let linked = (|| {
        let mut f = new_file(&tmp, 0o600)?;
        // The umask can only take bits away; make the mode exact regardless.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    // The temporary name goes whether or not the link worked.
    let _ = std::fs::remove_file(&tmp);
    linked?;
    sync_folder_of(path);
    Ok(())
}

/// `.NAME.PID.SEQ.tmp` next to `path`: unique per process and call, so
/// concurrent writers never share it.
fn temporary_name(path: &Path) -> io::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.{seq}.tmp", std::process::id()));
    Ok(path.with_file_name(tmp))
}

fn new_file(path: &Path, mode: u32) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
}

/// Makes a new directory entry durable; not every filesystem lets a folder
/// be opened for syncing, and the file itself is synced.
fn sync_folder_of(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_folder(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ownership-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    fn mode_of(p: &Path) -> u32 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temporary_file() {
        let dir = temp_folder("write");
        let path = dir.join("f.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        // A failed write leaves neither the temporary file nor a new name.
        assert!(write_atomic(&dir.join("missing/f"), b"x", 0o600).is_err());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn create_atomic_never_replaces() {
        let dir = temp_folder("create");
        let path = dir.join("root.key");
        create_atomic(&path, b"first").unwrap();
        let err = create_atomic(&path, b"second").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_socket_needs_a_folder_only_its_owner_enters() {
        use std::os::unix::fs::FileTypeExt;
        let dir = temp_folder("sock");
        let sock = dir.join("s.sock");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = bind_private_socket(&sock, "the test socket").unwrap_err();
        assert!(
            err.to_string().contains("open to other users")
                && err.to_string().contains("the test socket needs a folder"),
            "{err}"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let first = bind_private_socket(&sock, "the test socket").unwrap();
        assert_eq!(mode_of(&sock), 0o600);
        drop(first);
        // A stale socket is replaced; a file that is not one is not.
        assert!(
            std::fs::symlink_metadata(&sock)
                .unwrap()
                .file_type()
                .is_socket()
        );
        bind_private_socket(&sock, "the test socket").unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        let err = bind_private_socket(&file, "the test socket").unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn world_writable_without_sticky_is_a_problem() {
        let dir = std::env::temp_dir().join(format!("ownership-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(folder_problem(&dir), None);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let p = folder_problem(&dir).unwrap();
        assert!(p.contains("0777") && p.contains("sticky"), "{p}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(folder_problem(&dir), None);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert_eq!(folder_problem(&dir), None);
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(folder_problem(&dir), None);
        assert!(user_name(current_uid()).contains("uid"));
    }
}
