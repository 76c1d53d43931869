//! The KMS as the API sees it: public keys only. [`kms_env_key`] asks the
//! KMS (its own process) for an app's env public key and signatures;
//! `GET /kms/{kms}/pubkey/{app_id}` hands them to the official clients.
//! The API process cannot mint boot tickets: it never holds the node secret.

use super::views::KmsPubkey;
use super::{AppState, Shared};
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Path, State};

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

/// The env key of `app_id`, from the KMS: 503 while it does not answer,
/// 502 when its answer is not a key.
pub async fn kms_env_key(state: &AppState, app_id: &str) -> Result<KmsEnvKey, ApiError> {
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

/// `GET /kms/{kms}/pubkey/{app_id}`.
pub async fn kms_pubkey(
    State(state): State<Shared>,
    Path((_kms, app_id)): Path<(String, String)>,
) -> Result<Json<KmsPubkey>, ApiError> {
    let app_id = app_id.trim_start_matches("0x").to_ascii_lowercase();
    if app_id.len() != 40 || !app_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::invalid("app_id must be 40 hex characters"));
    }
    let key = kms_env_key(&state, &app_id).await?;
    Ok(Json(KmsPubkey {
        public_key: key.public_key,
        signature: key.signature,
    }))
}

/// `GET /berth/attestation-key`: the public key that checks the
/// simulated quotes of this cloud's CVMs (`berth attest verify` uses it).
pub async fn attestation_key(
    State(state): State<Shared>,
) -> Result<Json<super::views::AttestationKeyView>, ApiError> {
    let url = state.kms.url(contract::kms::PUBKEY_PATH);
    let resp = state.http.get(&url).send().await.map_err(|_| {
        ApiError::unavailable("the KMS is not answering: try again when it is back")
    })?;
    if !resp.status().is_success() {
        return Err(ApiError::upstream(format!(
            "the KMS answered {}",
            resp.status()
        )));
    }
    let answer: contract::kms::KmsPublicKeyAnswer = resp
        .json()
        .await
        .map_err(|_| ApiError::upstream("the KMS answered without a key"))?;
    Ok(Json(super::views::AttestationKeyView {
        attestation_public_key: answer.attestation_public_key,
        kms_public_key: answer.kms_public_key,
        simulated: true,
        note: "quotes of this cloud's CVMs are signed by this key, not by Intel TDX hardware: a quote that verifies proves what this cloud's node ran, not what a TEE measured",
    }))
}

/// Asks the KMS to make `compose_hash` the app's accepted hash. A refusal
/// (an owner-authorized app without its owner's fresh signature) is a 403
/// with the KMS's sentence; nothing is changed then.
pub async fn register_compose_hash(
    state: &AppState,
    app_id: &str,
    genesis: &[u8],
    compose_hash: &str,
    authorization: Option<contract::upgrade::OwnerAuthorization>,
) -> Result<contract::kms::AppUpgradeState, ApiError> {
    let url = state.kms.url(&contract::kms::compose_hash_path(app_id));
    let body = contract::kms::ComposeHashRegistration {
        genesis_app_compose: hex::encode(genesis),
        compose_hash: compose_hash.to_owned(),
        authorization,
    };
    let resp = state
        .http
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|_| {
            ApiError::unavailable("the KMS is not answering: updates wait until it is back")
        })?;
    let status = resp.status();
    if status.is_success() {
        return resp
            .json()
            .await
            .map_err(|_| ApiError::upstream("the KMS answered without the app's state"));
    }
    let detail = resp
        .json::<contract::kms::ErrorAnswer>()
        .await
        .map(|e| e.detail)
        .unwrap_or_else(|_| format!("the KMS answered {status}"));
    Err(match status.as_u16() {
        403 => ApiError::forbidden(detail),
        400 => ApiError::invalid(detail),
        503 => ApiError::unavailable(detail),
        _ => ApiError::upstream(detail),
    })
}

/// What the KMS holds for the app: `None` when it was never updated.
pub async fn upgrade_state(
    state: &AppState,
    app_id: &str,
) -> Result<Option<contract::kms::AppUpgradeState>, ApiError> {
    let url = state.kms.url(&contract::kms::compose_hash_path(app_id));
    let resp = state.http.get(&url).send().await.map_err(|_| {
        ApiError::unavailable(
            "the KMS is not answering: the app's upgrade state is unknown until it is back",
        )
    })?;
    if resp.status().as_u16() == 404 {
        return Ok(None);
    }
    if !resp.status().is_success() {
        return Err(ApiError::upstream(format!(
            "the KMS answered {}",
            resp.status()
        )));
    }
    resp.json()
        .await
        .map(Some)
        .map_err(|_| ApiError::upstream("the KMS answered without the app's state"))
}
