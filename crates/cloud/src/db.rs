//! [`Db`]: the control plane's database (SQLite, with migrations).
//!
//! The queries stay portable SQL (no SQLite-only functions, `TEXT`/`INTEGER`/
//! `BLOB` columns, explicit timestamps written by the application) so that
//! the same schema runs on PostgreSQL when the control plane outgrows one
//! machine. What is stored: users with *hashed* API keys, apps with their
//! byte-exact `app-compose.json`, CVMs with their sealed env as opaque bytes.
//! Never a plaintext secret: the control plane has none to store.
//!
//! **Concurrency.** Two processes (the API and the node) open the same
//! database in WAL mode, and an operator may open it too. No call blocks an
//! async worker: every query runs on tokio's blocking pool, on a connection
//! from a small pool — several readers (in WAL, readers never wait for a
//! writer) and one writer (SQLite has one writer at a time anyway; writes
//! take the write lock up front with `BEGIN IMMEDIATE`). A busy database is
//! retried with a short `busy_timeout` and backoff until the call's
//! patience runs out ([`DbOptions`]: about 2 s for a request, 30 s for a
//! status write), then answers a 503 that says so; never an unbounded
//! stall, and never a stall of the readers behind one waiting writer.
//!
//! **Status.** A CVM's status is a [`CvmStatus`] and changes only through
//! [`Db::transition`] (`UPDATE … WHERE id = ? AND status IN (expected…)`),
//! which says whether it applied: a stop that lands while a boot ends
//! cannot be overwritten by the boot's result, and nothing leaves `deleted`.

use contract::CvmStatus;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params, params_from_iter};
use sha2::Digest as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
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
];

/// A user of the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Row id.
    pub id: i64,
    /// Login name.
    pub username: String,
    /// Whether the user may create users.
    pub is_admin: bool,
    /// Random per-user salt (hex) that provisioning puts into the user's
    /// manifests as `berth_owner`, so two users' app ids never coincide.
    pub app_salt: String,
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
    /// Where the CVM is in its life.
    pub status: CvmStatus,
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

/// What a commit asks for: a new CVM row (in `provisioning`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCvm {
    /// Name (validated by the caller; unique among the user's live CVMs).
    pub name: String,
    /// Owner.
    pub user_id: i64,
    /// App.
    pub app_id: String,
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
}

/// The operator's caps (`berth up --max-cvms-per-user`, `--max-boots`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most CVMs (not deleted) one user may have.
    pub max_cvms_per_user: usize,
    /// The most CVMs booting (`provisioning` or `starting`) at once, all
    /// users together.
    pub max_boots_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_cvms_per_user: 50,
            max_boots_in_flight: 8,
        }
    }
}

impl Limits {
    /// A user with `have` CVMs is at the CVM cap.
    pub fn too_many_cvms(&self, have: usize) -> DbError {
        DbError::TooManyCvms {
            have,
            max: self.max_cvms_per_user,
        }
    }

    /// `booting` boots in flight: a new one would pass the cap.
    pub fn too_many_boots(&self, booting: usize) -> DbError {
        DbError::TooManyBoots {
            booting,
            max: self.max_boots_in_flight,
        }
    }
}

/// Why a database call failed: a rule a write keeps, a database busy for
/// longer than the call's patience, or SQLite itself. The API maps these
/// to HTTP statuses (`crate::error`); this module knows none. No variant
/// holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Another process held the database's lock for the call's whole patience.
    #[error(
        "the database is busy (another process has held its lock for over {:.1} s): try again in a moment",
        .waited.as_secs_f64()
    )]
    Busy {
        /// How long the call waited.
        waited: Duration,
    },
    /// `create_user` with a name already taken.
    #[error("a user named {username} already exists")]
    UserExists {
        /// The name.
        username: String,
    },
    /// The user already has a live CVM with this name.
    #[error("you already have a CVM named `{name}`: delete it first, or choose another name")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// The user is at the operator's cap on CVMs per user.
    #[error(
        "you have {have} CVMs, the most one user may have (the operator's cap, berth up --max-cvms-per-user {max}): delete a CVM you no longer need, or ask the operator to raise the cap"
    )]
    TooManyCvms {
        /// The user's live CVMs.
        have: usize,
        /// The cap.
        max: usize,
    },
    /// The control plane is at its cap on boots in flight.
    #[error(
        "{booting} CVMs are booting, the most this control plane boots at once (berth up --max-boots {max}): try again when one of them is running"
    )]
    TooManyBoots {
        /// Boots in flight.
        booting: usize,
        /// The cap.
        max: usize,
    },
    /// SQLite failed.
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The pool or a blocking task failed.
    #[error("{0}")]
    Internal(&'static str),
}

/// How long calls wait for a busy database before they give up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbOptions {
    /// A request's reads and writes (then a 503 saying the database is busy).
    pub request_patience: Duration,
    /// A CVM status write (the node's record of a boot's end, a stop, a
    /// delete): retried this long, then returned as an error and logged.
    pub status_patience: Duration,
    /// Reader connections kept open (the writer is one more).
    pub readers: usize,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            request_patience: Duration::from_secs(2),
            status_patience: Duration::from_secs(30),
            readers: 4,
        }
    }
}

/// SQLite's own wait on a lock before it answers `SQLITE_BUSY` (and this
/// module backs off and tries again, within the call's patience).
const BUSY_TIMEOUT: Duration = Duration::from_millis(100);

/// The database: a handle to a small pool of connections.
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    opts: DbOptions,
    read: Pool,
    write: Pool,
}

struct Pool {
    idle: Mutex<Vec<Connection>>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Pool {
    fn new(size: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(size.max(1))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// Why one attempt of a call failed: SQLite (maybe busy: retried), or a
/// rule the write keeps (final).
enum Fail {
    Sql(rusqlite::Error),
    Rule(DbError),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e)
    }
}

impl From<DbError> for Fail {
    fn from(e: DbError) -> Self {
        Fail::Rule(e)
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn busy_error(waited: Duration) -> DbError {
    DbError::Busy { waited }
}

fn db_err(e: rusqlite::Error) -> DbError {
    DbError::Sql(e)
}

/// sha256 of an API key, hex: what the database keeps.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

fn new_salt() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Now, RFC 3339 UTC.
pub fn now() -> String {
    let now = std::time::SystemTime::now().max(std::time::UNIX_EPOCH);
    humantime::format_rfc3339_seconds(now).to_string()
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

const CVM_COLUMNS: &str = "id, instance_id, name, user_id, app_id, status, boot_category, boot_message, encrypted_env, env_keys, vcpu, memory, disk_size, created_at";

fn cvm_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Cvm> {
    let keys: String = r.get(9)?;
    let status: String = r.get(5)?;
    let status = status.parse::<CvmStatus>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Cvm {
        id: r.get(0)?,
        instance_id: r.get(1)?,
        name: r.get(2)?,
        user_id: r.get(3)?,
        app_id: r.get(4)?,
        status,
        boot_category: r.get(6)?,
        boot_message: r.get(7)?,
        encrypted_env: r.get(8)?,
        env_keys: serde_json::from_str(&keys).unwrap_or_default(),
        vcpu: r.get(10)?,
        memory: r.get(11)?,
        disk_size: r.get(12)?,
        created_at: r.get(13)?,
    })
}

fn query_cvms(
    conn: &Connection,
    clause: &str,
    args: &[rusqlite::types::Value],
) -> rusqlite::Result<Vec<Cvm>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CVM_COLUMNS} FROM cvms WHERE {clause} ORDER BY instance_id"
    ))?;
    let rows = stmt.query_map(params_from_iter(args.iter()), cvm_row)?;
    rows.collect()
}

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        username: r.get(1)?,
        is_admin: r.get::<_, i64>(2)? != 0,
        app_salt: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
    })
}

fn app_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<App> {
    Ok(App {
        app_id: r.get(0)?,
        user_id: r.get(1)?,
        name: r.get(2)?,
        app_compose: r.get(3)?,
        compose_hash: r.get(4)?,
        env_pubkey: r.get(5)?,
        env_pubkey_signature: r.get(6)?,
    })
}

fn count(conn: &Connection, sql: &str, args: &[rusqlite::types::Value]) -> rusqlite::Result<usize> {
    conn.query_row(sql, params_from_iter(args.iter()), |r| r.get::<_, i64>(0))
        .map(|n| n.max(0) as usize)
}

fn text(s: &str) -> rusqlite::types::Value {
    rusqlite::types::Value::Text(s.to_owned())
}

/// `?2, ?3, …` for `n` values starting at `?first`.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Db {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        Self::open_with(path, DbOptions::default())
    }

    /// [`Db::open`] with explicit patience and pool size.
    pub fn open_with(path: &Path, opts: DbOptions) -> Result<Self, DbError> {
        let mut conn = connect(path).map_err(db_err)?;
        // At start-up the other process may be migrating or writing: wait
        // longer than a request would.
        conn.busy_timeout(Duration::from_secs(10)).map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .map_err(db_err)?;
        // One migrator at a time, even across processes: the version is
        // read again under the write lock.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let version: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_version",
                [],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql).map_err(db_err)?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                params![i as i64 + 1],
            )
            .map_err(db_err)?;
        }
        let unsalted: Vec<i64> = {
            let mut stmt = tx
                .prepare("SELECT id FROM users WHERE app_salt IS NULL")
                .map_err(db_err)?;
            let ids = stmt.query_map([], |r| r.get(0)).map_err(db_err)?;
            ids.collect::<Result<_, _>>().map_err(db_err)?
        };
        for id in unsalted {
            tx.execute(
                "UPDATE users SET app_salt = ?1 WHERE id = ?2",
                params![new_salt(), id],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
        let inner = Inner {
            path: path.to_owned(),
            read: Pool::new(opts.readers),
            write: Pool::new(1),
            opts,
        };
        inner.write.idle.lock().unwrap().push(conn);
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The options this database was opened with.
    pub fn options(&self) -> DbOptions {
        self.inner.opts
    }

    /// Runs `op` on a pooled connection on the blocking pool, retrying a
    /// busy database until `patience` has passed.
    async fn call<T, F>(&self, access: Access, patience: Duration, mut op: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnMut(&mut Connection) -> Result<T, Fail> + Send + 'static,
    {
        let started = Instant::now();
        let deadline = started + patience;
        let pool = match access {
            Access::Read => &self.inner.read,
            Access::Write => &self.inner.write,
        };
        let permit = tokio::time::timeout(patience, pool.slots.clone().acquire_owned())
            .await
            .map_err(|_| busy_error(patience))?
            .map_err(|_| DbError::Internal("the database pool is closed"))?;
        let inner = self.inner.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pool = match access {
                Access::Read => &inner.read,
                Access::Write => &inner.write,
            };
            let idle = pool.idle.lock().unwrap().pop();
            let mut conn = match idle {
                Some(c) => c,
                None => connect(&inner.path).map_err(Fail::Sql)?,
            };
            let mut pause = Duration::from_millis(10);
            let out = loop {
                match op(&mut conn) {
                    Err(Fail::Sql(e)) if is_busy(&e) && Instant::now() + pause < deadline => {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(200));
                    }
                    other => break other,
                }
            };
            pool.idle.lock().unwrap().push(conn);
            out
        })
        .await
        .map_err(|_| DbError::Internal("a database call panicked"))?;
        joined.map_err(|f| match f {
            Fail::Sql(e) if is_busy(&e) => busy_error(started.elapsed()),
            Fail::Sql(e) => db_err(e),
            Fail::Rule(e) => e,
        })
    }

    async fn read<T, F>(&self, op: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnMut(&mut Connection) -> Result<T, Fail> + Send + 'static,
    {
        self.call(Access::Read, self.inner.opts.request_patience, op)
            .await
    }

    /// A write in one `BEGIN IMMEDIATE` transaction.
    async fn write<T, F>(&self, patience: Duration, mut op: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnMut(&rusqlite::Transaction<'_>) -> Result<T, Fail> + Send + 'static,
    {
        self.call(Access::Write, patience, move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = op(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Creates a user with the API key `api_key` (stored hashed).
    pub async fn create_user(
        &self,
        username: &str,
        api_key: &str,
        is_admin: bool,
    ) -> Result<User, DbError> {
        let (username, key_hash) = (username.to_owned(), hash_api_key(api_key));
        self.write(self.inner.opts.request_patience, move |tx| {
            let salt = new_salt();
            tx.execute(
                "INSERT INTO users (username, api_key_hash, is_admin, created_at, app_salt) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![username, key_hash, is_admin as i64, now(), salt],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                    Fail::Rule(DbError::UserExists { username: username.clone() })
                }
                e => Fail::Sql(e),
            })?;
            Ok(User {
                id: tx.last_insert_rowid(),
                username: username.clone(),
                is_admin,
                app_salt: salt,
            })
        })
        .await
    }

    /// Replaces a user's API key (for `BERTH_ADMIN_API_KEY`).
    pub async fn set_api_key(&self, username: &str, api_key: &str) -> Result<(), DbError> {
        let (username, key_hash) = (username.to_owned(), hash_api_key(api_key));
        self.write(self.inner.opts.request_patience, move |tx| {
            tx.execute(
                "UPDATE users SET api_key_hash = ?1 WHERE username = ?2",
                params![key_hash, username],
            )?;
            Ok(())
        })
        .await
    }

    /// The one user whose `column` equals `value`.
    async fn user_where(
        &self,
        column: &'static str,
        value: String,
    ) -> Result<Option<User>, DbError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT id, username, is_admin, app_salt FROM users WHERE {column} = ?1"
                ))?
                .query_row(params![value], user_row)
                .optional()?)
        })
        .await
    }

    /// The user named `username`.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, DbError> {
        self.user_where("username", username.to_owned()).await
    }

    /// The user whose API key is `api_key`.
    pub async fn user_by_key(&self, api_key: &str) -> Result<Option<User>, DbError> {
        self.user_where("api_key_hash", hash_api_key(api_key)).await
    }

    /// Stores an app, or returns the existing one with the same id.
    pub async fn upsert_app(&self, app: &App) -> Result<App, DbError> {
        let app = app.clone();
        self.write(self.inner.opts.request_patience, move |tx| {
            tx.execute(
                "INSERT INTO apps (app_id, user_id, name, app_compose, compose_hash, env_pubkey, env_pubkey_signature, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (app_id) DO NOTHING",
                params![app.app_id, app.user_id, app.name, app.app_compose, app.compose_hash, app.env_pubkey, app.env_pubkey_signature, now()],
            )?;
            Ok(tx.query_row(
                "SELECT app_id, user_id, name, app_compose, compose_hash, env_pubkey, env_pubkey_signature FROM apps WHERE app_id = ?1",
                params![app.app_id],
                app_row,
            )?)
        })
        .await
    }

    /// The app `app_id`.
    pub async fn app(&self, app_id: &str) -> Result<Option<App>, DbError> {
        let app_id = app_id.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT app_id, user_id, name, app_compose, compose_hash, env_pubkey, env_pubkey_signature FROM apps WHERE app_id = ?1")?
                .query_row(params![app_id], app_row)
                .optional()?)
        })
        .await
    }

    /// Creates a CVM row in `provisioning`, in one transaction with the
    /// rules a commit keeps: its name is not taken among the user's live
    /// CVMs (409), the user is under `limits.max_cvms_per_user` (403), and
    /// fewer than `limits.max_boots_in_flight` CVMs are booting (429).
    pub async fn create_cvm(&self, new: NewCvm, limits: Limits) -> Result<Cvm, DbError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.write(self.inner.opts.request_patience, move |tx| {
            let deleted = text(CvmStatus::Deleted.as_str());
            let user = rusqlite::types::Value::Integer(new.user_id);
            let taken = count(
                tx,
                "SELECT COUNT(*) FROM cvms WHERE user_id = ?1 AND name = ?2 AND status <> ?3",
                &[user.clone(), text(&new.name), deleted.clone()],
            )?;
            if taken > 0 {
                return Err(DbError::NameTaken {
                    name: new.name.clone(),
                }
                .into());
            }
            let have = count(
                tx,
                "SELECT COUNT(*) FROM cvms WHERE user_id = ?1 AND status <> ?2",
                &[user, deleted],
            )?;
            if have >= limits.max_cvms_per_user {
                return Err(limits.too_many_cvms(have).into());
            }
            let booting = boots_in_flight(tx)?;
            if booting >= limits.max_boots_in_flight {
                return Err(limits.too_many_boots(booting).into());
            }
            let instance_id: i64 = tx.query_row(
                "SELECT COALESCE(MAX(instance_id), 0) + 1 FROM cvms",
                [],
                |r| r.get(0),
            )?;
            let ts = now();
            tx.execute(
                "INSERT INTO cvms (id, instance_id, name, user_id, app_id, status, encrypted_env, env_keys, vcpu, memory, disk_size, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)",
                params![id, instance_id, new.name, new.user_id, new.app_id, CvmStatus::Provisioning.as_str(), new.encrypted_env,
                        serde_json::to_string(&new.env_keys).expect("json"), new.vcpu, new.memory, new.disk_size, ts],
            )?;
            query_cvms(tx, "id = ?1", &[text(&id)])?
                .pop()
                .ok_or_else(|| DbError::Internal("the new CVM vanished").into())
        })
        .await
    }

    /// The CVM `id` (uuid).
    pub async fn cvm(&self, id: &str) -> Result<Option<Cvm>, DbError> {
        let id = text(id);
        self.read(move |conn| Ok(query_cvms(conn, "id = ?1", std::slice::from_ref(&id))?.pop()))
            .await
    }

    /// The user's CVMs that are not deleted.
    pub async fn cvms_of(&self, user_id: i64) -> Result<Vec<Cvm>, DbError> {
        self.read(move |conn| {
            Ok(query_cvms(
                conn,
                "user_id = ?1 AND status <> ?2",
                &[
                    rusqlite::types::Value::Integer(user_id),
                    text(CvmStatus::Deleted.as_str()),
                ],
            )?)
        })
        .await
    }

    /// Every CVM that is not deleted (for the node at start-up).
    pub async fn live_cvms(&self) -> Result<Vec<Cvm>, DbError> {
        self.read(|conn| {
            Ok(query_cvms(
                conn,
                "status <> ?1",
                &[text(CvmStatus::Deleted.as_str())],
            )?)
        })
        .await
    }

    /// How many CVMs are booting (`provisioning` or `starting`), all users.
    pub async fn boots_in_flight(&self) -> Result<usize, DbError> {
        self.read(|conn| Ok(boots_in_flight(conn)?)).await
    }

    /// Moves the CVM `id` to `to` (with the boot failure, if any) only if
    /// its status is one of `from`, atomically; says whether it did. Retried
    /// while the database is busy, for the status patience (30 s); an
    /// error is returned and logged, never dropped.
    pub async fn transition(
        &self,
        id: &str,
        from: &[CvmStatus],
        to: CvmStatus,
        category: Option<&str>,
        message: Option<&str>,
    ) -> Result<bool, DbError> {
        let mut args = vec![
            text(to.as_str()),
            category.map(text).unwrap_or(rusqlite::types::Value::Null),
            message.map(text).unwrap_or(rusqlite::types::Value::Null),
            text(&now()),
            text(id),
        ];
        args.extend(from.iter().map(|s| text(s.as_str())));
        let sql = format!(
            "UPDATE cvms SET status = ?1, boot_category = ?2, boot_message = ?3, updated_at = ?4 WHERE id = ?5 AND status IN ({})",
            placeholders(6, from.len())
        );
        if from.is_empty() {
            return Ok(false);
        }
        let result = self
            .write(self.inner.opts.status_patience, move |tx| {
                Ok(tx.execute(&sql, params_from_iter(args.iter()))? == 1)
            })
            .await;
        if let Err(e) = &result {
            eprintln!("db: could not record status {to} for CVM {id}: {e}");
        }
        result
    }

    /// Sets a CVM's status (and its boot failure, if any) from any status
    /// but `deleted`, which is final. Says whether it applied (false: the
    /// CVM is deleted or does not exist). See [`Db::transition`].
    pub async fn set_status(
        &self,
        id: &str,
        status: CvmStatus,
        category: Option<&str>,
        message: Option<&str>,
    ) -> Result<bool, DbError> {
        self.transition(id, &CvmStatus::LIVE, status, category, message)
            .await
    }

    /// Replaces a CVM's sealed env and declared keys.
    pub async fn set_env(
        &self,
        id: &str,
        encrypted_env: &[u8],
        env_keys: &[String],
    ) -> Result<(), DbError> {
        let (id, env) = (id.to_owned(), encrypted_env.to_vec());
        let keys = serde_json::to_string(env_keys).expect("json");
        self.write(self.inner.opts.request_patience, move |tx| {
            tx.execute(
                "UPDATE cvms SET encrypted_env = ?1, env_keys = ?2, updated_at = ?3 WHERE id = ?4",
                params![env, keys, now(), id],
            )?;
            Ok(())
        })
        .await
    }
}

fn boots_in_flight(conn: &Connection) -> rusqlite::Result<usize> {
    count(
        conn,
        "SELECT COUNT(*) FROM cvms WHERE status IN (?1, ?2)",
        &[
            text(CvmStatus::Provisioning.as_str()),
            text(CvmStatus::Starting.as_str()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db_path() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-db-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("berth.db")
    }

    fn app_of(user_id: i64, tag: char) -> App {
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

    fn new_cvm(name: &str, user_id: i64, app_id: &str) -> NewCvm {
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

    #[tokio::test]
    async fn migrate_users_apps_cvms() {
        let path = temp_db_path();
        let db = Db::open(&path).unwrap();
        let alice = db.create_user("alice", "key-a", true).await.unwrap();
        let again = db.create_user("alice", "key-b", false).await.unwrap_err();
        assert!(
            matches!(&again, DbError::UserExists { username } if username == "alice"),
            "{again:?}"
        );
        assert_eq!(db.user_by_key("key-a").await.unwrap().unwrap(), alice);
        assert!(db.user_by_key("nope").await.unwrap().is_none());
        let app = app_of(alice.id, 'a');
        db.upsert_app(&app).await.unwrap();
        let cvm = db
            .create_cvm(new_cvm("web-app", alice.id, &app.app_id), Limits::default())
            .await
            .unwrap();
        assert_eq!(cvm.status, CvmStatus::Provisioning);
        assert!(
            db.set_status(
                &cvm.id,
                CvmStatus::BootFailed,
                Some("credentials_rejected"),
                Some("BOOT FAILED: …"),
            )
            .await
            .unwrap()
        );
        drop(db);
        // Reopening applies no migration twice and keeps everything.
        let db = Db::open(&path).unwrap();
        let again = db.cvm(&cvm.id).await.unwrap().unwrap();
        assert_eq!(again.status, CvmStatus::BootFailed);
        assert_eq!(again.boot_category.as_deref(), Some("credentials_rejected"));
        assert_eq!(db.cvms_of(alice.id).await.unwrap().len(), 1);
        assert_eq!(db.user_by_name("alice").await.unwrap().unwrap(), alice);
        // The API key is not in the file.
        let bytes = std::fs::read(&path).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("key-a"));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn users_of_an_older_schema_get_a_salt() {
        let path = temp_db_path();
        {
            let conn = Connection::open(&path).unwrap();
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
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn a_stop_racing_the_end_of_a_boot_is_not_overwritten() {
        let path = temp_db_path();
        let db = Db::open(&path).unwrap();
        let u = db.create_user("u", "k", false).await.unwrap();
        let app = db.upsert_app(&app_of(u.id, 'b')).await.unwrap();
        let cvm = db
            .create_cvm(new_cvm("racer", u.id, &app.app_id), Limits::default())
            .await
            .unwrap();
        let st = CvmStatus::Starting;
        assert!(db.set_status(&cvm.id, st, None, None).await.unwrap());
        // The stop lands first; the boot's end expects `starting` and loses.
        assert!(
            db.set_status(&cvm.id, CvmStatus::Stopped, None, None)
                .await
                .unwrap()
        );
        let applied = db
            .transition(&cvm.id, &[st], CvmStatus::Running, None, None)
            .await
            .unwrap();
        assert!(!applied);
        assert_eq!(
            db.cvm(&cvm.id).await.unwrap().unwrap().status,
            CvmStatus::Stopped
        );
        // A boot that ends while still `starting` wins.
        db.set_status(&cvm.id, st, None, None).await.unwrap();
        assert!(
            db.transition(
                &cvm.id,
                &[st],
                CvmStatus::BootFailed,
                Some("runtime"),
                Some("BOOT FAILED: runtime")
            )
            .await
            .unwrap()
        );
        let c = db.cvm(&cvm.id).await.unwrap().unwrap();
        assert_eq!(
            (c.status, c.boot_category.as_deref()),
            (CvmStatus::BootFailed, Some("runtime"))
        );
        // `deleted` is final: nothing moves a CVM out of it.
        assert!(
            db.set_status(&cvm.id, CvmStatus::Deleted, None, None)
                .await
                .unwrap()
        );
        for s in CvmStatus::ALL {
            assert!(!db.set_status(&cvm.id, s, None, None).await.unwrap(), "{s}");
        }
        assert_eq!(
            db.cvm(&cvm.id).await.unwrap().unwrap().status,
            CvmStatus::Deleted
        );
        assert!(!db.set_status("no-such-cvm", st, None, None).await.unwrap());
        assert!(!db.transition(&cvm.id, &[], st, None, None).await.unwrap());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn names_are_unique_per_user_and_caps_hold() {
        let path = temp_db_path();
        let db = Db::open(&path).unwrap();
        let a = db.create_user("a", "ka", false).await.unwrap();
        let b = db.create_user("b", "kb", false).await.unwrap();
        let app_a = db.upsert_app(&app_of(a.id, 'a')).await.unwrap();
        let app_b = db.upsert_app(&app_of(b.id, 'b')).await.unwrap();
        let wide = Limits {
            max_cvms_per_user: 50,
            max_boots_in_flight: 50,
        };
        let first = db
            .create_cvm(new_cvm("same-name", a.id, &app_a.app_id), wide)
            .await
            .unwrap();
        let dup = db
            .create_cvm(new_cvm("same-name", a.id, &app_a.app_id), wide)
            .await
            .unwrap_err();
        assert!(
            matches!(&dup, DbError::NameTaken { name } if name == "same-name"),
            "{dup:?}"
        );
        assert!(dup.to_string().contains("`same-name`"), "{dup}");
        // Another user may use the name; a deleted CVM frees it.
        db.create_cvm(new_cvm("same-name", b.id, &app_b.app_id), wide)
            .await
            .unwrap();
        db.set_status(&first.id, CvmStatus::Deleted, None, None)
            .await
            .unwrap();
        db.create_cvm(new_cvm("same-name", a.id, &app_a.app_id), wide)
            .await
            .unwrap();

        // Per-user cap: a has 1 live CVM.
        let two = Limits {
            max_cvms_per_user: 2,
            max_boots_in_flight: 50,
        };
        db.create_cvm(new_cvm("second", a.id, &app_a.app_id), two)
            .await
            .unwrap();
        let capped = db
            .create_cvm(new_cvm("third", a.id, &app_a.app_id), two)
            .await
            .unwrap_err();
        assert!(
            matches!(capped, DbError::TooManyCvms { have: 2, max: 2 }),
            "{capped:?}"
        );
        let said = capped.to_string();
        assert!(said.contains("--max-cvms-per-user 2"), "{said}");
        assert!(said.contains("delete a CVM"), "{said}");
        // b is not affected by a's cap.
        db.create_cvm(new_cvm("b-second", b.id, &app_b.app_id), two)
            .await
            .unwrap();

        // Boots in flight: four CVMs are `provisioning` now.
        assert_eq!(db.boots_in_flight().await.unwrap(), 4);
        let four = Limits {
            max_cvms_per_user: 50,
            max_boots_in_flight: 4,
        };
        let busy = db
            .create_cvm(new_cvm("b-third", b.id, &app_b.app_id), four)
            .await
            .unwrap_err();
        assert!(
            matches!(busy, DbError::TooManyBoots { booting: 4, max: 4 }),
            "{busy:?}"
        );
        assert!(busy.to_string().contains("--max-boots 4"), "{busy}");
        for c in db.cvms_of(a.id).await.unwrap() {
            db.set_status(&c.id, CvmStatus::Running, None, None)
                .await
                .unwrap();
        }
        assert_eq!(db.boots_in_flight().await.unwrap(), 2);
        db.create_cvm(new_cvm("b-third", b.id, &app_b.app_id), four)
            .await
            .unwrap();
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_commits_of_one_name_make_one_cvm() {
        let path = temp_db_path();
        let db = Arc::new(Db::open(&path).unwrap());
        // The node's process has its own handle on the same file.
        let other = Arc::new(Db::open(&path).unwrap());
        let u = db.create_user("u", "k", false).await.unwrap();
        let app = db.upsert_app(&app_of(u.id, 'c')).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..16 {
            let handle = if i % 2 == 0 {
                db.clone()
            } else {
                other.clone()
            };
            let app_id = app.app_id.clone();
            tasks.push(tokio::spawn(async move {
                handle
                    .create_cvm(new_cvm("contested", u.id, &app_id), Limits::default())
                    .await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => assert!(matches!(e, DbError::NameTaken { .. }), "{e:?}"),
            }
        }
        assert_eq!(ok, 1);
        assert_eq!(db.cvms_of(u.id).await.unwrap().len(), 1);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outside_exclusive_lock_stalls_no_reader_and_bounds_writers() {
        let path = temp_db_path();
        let opts = DbOptions {
            request_patience: Duration::from_millis(500),
            status_patience: Duration::from_secs(5),
            readers: 4,
        };
        let db = Arc::new(Db::open_with(&path, opts).unwrap());
        let u = db.create_user("u", "k", false).await.unwrap();
        let app = db.upsert_app(&app_of(u.id, 'd')).await.unwrap();
        let cvm = db
            .create_cvm(new_cvm("locked-out", u.id, &app.app_id), Limits::default())
            .await
            .unwrap();
        // An operator's `sqlite3 berth.db` holding `BEGIN EXCLUSIVE`.
        let outside = Connection::open(&path).unwrap();
        outside.execute_batch("BEGIN EXCLUSIVE").unwrap();
        // Writers queue behind it (one in the pool, others waiting for it)...
        let writers: Vec<_> = (0..3)
            .map(|_| {
                let db = db.clone();
                let id = cvm.id.clone();
                tokio::spawn(async move {
                    let t = Instant::now();
                    (db.set_env(&id, b"x", &[]).await, t.elapsed())
                })
            })
            .collect();
        // ...while every read answers at once.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..20 {
            let t = Instant::now();
            assert_eq!(db.user_by_key("k").await.unwrap().unwrap().id, u.id);
            assert!(db.cvm(&cvm.id).await.unwrap().is_some());
            assert!(
                t.elapsed() < Duration::from_millis(200),
                "{:?}",
                t.elapsed()
            );
        }
        // Writers give up with a 503 that says why, within their patience.
        for w in writers {
            let (result, took) = w.await.unwrap();
            let e = result.unwrap_err();
            assert!(matches!(e, DbError::Busy { .. }), "{e:?}");
            assert!(e.to_string().contains("the database is busy"), "{e}");
            assert!(took < Duration::from_millis(1500), "{took:?}");
        }
        // A status write waits longer, and lands once the lock is released.
        let status = {
            let db = db.clone();
            let id = cvm.id.clone();
            tokio::spawn(async move {
                db.transition(
                    &id,
                    &[CvmStatus::Provisioning],
                    CvmStatus::Starting,
                    None,
                    None,
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(1200)).await;
        outside.execute_batch("COMMIT").unwrap();
        assert!(status.await.unwrap().unwrap(), "the status write was lost");
        assert_eq!(
            db.cvm(&cvm.id).await.unwrap().unwrap().status,
            CvmStatus::Starting
        );
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
