//! Helpers for the database's tests: a fresh database path, an app and a
//! new CVM to store.

use super::{App, NewCvm};
use std::path::{Path, PathBuf};

/// A fresh database path in a folder of its own, which is removed (with the
/// database and its journal) when this is dropped, also when a test fails.
pub(super) struct TempDbPath {
    dir: PathBuf,
    path: PathBuf,
}

impl std::ops::Deref for TempDbPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TempDbPath {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDbPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(super) fn temp_db_path() -> TempDbPath {
    let dir = std::env::temp_dir().join(format!("berth-db-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDbPath {
        path: dir.join("berth.db"),
        dir,
    }
}

pub(super) fn app_of(user_id: i64, tag: char) -> App {
    App {
        app_id: tag.to_string().repeat(40),
        user_id,
        name: "x".into(),
        app_compose: b"{}".to_vec(),
        compose_hash: "h".into(),
        env_pubkey: "p".into(),
        env_pubkey_signature: "s".into(),
    }
}

pub(super) fn new_cvm(name: &str, user_id: i64, app_id: &str) -> NewCvm {
    NewCvm {
        name: name.into(),
        user_id,
        app_id: app_id.into(),
        encrypted_env: Some(b"\x01\x02".to_vec()),
        env_keys: vec!["A".into()],
        vcpu: 1,
        memory: 2048,
        disk_size: 20,
    }
}
