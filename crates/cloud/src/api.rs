//! The HTTP edge: the Phala-compatible API under `/api/v1`.
//!
//! This module is the only place that knows the JSON field names of the
//! Phala Cloud API (see `docs/phala-api.md` for what the official clients
//! send and need). `X-Phala-Version` selects between the two response shapes
//! the `phala` CLI 1.1.x expects for a CVM (`2025-10-28` for deploy and log
//! helpers, `2026-01-21` for the rest). Calls Berth does not implement get a
//! JSON 501 that says so. Request logs carry method, path (no query: log
//! URLs hold a token), status and body length, never a body.

use crate::appcompose::{self, AppComposeInput};
use crate::db::{App, Cvm, Db, User};
use crate::error::ApiError;
use crate::nodeapi::NodeClient;
use contract::kms::KmsEndpoint;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

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
}

type Shared = Arc<AppState>;

/// The API's routes.
pub fn router(state: Shared) -> Router {
    let authed = Router::new()
        .route("/auth/me", get(me))
        .route("/users", post(create_user))
        .route("/cvms/provision", post(provision))
        .route("/cvms", post(commit).get(list_cvms))
        .route(
            "/cvms/{id}",
            get(get_cvm).delete(delete_cvm).patch(unsupported_update),
        )
        .route("/cvms/{id}/start", post(start_cvm))
        .route("/cvms/{id}/stop", post(stop_cvm))
        .route("/cvms/{id}/shutdown", post(stop_cvm))
        .route("/cvms/{id}/restart", post(restart_cvm))
        .route("/cvms/{id}/envs", patch(update_envs))
        .route("/cvms/{id}/composition", get(composition))
        .route("/apps", get(list_apps))
        .route("/status/batch", post(status_batch))
        .route("/kms/{kms}/pubkey/{app_id}", get(kms_pubkey))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    // Log URLs carry their own token: the official clients fetch them
    // without the API key.
    let logs = Router::new()
        .route("/cvms/{id}/syslog", get(syslog))
        .route("/cvms/{id}/containers/{cid}/logs", get(container_logs));
    Router::new()
        .nest("/api/v1", authed.merge(logs).fallback(unknown))
        .fallback(unknown)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

async fn unknown(req: Request) -> ApiError {
    ApiError::unsupported(&format!("{} {}", req.method(), req.uri().path()))
}

async fn unsupported_update() -> ApiError {
    ApiError::unsupported("updating a CVM's compose file (PATCH /cvms/{id})")
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

async fn authenticate(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
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
    match state.db.user_by_key(&key) {
        Ok(Some(user)) => {
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        Ok(None) => ApiError::unauthorized("invalid API key").into_response(),
        Err(e) => e.into_response(),
    }
}

fn legacy(headers: &HeaderMap) -> bool {
    headers
        .get("x-phala-version")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v < "2026-01-01")
}

// ---------------------------------------------------------------- users

async fn me(headers: HeaderMap, axum::Extension(user): axum::Extension<User>) -> Json<Value> {
    let role = if user.is_admin { "admin" } else { "user" };
    if legacy(&headers) {
        return Json(json!({
            "username": user.username, "email": format!("{}@berth.local", user.username),
            "credits": 0, "granted_credits": 0, "avatar": "", "team_name": user.username, "team_tier": "free",
        }));
    }
    Json(json!({
        "user": {"username": user.username, "email": format!("{}@berth.local", user.username), "role": role,
                 "avatar": "", "email_verified": true, "totp_enabled": false, "has_backup_codes": false,
                 "flag_has_password": false},
        "workspace": {"id": user.id.to_string(), "name": user.username, "slug": user.username, "tier": "free", "role": "owner"},
        "credits": {"balance": 0, "granted_balance": 0, "is_post_paid": false, "outstanding_amount": null},
    }))
}

#[derive(serde::Deserialize)]
struct NewUser {
    username: String,
}

async fn create_user(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Json(body): Json<NewUser>,
) -> Result<Json<Value>, ApiError> {
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
    let created = state.db.create_user(&body.username, &key, false)?;
    // The key is shown once, here; the database keeps only its hash.
    Ok(Json(json!({"username": created.username, "api_key": key})))
}

// ---------------------------------------------------------------- deploy

#[derive(serde::Deserialize)]
struct ProvisionBody {
    name: String,
    compose_file: ComposeFileBody,
    #[serde(default)]
    vcpu: Option<i64>,
    #[serde(default)]
    memory: Option<i64>,
    #[serde(default)]
    disk_size: Option<i64>,
    #[serde(default)]
    instance_type: Option<String>,
}

#[derive(serde::Deserialize)]
struct ComposeFileBody {
    docker_compose_file: String,
    #[serde(default)]
    allowed_envs: Vec<String>,
    #[serde(default = "yes")]
    public_logs: bool,
    #[serde(default = "yes")]
    public_sysinfo: bool,
    #[serde(default)]
    pre_launch_script: Option<String>,
}

fn yes() -> bool {
    true
}

/// What the KMS says about an app's env key.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct KmsEnvKey {
    /// X25519 public key, hex.
    pub public_key: String,
    /// Legacy signature, hex.
    pub signature: String,
    /// Timestamped signature, hex.
    pub signature_v1: String,
    /// Unix seconds of `signature_v1`.
    pub timestamp: u64,
    /// The KMS's public key.
    pub kms_public_key: String,
}

async fn kms_env_key(state: &AppState, app_id: &str) -> Result<KmsEnvKey, ApiError> {
    let url = state
        .kms
        .url(&contract::kms::env_pubkey_path(app_id));
    let resp = state
        .http
        .get(&url)
        .send()
        .await
        .map_err(|_| ApiError::unavailable("the KMS is not answering: env public keys cannot be handed out until it is back"))?;
    if !resp.status().is_success() {
        return Err(ApiError::upstream(format!(
            "the KMS answered {}",
            resp.status()
        )));
    }
    resp.json()
        .await
        .map_err(|_| ApiError::upstream("the KMS answered without a key"))
}

async fn provision(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Json(body): Json<ProvisionBody>,
) -> Result<Json<Value>, ApiError> {
    appcompose::validate_name(&body.name)?;
    if body
        .compose_file
        .pre_launch_script
        .as_deref()
        .is_some_and(|s| !s.trim().is_empty())
    {
        return Err(ApiError::unsupported(
            "a pre-launch script (Berth's boot agent replaces it)",
        ));
    }
    let built = appcompose::build(&AppComposeInput {
        name: &body.name,
        docker_compose_file: &body.compose_file.docker_compose_file,
        allowed_envs: &body.compose_file.allowed_envs,
        public_logs: body.compose_file.public_logs,
        public_sysinfo: body.compose_file.public_sysinfo,
    })?;
    if let Some(existing) = state.db.app(&built.app_id)?
        && existing.user_id != user.id
    {
        return Err(ApiError::conflict(
            "another user owns an app with this exact manifest; change the name",
        ));
    }
    let key = kms_env_key(&state, &built.app_id).await?;
    state.db.upsert_app(&App {
        app_id: built.app_id.clone(),
        user_id: user.id,
        name: body.name.clone(),
        app_compose: built.bytes,
        compose_hash: built.compose_hash.clone(),
        env_pubkey: key.public_key.clone(),
        env_pubkey_signature: key.signature.clone(),
    })?;
    let (vcpu, memory, disk) = resources(&body);
    Ok(Json(json!({
        "app_id": built.app_id,
        "app_env_encrypt_pubkey": key.public_key,
        "compose_hash": built.compose_hash,
        "instance_type": body.instance_type.as_deref().unwrap_or("tdx.small"),
        "vcpu": vcpu, "memory": memory, "disk_size": disk,
        // Berth extensions: the KMS's signatures, so clients can check the
        // key came from the KMS they trust (the `berth` CLI does).
        "app_env_encrypt_pubkey_signature": key.signature,
        "app_env_encrypt_pubkey_signature_v1": key.signature_v1,
        "app_env_encrypt_pubkey_timestamp": key.timestamp,
        "kms_public_key": key.kms_public_key,
    })))
}

fn resources(body: &ProvisionBody) -> (i64, i64, i64) {
    let (v, m) = match body.instance_type.as_deref() {
        Some("tdx.medium") => (2, 4096),
        Some("tdx.large") => (4, 8192),
        _ => (1, 2048),
    };
    (
        body.vcpu.unwrap_or(v),
        body.memory.unwrap_or(m),
        body.disk_size.unwrap_or(20),
    )
}

#[derive(serde::Deserialize)]
struct CommitBody {
    app_id: String,
    compose_hash: String,
    #[serde(default)]
    encrypted_env: Option<String>,
    #[serde(default)]
    env_keys: Option<Vec<String>>,
    #[serde(default)]
    name: Option<String>,
}

fn decode_env(hex_text: &str) -> Result<Vec<u8>, ApiError> {
    let t = hex_text.trim().trim_start_matches("0x");
    let bytes = hex::decode(t).map_err(|_| ApiError::invalid("encrypted_env is not hex"))?;
    // eph_pub(32) + nonce(12) + tag(16): anything shorter cannot be a sealed env.
    if bytes.len() < contract::env_rules::MIN_SEALED_LEN {
        return Err(ApiError::invalid(format!(
            "encrypted_env is {} bytes; a sealed env is at least {} bytes",
            bytes.len(),
            contract::env_rules::MIN_SEALED_LEN
        )));
    }
    Ok(bytes)
}

async fn commit(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Json(body): Json<CommitBody>,
) -> Result<Json<Value>, ApiError> {
    let app = state
        .db
        .app(&body.app_id)?
        .filter(|a| a.user_id == user.id)
        .ok_or_else(|| {
            ApiError::not_found(
                "no provisioned app with this app_id: call POST /cvms/provision first",
            )
        })?;
    if app.compose_hash != body.compose_hash.trim_start_matches("0x") {
        return Err(ApiError::invalid(
            "compose_hash does not match the provisioned app",
        ));
    }
    let env = body.encrypted_env.as_deref().map(decode_env).transpose()?;
    let manifest: Value = serde_json::from_slice(&app.app_compose).unwrap_or(Value::Null);
    let keys = body.env_keys.clone().unwrap_or_else(|| {
        manifest["allowed_envs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    });
    let name = body.name.clone().unwrap_or_else(|| app.name.clone());
    let cvm = state.db.create_cvm(
        &name,
        user.id,
        &app.app_id,
        env.as_deref(),
        &keys,
        1,
        2048,
        20,
    )?;
    state.node.start(&cvm.id).await?;
    lifecycle_answer(&state, cvm, &app)
}

// ---------------------------------------------------------------- CVM views

fn uuid_compact(id: &str) -> String {
    id.replace('-', "")
}

fn log_token(state: &AppState, cvm: &Cvm) -> String {
    // A capability for this CVM's logs only: a keyed hash of its id with the
    // installation's secret, checked on every log request.
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"berth-log-token\0");
    h.update(state.log_secret);
    h.update(cvm.id.as_bytes());
    hex::encode(&h.finalize()[..16])
}

fn syslog_endpoint(state: &AppState, cvm: &Cvm) -> String {
    format!(
        "{}/api/v1/cvms/{}/syslog?token={}",
        state.public_url.trim_end_matches('/'),
        cvm.id,
        log_token(state, cvm)
    )
}

fn in_progress(cvm: &Cvm) -> bool {
    matches!(cvm.status.as_str(), "provisioning" | "starting")
}

/// The `2025-10-28` shape (deploy, start/stop/restart answers).
fn cvm_legacy(state: &AppState, cvm: &Cvm, app: &App) -> Value {
    let manifest: Value = serde_json::from_slice(&app.app_compose).unwrap_or(Value::Null);
    json!({
        "id": cvm.instance_id,
        "name": cvm.name,
        "status": cvm.status,
        "in_progress": in_progress(cvm),
        "teepod_id": 1,
        "teepod": {"id": 1, "name": "berth-local-node"},
        "user_id": cvm.user_id,
        "app_id": cvm.app_id,
        "vm_uuid": cvm.id,
        "instance_id": uuid_compact(&cvm.id),
        "base_image": "berth-simulated-tee",
        "vcpu": cvm.vcpu,
        "memory": cvm.memory,
        "disk_size": cvm.disk_size,
        "docker_compose_file": manifest["docker_compose_file"],
        "created_at": cvm.created_at,
        "encrypted_env_pubkey": app.env_pubkey,
        "syslog_endpoint": syslog_endpoint(state, cvm),
        "public_logs": manifest["public_logs"],
        "public_sysinfo": manifest["public_sysinfo"],
        "compose_hash": app.compose_hash,
        "boot_category": cvm.boot_category,
        "boot_error": cvm.boot_message,
    })
}

/// The `2026-01-21` shape (get, list, and the rest).
fn cvm_current(state: &AppState, cvm: &Cvm, app: &App) -> Value {
    let manifest: Value = serde_json::from_slice(&app.app_compose).unwrap_or(Value::Null);
    json!({
        "id": cvm.id,
        "name": cvm.name,
        "status": cvm.status,
        "in_progress": in_progress(cvm),
        "app_id": cvm.app_id,
        "vm_uuid": cvm.id,
        "instance_id": uuid_compact(&cvm.id),
        "resource": {"instance_type": "tdx.small", "vcpu": cvm.vcpu, "memory_in_gb": cvm.memory as f64 / 1024.0, "disk_in_gb": cvm.disk_size},
        "kms_info": {"chain_id": null, "encrypted_env_pubkey": app.env_pubkey},
        "kms_type": "phala",
        "gateway": {"base_domain": null, "cname": null},
        "node_info": {"object_type": "node", "id": 1, "name": "berth-local-node"},
        "os": {"name": "berth (simulated TEE)", "version": env!("CARGO_PKG_VERSION"), "is_dev": false, "os_image_hash": null},
        "compose_hash": app.compose_hash,
        "public_logs": manifest["public_logs"],
        "public_sysinfo": manifest["public_sysinfo"],
        "created_at": cvm.created_at,
        "syslog_endpoint": syslog_endpoint(state, cvm),
        "boot_category": cvm.boot_category,
        "boot_error": cvm.boot_message,
    })
}

/// Finds the user's CVM from any of the forms the clients send: the UUID
/// with or without dashes, `app_<app_id>`, the bare app id, the name, or
/// the numeric id.
fn find_cvm(state: &AppState, user: &User, id: &str) -> Result<(Cvm, App), ApiError> {
    let mine = state.db.cvms_of(user.id)?;
    let compact = uuid_compact(id).to_ascii_lowercase();
    let app_id = id.strip_prefix("app_").unwrap_or(id).to_ascii_lowercase();
    let found = mine
        .iter()
        .rev()
        .find(|c| uuid_compact(&c.id) == compact)
        .or_else(|| mine.iter().rev().find(|c| c.app_id == app_id))
        .or_else(|| mine.iter().rev().find(|c| c.name == id))
        .or_else(|| mine.iter().rev().find(|c| c.instance_id.to_string() == id))
        .cloned()
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no CVM `{}` among yours",
                id.chars().take(80).collect::<String>()
            ))
        })?;
    let app = state
        .db
        .app(&found.app_id)?
        .ok_or_else(|| ApiError::internal("the CVM's app is missing"))?;
    Ok((found, app))
}

async fn get_cvm(
    State(state): State<Shared>,
    headers: HeaderMap,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (cvm, app) = find_cvm(&state, &user, &id)?;
    Ok(Json(if legacy(&headers) {
        cvm_legacy(&state, &cvm, &app)
    } else {
        cvm_current(&state, &cvm, &app)
    }))
}

async fn list_cvms(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for cvm in state.db.cvms_of(user.id)? {
        if let Some(app) = state.db.app(&cvm.app_id)? {
            out.push(cvm_legacy(&state, &cvm, &app));
        }
    }
    Ok(Json(Value::Array(out)))
}

#[derive(serde::Deserialize)]
struct Page {
    page: Option<usize>,
    page_size: Option<usize>,
}

async fn list_apps(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let page_no = page.page.unwrap_or(1).max(1);
    let size = page.page_size.unwrap_or(50).clamp(1, 100);
    let mut items = Vec::new();
    for cvm in state.db.cvms_of(user.id)? {
        if let Some(app) = state.db.app(&cvm.app_id)? {
            items.push(json!({
                "id": cvm.id, "name": cvm.name, "app_id": cvm.app_id, "created_at": cvm.created_at,
                "kms_type": "phala", "cvm_count": 1, "current_cvm": cvm_current(&state, &cvm, &app),
            }));
        }
    }
    let total = items.len();
    let pages = total.div_ceil(size).max(1);
    let items: Vec<Value> = items
        .into_iter()
        .skip((page_no - 1) * size)
        .take(size)
        .collect();
    Ok(Json(
        json!({"dstack_apps": items, "page": page_no, "page_size": size, "total": total, "total_pages": pages}),
    ))
}

#[derive(serde::Deserialize)]
struct Batch {
    vm_uuids: Vec<String>,
}

async fn status_batch(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Json(batch): Json<Batch>,
) -> Result<Json<Value>, ApiError> {
    let mut out = serde_json::Map::new();
    for cvm in state.db.cvms_of(user.id)? {
        if batch
            .vm_uuids
            .iter()
            .any(|u| uuid_compact(u) == uuid_compact(&cvm.id))
        {
            out.insert(
                cvm.id.clone(),
                json!({"vm_uuid": cvm.id, "status": cvm.status, "in_progress": in_progress(&cvm),
                       "boot_error": cvm.boot_message}),
            );
        }
    }
    Ok(Json(Value::Object(out)))
}

// ---------------------------------------------------------------- lifecycle

/// The answer of start/stop/restart: the CVM as it is now.
fn lifecycle_answer(state: &AppState, cvm: Cvm, app: &App) -> Result<Json<Value>, ApiError> {
    let cvm = state.db.cvm(&cvm.id)?.unwrap_or(cvm);
    Ok(Json(cvm_legacy(state, &cvm, app)))
}

async fn start_cvm(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (cvm, app) = find_cvm(&state, &user, &id)?;
    state.node.start(&cvm.id).await?;
    lifecycle_answer(&state, cvm, &app)
}

async fn stop_cvm(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (cvm, app) = find_cvm(&state, &user, &id)?;
    state.node.stop(&cvm.id).await?;
    lifecycle_answer(&state, cvm, &app)
}

async fn restart_cvm(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (cvm, app) = find_cvm(&state, &user, &id)?;
    state.node.restart(&cvm.id).await?;
    lifecycle_answer(&state, cvm, &app)
}

async fn delete_cvm(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (cvm, _) = find_cvm(&state, &user, &id)?;
    state.node.delete(&cvm.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
struct EnvsBody {
    encrypted_env: String,
    #[serde(default)]
    env_keys: Option<Vec<String>>,
}

async fn update_envs(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
    Json(body): Json<EnvsBody>,
) -> Result<Json<Value>, ApiError> {
    let (cvm, app) = find_cvm(&state, &user, &id)?;
    let env = decode_env(&body.encrypted_env)?;
    let keys = body
        .env_keys
        .clone()
        .unwrap_or_else(|| cvm.env_keys.clone());
    let manifest: Value = serde_json::from_slice(&app.app_compose).unwrap_or(Value::Null);
    let allowed: Vec<&str> = manifest["allowed_envs"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let changed = keys.iter().any(|k| !allowed.contains(&k.as_str()));
    state.db.set_env(&cvm.id, &env, &keys)?;
    let cvm = state.db.cvm(&cvm.id)?.unwrap_or(cvm);
    // The new env takes effect at the next boot, which starts now.
    state.node.restart(&cvm.id).await?;
    Ok(Json(json!({
        "status": "in_progress",
        "message": if changed { "env updated; keys outside allowed_envs are dropped by the CVM (changing allowed_envs needs a new deployment)" } else { "env updated; the CVM is restarting" },
        "correlation_id": uuid::Uuid::new_v4().to_string(),
        "allowed_envs_changed": false,
    })))
}

// ---------------------------------------------------------------- logs

#[derive(serde::Deserialize, Default)]
struct LogQuery {
    token: Option<String>,
    ch: Option<String>,
    tail: Option<String>,
    follow: Option<String>,
}

fn check_token(state: &AppState, cvm: &Cvm, q: &LogQuery) -> Result<(), ApiError> {
    match &q.token {
        Some(t) if *t == log_token(state, cvm) => Ok(()),
        _ => Err(ApiError::unauthorized(
            "this log URL's token is missing or wrong: take the URL from GET /cvms/{id}",
        )),
    }
}

fn tail_of(q: &LogQuery) -> Option<usize> {
    q.tail.as_deref().and_then(|t| t.parse().ok())
}

async fn syslog(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let cvm = state
        .db
        .cvm(&id)?
        .filter(|c| c.status != "deleted")
        .ok_or_else(|| ApiError::not_found("no such CVM"))?;
    check_token(&state, &cvm, &q)?;
    let channel = q.ch.clone().unwrap_or_else(|| "serial".into());
    let follow = q.follow.is_some();
    let tail = tail_of(&q);
    match channel.as_str() {
        "serial" => {
            let path = state.cvms_root.join(&cvm.id).join("serial.log");
            if !follow {
                return Ok(text(crate::node::Node::tail_file(&path, tail)));
            }
            // Follow: what is there, then new lines as they are written,
            // until the boot has ended and nothing new came for a while.
            let first = crate::node::Node::tail_file(&path, tail);
            let state2 = state.clone();
            let id2 = cvm.id.clone();
            let stream = async_stream(first, path, move || {
                state2
                    .db
                    .cvm(&id2)
                    .ok()
                    .flatten()
                    .is_some_and(|c| matches!(c.status.as_str(), "provisioning" | "starting"))
            });
            Ok(Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Body::from_stream(stream))
                .expect("response"))
        }
        "stdout" | "stderr" => Ok(text(
            state
                .node
                .container_logs(&cvm.id, channel == "stderr", tail)
                .await?,
        )),
        other => Err(ApiError::bad_request(format!(
            "unknown log channel `{other}`: use serial, stdout or stderr"
        ))),
    }
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// A body stream that sends `first`, then whatever is appended to `path`,
/// until `active()` turns false and nothing new arrived for a second (or
/// 30 minutes passed, or the client went away).
fn async_stream(
    first: String,
    path: std::path::PathBuf,
    active: impl Fn() -> bool + Send + 'static,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
    let mut pos = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    tokio::spawn(async move {
        if tx.send(Ok(bytes::Bytes::from(first))).await.is_err() {
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30 * 60);
        let mut quiet = 0;
        while std::time::Instant::now() < deadline && !tx.is_closed() {
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if len > pos {
                let data = std::fs::read(&path).unwrap_or_default();
                let chunk = data.get(pos as usize..).unwrap_or_default().to_vec();
                pos = len;
                quiet = 0;
                if tx.send(Ok(bytes::Bytes::from(chunk))).await.is_err() {
                    return;
                }
                continue;
            }
            if !active() {
                quiet += 1;
                if quiet > 4 {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    });
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn composition(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (cvm, _) = find_cvm(&state, &user, &id)?;
    let token = log_token(&state, &cvm);
    let names = state.node.container_names(&cvm.id).await?;
    let containers: Vec<Value> = names
        .into_iter()
        .map(|(cid, name)| {
            json!({
                "id": cid, "names": [format!("/{name}")],
                "log_endpoint": format!("{}/api/v1/cvms/{}/containers/{cid}/logs?token={token}", state.public_url.trim_end_matches('/'), cvm.id),
            })
        })
        .collect();
    Ok(Json(json!({"containers": containers})))
}

async fn container_logs(
    State(state): State<Shared>,
    Path((id, cid)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let cvm = state
        .db
        .cvm(&id)?
        .filter(|c| c.status != "deleted")
        .ok_or_else(|| ApiError::not_found("no such CVM"))?;
    let lq = LogQuery {
        token: q.get("token").cloned(),
        tail: q.get("tail").cloned(),
        ..Default::default()
    };
    check_token(&state, &cvm, &lq)?;
    let out = state
        .node
        .one_container_logs(&cvm.id, &cid, tail_of(&lq))
        .await?;
    Ok(text(out))
}

// ---------------------------------------------------------------- KMS

async fn kms_pubkey(
    State(state): State<Shared>,
    Path((_kms, app_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let app_id = app_id.trim_start_matches("0x").to_ascii_lowercase();
    if app_id.len() != 40 || !app_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::invalid("app_id must be 40 hex characters"));
    }
    let key = kms_env_key(&state, &app_id).await?;
    // Exactly the two keys the official schema allows.
    Ok(Json(
        json!({"public_key": key.public_key, "signature": key.signature}),
    ))
}
