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

mod location;

mod locks;

mod migrations;

pub mod pages;

mod sql;

mod users;

pub use apps::{App, AppUpdate, AppVersion};

pub use cvms::{Cvm, NewCvm};

pub use error::DbError;

pub use limits::{Limits, UNCOMMITTED_APP_TTL};

pub use location::{DbLocation, DbUrl};

pub use locks::NODE_LEASE;

pub use sql::SqlError;

pub use users::{User, hash_api_key};

use sql::{Conn, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long calls wait for a busy or unreachable database before they give up.
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
/// module backs off and tries again, within the call's patience); on
/// PostgreSQL, the session's `lock_timeout` on the write lock.
const BUSY_TIMEOUT: Duration = Duration::from_millis(100);

/// The longest one PostgreSQL statement may run: no query of Berth's
/// takes near this, so one that does is stuck behind something else.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The database: a handle to a small pool of connections.
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    location: DbLocation,
    opts: DbOptions,
    read: Pool,
    write: Pool,
}

struct Pool {
    idle: Mutex<Vec<Conn>>,
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

/// Why one attempt of a call failed: the engine (maybe busy or
/// disconnected: retried), or a rule the write keeps (final).
enum Fail {
    Sql(SqlError),
    Rule(DbError),
    /// The connection broke after `COMMIT` was sent: the write may have
    /// landed, so it is not tried again.
    Uncertain(SqlError),
}

impl From<SqlError> for Fail {
    fn from(e: SqlError) -> Self {
        Fail::Sql(e)
    }
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e.into())
    }
}

impl From<DbError> for Fail {
    fn from(e: DbError) -> Self {
        Fail::Rule(e)
    }
}

fn busy_error(waited: Duration) -> DbError {
    DbError::Busy { waited }
}

fn db_err(e: impl Into<SqlError>) -> DbError {
    DbError::Sql(e.into())
}

/// Now, RFC 3339 UTC.
pub fn now() -> String {
    let now = std::time::SystemTime::now().max(std::time::UNIX_EPOCH);
    humantime::format_rfc3339_seconds(now).to_string()
}

/// Opens one connection to the database at `location`, with the session
/// settings every Berth connection has.
fn connect(location: &DbLocation) -> Result<Conn, SqlError> {
    match location {
        DbLocation::Sqlite(path) => Ok(Conn::Sqlite(sqlite_connect(path)?)),
        DbLocation::Postgres(url) => {
            let mut client = url.config().connect(postgres::NoTls)?;
            client.batch_execute(&format!(
                "SET lock_timeout = {}; SET statement_timeout = {}; SET idle_in_transaction_session_timeout = {}",
                BUSY_TIMEOUT.as_millis(),
                STATEMENT_TIMEOUT.as_millis(),
                STATEMENT_TIMEOUT.as_millis(),
            ))?;
            Ok(Conn::postgres(client))
        }
    }
}

fn sqlite_connect(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

fn count(conn: &mut Conn, sql: &str, args: &[Value]) -> Result<usize, SqlError> {
    conn.query_value::<i64>(sql, args)
        .map(|n| n.max(0) as usize)
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// `?2, ?3, …` for `n` values starting at `?first`.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Db {
    /// Opens (creating and migrating) the SQLite database at `path`.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        Self::open_with(path, DbOptions::default())
    }

    /// [`Db::open`] with explicit patience and pool size.
    pub fn open_with(path: &Path, opts: DbOptions) -> Result<Self, DbError> {
        Self::open_location(&DbLocation::Sqlite(path.to_owned()), opts)
    }

    /// Opens the database at `location` (SQLite or PostgreSQL), applying
    /// the migrations it has not seen. PostgreSQL's first connection is
    /// made on a thread of its own (its client blocks, and this may be
    /// called from async code); an unreachable server is
    /// [`DbError::Unavailable`].
    pub fn open_location(location: &DbLocation, opts: DbOptions) -> Result<Self, DbError> {
        let first = match location {
            DbLocation::Sqlite(path) => {
                let conn = sqlite_connect(path).map_err(db_err)?;
                // At start-up the other process may be migrating or
                // writing: wait longer than a request would.
                conn.busy_timeout(Duration::from_secs(10)).map_err(db_err)?;
                conn.pragma_update(None, "journal_mode", "WAL")
                    .map_err(db_err)?;
                let mut conn = Conn::Sqlite(conn);
                migrations::migrate(&mut conn)?;
                if let Conn::Sqlite(c) = &conn {
                    c.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
                }
                conn
            }
            DbLocation::Postgres(url) => {
                let location = location.clone();
                let server = url.server();
                std::thread::scope(|s| {
                    s.spawn(move || -> Result<Conn, DbError> {
                        let mut conn =
                            connect(&location).map_err(|e| unavailable(&location, &e))?;
                        // Migrations may wait for another process's.
                        conn.batch("SET lock_timeout = 0").map_err(db_err)?;
                        migrations::migrate(&mut conn)?;
                        conn.batch(&format!("SET lock_timeout = {}", BUSY_TIMEOUT.as_millis()))
                            .map_err(db_err)?;
                        Ok(conn)
                    })
                    .join()
                    .map_err(|_| DbError::Internal("opening the database panicked"))?
                })
                .map_err(|e| match e {
                    DbError::Unavailable { .. } => e,
                    e => DbError::Unavailable {
                        server,
                        why: e.to_string(),
                    },
                })?
            }
        };
        let inner = Inner {
            location: location.clone(),
            read: Pool::new(opts.readers),
            write: Pool::new(1),
            opts,
        };
        inner.write.idle.lock().unwrap().push(first);
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The options this database was opened with.
    pub fn options(&self) -> DbOptions {
        self.inner.opts
    }

    /// Where this database is.
    pub fn location(&self) -> &DbLocation {
        &self.inner.location
    }

    /// Runs `op` on a pooled connection on the blocking pool, retrying a
    /// busy database, and reconnecting to one that went away, until
    /// `patience` has passed. A write whose `COMMIT` was sent when the
    /// connection broke is not tried again (it may have landed): it fails
    /// as unavailable, and the caller's client sees an error.
    async fn call<T, F>(&self, access: Access, patience: Duration, mut op: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnMut(&mut Conn) -> Result<T, Fail> + Send + 'static,
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
            let mut conn = pool.idle.lock().unwrap().pop();
            let mut pause = Duration::from_millis(10);
            loop {
                let c = match conn.take() {
                    Some(c) if !c.is_closed() => c,
                    _ => match connect(&inner.location) {
                        Ok(c) => c,
                        Err(_) if Instant::now() + pause < deadline => {
                            std::thread::sleep(pause);
                            pause = (pause * 2).min(Duration::from_millis(250));
                            continue;
                        }
                        Err(e) => return Err(Fail::Rule(unavailable(&inner.location, &e))),
                    },
                };
                let mut c = c;
                let out = op(&mut c);
                match out {
                    Err(Fail::Sql(e)) if e.is_connection() => {
                        // The connection is dropped; a new one is tried.
                        if Instant::now() + pause >= deadline {
                            return Err(Fail::Rule(unavailable(&inner.location, &e)));
                        }
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(250));
                    }
                    Err(Fail::Uncertain(e)) => {
                        return Err(Fail::Rule(unavailable(&inner.location, &e)));
                    }
                    Err(Fail::Sql(e)) if e.is_busy() && Instant::now() + pause < deadline => {
                        conn = Some(c);
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(200));
                    }
                    other => {
                        pool.idle.lock().unwrap().push(c);
                        return other;
                    }
                }
            }
        })
        .await
        .map_err(|_| DbError::Internal("a database call panicked"))?;
        joined.map_err(|f| match f {
            Fail::Sql(e) if e.is_busy() => busy_error(started.elapsed()),
            Fail::Sql(e) | Fail::Uncertain(e) => db_err(e),
            Fail::Rule(e) => e,
        })
    }

    async fn read<T, F>(&self, op: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnMut(&mut Conn) -> Result<T, Fail> + Send + 'static,
    {
        self.call(Access::Read, self.inner.opts.request_patience, op)
            .await
    }

    /// A write in one transaction holding the write lock
    /// ([`Conn::begin_write`]).
    async fn write<T, F>(&self, patience: Duration, mut op: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnMut(&mut Conn) -> Result<T, Fail> + Send + 'static,
    {
        self.call(Access::Write, patience, move |conn| {
            if let Err(e) = conn.begin_write() {
                conn.rollback();
                return Err(Fail::Sql(e));
            }
            match op(conn) {
                Ok(out) => match conn.commit() {
                    Ok(()) => Ok(out),
                    Err(e) if e.is_connection() => Err(Fail::Uncertain(e)),
                    Err(e) => {
                        conn.rollback();
                        Err(Fail::Sql(e))
                    }
                },
                Err(e) => {
                    conn.rollback();
                    Err(e)
                }
            }
        })
        .await
    }
}

/// The error of a database that cannot be reached, naming the server and
/// the engine's reason (never the URL: it may hold a password).
fn unavailable(location: &DbLocation, e: &SqlError) -> DbError {
    let server = match location {
        DbLocation::Sqlite(p) => p.display().to_string(),
        DbLocation::Postgres(u) => u.server(),
    };
    DbError::Unavailable {
        server,
        why: first_line(&e.to_string()),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use contract::CvmStatus;

    #[tokio::test]
    async fn migrate_users_apps_cvms() {
        for t in engines() {
            let db = t.open();
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
            let db = t.open();
            let again = db.cvm(&cvm.id).await.unwrap().unwrap();
            assert_eq!(again.status, CvmStatus::BootFailed);
            assert_eq!(again.boot_category.as_deref(), Some("credentials_rejected"));
            assert_eq!(db.cvms_of(alice.id).await.unwrap().len(), 1);
            assert_eq!(db.user_by_name("alice").await.unwrap().unwrap(), alice);
            // The API key is not in the database.
            match &t {
                TestDb::Sqlite(path) => {
                    let bytes = std::fs::read(path).unwrap();
                    assert!(!String::from_utf8_lossy(&bytes).contains("key-a"));
                }
                TestDb::Postgres(_) => {
                    let hashes = db
                        .read(|c| {
                            Ok(c.query_value::<String>(
                                "SELECT string_agg(api_key_hash || username, ',') FROM users",
                                &[],
                            )?)
                        })
                        .await
                        .unwrap();
                    assert!(!hashes.contains("key-a"), "{hashes}");
                }
            }
        }
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
        let outside = rusqlite::Connection::open(&path).unwrap();
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

    /// PostgreSQL's equivalent of an operator's exclusive lock: a session
    /// (another Berth process stuck mid-write, or an operator's `psql`)
    /// holding the write lock. Reads answer at once; writes give up within
    /// their patience as busy (503); a status write waits longer and lands.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_write_lock_on_postgres_stalls_no_reader_and_bounds_writers() {
        let url = fresh_pg();
        let opts = DbOptions {
            request_patience: Duration::from_millis(500),
            status_patience: Duration::from_secs(5),
            readers: 4,
        };
        let db = Arc::new(Db::open_location(&DbLocation::Postgres(url.clone()), opts).unwrap());
        let u = db.create_user("u", "k", false).await.unwrap();
        let app = db.upsert_app(&app_of(u.id, 'd')).await.unwrap();
        let cvm = db
            .create_cvm(new_cvm("locked-out", u.id, &app.app_id), Limits::default())
            .await
            .unwrap();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (held, is_held) = std::sync::mpsc::channel::<()>();
        let config = url.config().clone();
        let holder = std::thread::spawn(move || {
            let mut c = config.connect(postgres::NoTls).unwrap();
            c.batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({})",
                sql::WRITE_LOCK_KEY
            ))
            .unwrap();
            held.send(()).unwrap();
            released.recv().unwrap();
            c.batch_execute("COMMIT").unwrap();
        });
        is_held.recv().unwrap();
        let t = Instant::now();
        let e = db.set_env(&cvm.id, b"x", &[]).await.unwrap_err();
        assert!(matches!(e, DbError::Busy { .. }), "{e:?}");
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        for _ in 0..20 {
            let t = Instant::now();
            assert_eq!(db.user_by_key("k").await.unwrap().unwrap().id, u.id);
            assert!(
                t.elapsed() < Duration::from_millis(200),
                "{:?}",
                t.elapsed()
            );
        }
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
        release.send(()).unwrap();
        holder.join().unwrap();
        assert!(status.await.unwrap().unwrap(), "the status write was lost");
        assert_eq!(
            db.cvm(&cvm.id).await.unwrap().unwrap().status,
            CvmStatus::Starting
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_sentence_naming_it_without_the_password() {
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = DbUrl::parse(&format!(
            "postgres://berth:canary-pw-4411@127.0.0.1:{port}/berth"
        ))
        .unwrap();
        let e = Db::open_location(&DbLocation::Postgres(url), DbOptions::default())
            .err()
            .expect("nothing listens there");
        let said = e.to_string();
        assert!(matches!(e, DbError::Unavailable { .. }), "{e:?}");
        assert!(said.contains(&format!("127.0.0.1:{port}")), "{said}");
        assert!(said.contains("cannot be reached"), "{said}");
        assert!(!said.contains("canary-pw-4411"), "{said}");
        assert!(!format!("{e:?}").contains("canary-pw-4411"));
    }
}
