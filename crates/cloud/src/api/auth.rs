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
//!
//! **The key cache.** A key found in the database is believed for at most
//! [`KEY_CACHE_TTL`] (1 s) without asking again ([`KeyCache`]), so a burst
//! of requests costs one read per key per second. It is keyed by the key's
//! sha256, never the key, and holds no unknown key (a new key works at
//! once). Rotating or revoking a key ([`super::users`]) forgets the user's
//! entries before it answers, and a read that raced with it is not
//! remembered (a generation counter), so **on the process that revoked a
//! key, the key is refused at once; on every other API process (a
//! replica), within 1 s**.

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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How long a key found in the database is believed without asking again.
/// A key revoked on another process stays usable here at most this long.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);

/// The most keys remembered at once (then the stale ones, or all, are
/// dropped).
const KEY_CACHE_CAP: usize = 10_000;

/// The users whose keys this process found lately, by the key's sha256.
pub struct KeyCache {
    entries: Mutex<HashMap<String, (User, Instant)>>,
    /// Bumped by every [`KeyCache::forget_user`]: a lookup that began before
    /// it is not remembered.
    generation: AtomicU64,
}

impl KeyCache {
    fn new() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// The user of `hash`, if found less than [`KEY_CACHE_TTL`] ago.
    fn get(&self, hash: &str) -> Option<User> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(u, _)| u.clone())
    }

    /// Remembers `user` for `hash`, unless a key was forgotten since
    /// `generation` was read (the database read may predate a revocation).
    fn remember(&self, hash: String, user: User, generation: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        if entries.len() >= KEY_CACHE_CAP {
            entries.retain(|_, (_, at)| at.elapsed() < KEY_CACHE_TTL);
            if entries.len() >= KEY_CACHE_CAP {
                entries.clear();
            }
        }
        entries.insert(hash, (user, Instant::now()));
    }

    /// Forgets every key of user `user_id` (its key was rotated or revoked),
    /// and any lookup still in flight.
    pub fn forget_user(&self, user_id: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        entries.retain(|_, (u, _)| u.id != user_id);
    }
}

/// This process's key cache.
pub static KEYS: LazyLock<KeyCache> = LazyLock::new(KeyCache::new);

/// The user whose key is `key`: from [`KEYS`], or the database.
async fn user_of_key(
    state: &super::AppState,
    key: &str,
) -> Result<Option<User>, crate::db::DbError> {
    let hash = crate::db::hash_api_key(key);
    if let Some(user) = KEYS.get(&hash) {
        return Ok(Some(user));
    }
    let generation = KEYS.generation.load(Ordering::SeqCst);
    let found = state.db.user_by_key(key).await?;
    if let Some(user) = &found {
        KEYS.remember(hash, user.clone(), generation);
    }
    Ok(found)
}

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
    match user_of_key(&state, &key).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i64) -> User {
        User {
            id,
            username: format!("u{id}"),
            is_admin: false,
            app_salt: String::new(),
        }
    }

    #[test]
    fn a_forgotten_user_is_not_remembered_by_a_lookup_that_began_before() {
        let cache = KeyCache::new();
        let before = cache.generation.load(Ordering::SeqCst);
        cache.remember("h1".into(), user(1), before);
        assert_eq!(cache.get("h1").map(|u| u.id), Some(1));
        // A lookup starts, the key is revoked, the lookup ends.
        let racing = cache.generation.load(Ordering::SeqCst);
        cache.forget_user(1);
        assert!(cache.get("h1").is_none());
        cache.remember("h1".into(), user(1), racing);
        assert!(cache.get("h1").is_none(), "a revoked key came back");
        // Others' keys are kept; a fresh lookup is remembered.
        let now = cache.generation.load(Ordering::SeqCst);
        cache.remember("h2".into(), user(2), now);
        cache.forget_user(1);
        assert_eq!(cache.get("h2").map(|u| u.id), Some(2));
    }
}
