//! Berth extensions for front ends that check a deployment before sending
//! it (the web console): the rules an env and a registry login must keep
//! (`GET /berth/rules`), and the registry of every image of a compose file
//! (`POST /berth/compose-images`).
//!
//! The rules are defined where they are enforced, and this module only
//! tells them: the guest's limits from [`contract::env_rules::Limits`], the
//! compose policy and image references from [`contract::ComposeFile`]. The
//! name grammar is [`contract::env_rules::is_valid_key`] written as a
//! regular expression for the page, and two rules are enforced in a crate
//! the control plane does not link (`registry`'s credential variables and
//! ECR host grammar); these are data here, pinned to their definitions by
//! `crates/cli/tests/console.rs`, which links both and compares what this
//! route answers (and what the page concludes from it) with what they do.
//! Reserved env-name families are not listed: `POST /cvms/provision`
//! refuses them with [`contract::env_rules::check_tenant_key`], and that
//! request carries names only.

use super::Shared;
use crate::appcompose;
use crate::error::ApiError;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

/// The routes of this module (behind the API key).
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/berth/rules", get(rules))
        .route("/berth/compose-images", post(compose_images))
}

/// The answer of `GET /berth/rules`.
#[derive(Clone, Debug, Serialize)]
pub struct Rules {
    /// Env variable names and the guest's limits.
    pub env: EnvRules,
    /// The registry providers and the variables each one sets.
    pub registry: RegistryRules,
    /// CVM names.
    pub name: NameRules,
}

/// Env variable names and the guest's limits (dstack's guest agent's).
#[derive(Clone, Debug, Serialize)]
pub struct EnvRules {
    /// The name grammar, as an ECMAScript/Rust regular expression.
    pub key_pattern: &'static str,
    /// Longest name, in bytes.
    pub max_key_bytes: usize,
    /// Most variables in one env.
    pub max_vars: usize,
    /// Longest value, in bytes (UTF-8).
    pub max_value_bytes: usize,
    /// Most bytes of names plus values, all variables together.
    pub max_total_bytes: usize,
}

/// The registry logins a CVM reads from its env.
#[derive(Clone, Debug, Serialize)]
pub struct RegistryRules {
    /// The `DSTACK_DOCKER_*` variables (Docker Hub, GHCR, any registry).
    pub docker: DockerVariables,
    /// The `DSTACK_AWS_*` variables (ECR).
    pub ecr: EcrVariables,
    /// `ACCOUNT.dkr.ecr.REGION.amazonaws.com[.cn]`: group 1 is the 12-digit
    /// account, group 2 the region, which must equal the region variable.
    pub ecr_registry_pattern: &'static str,
    /// The registry name of Docker Hub images.
    pub docker_hub: &'static str,
    /// The registry name of GitHub's container registry.
    pub ghcr: &'static str,
}

/// The variable names of a Docker-style login.
#[derive(Clone, Debug, Serialize)]
pub struct DockerVariables {
    /// User name.
    pub username: &'static str,
    /// Password or access token.
    pub password: &'static str,
    /// Registry host (unset: Docker Hub).
    pub registry: &'static str,
}

/// The variable names of an ECR login.
#[derive(Clone, Debug, Serialize)]
pub struct EcrVariables {
    /// AWS access key id.
    pub access_key_id: &'static str,
    /// AWS secret access key.
    pub secret_access_key: &'static str,
    /// AWS region; must be the registry host's.
    pub region: &'static str,
    /// The ECR registry host.
    pub registry: &'static str,
    /// Optional session token of temporary credentials.
    pub session_token: &'static str,
}

/// CVM names ([`contract::cvm_name`], which [`appcompose::validate_name`]
/// checks).
#[derive(Clone, Debug, Serialize)]
pub struct NameRules {
    /// The grammar, as a regular expression.
    pub pattern: &'static str,
    /// Shortest.
    pub min_len: usize,
    /// Longest.
    pub max_len: usize,
    /// The rule in words, as the API's error says it ("use RULE").
    pub rule: &'static str,
}

/// The rules, as this build enforces them.
pub fn current() -> Rules {
    use contract::login;
    const GUEST: contract::env_rules::Limits = contract::env_rules::Limits::GUEST;
    Rules {
        env: EnvRules {
            key_pattern: contract::env_rules::KEY_PATTERN,
            max_key_bytes: GUEST.max_key_bytes,
            max_vars: GUEST.max_vars,
            max_value_bytes: GUEST.max_value_bytes,
            max_total_bytes: GUEST.max_total_bytes,
        },
        registry: RegistryRules {
            docker: DockerVariables {
                username: login::DOCKER_USERNAME,
                password: login::DOCKER_PASSWORD,
                registry: login::DOCKER_REGISTRY,
            },
            ecr: EcrVariables {
                access_key_id: login::AWS_ACCESS_KEY_ID,
                secret_access_key: login::AWS_SECRET_ACCESS_KEY,
                region: login::AWS_REGION,
                registry: login::AWS_ECR_REGISTRY,
                session_token: login::AWS_SESSION_TOKEN,
            },
            ecr_registry_pattern: login::ECR_HOST_PATTERN,
            docker_hub: contract::reference::DOCKER_HUB,
            ghcr: "ghcr.io",
        },
        name: NameRules {
            pattern: contract::cvm_name::PATTERN,
            min_len: contract::cvm_name::MIN_LEN,
            max_len: contract::cvm_name::MAX_LEN,
            rule: contract::cvm_name::RULE,
        },
    }
}

/// `GET /berth/rules`.
pub async fn rules() -> Json<Rules> {
    Json(current())
}

/// The body of `POST /berth/compose-images`.
#[derive(Deserialize)]
pub struct ComposeBody {
    docker_compose_file: String,
}

/// One image of a compose file.
#[derive(Clone, Debug, Serialize)]
pub struct ImageItem {
    /// The service.
    pub service: String,
    /// The image as written.
    pub image: String,
    /// Its registry, normalised (`docker.io` for Docker Hub).
    pub registry: String,
}

/// The answer of `POST /berth/compose-images`.
#[derive(Clone, Debug, Serialize)]
pub struct ComposeImages {
    /// Every service's image, in file order.
    pub images: Vec<ImageItem>,
}

/// `POST /berth/compose-images`: the compose file checked with the one
/// compose policy (422 as provisioning would answer), and the registry of
/// every image.
pub async fn compose_images(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<crate::AppState>>,
    Json(body): Json<ComposeBody>,
) -> Result<Json<ComposeImages>, ApiError> {
    let file = appcompose::validate_compose(&body.docker_compose_file, state.limits.isolation)?;
    Ok(Json(ComposeImages {
        images: file
            .images
            .into_iter()
            .map(|i| ImageItem {
                registry: i.reference.registry().to_owned(),
                service: i.service,
                image: i.written,
            })
            .collect(),
    }))
}
