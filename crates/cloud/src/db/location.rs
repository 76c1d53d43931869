//! Where the database is: [`DbLocation`], an SQLite file (the embedded
//! default of one machine) or a PostgreSQL server given by a [`DbUrl`].
//!
//! A URL may hold a password, so [`DbUrl`] never shows it: its `Debug` and
//! `Display` print `***` in its place, its text is zeroized when dropped,
//! and an error about it names the host and port, never the URL.

use super::DbError;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;
use zeroize::Zeroizing;

/// Where the control plane's state lives.
#[derive(Clone, Debug)]
pub enum DbLocation {
    /// An SQLite database file (WAL mode; every process on one machine).
    Sqlite(PathBuf),
    /// A PostgreSQL database (any number of API replicas and nodes).
    Postgres(DbUrl),
}

/// A PostgreSQL connection URL (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`),
/// checked when parsed. Shown with its password replaced by `***`.
#[derive(Clone)]
pub struct DbUrl {
    inner: std::sync::Arc<UrlInner>,
}

struct UrlInner {
    text: Zeroizing<String>,
    config: postgres::Config,
}

/// How long opening a connection may take before the server counts as
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl DbUrl {
    /// Parses and checks a PostgreSQL URL. The error names what is wrong,
    /// never the URL's text (it may hold a password).
    pub fn parse(text: &str) -> Result<Self, DbError> {
        let text = text.trim();
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err(DbError::BadUrl {
                why: "it does not start with postgres:// (the form is postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)",
            });
        }
        let mut config = postgres::Config::from_str(text).map_err(|_| DbError::BadUrl {
            why: "it is not a valid PostgreSQL URL (the form is postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE; a password with @ : / must be percent-encoded)",
        })?;
        if config.get_hosts().is_empty() {
            return Err(DbError::BadUrl {
                why: "it names no host (the form is postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)",
            });
        }
        if config.get_user().is_none() {
            return Err(DbError::BadUrl {
                why: "it names no user (the form is postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)",
            });
        }
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .application_name("berth");
        Ok(Self {
            inner: std::sync::Arc::new(UrlInner {
                text: Zeroizing::new(text.to_owned()),
                config,
            }),
        })
    }

    /// Whether the URL carries a password (which must then not be given on
    /// a command line, where `ps` shows it).
    pub fn has_password(&self) -> bool {
        self.inner.config.get_password().is_some()
    }

    /// The URL's full text, password included: for handing it to a child
    /// process's environment, never for showing.
    pub fn expose(&self) -> &str {
        &self.inner.text
    }

    /// `HOST:PORT`, for errors.
    pub fn server(&self) -> String {
        let host = match self.inner.config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "?".into(),
        };
        let port = self
            .inner
            .config
            .get_ports()
            .first()
            .copied()
            .unwrap_or(5432);
        format!("{host}:{port}")
    }

    pub(super) fn config(&self) -> &postgres::Config {
        &self.inner.config
    }
}

impl std::fmt::Display for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = self.inner.config.get_user().unwrap_or("");
        let db = self.inner.config.get_dbname().unwrap_or("");
        let pass = if self.has_password() { ":***" } else { "" };
        write!(f, "postgres://{user}{pass}@{}/{db}", self.server())
    }
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DbUrl({self})")
    }
}

impl std::fmt::Display for DbLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbLocation::Sqlite(p) => write!(f, "SQLite at {}", p.display()),
            DbLocation::Postgres(u) => write!(f, "PostgreSQL at {u}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_never_shows_its_password() {
        let u = DbUrl::parse("postgres://berth:canary-pw-7781@127.0.0.1:5433/berth").unwrap();
        assert!(u.has_password());
        for shown in [
            u.to_string(),
            format!("{u:?}"),
            format!("{:?}", DbLocation::Postgres(u.clone())),
        ] {
            assert!(!shown.contains("canary-pw-7781"), "{shown}");
            assert!(shown.contains("127.0.0.1:5433"), "{shown}");
        }
        assert_eq!(u.to_string(), "postgres://berth:***@127.0.0.1:5433/berth");
        let plain = DbUrl::parse("postgresql://berth@db.internal/berth").unwrap();
        assert!(!plain.has_password());
        assert_eq!(plain.server(), "db.internal:5432");
    }

    #[test]
    fn a_bad_url_says_what_is_wrong_without_echoing_it() {
        for bad in [
            "mysql://u:canary-pw@h/db",
            "postgres://u:canary-pw@h:notaport/db",
            "postgres://:canary-pw@/db",
        ] {
            let e = DbUrl::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("canary-pw"), "{e}");
            assert!(e.contains("postgres://USER"), "{e}");
        }
    }
}
