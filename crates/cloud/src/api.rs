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
use crate::db::{App, Cvm, Db, Limits, NewCvm, User};
use crate::error::ApiError;
use crate::nodeapi::NodeClient;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use contract::kms::KmsEndpoint;
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
    /// The operator's caps (CVMs per user, boots in flight).
    pub limits: Limits,
}

type Shared = Arc<AppState>;

/// The API's routes.
pub fn router(state: Shared) -> Router {
    let authed = Router::new()
        .route("/auth/me", get(me))
        .route("/users", post(create_user))
        .route("/users/{name}/rotate-key", post(rotate_key))
        .route("/users/{name}/revoke", post(revoke_user))
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
    match state.db.user_by_key(&key).await {
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
    let created = state.db.create_user(&body.username, &key, false).await?;
    // The key is shown once, here; the database keeps only its hash.
    Ok(Json(json!({"username": created.username, "api_key": key})))
}

/// `POST /users/{name}/rotate-key` (Berth extension): a new key for the
/// user, shown once; the old key stops working at once. The admin may rotate
/// anyone's key (which also gives a revoked user a key again), a user their own.
async fn rotate_key(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({"username": target.username, "api_key": key})))
}

/// `POST /users/{name}/revoke` (Berth extension, admin only): the user's key
/// stops working at once (it is replaced by a random key nobody is told).
/// The user's CVMs keep running; `rotate-key` gives the user a key again.
async fn revoke_user(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({"username": target.username, "revoked": true})))
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
    let url = state.kms.url(&contract::kms::env_pubkey_path(app_id));
    let resp = state.http.get(&url).send().await.map_err(|_| {
        ApiError::unavailable(
            "the KMS is not answering: env public keys cannot be handed out until it is back",
        )
    })?;
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
    name_is_free(&state, &user, &body.name).await?;
    // The user's salt is in the manifest (`berth_owner`): the same compose
    // file from two users is two apps with two env keys, and a user learns
    // nothing about what others deployed.
    let built = appcompose::build(&AppComposeInput {
        name: &body.name,
        docker_compose_file: &body.compose_file.docker_compose_file,
        allowed_envs: &body.compose_file.allowed_envs,
        public_logs: body.compose_file.public_logs,
        public_sysinfo: body.compose_file.public_sysinfo,
        owner: Some(&user.app_salt),
    })?;
    let key = kms_env_key(&state, &built.app_id).await?;
    let stored = state
        .db
        .upsert_app(&App {
            app_id: built.app_id.clone(),
            user_id: user.id,
            name: body.name.clone(),
            app_compose: built.bytes,
            compose_hash: built.compose_hash.clone(),
            env_pubkey: key.public_key.clone(),
            env_pubkey_signature: key.signature.clone(),
        })
        .await?;
    if stored.user_id != user.id {
        // Only a sha256 collision of two salted manifests gets here.
        return Err(ApiError::internal(
            "this manifest's app id is already taken; change the name",
        ));
    }
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

/// 409 when the user already has a live CVM named `name`.
async fn name_is_free(state: &AppState, user: &User, name: &str) -> Result<(), ApiError> {
    if state
        .db
        .cvms_of(user.id)
        .await?
        .iter()
        .any(|c| c.name == name)
    {
        return Err(ApiError::conflict(format!(
            "you already have a CVM named `{name}`: delete it first, or choose another name"
        )));
    }
    Ok(())
}

/// 429 when a new boot would pass the cap on boots in flight.
async fn boot_slot(state: &AppState, cvm: &Cvm) -> Result<(), ApiError> {
    let booting = state.db.boots_in_flight().await?;
    // A CVM already booting holds its slot.
    if !cvm.status.in_progress() && booting >= state.limits.max_boots_in_flight {
        return Err(state.limits.too_many_boots(booting));
    }
    Ok(())
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
        .app(&body.app_id)
        .await?
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
    appcompose::validate_name(&name)?;
    // Name uniqueness and the caps are checked in the insert's transaction.
    let cvm = state
        .db
        .create_cvm(
            NewCvm {
                name,
                user_id: user.id,
                app_id: app.app_id.clone(),
                encrypted_env: env,
                env_keys: keys,
                vcpu: 1,
                memory: 2048,
                disk_size: 20,
            },
            state.limits,
        )
        .await?;
    state.node.start(&cvm.id).await?;
    lifecycle_answer(&state, cvm, &app).await
}

// ---------------------------------------------------------------- CVM views

fn uuid_compact(id: &str) -> String {
    id.replace('-', "")
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
    cvm.status.in_progress()
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
async fn find_cvm(state: &AppState, user: &User, id: &str) -> Result<(Cvm, App), ApiError> {
    let mine = state.db.cvms_of(user.id).await?;
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
        .app(&found.app_id)
        .await?
        .ok_or_else(|| ApiError::internal("the CVM's app is missing"))?;
    Ok((found, app))
}

async fn get_cvm(
    State(state): State<Shared>,
    headers: HeaderMap,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (cvm, app) = find_cvm(&state, &user, &id).await?;
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
    for cvm in state.db.cvms_of(user.id).await? {
        if let Some(app) = state.db.app(&cvm.app_id).await? {
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
    for cvm in state.db.cvms_of(user.id).await? {
        if let Some(app) = state.db.app(&cvm.app_id).await? {
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
    for cvm in state.db.cvms_of(user.id).await? {
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
async fn lifecycle_answer(state: &AppState, cvm: Cvm, app: &App) -> Result<Json<Value>, ApiError> {
    let cvm = state.db.cvm(&cvm.id).await?.unwrap_or(cvm);
    Ok(Json(cvm_legacy(state, &cvm, app)))
}

async fn start_cvm(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (cvm, app) = find_cvm(&state, &user, &id).await?;
    boot_slot(&state, &cvm).await?;
    state.node.start(&cvm.id).await?;
    lifecycle_answer(&state, cvm, &app).await
}

async fn stop_cvm(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (cvm, app) = find_cvm(&state, &user, &id).await?;
    state.node.stop(&cvm.id).await?;
    lifecycle_answer(&state, cvm, &app).await
}

async fn restart_cvm(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (cvm, app) = find_cvm(&state, &user, &id).await?;
    boot_slot(&state, &cvm).await?;
    state.node.restart(&cvm.id).await?;
    lifecycle_answer(&state, cvm, &app).await
}

async fn delete_cvm(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (cvm, _) = find_cvm(&state, &user, &id).await?;
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
    let (cvm, app) = find_cvm(&state, &user, &id).await?;
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
    boot_slot(&state, &cvm).await?;
    state.db.set_env(&cvm.id, &env, &keys).await?;
    let cvm = state.db.cvm(&cvm.id).await?.unwrap_or(cvm);
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

type LogMac = hmac::Hmac<sha2::Sha256>;

/// The log token's bytes kept (128 bits of the HMAC).
const LOG_TOKEN_BYTES: usize = 16;

/// HMAC-SHA256 of the CVM id under the installation's log secret.
fn log_mac(state: &AppState, cvm_id: &str) -> LogMac {
    use hmac::Mac as _;
    let mut mac = LogMac::new_from_slice(&state.log_secret).expect("HMAC takes any key length");
    mac.update(b"berth-log-token\0");
    mac.update(cvm_id.as_bytes());
    mac
}

/// A capability for this CVM's logs only. Rotating the log secret
/// (`berth up --rotate-log-secret`) makes every log URL handed out before
/// stop working.
fn log_token(state: &AppState, cvm: &Cvm) -> String {
    use hmac::Mac as _;
    hex::encode(&log_mac(state, &cvm.id).finalize().into_bytes()[..LOG_TOKEN_BYTES])
}

/// 401 without a token, 403 with a wrong one (compared in constant time).
fn check_token(state: &AppState, cvm: &Cvm, q: &LogQuery) -> Result<(), ApiError> {
    use hmac::Mac as _;
    let Some(token) = q.token.as_deref() else {
        return Err(ApiError::unauthorized(
            "this log URL has no token: take the URL from GET /cvms/{id}",
        ));
    };
    let ok = hex::decode(token).is_ok_and(|t| {
        t.len() == LOG_TOKEN_BYTES && log_mac(state, &cvm.id).verify_truncated_left(&t).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "this log URL's token is wrong or was revoked: take the URL from GET /cvms/{id} again",
        ))
    }
}

/// The CVM a log URL names, when it is not deleted and the token is right.
async fn log_cvm(state: &AppState, id: &str, q: &LogQuery) -> Result<Cvm, ApiError> {
    let cvm = state
        .db
        .cvm(id)
        .await?
        .filter(|c| c.status != contract::CvmStatus::Deleted)
        .ok_or_else(|| ApiError::not_found("no such CVM"))?;
    check_token(state, &cvm, q)?;
    Ok(cvm)
}

/// The last lines of a file within the byte cap, read on the blocking pool.
async fn read_tail(
    path: std::path::PathBuf,
    lines: Option<usize>,
) -> Result<crate::logs::Tail, ApiError> {
    tokio::task::spawn_blocking(move || {
        crate::logs::tail(&path, lines, crate::logs::MAX_ANSWER_BYTES)
    })
    .await
    .map_err(|_| ApiError::internal("the log reader stopped"))?
    .map_err(|e| ApiError::internal(format!("cannot read the serial log: {}", e.kind())))
}

async fn syslog(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let cvm = log_cvm(&state, &id, &q).await?;
    let channel = q.ch.clone().unwrap_or_else(|| "serial".into());
    let follow = q.follow.is_some();
    let tail = crate::logs::parse_tail(q.tail.as_deref());
    match channel.as_str() {
        "serial" => {
            let path = state.cvms_root.join(&cvm.id).join("serial.log");
            let first = read_tail(path.clone(), tail).await?;
            if !follow {
                return Ok(text(first.bytes));
            }
            // Follow: the tail, then new lines as they are written, until
            // the boot has ended and nothing new came for a while.
            let follower = crate::logs::Follower::after(path, &first);
            let stream = async_stream(first.bytes, follower, state.clone(), cvm.id.clone());
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

fn text(body: impl Into<Body>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

/// A body stream that sends `first`, then whatever is appended to the
/// followed file (read from the follower's offset, on the blocking pool),
/// until the CVM is no longer booting and nothing new arrived for a second
/// (or 30 minutes passed, or [`crate::logs::MAX_FOLLOW_BYTES`] were sent,
/// or the client went away).
fn async_stream(
    first: Vec<u8>,
    follower: crate::logs::Follower,
    state: Shared,
    cvm_id: String,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        if tx.send(Ok(bytes::Bytes::from(first))).await.is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30 * 60);
        let mut follower = Some(follower);
        let mut sent = 0u64;
        let mut quiet = 0;
        while tokio::time::Instant::now() < deadline && !tx.is_closed() {
            let mut f = follower.take().expect("the follower is put back");
            let (f, chunk) = match tokio::task::spawn_blocking(move || {
                let chunk = f.next(64 << 10);
                (f, chunk)
            })
            .await
            {
                Ok(r) => r,
                Err(_) => return,
            };
            follower = Some(f);
            match chunk {
                Ok(chunk) if !chunk.is_empty() => {
                    sent += chunk.len() as u64;
                    quiet = 0;
                    if tx.send(Ok(bytes::Bytes::from(chunk))).await.is_err()
                        || sent >= crate::logs::MAX_FOLLOW_BYTES
                    {
                        return;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            let booting = state
                .db
                .cvm(&cvm_id)
                .await
                .ok()
                .flatten()
                .is_some_and(|c| c.status.in_progress());
            if !booting {
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
    let (cvm, _) = find_cvm(&state, &user, &id).await?;
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

/// One container's output: the last `tail` lines (default
/// [`crate::logs::DEFAULT_TAIL`]), at most [`crate::logs::MAX_ANSWER_BYTES`].
async fn container_logs(
    State(state): State<Shared>,
    Path((id, cid)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let lq = LogQuery {
        token: q.get("token").cloned(),
        tail: q.get("tail").cloned(),
        ..Default::default()
    };
    let cvm = log_cvm(&state, &id, &lq).await?;
    let tail = crate::logs::parse_tail(lq.tail.as_deref());
    let mut out = state.node.one_container_logs(&cvm.id, &cid, tail).await?;
    let cap = crate::logs::MAX_ANSWER_BYTES as usize;
    if out.len() > cap {
        // The end is what matters: cut the front, at a character boundary.
        let mut cut = out.len() - cap;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out.drain(..cut);
    }
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
