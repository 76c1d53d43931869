//! The KMS's HTTP edge, run as its own process (`berth kms serve`), so the
//! control plane holds no env private key and links no code that derives one.
//!
//! - `GET /kms/v1/pubkey`: the KMS public key clients pin.
//! - `GET /kms/v1/apps/{app_id}/env-pubkey`: the app's env public key with
//!   dstack's two signatures (legacy and timestamped).
//! - `POST /kms/v1/env-key` `{app_id, compose_hash, attestation}`: the app's
//!   env *private* key, released only when the presented `compose_hash`
//!   measures to that `app_id` (its first 20 bytes). **Simulated TEE**: the
//!   measurement is taken on trust; with TDX it would come inside a quote the
//!   KMS verifies. Every release is logged (app id and hash, never the key).
//!
//! This module is the only part of the crate that does network I/O or reads
//! the clock.

use crate::{AppId, KmsRootKey};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;

fn error(status: StatusCode, detail: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "detail": detail.into() }))).into_response()
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The KMS's routes over `root`.
pub fn router(root: Arc<KmsRootKey>) -> Router {
    Router::new()
        .route("/kms/v1/pubkey", get(pubkey))
        .route("/kms/v1/apps/{app_id}/env-pubkey", get(env_pubkey))
        .route("/kms/v1/env-key", post(env_key))
        .with_state(root)
}

async fn pubkey(State(root): State<Arc<KmsRootKey>>) -> Response {
    Json(serde_json::json!({ "kms_public_key": root.public_key().to_hex() })).into_response()
}

async fn env_pubkey(State(root): State<Arc<KmsRootKey>>, Path(app_id): Path<String>) -> Response {
    let Ok(app) = AppId::from_hex(&app_id) else {
        return error(
            StatusCode::BAD_REQUEST,
            "app_id must be 40 hex characters (20 bytes)",
        );
    };
    let signed = root.signed_env_public_key(&app, now_unix());
    Json(serde_json::json!({
        "app_id": app.to_hex(),
        "public_key": signed.public_key.to_hex(),
        "timestamp": signed.timestamp,
        "signature": signed.signature.to_hex(),
        "signature_v1": signed.signature_v1.to_hex(),
        "kms_public_key": root.public_key().to_hex(),
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
struct KeyRequest {
    app_id: String,
    compose_hash: String,
}

async fn env_key(State(root): State<Arc<KmsRootKey>>, Json(req): Json<KeyRequest>) -> Response {
    let Ok(app) = AppId::from_hex(&req.app_id) else {
        return error(
            StatusCode::BAD_REQUEST,
            "app_id must be 40 hex characters (20 bytes)",
        );
    };
    let hash = req
        .compose_hash
        .trim_start_matches("0x")
        .to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return error(
            StatusCode::BAD_REQUEST,
            "compose_hash must be 64 hex characters (sha256)",
        );
    }
    if hash[..40] != app.to_hex() {
        eprintln!(
            "kms: refused the env key of app {} to a CVM measuring compose hash {hash}",
            app.to_hex()
        );
        return error(
            StatusCode::FORBIDDEN,
            "the presented compose hash does not belong to this app: the key is released only to a CVM running the app's registered app-compose.json",
        );
    }
    eprintln!(
        "kms: released the env key of app {} to a CVM measuring compose hash {hash} (simulated TEE: measurement not hardware-attested)",
        app.to_hex()
    );
    let key = root.env_key_for(&app);
    let hex = key.to_hex();
    Json(serde_json::json!({ "app_id": app.to_hex(), "env_private_key": hex.as_str() }))
        .into_response()
}

/// Serves the KMS on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    root: Arc<KmsRootKey>,
) -> std::io::Result<()> {
    axum::serve(listener, router(root)).await
}
