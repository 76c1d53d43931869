//! Files the node writes: private folders (0700) and files (0600, written
//! whole through a rename), and the boot lock, an exclusive `flock` that a
//! boot agent inherits so no second boot of a CVM starts while it lives.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

/// The lock file in a CVM's state folder, held while a boot of it runs.
pub const BOOT_LOCK_FILE: &str = ".boot.lock";

/// Creates `dir` (and its parents) and makes it 0700.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Writes `bytes` to `path` readable by its owner only (0600, also when the
/// file existed), through a temporary file and a rename, so a reader never
/// sees half a file.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // The one atomic private write (a unique temporary name, the file and
    // its folder synced), shared with the KMS and the store.
    ownership::write_atomic(path, bytes, 0o600)?;
    use std::os::unix::fs::PermissionsExt;
    // Also when the file existed with a wider mode, or the umask is wider.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// An exclusive `flock` on a CVM's `state/.boot.lock`.
pub(super) struct BootLock(std::fs::File);

impl BootLock {
    /// The lock, or `None` when another open file holds it.
    pub(super) fn try_take(path: &Path) -> std::io::Result<Option<Self>> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(Self(f)));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e)
        }
    }

    pub(super) fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A fresh private folder for a test.
#[cfg(test)]
pub(super) fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("berth-node-{name}-{}", uuid::Uuid::new_v4()));
    private_dir(&d).unwrap();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_lock_is_exclusive_until_released() {
        let d = temp("lock");
        let path = d.join(BOOT_LOCK_FILE);
        let held = BootLock::try_take(&path).unwrap().expect("free");
        assert!(BootLock::try_take(&path).unwrap().is_none());
        // Another process (flock(1)) sees it held too.
        let other = std::process::Command::new("flock")
            .args(["--nonblock", "--conflict-exit-code", "7"])
            .arg(&path)
            .arg("true")
            .status()
            .unwrap();
        assert_eq!(other.code(), Some(7));
        drop(held);
        assert!(BootLock::try_take(&path).unwrap().is_some());
        std::fs::remove_dir_all(d).unwrap();
    }
}
