//! PostgreSQL for tests: a fresh database per test on the server that
//! `scripts/with-pg.sh` started ([`fresh_database`]), and a private server
//! that a test owns and may stop and start again ([`PgServer`]).
//!
//! Both come from one implementation: `scripts/with-pg.sh` (its `start`,
//! `stop` and `remove` subcommands) makes, starts and stops a cluster of
//! Debian's PostgreSQL as the unprivileged user `berth-pg`, on 127.0.0.1,
//! with one superuser `berth_test` whose random password is only ever in a
//! file of mode 0600 and in URLs. Clients run `psql` with the password in
//! `PGPASSWORD`, never on a command line (`ps` shows those).
//!
//! Which database the end-to-end tests run on is [`TestDatabase::from_env`]
//! (`BERTH_TEST_DATABASE=postgres` or `sqlite`, the default).

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The environment variable that holds the test server's superuser URL
/// (`postgres://berth_test:PASSWORD@127.0.0.1:PORT/postgres`).
pub const PG_URL_VAR: &str = "BERTH_TEST_PG_URL";

/// The environment variable that picks the database of the end-to-end
/// tests: `postgres`, or `sqlite` (also when unset).
pub const DATABASE_VAR: &str = "BERTH_TEST_DATABASE";

/// The engine the end-to-end tests run the control plane on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestDatabase {
    /// SQLite in the state folder (`berth up`'s default).
    Sqlite,
    /// A fresh PostgreSQL database per test, on [`PG_URL_VAR`]'s server.
    Postgres,
}

impl TestDatabase {
    /// What `BERTH_TEST_DATABASE` asks for; any other value than `sqlite`
    /// or `postgres` fails the test (a typo must not quietly test SQLite).
    pub fn from_env() -> TestDatabase {
        match std::env::var(DATABASE_VAR).as_deref() {
            Err(_) | Ok("") | Ok("sqlite") => TestDatabase::Sqlite,
            Ok("postgres") | Ok("postgresql") => TestDatabase::Postgres,
            Ok(other) => {
                panic!("{DATABASE_VAR}={other:?} is not a database: use sqlite or postgres")
            }
        }
    }
}

/// A new, empty database on the test server ([`PG_URL_VAR`]); its URL,
/// password included (hand it to a child in its environment, never in its
/// arguments). Each call makes another one (`t_<random>`), so tests that
/// run at the same time share nothing. Fails the test when no server is
/// given: run the tests under `scripts/with-pg.sh` (as `make test` does).
///
/// The databases are left on the server: with-pg.sh's cluster is removed
/// when its run ends.
pub fn fresh_database() -> String {
    let admin = std::env::var(PG_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{PG_URL_VAR} is not set: run the tests under scripts/with-pg.sh \
             (e.g. `scripts/with-pg.sh cargo nextest run …`), which starts a private PostgreSQL"
        )
    });
    create_database_on(&admin)
}

/// Creates a uniquely named database on the server of the superuser URL
/// `admin`; the new database's URL.
fn create_database_on(admin: &str) -> String {
    let name = format!("t_{}", crate::util::random_hex16());
    query(admin, &format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("could not create a test database: {e}"));
    with_database(admin, &name)
}

/// Runs `sql` with `psql` on the database of `url` (password through the
/// environment); its output, one row a line, columns separated by `|`.
/// `Err` holds psql's message (never the password).
pub fn query(url: &str, sql: &str) -> Result<String, String> {
    let parts = UrlParts::parse(url)?;
    let out = parts
        .command("psql")
        .args(["--no-psqlrc", "--quiet", "--tuples-only", "--no-align"])
        .args(["--set", "ON_ERROR_STOP=1", "--command", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run psql ({e}): run scripts/deps.sh"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    } else {
        Err(format!(
            "psql on {}:{}: {}",
            parts.host,
            parts.port,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Everything the database of `url` holds, as `pg_dump` writes it (schema
/// and rows as SQL text): for tests that check what was stored, e.g. that
/// no secret was.
pub fn dump(url: &str) -> String {
    let parts = UrlParts::parse(url).unwrap_or_else(|e| panic!("{e}"));
    let out = parts
        .command("pg_dump")
        .args(["--no-owner", "--no-privileges"])
        .stdin(Stdio::null())
        .output()
        .expect("run pg_dump (scripts/deps.sh installs it)");
    assert!(
        out.status.success(),
        "pg_dump on {}:{}: {}",
        parts.host,
        parts.port,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let authority_end = rest
        .rfind('@')
        .map(|at| at + rest[at..].find(['/', '?']).unwrap_or(rest.len() - at))
        .unwrap_or_else(|| rest.find(['/', '?']).unwrap_or(rest.len()));
    let (authority, tail) = rest.split_at(authority_end);
    let query = tail.find('?').map(|q| &tail[q..]).unwrap_or("");
    format!("{scheme}://{authority}/{db}{query}")
}

/// What `psql` needs from a URL, decoded.
struct UrlParts {
    user: String,
    password: Option<String>,
    host: String,
    port: String,
    dbname: String,
}

impl UrlParts {
    /// `postgres://USER[:PASSWORD]@HOST[:PORT][/DB][?…]`; the error never
    /// holds the URL (it may hold a password).
    fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or("the PostgreSQL URL does not start with postgres://")?;
        let (userinfo, rest) = rest
            .rsplit_once('@')
            .ok_or("the PostgreSQL URL names no user (postgres://USER:PASSWORD@HOST:PORT/DB)")?;
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(percent_decode(p))),
            None => (userinfo, None),
        };
        let rest = rest.split('?').next().unwrap_or("");
        let (hostport, db) = rest.split_once('/').unwrap_or((rest, ""));
        // `[::1]:5432` or `host:5432`; no port: PostgreSQL's own.
        let (host, port) = match hostport.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((h, p)) => (h, p.strip_prefix(':').unwrap_or("5432")),
                None => (v6, "5432"),
            },
            None => hostport.rsplit_once(':').unwrap_or((hostport, "5432")),
        };
        Ok(Self {
            user: percent_decode(user),
            password,
            host: host.to_owned(),
            port: port.to_owned(),
            dbname: if db.is_empty() {
                "postgres".to_owned()
            } else {
                percent_decode(db)
            },
        })
    }

    /// `program` with the connection in its environment only.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("PGHOST", &self.host)
            .env("PGPORT", &self.port)
            .env("PGUSER", &self.user)
            .env("PGDATABASE", &self.dbname)
            .env("PGCONNECT_TIMEOUT", "5")
            .env_remove("PGSERVICE")
            .env_remove("PGPASSFILE");
        match &self.password {
            Some(p) => cmd.env("PGPASSWORD", p),
            None => cmd.env_remove("PGPASSWORD"),
        };
        cmd
    }
}

/// `%XX` escapes of a URL part decoded (a password may hold `@ : /`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A private PostgreSQL server owned by one test (for the faults of the
/// database itself: stopped, started again). It runs until [`stop`], or
/// until dropped, which stops it and removes its folder (kept with
/// `BERTH_TESTKIT_KEEP=1`).
///
/// [`stop`]: PgServer::stop
#[derive(Debug)]
pub struct PgServer {
    dir: PathBuf,
    admin: String,
    port: u16,
}

impl PgServer {
    /// A new cluster (initdb), started on a free port of 127.0.0.1; fails
    /// the test when it cannot start (what PostgreSQL said is shown).
    pub fn start() -> PgServer {
        let out = run_script(&["start"]);
        let dir = PathBuf::from(out.lines().last().unwrap_or_default().trim());
        let mut server = PgServer {
            dir,
            admin: String::new(),
            port: 0,
        };
        server.read_address();
        server
    }

    /// Stops the server (fast shutdown: open connections are cut; later
    /// ones are refused). Its data stays.
    pub fn stop(&mut self) {
        run_script(&["stop", &self.dir.to_string_lossy()]);
    }

    /// Starts the stopped server again on its port, with its data; returns
    /// once it accepts connections.
    pub fn start_again(&mut self) {
        run_script(&["start", &self.dir.to_string_lossy()]);
        let port = self.port;
        self.read_address();
        assert_eq!(
            self.port, port,
            "PostgreSQL came back on another port: its own was taken meanwhile"
        );
    }

    /// The URL of database `db` as the superuser (password included).
    pub fn url(&self, db: &str) -> String {
        with_database(&self.admin, db)
    }

    /// A new, empty database (`t_<random>`); its URL.
    pub fn create_database(&self) -> String {
        create_database_on(&self.admin)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's own log (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    fn read_address(&mut self) {
        let read = |f: &str| {
            std::fs::read_to_string(self.dir.join(f))
                .unwrap_or_else(|e| panic!("{}/{f}: {e}", self.dir.display()))
                .trim()
                .to_owned()
        };
        self.admin = read("url");
        self.port = read("port").parse().expect("with-pg.sh wrote a port");
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let keep = std::env::var_os("BERTH_TESTKIT_KEEP").is_some_and(|v| v == "1");
        let what = if keep { "stop" } else { "remove" };
        if keep {
            eprintln!("testkit: keeping {}", self.dir.display());
        }
        let _ = Command::new(script())
            .args([what, &self.dir.to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
    }
}

fn script() -> PathBuf {
    crate::repo_root().join("scripts/with-pg.sh")
}

/// `scripts/with-pg.sh ARGS`; its stdout; fails the test with its stderr.
fn run_script(args: &[&str]) -> String {
    let out = Command::new(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run scripts/with-pg.sh: {e}"));
    assert!(
        out.status.success(),
        "scripts/with-pg.sh {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_gets_another_database_and_keeps_its_options() {
        let url = "postgres://u:p%40ss@127.0.0.1:5433/postgres?sslmode=disable";
        assert_eq!(
            with_database(url, "t_1"),
            "postgres://u:p%40ss@127.0.0.1:5433/t_1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "t_1"), "postgres://u@h/t_1");
        let parts = UrlParts::parse(url).unwrap();
        assert_eq!(parts.password.as_deref(), Some("p@ss"));
        assert_eq!(
            (parts.host.as_str(), parts.port.as_str()),
            ("127.0.0.1", "5433")
        );
        assert_eq!(parts.dbname, "postgres");
    }
}
