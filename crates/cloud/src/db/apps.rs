//! The `apps` table: each app's byte-exact `app-compose.json`, its compose
//! hash and its env public key, stored once per app id.

use super::{Db, DbError, now};
use rusqlite::{OptionalExtension, params};

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

pub(super) fn app_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<App> {
    app_row_at(r, 0)
}

/// An app read from the row's columns `at..at + 7`.
pub(super) fn app_row_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<App> {
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

impl Db {
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

    /// The app `app_id`, on a connection the caller already holds.
    pub(super) fn app_on(
        conn: &rusqlite::Connection,
        app_id: &str,
    ) -> rusqlite::Result<Option<App>> {
        conn.prepare_cached(APP_SELECT)?
            .query_row(params![app_id], app_row)
            .optional()
    }

    /// The app `app_id`.
    pub async fn app(&self, app_id: &str) -> Result<Option<App>, DbError> {
        let app_id = app_id.to_owned();
        self.read(move |conn| Ok(Self::app_on(conn, &app_id)?))
            .await
    }
}
