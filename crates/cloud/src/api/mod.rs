//! The HTTP edge: the Phala-compatible API under `/api/v1`.
//!
//! This module is the only place that knows the JSON field names of the
//! Phala Cloud API (see `docs/phala-api.md` for what the official clients
//! send and need), and the only place that turns the typed errors of the
//! database and the node into HTTP status codes ([`ApiError`]). One module
//! per resource, like crates.io's controllers:
//!
//! - [`auth`]: where the API key is checked (the `authenticate`
//!   middleware) and `GET /auth/me`;
//! - [`users`]: creating users, rotating and revoking keys (Berth
//!   extensions);
//! - [`deploy`]: provision (`POST /cvms/provision`) and commit (`POST /cvms`);
//! - [`cvms`]: reading CVMs, their lifecycle, composition;
//! - [`update`]: updates in place (`PATCH /cvms/{id}`), env updates
//!   (`PATCH /cvms/{id}/envs`), the current compose file and the app's
//!   history;
//! - `helpers`: what `cvms`, `deploy` and `update` share (finding a CVM,
//!   the boot slot, a sealed env from hex), so that none imports another
//!   back;
//! - [`logs`]: the serial log and container output, behind log URL tokens;
//! - [`kms`]: the env public key route and the KMS call provisioning makes;
//! - [`rules`]: what a front end checks before sending (Berth extension);
//! - [`views`]: every answer as a type, with the two CVM shapes
//!   `X-Phala-Version` selects ([`views::PhalaVersion`]).
//!
//! Calls Berth does not implement get a JSON 501 that says so. Every answer
//! carries `X-Content-Type-Options: nosniff`. Request logs
//! carry method, path (no query: log URLs hold a token), status and body
//! length, never a body.

pub mod auth;
pub mod cvms;
pub mod deploy;
mod helpers;
pub mod kms;
pub mod logs;
pub mod rules;
pub mod update;
pub mod users;
pub mod views;

use crate::db::{Db, Limits};
use crate::error::ApiError;
use crate::nodeapi::NodeClient;
use axum::Router;
use axum::extract::Request;
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, patch, post};
use contract::kms::KmsEndpoint;
use std::sync::Arc;

pub use self::kms::KmsEnvKey;

/// Everything the handlers share.
pub struct AppState {
    /// The database.
    pub db: Arc<Db>,
    /// The node running CVMs (its own process).
    pub node: NodeClient,
    /// The KMS (public keys only: the API cannot mint boot tickets).
    pub kms: KmsEndpoint,
    /// Where the node keeps CVM folders (the API reads serial logs there).
    pub cvms_root: std::path::PathBuf,
    /// This API's own base URL (`http://127.0.0.1:8000`), for log URLs.
    pub public_url: String,
    /// HTTP client for the KMS (over its socket when it has one).
    pub http: reqwest::Client,
    /// The secret log URL tokens are derived from.
    pub log_secret: [u8; 32],
    /// The operator's caps (CVMs per user, boots in flight).
    pub limits: Limits,
}

/// The state as the handlers receive it.
pub type Shared = Arc<AppState>;

/// The API's routes.
pub fn router(state: Shared) -> Router {
    let authed = Router::new()
        .route("/auth/me", get(auth::me))
        .route("/users", post(users::create_user))
        .route("/users/{name}/rotate-key", post(users::rotate_key))
        .route("/users/{name}/revoke", post(users::revoke_user))
        .route("/cvms/provision", post(deploy::provision))
        .route("/cvms", post(deploy::commit).get(cvms::list_cvms))
        .route("/cvms/paginated", get(cvms::paginated_cvms))
        .route(
            "/cvms/{id}",
            get(cvms::get_cvm)
                .delete(cvms::delete_cvm)
                .patch(update::update_cvm),
        )
        .route("/cvms/{id}/docker-compose.yml", get(update::compose_file))
        .route("/cvms/{id}/history", get(update::history))
        .route("/cvms/{id}/start", post(cvms::start_cvm))
        .route("/cvms/{id}/stop", post(cvms::stop_cvm))
        .route("/cvms/{id}/shutdown", post(cvms::stop_cvm))
        .route("/cvms/{id}/restart", post(cvms::restart_cvm))
        .route("/cvms/{id}/envs", patch(update::update_envs))
        .route("/cvms/{id}/composition", get(cvms::composition))
        .route("/apps", get(cvms::list_apps))
        .route("/status/batch", post(cvms::status_batch))
        .route("/kms/{kms}/pubkey/{app_id}", get(kms::kms_pubkey))
        .route("/berth/attestation-key", get(kms::attestation_key))
        .merge(rules::routes())
        .layer(middleware::from_fn_with_state(
            (state.clone(), Arc::new(auth::InFlight::default())),
            auth::authenticate,
        ));
    // Log URLs carry their own token: the official clients fetch them
    // without the API key.
    let logs = Router::new()
        .route("/cvms/{id}/syslog", get(logs::syslog))
        .route(
            "/cvms/{id}/containers/{cid}/logs",
            get(logs::container_logs),
        );
    Router::new()
        .nest("/api/v1", authed.merge(logs).fallback(unknown))
        .merge(crate::console::router())
        .fallback(unknown)
        .layer(middleware::map_response(nosniff))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Every answer (API, log URLs, console) says its `Content-Type` is the
/// truth: a browser must not sniff a log line or a JSON error into HTML.
async fn nosniff(mut resp: Response) -> Response {
    resp.headers_mut()
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(header::HeaderValue::from_static("nosniff"));
    resp
}

async fn unknown(req: Request) -> ApiError {
    ApiError::unsupported(&format!("{} {}", req.method(), req.uri().path()))
}

/// One line per request on stderr; never a body, never a query string.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let len = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0")
        .to_owned();
    let resp = next.run(req).await;
    eprintln!(
        "api: {method} {path} -> {} (request body {len} bytes)",
        resp.status().as_u16()
    );
    resp
}
