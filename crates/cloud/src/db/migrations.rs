//! The schema: [`MIGRATIONS`], applied in order by [`migrate`] when the
//! database is opened, one migrator at a time even across processes.

use super::sql::{Conn, Engine, pg_ddl, vals};
use super::users::new_salt;
use super::{DbError, db_err};

/// The migrations, applied in order; the index + 1 is the schema version.
pub(super) const MIGRATIONS: &[&str] = &[
    "CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        api_key_hash TEXT NOT NULL UNIQUE,
        is_admin INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
    );
    CREATE TABLE apps (
        app_id TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        name TEXT NOT NULL,
        app_compose BLOB NOT NULL,
        compose_hash TEXT NOT NULL,
        env_pubkey TEXT NOT NULL,
        env_pubkey_signature TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE cvms (
        id TEXT PRIMARY KEY,
        instance_id INTEGER NOT NULL UNIQUE,
        name TEXT NOT NULL,
        user_id INTEGER NOT NULL REFERENCES users(id),
        app_id TEXT NOT NULL REFERENCES apps(app_id),
        status TEXT NOT NULL,
        boot_category TEXT,
        boot_message TEXT,
        encrypted_env BLOB,
        env_keys TEXT NOT NULL,
        vcpu INTEGER NOT NULL,
        memory INTEGER NOT NULL,
        disk_size INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX cvms_user ON cvms(user_id);",
    // The per-user salt that goes into every manifest the user provisions
    // (`berth_owner`), so app ids are per user; filled in by `Db::open`
    // for users that predate it. Indexes for the caps' counts.
    "ALTER TABLE users ADD COLUMN app_salt TEXT;
    CREATE INDEX cvms_status ON cvms(status);
    CREATE INDEX cvms_user_name ON cvms(user_id, name);",
    // Updates in place: an app keeps its id while its manifest changes.
    // `genesis_compose` is the first manifest (which the app id measures;
    // NULL while it is still `app_compose`); `app_updates` records every
    // accepted update, rollbacks included.
    "ALTER TABLE apps ADD COLUMN genesis_compose BLOB;
    CREATE TABLE app_updates (
        id INTEGER PRIMARY KEY,
        app_id TEXT NOT NULL REFERENCES apps(app_id),
        compose_hash TEXT NOT NULL,
        app_compose BLOB NOT NULL,
        authorized_by TEXT NOT NULL,
        counter INTEGER NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX app_updates_app ON app_updates(app_id, id);",
    // Many processes on one database (issue 21): leases any process can
    // take (`locks`: an app's update lock, `app:<id>`; the one node of a
    // database, `node`), and a user's CVMs listed in pages by instance id.
    "CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX cvms_user_instance ON cvms(user_id, instance_id);",
    // Lists that page at 10,000 CVMs: a user's live CVMs in instance order
    // straight from a partial index (an offset or a count never reads the
    // table), and each user's count of live CVMs kept in the same
    // transaction as the rows (`cvms`: `create_cvm`, `transition`), so the
    // total of an unfiltered page is one row.
    "CREATE INDEX cvms_user_live ON cvms(user_id, instance_id) WHERE status <> 'deleted';
    DROP INDEX cvms_user_instance;
    ALTER TABLE users ADD COLUMN live_cvms INTEGER NOT NULL DEFAULT 0;
    UPDATE users SET live_cvms = (SELECT COUNT(*) FROM cvms WHERE cvms.user_id = users.id AND cvms.status <> 'deleted');",
];

/// The advisory lock key of migrations on PostgreSQL (`berthmig`).
const MIGRATION_LOCK_KEY: i64 = 0x6265_7274_686d_6967;

/// Creates the version table, applies the migrations this database has not
/// seen yet, and gives users that predate `app_salt` one, all in one
/// transaction under the write lock — one migrator at a time, even across
/// processes and machines (SQLite's `BEGIN IMMEDIATE`; PostgreSQL's
/// advisory lock, taken before the version table is even created).
pub(super) fn migrate(conn: &mut Conn) -> Result<(), DbError> {
    let engine = conn.engine();
    match engine {
        Engine::Sqlite => {
            conn.batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                .map_err(db_err)?;
            conn.batch("BEGIN IMMEDIATE").map_err(db_err)?;
        }
        Engine::Postgres => {
            conn.batch(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY}); CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)"
            ))
            .map_err(db_err)?;
        }
    }
    match apply(conn, engine) {
        Ok(()) => conn.commit().map_err(db_err),
        Err(e) => {
            conn.rollback();
            Err(e)
        }
    }
}

fn apply(conn: &mut Conn, engine: Engine) -> Result<(), DbError> {
    // The version is read under the lock.
    let version: i64 = conn
        .query_value("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .map_err(db_err)?;
    if version as usize > MIGRATIONS.len() {
        return Err(DbError::Internal(
            "the database was written by a newer Berth (its schema is ahead of this binary's): run that version, or a newer one",
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let sql = match engine {
            Engine::Sqlite => sql.to_string(),
            Engine::Postgres => pg_ddl(sql),
        };
        conn.batch(&sql).map_err(db_err)?;
        conn.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            &vals![i as i64 + 1],
        )
        .map_err(db_err)?;
    }
    let unsalted: Vec<i64> = conn
        .query("SELECT id FROM users WHERE app_salt IS NULL", &[])
        .map_err(db_err)?
        .iter()
        .map(|r| r.get(0))
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    for id in unsalted {
        conn.execute(
            "UPDATE users SET app_salt = ?1 WHERE id = ?2",
            &vals![new_salt(), id],
        )
        .map_err(db_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use crate::db::Db;

    #[tokio::test]
    async fn users_of_an_older_schema_get_a_salt() {
        let path = temp_db_path();
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "CREATE TABLE schema_version (version INTEGER NOT NULL); {}; INSERT INTO schema_version VALUES (1);
                 INSERT INTO users (username, api_key_hash, is_admin, created_at) VALUES ('old', 'h', 0, 't');",
                MIGRATIONS[0]
            ))
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let old = db.user_by_name("old").await.unwrap().unwrap();
        assert_eq!(old.app_salt.len(), 32, "{old:?}");
        let new = db.create_user("new", "k", false).await.unwrap();
        assert_eq!(new.app_salt.len(), 32);
        assert_ne!(old.app_salt, new.app_salt);
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_eq!(db.user_by_name("old").await.unwrap().unwrap(), old);
    }
}
