//! Audit finding 9: `berth up --state DIR` used a folder (and a KMS root key
//! in it) planted by `nobody`: the mode was checked, not the owner. Now
//! `cloud::up::run` refuses, before it starts anything, a state folder (or
//! a folder or file Berth keeps in it) that belongs to another user, and a
//! state folder under a folder every user may write to without the sticky
//! bit; each with one sentence naming the path, its owner and what to do.
//!
//! Changing a file's owner needs root: these tests fail (they do not pass
//! silently) when run as another user.

use cloud::up::{UpConfig, UpError};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `nobody`'s uid and gid; panics unless this process may chown to it.
fn nobody() -> (u32, u32) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test plants files owned by `nobody`, which needs root: run it as root (e.g. in the project's container)"
    );
    // SAFETY: a NUL-terminated name; the result is read at once.
    let pw = unsafe { libc::getpwnam(c"nobody".as_ptr()) };
    assert!(!pw.is_null(), "this machine has no user `nobody`");
    // SAFETY: checked non-null above.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn scratch() -> Scratch {
    let dir = std::env::temp_dir().join(format!("berth-planted-{}", uuid::Uuid::new_v4()));
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    Scratch(dir)
}

fn private_dir(p: &Path) {
    fs::create_dir_all(p).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o700)).unwrap();
}

/// `berth up` on `state`, which must fail before it starts any child (the
/// executable does not exist).
async fn up(state: &Path) -> UpError {
    let config = UpConfig {
        state: state.to_owned(),
        role: cloud::up::Role::All,
        database: None,
        listen: "127.0.0.1:0".into(),
        tls: None,
        insecure: false,
        public_url: None,
        registry_endpoints: BTreeMap::new(),
        ca_certs: Vec::new(),
        aws_endpoint_url_ecr: None,
        docker_host: None,
        admin_api_key: None,
        rotate_log_secret: false,
        limits: cloud::db::Limits::default(),
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(20),
        max_connections: 8,
        max_connections_per_client: 8,
        berth_exe: "/nonexistent/berth".into(),
    };
    let events: cloud::up::UpEvents = Arc::new(|_| {});
    let run = cloud::up::run(config, events, std::future::pending());
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("berth up went on with a planted state folder")
        .expect_err("berth up accepted a planted state folder")
}

#[tokio::test]
async fn a_state_folder_owned_by_another_user_is_refused() {
    let (uid, gid) = nobody();
    let s = scratch();
    let state = s.0.join("state");
    private_dir(&state);
    std::os::unix::fs::chown(&state, Some(uid), Some(gid)).unwrap();
    let said = up(&state).await.to_string();
    assert!(
        said.starts_with(&format!("{} belongs to nobody", state.display())),
        "{said}"
    );
    assert!(said.contains("not to this user (root (uid 0))"), "{said}");
    assert!(
        said.contains("if it is yours, chown it to this user; otherwise remove it"),
        "{said}"
    );
    // Nothing was made in it.
    assert_eq!(fs::read_dir(&state).unwrap().count(), 0);
    assert_eq!(
        fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[tokio::test]
async fn a_kms_folder_or_root_key_planted_in_the_state_is_refused() {
    let (uid, gid) = nobody();
    let s = scratch();
    let state = s.0.join("state");
    private_dir(&state.join("kms"));
    std::os::unix::fs::chown(state.join("kms"), Some(uid), Some(gid)).unwrap();
    let said = up(&state).await.to_string();
    assert!(
        said.starts_with(&format!(
            "{} belongs to nobody",
            state.join("kms").display()
        )),
        "{said}"
    );
    // The folder is this user's again, but the root key in it is nobody's.
    std::os::unix::fs::chown(state.join("kms"), Some(0), Some(0)).unwrap();
    let key = state.join("kms/root.key");
    fs::write(&key, format!("{}\n", "7".repeat(64))).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&key, Some(uid), Some(gid)).unwrap();
    let said = up(&state).await.to_string();
    assert!(
        said.starts_with(&format!("{} belongs to nobody", key.display())),
        "{said}"
    );
    assert!(!said.contains(&"7".repeat(64)), "{said}");
}

#[tokio::test]
async fn a_state_folder_under_a_folder_everyone_may_write_to_is_refused() {
    let s = scratch();
    let open = s.0.join("shared");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    // Whether the state folder exists yet or not.
    for state in [open.join("new-state"), open.join("old-state")] {
        if state.ends_with("old-state") {
            private_dir(&state);
        }
        let said = up(&state).await.to_string();
        assert_eq!(
            said,
            format!(
                "the state folder {} is in {}, which is mode 0777: writable by every user, without the sticky bit, so another user could replace what is in it: use a state folder under folders only this user or root can write to",
                state.display(),
                open.display()
            )
        );
    }
    assert!(!open.join("new-state").exists());
}

#[tokio::test]
async fn a_state_folder_under_a_folder_of_another_user_is_refused() {
    let (uid, gid) = nobody();
    let s = scratch();
    let theirs = s.0.join("theirs");
    private_dir(&theirs);
    let state = theirs.join("state");
    private_dir(&state);
    std::os::unix::fs::chown(&theirs, Some(uid), Some(gid)).unwrap();
    let said = up(&state).await.to_string();
    assert!(
        said.contains(&format!(
            "is in {}, which belongs to nobody",
            theirs.display()
        )),
        "{said}"
    );
}
