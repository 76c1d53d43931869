//! [`Db`]: the control plane's database (SQLite, with migrations).
//!
//! The queries stay portable SQL (no SQLite-only functions, `TEXT`/`INTEGER`/
//! `BLOB` columns, explicit timestamps written by the application) so that
//! the same schema runs on PostgreSQL when the control plane outgrows one
//! machine. What is stored: users with *hashed* API keys, apps with their
//! byte-exact `app-compose.json`, CVMs with their sealed env as opaque bytes.
//! Never a plaintext secret: the control plane has none to store.

use crate::error::ApiError;
use rusqlite::{Connection, OptionalExtension, params};
use sha2::Digest as _;
use std::path::Path;
use std::sync::Mutex;

/// The migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &["CREATE TABLE users (
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
    CREATE INDEX cvms_user ON cvms(user_id);"];

/// A user of the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Row id.
    pub id: i64,
    /// Login name.
    pub username: String,
    /// Whether the user may create users.
    pub is_admin: bool,
}

/// An app: a measured `app-compose.json` and its env key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct App {
    /// The app id (first 20 bytes of the compose hash, hex).
    pub app_id: String,
    /// Owner.
    pub user_id: i64,
    /// Name.
    pub name: String,
    /// The exact bytes of `app-compose.json`.
    pub app_compose: Vec<u8>,
    /// sha256 of those bytes, hex.
    pub compose_hash: String,
    /// The env public key from the KMS, hex.
    pub env_pubkey: String,
    /// The KMS signature over it, hex.
    pub env_pubkey_signature: String,
}

/// A CVM row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cvm {
    /// UUID.
    pub id: String,
    /// Small integer id.
    pub instance_id: i64,
    /// Name.
    pub name: String,
    /// Owner.
    pub user_id: i64,
    /// App.
    pub app_id: String,
    /// `provisioning`, `starting`, `running`, `boot_failed`, `stopped`, `deleted`.
    pub status: String,
    /// The failure category of the last boot, if it failed.
    pub boot_category: Option<String>,
    /// The last boot's final line, if it failed.
    pub boot_message: Option<String>,
    /// The sealed env, opaque.
    pub encrypted_env: Option<Vec<u8>>,
    /// The env keys the client declared (names only).
    pub env_keys: Vec<String>,
    /// vCPUs.
    pub vcpu: i64,
    /// Memory, MB.
    pub memory: i64,
    /// Disk, GB.
    pub disk_size: i64,
    /// RFC 3339.
    pub created_at: String,
}

/// The database.
pub struct Db {
    conn: Mutex<Connection>,
}

/// sha256 of an API key, hex: what the database keeps.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

fn db_err(e: rusqlite::Error) -> ApiError {
    ApiError::internal(format!("database error: {e}"))
}

/// Now, RFC 3339 UTC.
pub fn now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Db {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, ApiError> {
        let conn = Connection::open(path).map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(db_err)?;
        conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .map_err(db_err)?;
        let version: i64 = conn
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_version",
                [],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            conn.execute_batch(&format!(
                "BEGIN; {sql}; INSERT INTO schema_version (version) VALUES ({}); COMMIT;",
                i + 1
            ))
            .map_err(db_err)?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// Creates a user with the API key `api_key` (stored hashed).
    pub fn create_user(
        &self,
        username: &str,
        api_key: &str,
        is_admin: bool,
    ) -> Result<User, ApiError> {
        let conn = self.conn.lock().unwrap();
        conn.execute(
            "INSERT INTO users (username, api_key_hash, is_admin, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![username, hash_api_key(api_key), is_admin as i64, now()],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                ApiError::conflict(format!("a user named {username} already exists"))
            }
            e => db_err(e),
        })?;
        Ok(User {
            id: conn.last_insert_rowid(),
            username: username.to_owned(),
            is_admin,
        })
    }

    /// Replaces the admin's API key (for `BERTH_ADMIN_API_KEY`).
    pub fn set_api_key(&self, username: &str, api_key: &str) -> Result<(), ApiError> {
        self.conn
            .lock()
            .unwrap()
            .execute(
                "UPDATE users SET api_key_hash = ?1 WHERE username = ?2",
                params![hash_api_key(api_key), username],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// The one user whose `column` equals `value`.
    fn user_where(&self, column: &str, value: &str) -> Result<Option<User>, ApiError> {
        self.conn
            .lock()
            .unwrap()
            .query_row(
                &format!("SELECT id, username, is_admin FROM users WHERE {column} = ?1"),
                params![value],
                |r| {
                    Ok(User {
                        id: r.get(0)?,
                        username: r.get(1)?,
                        is_admin: r.get::<_, i64>(2)? != 0,
                    })
                },
            )
            .optional()
            .map_err(db_err)
    }

    /// The user named `username`.
    pub fn user_by_name(&self, username: &str) -> Result<Option<User>, ApiError> {
        self.user_where("username", username)
    }

    /// The user whose API key is `api_key`.
    pub fn user_by_key(&self, api_key: &str) -> Result<Option<User>, ApiError> {
        self.user_where("api_key_hash", &hash_api_key(api_key))
    }

    /// Stores an app, or returns the existing one with the same id.
    pub fn upsert_app(&self, app: &App) -> Result<App, ApiError> {
        let conn = self.conn.lock().unwrap();
        conn.execute(
            "INSERT INTO apps (app_id, user_id, name, app_compose, compose_hash, env_pubkey, env_pubkey_signature, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (app_id) DO NOTHING",
            params![app.app_id, app.user_id, app.name, app.app_compose, app.compose_hash, app.env_pubkey, app.env_pubkey_signature, now()],
        )
        .map_err(db_err)?;
        drop(conn);
        self.app(&app.app_id)?
            .ok_or_else(|| ApiError::internal("the app vanished"))
    }

    /// The app `app_id`.
    pub fn app(&self, app_id: &str) -> Result<Option<App>, ApiError> {
        self.conn
            .lock()
            .unwrap()
            .query_row(
                "SELECT app_id, user_id, name, app_compose, compose_hash, env_pubkey, env_pubkey_signature FROM apps WHERE app_id = ?1",
                params![app_id],
                |r| {
                    Ok(App {
                        app_id: r.get(0)?,
                        user_id: r.get(1)?,
                        name: r.get(2)?,
                        app_compose: r.get(3)?,
                        compose_hash: r.get(4)?,
                        env_pubkey: r.get(5)?,
                        env_pubkey_signature: r.get(6)?,
                    })
                },
            )
            .optional()
            .map_err(db_err)
    }

    /// Creates a CVM row in `provisioning`.
    #[allow(clippy::too_many_arguments)]
    pub fn create_cvm(
        &self,
        name: &str,
        user_id: i64,
        app_id: &str,
        encrypted_env: Option<&[u8]>,
        env_keys: &[String],
        vcpu: i64,
        memory: i64,
        disk_size: i64,
    ) -> Result<Cvm, ApiError> {
        let id = uuid::Uuid::new_v4().to_string();
        let conn = self.conn.lock().unwrap();
        let instance_id: i64 = conn
            .query_row(
                "SELECT COALESCE(MAX(instance_id), 0) + 1 FROM cvms",
                [],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        let ts = now();
        conn.execute(
            "INSERT INTO cvms (id, instance_id, name, user_id, app_id, status, encrypted_env, env_keys, vcpu, memory, disk_size, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'provisioning', ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
            params![id, instance_id, name, user_id, app_id, encrypted_env, serde_json::to_string(env_keys).unwrap(), vcpu, memory, disk_size, ts],
        )
        .map_err(db_err)?;
        drop(conn);
        self.cvm(&id)?
            .ok_or_else(|| ApiError::internal("the CVM vanished"))
    }

    fn cvm_where(&self, clause: &str, arg: &dyn rusqlite::ToSql) -> Result<Vec<Cvm>, ApiError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT id, instance_id, name, user_id, app_id, status, boot_category, boot_message, encrypted_env, env_keys, vcpu, memory, disk_size, created_at
                 FROM cvms WHERE {clause} ORDER BY instance_id"
            ))
            .map_err(db_err)?;
        let rows = stmt
            .query_map([arg], |r| {
                let keys: String = r.get(9)?;
                Ok(Cvm {
                    id: r.get(0)?,
                    instance_id: r.get(1)?,
                    name: r.get(2)?,
                    user_id: r.get(3)?,
                    app_id: r.get(4)?,
                    status: r.get(5)?,
                    boot_category: r.get(6)?,
                    boot_message: r.get(7)?,
                    encrypted_env: r.get(8)?,
                    env_keys: serde_json::from_str(&keys).unwrap_or_default(),
                    vcpu: r.get(10)?,
                    memory: r.get(11)?,
                    disk_size: r.get(12)?,
                    created_at: r.get(13)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)
    }

    /// The CVM `id` (uuid).
    pub fn cvm(&self, id: &str) -> Result<Option<Cvm>, ApiError> {
        Ok(self.cvm_where("id = ?1", &id)?.into_iter().next())
    }

    /// The user's CVMs that are not deleted.
    pub fn cvms_of(&self, user_id: i64) -> Result<Vec<Cvm>, ApiError> {
        Ok(self
            .cvm_where("user_id = ?1", &user_id)?
            .into_iter()
            .filter(|c| c.status != "deleted")
            .collect())
    }

    /// Every CVM that is not deleted (for the node at start-up).
    pub fn live_cvms(&self) -> Result<Vec<Cvm>, ApiError> {
        self.cvm_where("status <> ?1", &"deleted")
    }

    /// Sets a CVM's status (and its boot failure, if any).
    pub fn set_status(
        &self,
        id: &str,
        status: &str,
        category: Option<&str>,
        message: Option<&str>,
    ) -> Result<(), ApiError> {
        self.conn
            .lock()
            .unwrap()
            .execute(
                "UPDATE cvms SET status = ?1, boot_category = ?2, boot_message = ?3, updated_at = ?4 WHERE id = ?5",
                params![status, category, message, now(), id],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// Replaces a CVM's sealed env and declared keys.
    pub fn set_env(
        &self,
        id: &str,
        encrypted_env: &[u8],
        env_keys: &[String],
    ) -> Result<(), ApiError> {
        self.conn
            .lock()
            .unwrap()
            .execute(
                "UPDATE cvms SET encrypted_env = ?1, env_keys = ?2, updated_at = ?3 WHERE id = ?4",
                params![
                    encrypted_env,
                    serde_json::to_string(env_keys).unwrap(),
                    now(),
                    id
                ],
            )
            .map_err(db_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrate_users_apps_cvms() {
        let dir = std::env::temp_dir().join(format!("berth-db-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("berth.db");
        let db = Db::open(&path).unwrap();
        let alice = db.create_user("alice", "key-a", true).unwrap();
        assert!(db.create_user("alice", "key-b", false).is_err());
        assert_eq!(db.user_by_key("key-a").unwrap().unwrap(), alice);
        assert!(db.user_by_key("nope").unwrap().is_none());
        let app = App {
            app_id: "a".repeat(40),
            user_id: alice.id,
            name: "x".into(),
            app_compose: b"{}".to_vec(),
            compose_hash: "h".into(),
            env_pubkey: "p".into(),
            env_pubkey_signature: "s".into(),
        };
        db.upsert_app(&app).unwrap();
        let cvm = db
            .create_cvm(
                "web-app",
                alice.id,
                &app.app_id,
                Some(b"\x01\x02"),
                &["A".into()],
                1,
                2048,
                20,
            )
            .unwrap();
        assert_eq!(cvm.status, "provisioning");
        db.set_status(
            &cvm.id,
            "boot_failed",
            Some("credentials_rejected"),
            Some("BOOT FAILED: …"),
        )
        .unwrap();
        drop(db);
        // Reopening applies no migration twice and keeps everything.
        let db = Db::open(&path).unwrap();
        let again = db.cvm(&cvm.id).unwrap().unwrap();
        assert_eq!(again.boot_category.as_deref(), Some("credentials_rejected"));
        assert_eq!(db.cvms_of(alice.id).unwrap().len(), 1);
        // The API key is not in the file.
        let bytes = std::fs::read(&path).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("key-a"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
