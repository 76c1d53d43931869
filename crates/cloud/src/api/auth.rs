//! Where the API key is checked: [`authenticate`], the middleware in front
//! of every route but the log URLs (which carry their own token, see
//! [`super::logs`]). The key comes in `X-API-Key` (what the official
//! clients send) or as `Authorization: Bearer`; the database keeps only its
//! sha256 ([`crate::db::hash_api_key`]). The user found is handed to the
//! handlers as a request extension.

use super::Shared;
use super::views::{Me, PhalaVersion};
use crate::db::User;
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// 401 without a key or with an unknown one; otherwise the request goes on
/// with its [`User`].
pub async fn authenticate(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    let key = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            req.headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned)
        });
    let Some(key) = key else {
        return ApiError::unauthorized("missing API key: send it in the X-API-Key header")
            .into_response();
    };
    match state.db.user_by_key(&key).await {
        Ok(Some(user)) => {
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        Ok(None) => ApiError::unauthorized("invalid API key").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `GET /auth/me`: who the key belongs to, in the asked shape.
pub async fn me(version: PhalaVersion, axum::Extension(user): axum::Extension<User>) -> Json<Me> {
    Json(Me::of(&user, version))
}
