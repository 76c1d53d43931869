//! The `apps` table: each app's byte-exact `app-compose.json`, its compose
//! hash and its env public key, stored once per app id.

use super::limits::UNCOMMITTED_APP_TTL;
use super::sql::{Conn, Row, SqlError, vals};
use super::{Db, DbError, Limits, now};

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

const APP_SELECT: &str = "SELECT app_id, user_id, name, app_compose, compose_hash, env_pubkey, env_pubkey_signature FROM apps WHERE app_id = ?1";

/// The app columns, in [`app_row`]'s order, for a join (`apps.` prefixed).
pub(super) const APP_COLUMNS_JOINED: &str = "apps.app_id, apps.user_id, apps.name, apps.app_compose, apps.compose_hash, apps.env_pubkey, apps.env_pubkey_signature";

pub(super) fn app_row(r: &Row) -> Result<App, SqlError> {
    app_row_at(r, 0)
}

/// An app read from the row's columns `at..at + 7`.
pub(super) fn app_row_at(r: &Row, at: usize) -> Result<App, SqlError> {
    Ok(App {
        app_id: r.get(at)?,
        user_id: r.get(at + 1)?,
        name: r.get(at + 2)?,
        app_compose: r.get(at + 3)?,
        compose_hash: r.get(at + 4)?,
        env_pubkey: r.get(at + 5)?,
        env_pubkey_signature: r.get(at + 6)?,
    })
}

/// One accepted version of an app's manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppVersion {
    /// sha256 of the manifest, hex.
    pub compose_hash: String,
    /// The manifest's exact bytes.
    pub app_compose: Vec<u8>,
    /// `provisioned` for the first manifest, `cloud` or `owner key …` for
    /// an update (as the KMS recorded who authorized it).
    pub authorized_by: String,
    /// The owner's counter (0 for the first manifest; the KMS's count for
    /// cloud-authorized updates).
    pub counter: u64,
    /// When it was accepted (RFC 3339).
    pub created_at: String,
}

/// An accepted update, to be recorded.
#[derive(Clone, Debug)]
pub struct AppUpdate {
    /// The CVM whose app is updated.
    pub cvm_id: String,
    /// The new manifest.
    pub app_compose: Vec<u8>,
    /// Its hash.
    pub compose_hash: String,
    /// Who authorized it (from the KMS's answer).
    pub authorized_by: String,
    /// The counter the KMS accepted.
    pub counter: u64,
    /// A new sealed env and its keys, when the update brings one.
    pub env: Option<(Vec<u8>, Vec<String>)>,
}

/// An app no CVM uses, has ever used, or updated (as an SQL condition on
/// `apps`): provisioned and never committed.
const UNUSED: &str = "NOT EXISTS (SELECT 1 FROM cvms WHERE cvms.app_id = apps.app_id) AND NOT EXISTS (SELECT 1 FROM app_updates WHERE app_updates.app_id = apps.app_id)";

/// Inserts `app` unless its id is taken; the stored app either way.
fn insert_or_get(tx: &mut Conn, app: &App) -> Result<App, SqlError> {
    tx.execute(
        "INSERT INTO apps (app_id, user_id, name, app_compose, compose_hash, env_pubkey, env_pubkey_signature, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (app_id) DO NOTHING",
        &vals![&app.app_id, app.user_id, &app.name, &app.app_compose, &app.compose_hash, &app.env_pubkey, &app.env_pubkey_signature, now()],
    )?;
    Db::app_on(tx, &app.app_id)?.ok_or(SqlError::Decode {
        column: 0,
        want: "the app just stored",
    })
}

impl Db {
    /// Records an update the KMS accepted, in one transaction: the app's
    /// manifest and hash become the new ones (its first manifest is kept),
    /// the history gains a row, and the CVM takes the new env if any.
    pub async fn apply_update(&self, app_id: &str, update: AppUpdate) -> Result<(), DbError> {
        let app_id = app_id.to_owned();
        self.write(self.inner.opts.request_patience, move |tx| {
            tx.execute(
                "UPDATE apps SET genesis_compose = COALESCE(genesis_compose, app_compose), app_compose = ?1, compose_hash = ?2 WHERE app_id = ?3",
                &vals![&update.app_compose, &update.compose_hash, &app_id],
            )?;
            tx.execute(
                "INSERT INTO app_updates (app_id, compose_hash, app_compose, authorized_by, counter, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &vals![&app_id, &update.compose_hash, &update.app_compose, &update.authorized_by, update.counter as i64, now()],
            )?;
            if let Some((env, keys)) = &update.env {
                let keys = serde_json::to_string(keys).expect("json");
                tx.execute(
                    "UPDATE cvms SET encrypted_env = ?1, env_keys = ?2, updated_at = ?3 WHERE id = ?4",
                    &vals![env, keys, now(), &update.cvm_id],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// The app's first manifest (which its app id measures).
    pub async fn genesis_compose(&self, app_id: &str) -> Result<Option<Vec<u8>>, DbError> {
        let app_id = app_id.to_owned();
        self.read(move |conn| {
            Ok(conn
                .query_opt(
                    "SELECT COALESCE(genesis_compose, app_compose) FROM apps WHERE app_id = ?1",
                    &vals![&app_id],
                )?
                .map(|r| r.get(0))
                .transpose()?)
        })
        .await
    }

    /// The app's versions, oldest first: its first manifest, then every
    /// accepted update.
    pub async fn app_history(&self, app_id: &str) -> Result<Vec<AppVersion>, DbError> {
        let app_id = app_id.to_owned();
        self.read(move |conn| {
            let first = conn
                .query_opt(
                    "SELECT COALESCE(genesis_compose, app_compose), created_at FROM apps WHERE app_id = ?1",
                    &vals![&app_id],
                )?
                .map(|r| -> Result<AppVersion, SqlError> {
                    let bytes: Vec<u8> = r.get(0)?;
                    Ok(AppVersion {
                        compose_hash: contract::Measurement::of(&bytes).compose_hash,
                        app_compose: bytes,
                        authorized_by: "provisioned".into(),
                        counter: 0,
                        created_at: r.get(1)?,
                    })
                })
                .transpose()?;
            let mut out: Vec<AppVersion> = first.into_iter().collect();
            let rows = conn.query(
                "SELECT compose_hash, app_compose, authorized_by, counter, created_at FROM app_updates WHERE app_id = ?1 ORDER BY id",
                &vals![&app_id],
            )?;
            for r in rows {
                out.push(AppVersion {
                    compose_hash: r.get(0)?,
                    app_compose: r.get(1)?,
                    authorized_by: r.get(2)?,
                    counter: r.get::<i64>(3)? as u64,
                    created_at: r.get(4)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Stores a newly provisioned app for its user, or returns the existing
    /// one with the same id, in one transaction with the rules of
    /// provisioning: the user's apps that no CVM ever used and that are
    /// older than [`UNCOMMITTED_APP_TTL`] are dropped, and a new app is
    /// refused (429) when the user already has
    /// `limits.max_uncommitted_apps_per_user` apps no CVM uses.
    pub async fn provision_app(&self, app: &App, limits: Limits) -> Result<App, DbError> {
        let app = app.clone();
        self.write(self.inner.opts.request_patience, move |tx| {
            let expired = std::time::SystemTime::now()
                .checked_sub(UNCOMMITTED_APP_TTL)
                .unwrap_or(std::time::UNIX_EPOCH)
                .max(std::time::UNIX_EPOCH);
            let expired = humantime::format_rfc3339_seconds(expired).to_string();
            tx.execute(
                &format!("DELETE FROM apps WHERE user_id = ?1 AND created_at < ?2 AND {UNUSED}"),
                &vals![app.user_id, expired],
            )?;
            if Self::app_on(tx, &app.app_id)?.is_none() {
                let have = super::count(
                    tx,
                    &format!("SELECT COUNT(*) FROM apps WHERE user_id = ?1 AND {UNUSED}"),
                    &vals![app.user_id],
                )?;
                if have >= limits.max_uncommitted_apps_per_user {
                    return Err(DbError::TooManyUncommittedApps {
                        have,
                        max: limits.max_uncommitted_apps_per_user,
                    }
                    .into());
                }
            }
            Ok(insert_or_get(tx, &app)?)
        })
        .await
    }

    /// Stores an app, or returns the existing one with the same id.
    pub async fn upsert_app(&self, app: &App) -> Result<App, DbError> {
        let app = app.clone();
        self.write(self.inner.opts.request_patience, move |tx| {
            Ok(insert_or_get(tx, &app)?)
        })
        .await
    }

    /// The app `app_id`, on a connection the caller already holds.
    pub(super) fn app_on(conn: &mut Conn, app_id: &str) -> Result<Option<App>, SqlError> {
        conn.query_opt(APP_SELECT, &vals![app_id])?
            .map(|r| app_row(&r))
            .transpose()
    }

    /// The app `app_id`.
    pub async fn app(&self, app_id: &str) -> Result<Option<App>, DbError> {
        let app_id = app_id.to_owned();
        self.read(move |conn| Ok(Self::app_on(conn, &app_id)?))
            .await
    }
}
