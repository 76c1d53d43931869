//! Deploying, in the official clients' two steps: **provision**
//! (`POST /cvms/provision`: the compose file is checked and measured into
//! the user's `app-compose.json`, and the KMS's env public key for that app
//! is returned to seal to) and **commit** (`POST /cvms`: the sealed env is
//! stored as opaque bytes, the CVM row made, and the node told to boot it).

use super::helpers::decode_env;
use super::kms::kms_env_key;
use super::views::{Manifest, ProvisionAnswer};
use super::{AppState, Shared};
use crate::appcompose::{self, AppComposeInput};
use crate::db::{App, NewCvm, User};
use crate::error::ApiError;
use axum::Json;
use axum::extract::State;

/// The body of `POST /cvms/provision`, as the official CLI sends it.
#[derive(serde::Deserialize)]
pub struct ProvisionBody {
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
    /// Berth: the owner's upgrade key (compressed secp256k1, hex). With it,
    /// only compose hashes the owner signs ever get the app's env key.
    #[serde(default)]
    berth_owner_key: Option<String>,
    /// Berth: the app's image policy (`contract::image_policy`), measured
    /// in its manifest.
    #[serde(default)]
    berth_image_policy: Option<serde_json::Value>,
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

/// `POST /cvms/provision`.
pub async fn provision(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Json(body): Json<ProvisionBody>,
) -> Result<Json<ProvisionAnswer>, ApiError> {
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
    let image_policy = appcompose::image_policy(body.berth_image_policy.as_ref())?;
    let built = appcompose::build_with_images(
        &AppComposeInput {
            name: &body.name,
            docker_compose_file: &body.compose_file.docker_compose_file,
            allowed_envs: &body.compose_file.allowed_envs,
            public_logs: body.compose_file.public_logs,
            public_sysinfo: body.compose_file.public_sysinfo,
            owner: Some(&user.app_salt),
            owner_key: body
                .berth_owner_key
                .as_deref()
                .filter(|k| !k.trim().is_empty()),
        },
        state.limits.isolation,
        appcompose::ImageRules {
            policy: image_policy.as_ref(),
            operator_requires_digests: state.limits.require_digests,
        },
    )?;
    let key = kms_env_key(&state, &built.app_id).await?;
    // The user's cap on apps never committed, and their expiry, are kept
    // in the insert's transaction.
    let stored = state
        .db
        .provision_app(
            &App {
                app_id: built.app_id.clone(),
                user_id: user.id,
                name: body.name.clone(),
                app_compose: built.bytes,
                compose_hash: built.compose_hash.clone(),
                env_pubkey: key.public_key.clone(),
                env_pubkey_signature: key.signature.clone(),
            },
            state.limits,
        )
        .await?;
    if stored.user_id != user.id {
        // Only a sha256 collision of two salted manifests gets here.
        return Err(ApiError::internal(
            "this manifest's app id is already taken; change the name",
        ));
    }
    let (vcpu, memory, disk_size) = resources(&body);
    Ok(Json(ProvisionAnswer {
        app_id: built.app_id,
        app_env_encrypt_pubkey: key.public_key,
        compose_hash: built.compose_hash,
        instance_type: body.instance_type.unwrap_or_else(|| "tdx.small".to_owned()),
        vcpu,
        memory,
        disk_size,
        app_env_encrypt_pubkey_signature: key.signature,
        app_env_encrypt_pubkey_signature_v1: key.signature_v1,
        app_env_encrypt_pubkey_timestamp: key.timestamp,
        kms_public_key: key.kms_public_key,
    }))
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

/// (vCPUs, memory in MB, disk in GB): what was asked, else the instance
/// type's.
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

/// The body of `POST /cvms`.
#[derive(serde::Deserialize)]
pub struct CommitBody {
    app_id: String,
    compose_hash: String,
    #[serde(default)]
    encrypted_env: Option<String>,
    #[serde(default)]
    env_keys: Option<Vec<String>>,
    #[serde(default)]
    name: Option<String>,
}

/// `POST /cvms`: the CVM, answered in the `2025-10-28` shape.
pub async fn commit(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Json(body): Json<CommitBody>,
) -> Result<Json<super::views::CvmLegacy>, ApiError> {
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
    let keys = body
        .env_keys
        .clone()
        .unwrap_or_else(|| Manifest::of(&app).allowed_envs);
    let name = body.name.clone().unwrap_or_else(|| app.name.clone());
    appcompose::validate_name(&name)?;
    // Name uniqueness and the quotas are checked in the insert's
    // transaction; the boot waits in the node's queue for a slot.
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
    super::cvms::lifecycle_answer(&state, cvm, &app).await
}
