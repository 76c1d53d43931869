//! Users and their keys (Berth extensions of the API): `POST /users`
//! (admin), `POST /users/{name}/rotate-key`, `POST /users/{name}/revoke`
//! (admin). A key is shown once, in the answer that makes it; the database
//! keeps only its hash.

use super::Shared;
use super::views::{NewKey, Revoked};
use crate::db::User;
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Path, State};

/// The body of `POST /users`.
#[derive(serde::Deserialize)]
pub struct NewUser {
    username: String,
}

/// `POST /users` (admin only): a new user and its key.
pub async fn create_user(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Json(body): Json<NewUser>,
) -> Result<Json<NewKey>, ApiError> {
    if !user.is_admin {
        return Err(ApiError::forbidden("only the admin may create users"));
    }
    let name_ok = (1..=64).contains(&body.username.len())
        && body
            .username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(ApiError::invalid(
            "username must be 1 to 64 letters, digits, `-` or `_`",
        ));
    }
    let key = crate::new_api_key();
    let created = state.db.create_user(&body.username, &key, false).await?;
    // The key is shown once, here; the database keeps only its hash.
    Ok(Json(NewKey {
        username: created.username,
        api_key: key,
    }))
}

/// `POST /users/{name}/rotate-key`: a new key for the user, shown once; the
/// old key stops working at once. The admin may rotate anyone's key (which
/// also gives a revoked user a key again), a user their own.
pub async fn rotate_key(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(name): Path<String>,
) -> Result<Json<NewKey>, ApiError> {
    if !user.is_admin && user.username != name {
        return Err(ApiError::forbidden(
            "only the admin may rotate another user's key",
        ));
    }
    let target = state
        .db
        .user_by_name(&name)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    let key = crate::new_api_key();
    state.db.set_api_key(&target.username, &key).await?;
    super::auth::KEYS.forget_user(target.id);
    Ok(Json(NewKey {
        username: target.username,
        api_key: key,
    }))
}

/// `POST /users/{name}/revoke` (admin only): the user's key stops working
/// at once (it is replaced by a random key nobody is told). The user's CVMs
/// keep running; `rotate-key` gives the user a key again.
pub async fn revoke_user(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(name): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    if !user.is_admin {
        return Err(ApiError::forbidden(
            "only the admin may revoke a user's key",
        ));
    }
    let target = state
        .db
        .user_by_name(&name)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    if target.is_admin {
        return Err(ApiError::invalid(
            "the admin's key cannot be revoked (nobody could manage users then): rotate it instead",
        ));
    }
    state
        .db
        .set_api_key(&target.username, &crate::new_api_key())
        .await?;
    super::auth::KEYS.forget_user(target.id);
    Ok(Json(Revoked {
        username: target.username,
        revoked: true,
    }))
}
