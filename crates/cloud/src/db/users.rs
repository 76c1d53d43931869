//! The `users` table: API users with their *hashed* API keys and the
//! per-user salt of their app ids.

use super::sql::{Row, SqlError, vals};
use super::{Db, DbError, Fail, now};
use sha2::Digest as _;

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

/// sha256 of an API key, hex: what the database keeps.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

pub(super) fn new_salt() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn user_row(r: &Row) -> Result<User, SqlError> {
    Ok(User {
        id: r.get(0)?,
        username: r.get(1)?,
        is_admin: r.get(2)?,
        app_salt: r.get::<Option<String>>(3)?.unwrap_or_default(),
    })
}

impl Db {
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
            let taken = tx.query_opt(
                "SELECT id FROM users WHERE username = ?1",
                &vals![&username],
            )?;
            if taken.is_some() {
                return Err(Fail::Rule(DbError::UserExists { username: username.clone() }));
            }
            let id: i64 = tx
                .query_value(
                    "INSERT INTO users (username, api_key_hash, is_admin, created_at, app_salt) VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
                    &vals![&username, &key_hash, is_admin, now(), &salt],
                )
                .map_err(|e| {
                    if e.is_unique_violation() {
                        Fail::Rule(DbError::UserExists { username: username.clone() })
                    } else {
                        Fail::Sql(e)
                    }
                })?;
            Ok(User {
                id,
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
                &vals![&key_hash, &username],
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
        let sql = format!("SELECT id, username, is_admin, app_salt FROM users WHERE {column} = ?1");
        self.read(move |conn| {
            Ok(conn
                .query_opt(&sql, &vals![&value])?
                .map(|r| user_row(&r))
                .transpose()?)
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
}
