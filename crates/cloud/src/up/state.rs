//! The state folder of the local cloud: who owns it, its lock, its modes,
//! and the secrets kept in it (the admin's API key, the log URL secret).
//!
//! A state folder (and each folder and file Berth keeps in it) must belong
//! to the user `berth up` runs as, and every folder above it must belong to
//! that user or root and not be writable by every user (unless it has the
//! sticky bit, like `/tmp`): a folder another user made, or could rename,
//! may hold a database, keys or a KMS root key of theirs, and its mode
//! alone says nothing about that. (A folder writable by its group is
//! accepted: with user-private groups, the usual umask 002 makes every
//! folder so.) The KMS checks its root key file the same way.

use super::{AdminKey, UpError, UpEvent, UpEvents};
use crate::db::Db;
use crate::node::{private_dir, write_private};
use std::path::{Path, PathBuf};

/// The admin's API key, kept for the operator (0600).
pub const API_KEY_FILE: &str = "api-key";
/// The KMS public key, kept for clients on this machine.
pub const KMS_PUBLIC_KEY_FILE: &str = "kms-public-key";
/// The lock file of the one local cloud on a state folder (holds its PID).
pub const LOCK_FILE: &str = "berth.lock";
/// What the local cloud tells its API replicas (written at each start,
/// 0600, in the state folder): its database without the password, its
/// isolation and its caps (`replica`).
pub const REPLICA_SETTINGS_FILE: &str = "replica-settings.json";
/// The secret log URL tokens are derived from.
pub(crate) const LOG_SECRET_FILE: &str = "log-secret";

/// Files of the state folder only its owner may read, whatever umask made them.
const PRIVATE_FILES: &[&str] = &[
    "berth.db",
    "berth.db-wal",
    "berth.db-shm",
    API_KEY_FILE,
    LOCK_FILE,
    LOG_SECRET_FILE,
    KMS_PUBLIC_KEY_FILE,
    "dockerd.log",
    REPLICA_SETTINGS_FILE,
];

/// Refuses a state folder that another user owns, or that lies under a
/// folder another user (not root) owns or every user may write to without
/// the sticky bit. A state folder that does not exist yet is checked by
/// the folders above it (it is created by this user afterwards).
pub(crate) fn check_state_owner(state: &Path) -> Result<(), UpError> {
    let absolute = std::path::absolute(state).map_err(UpError::io("state folder"))?;
    let mut nearest = absolute.clone();
    while std::fs::symlink_metadata(&nearest).is_err() {
        if !nearest.pop() {
            return Ok(());
        }
    }
    let nearest = nearest
        .canonicalize()
        .map_err(UpError::io(format!("cannot resolve {}", nearest.display())))?;
    let state_exists = std::fs::symlink_metadata(&absolute).is_ok();
    if state_exists {
        check_owned(&nearest)?;
    }
    // The folders above (the state folder's own mode is made 0700 later).
    let above = if state_exists {
        nearest.parent()
    } else {
        Some(nearest.as_path())
    };
    for folder in above.into_iter().flat_map(Path::ancestors) {
        if let Some(problem) = ownership::folder_problem(folder) {
            return Err(UpError::UnsafeFolder {
                state: absolute.clone(),
                folder: folder.to_owned(),
                problem,
            });
        }
    }
    Ok(())
}

/// Refuses `path` (not following a link) if it exists and belongs to
/// another user.
fn check_owned(path: &Path) -> Result<(), UpError> {
    use std::os::unix::fs::MetadataExt;
    let me = ownership::current_uid();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.uid() != me => Err(UpError::NotOwned {
            path: path.to_owned(),
            owner: ownership::user_name(meta.uid()),
            me: ownership::user_name(me),
        }),
        _ => Ok(()),
    }
}

/// New files and folders of this process are its owner's alone.
pub(crate) fn private_umask() {
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// Takes the exclusive lock of one local cloud on `state` ([`LOCK_FILE`],
/// holding its PID), kept until the returned file is closed — by the
/// kernel, too, when this process dies however it dies.
pub(crate) fn lock_state(state: &Path) -> Result<std::fs::File, UpError> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let path = state.join(LOCK_FILE);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(UpError::io(format!("cannot open {}", path.display())))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(UpError::io(format!("cannot lock {}", path.display()))(err));
        }
        let mut text = String::new();
        let _ = f.read_to_string(&mut text);
        return Err(UpError::AlreadyRunning {
            state: state.to_owned(),
            pid: text.trim().parse::<u32>().ok(),
        });
    }
    let mut write = || -> std::io::Result<()> {
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{}", std::process::id())?;
        f.sync_all()
    };
    write().map_err(UpError::io(format!("cannot write {}", path.display())))?;
    Ok(f)
}

/// Makes the state folder private: 0700 folders, 0600 files (fixing, and
/// saying so, what an older Berth or a careless umask left open). A folder
/// or file of the state that belongs to another user is refused, not fixed.
///
/// With CVMs in machines of their own (`container`), each CVM's folder and
/// its `state` folder are 0711 (the node sets them at the machine's start):
/// the CVM's host user passes through them, from the bind mount of the CVM
/// folder the node makes for it, to its own folders (0700); nobody may list
/// them, and the state folder itself stays 0700.
pub(crate) fn lock_down_state(
    state: &Path,
    events: &UpEvents,
    isolation: contract::Isolation,
) -> Result<(), UpError> {
    let container = isolation == contract::Isolation::Container;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for dir in ["", "kms", "cvms", "node", "run"] {
        check_owned(&state.join(dir))?;
    }
    for f in PRIVATE_FILES.iter().chain(&["kms/root.key"]) {
        check_owned(&state.join(f))?;
    }
    for dir in ["", "kms", "cvms", "node", "run"] {
        let d = state.join(dir);
        let was = std::fs::metadata(&d).map(|m| m.mode() & 0o777).ok();
        private_dir(&d).map_err(UpError::io(format!("cannot create {}", d.display())))?;
        if let Some(mode) = was.filter(|m| m & 0o077 != 0) {
            events(UpEvent::ModeFixed {
                path: d,
                was: mode,
                now: 0o700,
            });
        }
    }
    let fix = |p: &Path, want: u32| {
        if let Ok(m) = std::fs::symlink_metadata(p)
            && !m.file_type().is_symlink()
            && m.mode() & 0o077 != 0
        {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(want));
            events(UpEvent::ModeFixed {
                path: p.to_owned(),
                was: m.mode() & 0o777,
                now: want,
            });
        }
    };
    for f in PRIVATE_FILES {
        fix(&state.join(f), 0o600);
    }
    if let Ok(rd) = std::fs::read_dir(state.join("cvms")) {
        for e in rd.flatten() {
            // A machine's folders are the node's to set at its start.
            if container {
                continue;
            }
            fix(&e.path(), 0o700);
            for f in ["serial.log", "shared", "state"] {
                let p = e.path().join(f);
                fix(&p, if f == "serial.log" { 0o600 } else { 0o700 });
            }
            if let Ok(rd) = std::fs::read_dir(e.path().join("shared")) {
                for f in rd.flatten() {
                    fix(&f.path(), 0o600);
                }
            }
        }
    }
    Ok(())
}

/// The secret log URL tokens are derived from: kept, or generated (and,
/// with `rotate`, replaced: every log URL handed out before stops working).
pub(crate) fn log_secret(
    state: &Path,
    rotate: bool,
    events: &UpEvents,
) -> Result<[u8; 32], UpError> {
    let secret_file = state.join(LOG_SECRET_FILE);
    if !rotate
        && let Ok(b) = std::fs::read(&secret_file)
        && let Ok(secret) = <[u8; 32]>::try_from(b.as_slice())
    {
        return Ok(secret);
    }
    use rand_core::RngCore;
    let mut b = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut b);
    write_private(&secret_file, &b).map_err(UpError::io("cannot write the log secret"))?;
    if rotate {
        events(UpEvent::LogSecretRotated);
    }
    Ok(b)
}

/// The admin's API key: set to `configured`, made at the first start (and
/// shown then, once), or kept.
pub(crate) async fn admin_key(
    db: &Db,
    key_file: &Path,
    configured: Option<&str>,
) -> Result<AdminKey, UpError> {
    fn db_err(e: impl std::fmt::Display) -> UpError {
        UpError::Database(e.to_string())
    }
    let exists = db.user_by_name("admin").await.map_err(db_err)?.is_some();
    let write_key = |k: &str| {
        write_private(key_file, format!("{k}\n").as_bytes())
            .map_err(UpError::io("cannot write the API key file"))
    };
    if let Some(k) = configured.filter(|k| !k.is_empty()) {
        if exists {
            db.set_api_key("admin", k).await.map_err(db_err)?;
        } else {
            db.create_user("admin", k, true).await.map_err(db_err)?;
        }
        write_key(k)?;
        return Ok(AdminKey::Configured);
    }
    if !exists {
        let k = contract::SecretValue::new(crate::new_api_key());
        db.create_user("admin", k.expose(), true)
            .await
            .map_err(db_err)?;
        write_key(k.expose())?;
        return Ok(AdminKey::Created(k));
    }
    let k = zeroize::Zeroizing::new(
        std::fs::read_to_string(key_file)
            .map(|s| s.trim().to_owned())
            .map_err(|_| UpError::AdminKeyMissing {
                file: key_file.to_owned(),
            })?,
    );
    let works = db
        .user_by_key(&k)
        .await
        .map_err(db_err)?
        .is_some_and(|u| u.is_admin);
    Ok(if works {
        AdminKey::InFile
    } else {
        AdminKey::RotatedSinceWritten
    })
}

/// A new folder `/tmp/berth-<random>`, created by this call (mode 0700).
pub(crate) fn fresh_private_tmp_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("berth-{}", random_hex::<8>().as_str()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// `N` random bytes as hex, wiped from memory when dropped.
pub(crate) fn random_hex<const N: usize>() -> zeroize::Zeroizing<String> {
    use rand_core::RngCore;
    let mut b = zeroize::Zeroizing::new([0u8; N]);
    rand_core::OsRng.fill_bytes(b.as_mut());
    zeroize::Zeroizing::new(hex::encode(b.as_ref()))
}
