//! Where the API key is checked: [`authenticate`], the middleware in front
//! of every route but the log URLs (which carry their own token, see
//! [`super::logs`]). The key comes in `X-API-Key` (what the official
//! clients send) or as `Authorization: Bearer`; the database keeps only its
//! sha256 ([`crate::db::hash_api_key`]). The user found is handed to the
//! handlers as a request extension.
//!
//! Each user may have at most [`crate::db::Limits::max_requests_per_user`]
//! requests in progress ([`InFlight`]); more answer 429 at once. This is
//! the bound that keeps one tenant from holding every connection of the
//! server with slow request bodies when all clients share one address
//! (every local user and a local reverse proxy come from 127.0.0.1, where
//! a bound per client address could only be a smaller global cap, see
//! [`crate::serve`]): the key is known once the headers are in, before the
//! body is read, so a request over the bound costs its connection nothing
//! but the headers (hyper closes a connection whose body was not read).

use super::Shared;
use super::views::{Me, PhalaVersion};
use crate::db::User;
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The requests each user has in progress.
#[derive(Default)]
pub struct InFlight {
    counts: Mutex<HashMap<i64, usize>>,
}

impl InFlight {
    /// One more request of `user`, unless they have `max` in progress.
    fn enter(self: &Arc<Self>, user: i64, max: usize) -> Option<InFlightGuard> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(user).or_insert(0);
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(InFlightGuard {
            of: self.clone(),
            user,
        })
    }
}

/// A request in progress; counted until dropped.
struct InFlightGuard {
    of: Arc<InFlight>,
    user: i64,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut counts = self.of.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

/// What the middleware needs: the app's state and the requests in progress.
pub type AuthState = (Shared, Arc<InFlight>);

/// 401 without a key or with an unknown one; 429 when the user has their
/// cap of requests in progress; otherwise the request goes on with its
/// [`User`].
pub async fn authenticate(
    State((state, in_flight)): State<AuthState>,
    mut req: Request,
    next: Next,
) -> Response {
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
            let max = state.limits.max_requests_per_user;
            let Some(_guard) = in_flight.enter(user.id, max) else {
                return ApiError::too_many(format!(
                    "you have {max} requests in progress, the most one user may have at once (berth up --max-requests-per-user {max}): wait for one to finish"
                ))
                .into_response();
            };
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
