//! [`Conn`]: one connection to SQLite or PostgreSQL, with the few calls the
//! tables' modules need (`query`, `query_opt`, `execute`, `batch`), values
//! as [`Value`]s and rows as [`Row`]s.
//!
//! Written by hand rather than with `sqlx`'s `Any` driver: the control
//! plane's queries are few and already portable, the calls run on tokio's
//! blocking pool (so a blocking client per engine fits, with no second
//! async runtime to thread through), and the one thing the modules need
//! from an abstraction — the same SQL text on both engines — is a rewrite
//! of `?N` parameters to PostgreSQL's `$N` and of three column types in
//! the migrations ([`pg_ddl`]). What differs between the engines stays in
//! this file: how errors are classified ([`SqlError::is_busy`],
//! [`SqlError::is_unique_violation`], [`SqlError::is_connection`]), how a
//! write transaction takes the one write lock, and value conversion.

use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use std::collections::HashMap;

/// Which engine a connection talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Engine {
    Sqlite,
    Postgres,
}

/// A value passed to or read from a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(v as i64)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Blob(v.to_vec())
    }
}

impl From<&Vec<u8>> for Value {
    fn from(v: &Vec<u8>) -> Self {
        Value::Blob(v.clone())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map(Into::into).unwrap_or(Value::Null)
    }
}

impl<T: Clone + Into<Value>> From<&Option<T>> for Value {
    fn from(v: &Option<T>) -> Self {
        v.clone().map(Into::into).unwrap_or(Value::Null)
    }
}

/// `vals![a, b, …]`: an array of the arguments as [`Value`]s.
macro_rules! vals {
    ($($v:expr),* $(,)?) => {
        [$($crate::db::sql::Value::from($v)),*]
    };
}
pub(super) use vals;

/// A row: its values in column order.
pub(super) struct Row(Vec<Value>);

impl Row {
    /// Column `i` as a `T`; an error names the column and what it held.
    pub(super) fn get<T: FromValue>(&self, i: usize) -> Result<T, SqlError> {
        let v = self.0.get(i).ok_or(SqlError::Decode {
            column: i,
            want: "a column",
        })?;
        T::from_value(v).ok_or(SqlError::Decode {
            column: i,
            want: T::WANT,
        })
    }
}

/// A Rust type a column converts to.
pub(super) trait FromValue: Sized {
    const WANT: &'static str;
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    const WANT: &'static str = "an integer";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl FromValue for bool {
    const WANT: &'static str = "an integer";
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).map(|i| i != 0)
    }
}

impl FromValue for String {
    const WANT: &'static str = "text";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    const WANT: &'static str = "bytes";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            // SQLite may hand back text written into a BLOB column.
            Value::Text(s) => Some(s.as_bytes().to_vec()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    const WANT: &'static str = T::WANT;
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// Why a statement failed, by engine. `Display` is the engine's own
/// message (table and constraint names, never a bound value: the modules
/// bind every value as a parameter).
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// SQLite's error.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL's error (or the connection's).
    #[error("{0}")]
    Postgres(#[from] postgres::Error),
    /// A column held another type than the code reads.
    #[error("column {column} does not hold {want}")]
    Decode {
        /// The column's index.
        column: usize,
        /// What the code expected.
        want: &'static str,
    },
}

impl SqlError {
    /// Another writer holds the lock (or PostgreSQL aborted a transaction
    /// that lost a race): worth trying again shortly.
    pub(super) fn is_busy(&self) -> bool {
        match self {
            SqlError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            SqlError::Postgres(e) => {
                use postgres::error::SqlState;
                e.code().is_some_and(|c| {
                    [
                        SqlState::T_R_SERIALIZATION_FAILURE,
                        SqlState::T_R_DEADLOCK_DETECTED,
                        SqlState::LOCK_NOT_AVAILABLE,
                    ]
                    .contains(c)
                })
            }
            _ => false,
        }
    }

    /// A unique constraint refused the row.
    pub(super) fn is_unique_violation(&self) -> bool {
        match self {
            SqlError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
                f.code == rusqlite::ErrorCode::ConstraintViolation
            }
            SqlError::Postgres(e) => e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
            _ => false,
        }
    }

    /// The connection is gone or the server cannot serve (it is down,
    /// restarting, or shutting down): the connection is dropped and a new
    /// one tried.
    pub(super) fn is_connection(&self) -> bool {
        match self {
            SqlError::Postgres(e) => {
                if e.is_closed() {
                    return true;
                }
                match e.code() {
                    Some(c) => {
                        let c = c.code();
                        // 08: connection exception; 57P01–57P03: admin
                        // shutdown, crash shutdown, cannot connect now.
                        c.starts_with("08") || c.starts_with("57P")
                    }
                    // No SQLSTATE: an I/O or protocol failure, not an
                    // answer of the server.
                    None => e.as_db_error().is_none(),
                }
            }
            _ => false,
        }
    }
}

/// A PostgreSQL client with its prepared statements.
pub(super) struct PgConn {
    /// Always `Some` but while being dropped.
    client: Option<postgres::Client>,
    statements: HashMap<String, postgres::Statement>,
}

impl Drop for PgConn {
    /// The blocking client closes its connection by blocking on its own
    /// runtime, which panics on an async worker (a `Db` dropped in async
    /// code): there, it is closed on a thread of its own.
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            std::thread::spawn(move || drop(client));
        }
    }
}

/// One connection to either engine.
pub(super) enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<PgConn>),
}

impl Conn {
    pub(super) fn postgres(client: postgres::Client) -> Self {
        Conn::Postgres(Box::new(PgConn {
            client: Some(client),
            statements: HashMap::new(),
        }))
    }

    pub(super) fn engine(&self) -> Engine {
        match self {
            Conn::Sqlite(_) => Engine::Sqlite,
            Conn::Postgres(_) => Engine::Postgres,
        }
    }

    /// Every row `sql` returns.
    pub(super) fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, SqlError> {
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let n = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let mut values = Vec::with_capacity(n);
                    for i in 0..n {
                        values.push(sqlite_value(r.get_ref(i)?));
                    }
                    out.push(Row(values));
                }
                Ok(out)
            }
            Conn::Postgres(pg) => {
                let stmt = pg.statement(sql)?;
                let params: Vec<&(dyn ToSql + Sync)> =
                    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
                let rows = pg.client().query(&stmt, &params)?;
                rows.iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| pg_value(r, i))
                            .collect::<Result<_, _>>()
                            .map(Row)
                    })
                    .collect()
            }
        }
    }

    /// The first row `sql` returns, if any.
    pub(super) fn query_opt(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>, SqlError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// Column 0 of the first row, which a query like `SELECT COUNT(*)` always has.
    pub(super) fn query_value<T: FromValue>(
        &mut self,
        sql: &str,
        args: &[Value],
    ) -> Result<T, SqlError> {
        let row = self.query_opt(sql, args)?;
        match row {
            Some(r) => r.get(0),
            None => Err(SqlError::Decode {
                column: 0,
                want: "a row",
            }),
        }
    }

    /// Runs `sql`; the number of rows it changed.
    pub(super) fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, SqlError> {
        match self {
            Conn::Sqlite(c) => {
                Ok(c.prepare_cached(sql)?
                    .execute(rusqlite::params_from_iter(args.iter()))? as u64)
            }
            Conn::Postgres(pg) => {
                let stmt = pg.statement(sql)?;
                let params: Vec<&(dyn ToSql + Sync)> =
                    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
                Ok(pg.client().execute(&stmt, &params)?)
            }
        }
    }

    /// Runs statements without parameters (`;`-separated).
    pub(super) fn batch(&mut self, sql: &str) -> Result<(), SqlError> {
        match self {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Postgres(pg) => Ok(pg.client().batch_execute(sql)?),
        }
    }

    /// Starts the write transaction, holding the database's one write lock
    /// until it ends: SQLite's `BEGIN IMMEDIATE`; on PostgreSQL, an
    /// advisory lock every Berth process takes, so that the rules a write
    /// checks (unique names, caps) hold across API replicas and nodes as
    /// they do on SQLite. A holder slower than `lock_timeout` makes this
    /// fail as busy, and the caller backs off and tries again.
    pub(super) fn begin_write(&mut self) -> Result<(), SqlError> {
        match self {
            Conn::Sqlite(c) => Ok(c.execute_batch("BEGIN IMMEDIATE")?),
            Conn::Postgres(pg) => {
                pg.client().batch_execute(&format!(
                    "BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})"
                ))?;
                Ok(())
            }
        }
    }

    /// Commits the transaction [`Conn::begin_write`] started.
    pub(super) fn commit(&mut self) -> Result<(), SqlError> {
        self.batch("COMMIT")
    }

    /// Ends a failed transaction; a failure to roll back leaves the
    /// connection unusable, which the caller finds out on its next use.
    pub(super) fn rollback(&mut self) {
        let _ = self.batch("ROLLBACK");
    }

    /// Whether the connection is known to be dead.
    pub(super) fn is_closed(&self) -> bool {
        match self {
            Conn::Sqlite(_) => false,
            Conn::Postgres(pg) => pg.client.as_ref().is_none_or(|c| c.is_closed()),
        }
    }
}

/// The advisory lock key of Berth's write transactions (`berth` in ASCII).
pub(super) const WRITE_LOCK_KEY: i64 = 0x0062_6572_7468;

impl PgConn {
    fn client(&mut self) -> &mut postgres::Client {
        self.client
            .as_mut()
            .expect("a PostgreSQL connection in use is not being dropped")
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, SqlError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let stmt = self.client().prepare(&pg_params(sql))?;
        self.statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        // No column of Berth's is REAL; keep the value rather than fail.
        ValueRef::Real(f) => Value::Int(f as i64),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

fn pg_value(r: &postgres::Row, i: usize) -> Result<Value, SqlError> {
    let ty = r.columns()[i].type_().clone();
    let v = match ty {
        Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(Value::Int),
        Type::INT4 => r
            .try_get::<_, Option<i32>>(i)?
            .map(|v| Value::Int(v.into())),
        Type::INT2 => r
            .try_get::<_, Option<i16>>(i)?
            .map(|v| Value::Int(v.into())),
        Type::BOOL => r
            .try_get::<_, Option<bool>>(i)?
            .map(|v| Value::Int(v as i64)),
        Type::BYTEA => r.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob),
        _ => r.try_get::<_, Option<String>>(i)?.map(Value::Text),
    };
    Ok(v.unwrap_or(Value::Null))
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => i.to_string().to_sql(ty, out),
                _ => i.to_sql(ty, out),
            },
            Value::Text(s) => s.as_str().to_sql(ty, out),
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// `?N` parameters rewritten as PostgreSQL's `$N` (outside quoted text).
pub(super) fn pg_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut quoted = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => out.push('$'),
            c => out.push(c),
        }
    }
    out
}

/// A migration written for SQLite, in PostgreSQL's terms: 64-bit integers,
/// identity keys, `BYTEA` for blobs. The migrations use no other
/// engine-specific type, so one list serves both.
pub(super) fn pg_ddl(sql: &str) -> String {
    sql.replace(
        "INTEGER PRIMARY KEY",
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    )
    .replace("INTEGER", "BIGINT")
    .replace("BLOB", "BYTEA")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_and_types_are_rewritten_for_postgres() {
        assert_eq!(
            pg_params("SELECT a FROM t WHERE b = ?1 AND c IN (?2, ?3) AND d = '?x'"),
            "SELECT a FROM t WHERE b = $1 AND c IN ($2, $3) AND d = '?x'"
        );
        assert_eq!(
            pg_ddl("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, b BLOB)"),
            "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT NOT NULL, b BYTEA)"
        );
    }
}
