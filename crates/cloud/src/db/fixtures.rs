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

/// A fresh, empty database on one engine, for tests that every engine must
/// pass: SQLite in a temporary folder, or a new database on the
/// PostgreSQL server of `BERTH_TEST_PG_URL` (which `make test` starts,
/// `scripts/with-pg.sh`).
pub(super) enum TestDb {
    Sqlite(TempDbPath),
    Postgres(super::DbUrl),
}

impl TestDb {
    pub(super) fn location(&self) -> super::DbLocation {
        match self {
            TestDb::Sqlite(p) => super::DbLocation::Sqlite(p.to_path_buf()),
            TestDb::Postgres(u) => super::DbLocation::Postgres(u.clone()),
        }
    }

    pub(super) fn open(&self) -> super::Db {
        self.open_with(super::DbOptions::default())
    }

    pub(super) fn open_with(&self, opts: super::DbOptions) -> super::Db {
        super::Db::open_location(&self.location(), opts).unwrap()
    }

    pub(super) fn name(&self) -> &'static str {
        match self {
            TestDb::Sqlite(_) => "sqlite",
            TestDb::Postgres(_) => "postgres",
        }
    }
}

/// The engines every database test runs on: SQLite and PostgreSQL. A
/// missing `BERTH_TEST_PG_URL` fails the test (it never skips).
pub(super) fn engines() -> Vec<TestDb> {
    vec![TestDb::Sqlite(temp_db_path()), TestDb::Postgres(fresh_pg())]
}

/// A new database on the test server, by URL.
pub(super) fn fresh_pg() -> super::DbUrl {
    let admin = std::env::var("BERTH_TEST_PG_URL").expect(
        "BERTH_TEST_PG_URL is not set: the database tests run on PostgreSQL too; run them under scripts/with-pg.sh (make test does)",
    );
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let config: postgres::Config = admin.parse().expect("BERTH_TEST_PG_URL");
    let create = format!("CREATE DATABASE {name}");
    // The blocking client must not run on an async worker.
    std::thread::spawn(move || {
        let mut c = config
            .connect(postgres::NoTls)
            .expect("the test PostgreSQL server");
        c.batch_execute(&create).unwrap();
    })
    .join()
    .unwrap();
    let base = admin.rsplit_once('/').expect("a URL with a database").0;
    super::DbUrl::parse(&format!("{base}/{name}")).unwrap()
}
