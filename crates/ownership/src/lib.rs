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

#![deny(missing_docs)]

use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
