//! Updating an app in place: `PATCH /cvms/{id}` (what `phala deploy
//! --cvm-id` and `berth deploy --update` send), the current compose file
//! (`GET /cvms/{id}/docker-compose.yml`), the app's accepted versions
//! (`GET /cvms/{id}/history`, Berth) and a new env (`PATCH /cvms/{id}/envs`,
//! an update when it names variables the manifest does not allow).
//!
//! An update keeps the CVM, its app id, its env key and its state folder:
//! the next manifest is built with the same name, owner salt and owner key,
//! the KMS is asked to accept its compose hash (cloud-authorized apps on the
//! control plane's word, owner-authorized apps only with the owner's
//! signature: the control plane cannot forge one), and only then is it
//! recorded and the CVM restarted on it. A refused update changes nothing:
//! the CVM goes on running what it ran.

use super::helpers::{decode_env, find_cvm};
use super::kms::{register_compose_hash, upgrade_state};
use super::views::{EnvsUpdated, History, HistoryEntry, Manifest, SignedEnvKey, Updated};
use super::{AppState, Shared};
use crate::appcompose::{self, AppComposeInput};
use crate::db::{App, AppUpdate, Cvm, User};
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;

/// The body of `PATCH /cvms/{id}`, as the official CLI sends it, plus
/// Berth's owner authorization.
#[derive(serde::Deserialize)]
pub struct UpdateBody {
    docker_compose_file: String,
    #[serde(default)]
    allowed_envs: Option<Vec<String>>,
    #[serde(default)]
    encrypted_env: Option<String>,
    #[serde(default)]
    public_logs: Option<bool>,
    #[serde(default)]
    public_sysinfo: Option<bool>,
    #[serde(default)]
    pre_launch_script: Option<String>,
    /// The owner's signature over (app id, new compose hash, counter).
    #[serde(default)]
    berth_owner_authorization: Option<contract::upgrade::OwnerAuthorization>,
    /// The app's next image policy; absent: the current one is kept (`{}`
    /// drops it, which for an owner-authorized app takes the owner's
    /// signature like any update).
    #[serde(default)]
    berth_image_policy: Option<serde_json::Value>,
}

/// What a new version of an app is made of.
pub(super) struct NewVersion<'a> {
    /// The compose YAML.
    pub compose: &'a str,
    /// Env names allowed into the CVM (`None`: the current ones).
    pub allowed_envs: Option<Vec<String>>,
    /// `None`: as now.
    pub public_logs: Option<bool>,
    /// `None`: as now.
    pub public_sysinfo: Option<bool>,
    /// The image policy (`None`: as now).
    pub image_policy: Option<contract::ImagePolicy>,
}

/// A new version, built and checked but not applied.
pub(super) struct Prepared {
    built: appcompose::BuiltApp,
    genesis: Vec<u8>,
    /// `cloud` or `owner`, from the first manifest.
    pub model: &'static str,
    allowed: Vec<String>,
}

/// Builds the app's next manifest: same name, owner salt and (from the
/// first manifest, which the app id measures and the KMS reads too, so an
/// update cannot drop or swap it) owner key; the compose policy and the
/// env-name rules as at provisioning.
pub(super) async fn prepare(
    state: &AppState,
    user: &User,
    app: &App,
    next: NewVersion<'_>,
) -> Result<Prepared, ApiError> {
    let current = Manifest::of(app);
    let allowed = next
        .allowed_envs
        .unwrap_or_else(|| current.allowed_envs.clone());
    let name = current.name.clone().unwrap_or_else(|| app.name.clone());
    let salt = current
        .berth_owner
        .clone()
        .unwrap_or_else(|| user.app_salt.clone());
    let genesis = state
        .db
        .genesis_compose(&app.app_id)
        .await?
        .ok_or_else(|| ApiError::internal("the app's first manifest is missing"))?;
    let genesis_manifest: Manifest = serde_json::from_slice(&genesis).unwrap_or_default();
    let image_policy = match next.image_policy {
        Some(p) => Some(p),
        None => appcompose::image_policy(current.berth_image_policy.as_ref())?,
    };
    let built = appcompose::build_update_with_images(
        &AppComposeInput {
            name: &name,
            docker_compose_file: next.compose,
            allowed_envs: &allowed,
            public_logs: next.public_logs.or(current.public_logs).unwrap_or(true),
            public_sysinfo: next
                .public_sysinfo
                .or(current.public_sysinfo)
                .unwrap_or(true),
            owner: Some(&salt),
            owner_key: genesis_manifest.berth_owner_key.as_deref(),
        },
        &app.app_id,
        state.limits.isolation,
        appcompose::ImageRules {
            policy: image_policy.as_ref(),
            operator_requires_digests: state.limits.require_digests,
        },
    )?;
    Ok(Prepared {
        built,
        genesis,
        model: genesis_manifest.upgrade_authority(),
        allowed,
    })
}

/// Applies a prepared version: the KMS first (if it refuses, nothing has
/// changed), then the app's manifest, its history and the CVM's env in one
/// transaction, then a restart.
pub(super) async fn apply(
    state: &AppState,
    cvm: &Cvm,
    prepared: Prepared,
    env: Option<Vec<u8>>,
    authorization: Option<contract::upgrade::OwnerAuthorization>,
) -> Result<Updated, ApiError> {
    // One update of an app at a time, on every replica, so the KMS's
    // accepted hash and the database's current manifest are changed in the
    // same order: a lease row in the database (a replica that dies holding
    // it loses it after UPDATE_LEASE).
    let holder = uuid::Uuid::new_v4().to_string();
    take_update_lease(state, &cvm.app_id, &holder).await?;
    let applied = apply_leased(state, cvm, prepared, env, authorization).await;
    if let Err(e) = state.db.unlock_app(&cvm.app_id, &holder).await {
        eprintln!(
            "api: the update lease of app {} stays until it expires: {e}",
            cvm.app_id
        );
    }
    applied
}

/// How long an update may hold its app's lease: far past any update (the
/// KMS call, one transaction, a restart request), so it only matters when
/// the replica holding it died.
const UPDATE_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// How long an update waits for another update of the same app to end
/// before it answers 409.
const UPDATE_LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes the app's update lease, waiting up to [`UPDATE_LEASE_WAIT`] for
/// an update in progress (on any replica) to end; 409 when it does not.
async fn take_update_lease(state: &AppState, app_id: &str, holder: &str) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + UPDATE_LEASE_WAIT;
    let mut pause = std::time::Duration::from_millis(50);
    loop {
        if state.db.try_lock_app(app_id, holder, UPDATE_LEASE).await? {
            return Ok(());
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Err(ApiError::conflict(
                "an update of this app is in progress: try again when it has finished",
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(500));
    }
}

/// [`apply`] once the app's update lease is held.
async fn apply_leased(
    state: &AppState,
    cvm: &Cvm,
    prepared: Prepared,
    env: Option<Vec<u8>>,
    authorization: Option<contract::upgrade::OwnerAuthorization>,
) -> Result<Updated, ApiError> {
    let app = state
        .db
        .app(&cvm.app_id)
        .await?
        .ok_or_else(|| ApiError::not_found("the app is gone"))?;
    let Prepared {
        built,
        genesis,
        allowed,
        ..
    } = prepared;
    // (If the database write below fails after the KMS accepted, the next
    // boot is refused its key until the same update is sent again, which
    // the KMS takes as a no-op and the database then records.)
    let accepted = register_compose_hash(
        state,
        &app.app_id,
        &genesis,
        &built.compose_hash,
        authorization,
    )
    .await?;
    let env = env.map(|e| (e, allowed));
    if built.compose_hash != app.compose_hash {
        let authorized_by = match accepted.owner_key.as_deref() {
            Some(k) => format!("owner key {}…", &k[..k.len().min(16)]),
            None => "cloud".to_owned(),
        };
        state
            .db
            .apply_update(
                &app.app_id,
                AppUpdate {
                    cvm_id: cvm.id.clone(),
                    app_compose: built.bytes,
                    compose_hash: built.compose_hash.clone(),
                    authorized_by,
                    counter: accepted.counter,
                    env,
                },
            )
            .await?;
    } else if let Some((env, keys)) = &env {
        state.db.set_env(&cvm.id, env, keys).await?;
    }
    state.node.restart(&cvm.id).await?;
    Ok(Updated {
        correlation_id: uuid::Uuid::new_v4().to_string(),
        status: "in_progress",
        app_id: app.app_id,
        compose_hash: built.compose_hash,
        upgrade_authority: accepted.model,
        counter: accepted.counter,
        app_compose: None,
        env_key: None,
    })
}

/// `PATCH /cvms/{id}`: a new compose file (and optionally allowed envs and
/// a new sealed env) for a running app. With `X-Prepare-Only: true`, only
/// the new manifest and its hash are returned (what an owner checks and
/// signs); nothing changes.
pub async fn update_cvm(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<UpdateBody>,
) -> Result<Json<Updated>, ApiError> {
    let (cvm, app) = find_cvm(&state, &user, &id).await?;
    if body
        .pre_launch_script
        .as_deref()
        .is_some_and(|s| !s.trim().is_empty())
    {
        return Err(ApiError::unsupported(
            "a pre-launch script (Berth's boot agent replaces it)",
        ));
    }
    let prepared = prepare(
        &state,
        &user,
        &app,
        NewVersion {
            compose: &body.docker_compose_file,
            allowed_envs: body.allowed_envs.clone(),
            public_logs: body.public_logs,
            public_sysinfo: body.public_sysinfo,
            image_policy: appcompose::image_policy(body.berth_image_policy.as_ref())?,
        },
    )
    .await?;
    let env = body.encrypted_env.as_deref().map(decode_env).transpose()?;
    let prepare_only = headers
        .get("x-prepare-only")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if prepare_only {
        let counter = upgrade_state(&state, &app.app_id)
            .await?
            .map_or(0, |s| s.counter);
        let key = super::kms::kms_env_key(&state, &app.app_id).await?;
        return Ok(Json(Updated {
            env_key: Some(SignedEnvKey {
                app_env_encrypt_pubkey: key.public_key,
                app_env_encrypt_pubkey_signature: key.signature,
                app_env_encrypt_pubkey_signature_v1: key.signature_v1,
                app_env_encrypt_pubkey_timestamp: key.timestamp,
            }),
            correlation_id: uuid::Uuid::new_v4().to_string(),
            status: "prepared",
            app_id: app.app_id,
            compose_hash: prepared.built.compose_hash,
            upgrade_authority: prepared.model.to_owned(),
            counter,
            app_compose: Some(String::from_utf8_lossy(&prepared.built.bytes).into_owned()),
        }));
    }
    Ok(Json(
        apply(&state, &cvm, prepared, env, body.berth_owner_authorization).await?,
    ))
}

/// The body of `PATCH /cvms/{id}/envs`.
#[derive(serde::Deserialize)]
pub struct EnvsBody {
    encrypted_env: String,
    #[serde(default)]
    env_keys: Option<Vec<String>>,
}

/// `PATCH /cvms/{id}/envs`: a new sealed env, taking effect at the boot
/// that starts now. All variables are replaced together; names outside the
/// app's `allowed_envs` change its manifest (an update, as
/// [`update_cvm`]'s): done for a cloud-authorized app, refused for an
/// owner-authorized one, whose manifest only its owner can sign.
pub async fn update_envs(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
    Json(body): Json<EnvsBody>,
) -> Result<Json<EnvsUpdated>, ApiError> {
    let (cvm, app) = find_cvm(&state, &user, &id).await?;
    let env = decode_env(&body.encrypted_env)?;
    let keys = body
        .env_keys
        .clone()
        .unwrap_or_else(|| cvm.env_keys.clone());
    let manifest = Manifest::of(&app);
    let allowed = &manifest.allowed_envs;
    if keys.iter().any(|k| !allowed.contains(k)) {
        let compose = manifest.docker_compose_file.clone().unwrap_or_default();
        let prepared = prepare(
            &state,
            &user,
            &app,
            NewVersion {
                compose: &compose,
                allowed_envs: Some(keys.clone()),
                public_logs: None,
                public_sysinfo: None,
                image_policy: None,
            },
        )
        .await?;
        if prepared.model == "owner" {
            return Err(ApiError::forbidden(
                "this app is owner-authorized: new env variable names change its manifest, which only its owner can sign; update it with `berth deploy --update ID -c docker-compose.yml -e .env`; nothing was changed",
            ));
        }
        let answer = apply(&state, &cvm, prepared, Some(env), None).await?;
        return Ok(Json(EnvsUpdated::new(true, answer.correlation_id)));
    }
    state.db.set_env(&cvm.id, &env, &keys).await?;
    let cvm = state.db.cvm(&cvm.id).await?.unwrap_or(cvm);
    // The new env takes effect at the next boot, which starts now.
    state.node.restart(&cvm.id).await?;
    Ok(Json(EnvsUpdated::new(
        false,
        uuid::Uuid::new_v4().to_string(),
    )))
}

/// `GET /cvms/{id}/docker-compose.yml`: the compose file the CVM runs now.
pub async fn compose_file(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (_, app) = find_cvm(&state, &user, &id).await?;
    let yaml = Manifest::of(&app).docker_compose_file.unwrap_or_default();
    Ok((
        [(header::CONTENT_TYPE, "application/yaml; charset=utf-8")],
        yaml,
    ))
}

/// `GET /cvms/{id}/history`: the app's accepted versions, oldest first.
pub async fn history(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<History>, ApiError> {
    let (_, app) = find_cvm(&state, &user, &id).await?;
    let versions = state.db.app_history(&app.app_id).await?;
    let genesis_manifest: Manifest = versions
        .first()
        .and_then(|v| serde_json::from_slice(&v.app_compose).ok())
        .unwrap_or_default();
    let counter = upgrade_state(&state, &app.app_id)
        .await?
        .map_or(0, |s| s.counter);
    let last = versions.len().saturating_sub(1);
    Ok(Json(History {
        upgrade_authority: genesis_manifest.upgrade_authority().to_owned(),
        owner_key: genesis_manifest.berth_owner_key.clone(),
        compose_hash: app.compose_hash.clone(),
        counter,
        versions: versions
            .into_iter()
            .enumerate()
            .map(|(i, v)| HistoryEntry {
                current: i == last,
                compose_hash: v.compose_hash,
                authorized_by: v.authorized_by,
                counter: v.counter,
                created_at: v.created_at,
            })
            .collect(),
        app_id: app.app_id,
    }))
}
