//! Audit finding 9: a KMS root key or an owner key planted by another user
//! (`nobody`), or lying in a folder every user may write to, is refused with
//! a sentence naming the path, its owner and what to do; the mode of the
//! file alone is not enough.
//!
//! Changing a file's owner needs root: these tests fail (they do not pass
//! silently) when run as another user.

use kms::KmsRootKey;
use kms::owner::OwnerKey;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// `nobody`'s uid and gid; panics unless this process may chown to it.
fn nobody() -> (u32, u32) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test plants files owned by `nobody`, which needs root: run it as root (e.g. in the project's container)"
    );
    // SAFETY: a NUL-terminated name; the result is read at once, before any
    // other passwd call of this process.
    let pw = unsafe { libc::getpwnam(c"nobody".as_ptr()) };
    assert!(!pw.is_null(), "this machine has no user `nobody`");
    // SAFETY: checked non-null above.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

fn plant_key(path: &Path, mode: u32) {
    fs::write(path, format!("{}\n", hex::encode([7u8; 32]))).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_root_key_owned_by_another_user_is_refused() {
    let (uid, gid) = nobody();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.key");
    plant_key(&path, 0o600);
    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
    for err in [
        KmsRootKey::load_or_create(&path).map(|_| ()).unwrap_err(),
        KmsRootKey::load(&path).map(|_| ()).unwrap_err(),
    ] {
        let said = err.to_string();
        assert!(said.contains(&path.display().to_string()), "{said}");
        assert!(said.contains("belongs to nobody"), "{said}");
        assert!(said.contains("chown it to this user"), "{said}");
        assert!(!said.contains(&hex::encode([7u8; 32])), "{said}");
    }
    // It was left as it was.
    assert_eq!(
        fs::read_to_string(&path).unwrap().trim(),
        hex::encode([7u8; 32])
    );
}

#[test]
fn a_root_key_in_a_folder_of_another_user_is_refused() {
    let (uid, gid) = nobody();
    let dir = tempfile::tempdir().unwrap();
    let kms_dir = dir.path().join("kms");
    fs::create_dir(&kms_dir).unwrap();
    fs::set_permissions(&kms_dir, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&kms_dir, Some(uid), Some(gid)).unwrap();
    // Even a key the running user would create there: nobody could swap it.
    let path = kms_dir.join("root.key");
    let err = KmsRootKey::load_or_create(&path).map(|_| ()).unwrap_err();
    let said = err.to_string();
    assert!(
        said.contains(&format!(
            "is in {}, which belongs to nobody",
            kms_dir.display()
        )),
        "{said}"
    );
    assert!(!path.exists(), "a key was written into nobody's folder");
}

#[test]
fn a_key_under_a_folder_writable_by_everyone_is_refused_but_sticky_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    let inner = open.join("keys");
    fs::create_dir_all(&inner).unwrap();
    fs::set_permissions(&inner, fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let path = inner.join("root.key");
    plant_key(&path, 0o600);
    let err = KmsRootKey::load(&path).map(|_| ()).unwrap_err();
    let said = err.to_string();
    assert!(
        said.contains(&format!("is in {}, which is mode 0777", open.display())),
        "{said}"
    );
    assert!(said.contains("without the sticky bit"), "{said}");
    assert!(
        said.contains("only this user or root can write to"),
        "{said}"
    );
    // With the sticky bit (like /tmp) nobody can rename another's entry.
    fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
    KmsRootKey::load(&path).unwrap();
}

#[test]
fn an_owner_key_planted_by_another_user_is_refused() {
    let (uid, gid) = nobody();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cfg/owner-key");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    plant_key(&path, 0o600);
    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
    let said = OwnerKey::load_or_create(&path).unwrap_err().to_string();
    assert!(
        said.contains(&format!(
            "the owner key at {} belongs to nobody",
            path.display()
        )),
        "{said}"
    );
    assert!(said.contains("otherwise remove it"), "{said}");
    // Its folder planted instead: refused too, and nothing written there.
    std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
    OwnerKey::load_or_create(&path).unwrap();
    std::os::unix::fs::chown(path.parent().unwrap(), Some(uid), Some(gid)).unwrap();
    let said = OwnerKey::load_or_create(&path).unwrap_err().to_string();
    assert!(said.contains("which belongs to nobody"), "{said}");
    let fresh = path.with_file_name("new-key");
    assert!(OwnerKey::load_or_create(&fresh).is_err());
    assert!(!fresh.exists());
}
