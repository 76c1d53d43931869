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
//! **Status.** A CVM's status is a [`CvmStatus`](contract::CvmStatus) and changes only through
//! [`Db::transition`] (`UPDATE … WHERE id = ? AND status IN (expected…)`),
//! which says whether it applied: a stop that lands while a boot ends
//! cannot be overwritten by the boot's result, and nothing leaves `deleted`.
//!
//! **Layout.** This file: [`Db`] itself (opening, the connection pool, the
//! retries of a busy database); `migrations`: the schema; `users`, `apps`
//! and `cvms`: each table's rows and queries; `limits`: the operator's caps
//! both `apps` and `cvms` keep.

mod apps;

mod cvms;

mod error;

#[cfg(test)]
mod fixtures;

mod limits;

mod migrations;

mod users;

pub use apps::{App, AppUpdate, AppVersion};

pub use cvms::{Cvm, NewCvm};

pub use error::DbError;

pub use limits::{Limits, UNCOMMITTED_APP_TTL};

pub use users::{User, hash_api_key};

use rusqlite::{Connection, TransactionBehavior, params_from_iter};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
        migrations::migrate(&mut conn)?;
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
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use contract::CvmStatus;

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
    }
}
