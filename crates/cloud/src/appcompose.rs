//! Provisioning checks and the byte-exact `app-compose.json`.

use crate::error::ApiError;
pub use contract::AppComposeInput;
use contract::{ComposeFile, ImagePolicy, Isolation, Measurement};

/// Whether `name` is a valid CVM name ([`contract::cvm_name`]).
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    if contract::cvm_name::is_valid(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "name `{}` is not valid: use {}",
            name.chars().take(80).collect::<String>(),
            contract::cvm_name::RULE
        )))
    }
}

/// Checks the compose YAML with the compose rules of CVMs isolated as
/// `isolation` ([`contract::policy`]), the same code the boot agent runs
/// again inside the CVM.
pub fn validate_compose(yaml: &str, isolation: Isolation) -> Result<ComposeFile, ApiError> {
    ComposeFile::parse_and_check_for(yaml, isolation).map_err(|e| ApiError::invalid(e.message))
}

/// The image of every service, in file order (after [`validate_compose`]).
pub fn images(yaml: &str, isolation: Isolation) -> Result<Vec<String>, ApiError> {
    Ok(validate_compose(yaml, isolation)?
        .images
        .into_iter()
        .map(|i| i.written)
        .collect())
}

/// The manifest bytes, its hash and the app id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltApp {
    /// `app-compose.json`, byte-exact as stored and measured.
    pub bytes: Vec<u8>,
    /// sha256 of the bytes, hex.
    pub compose_hash: String,
    /// The app id: the first 20 bytes of the hash of the app's first
    /// manifest, hex.
    pub app_id: String,
}

/// Validates and builds `app-compose.json`: the compose policy, then every
/// allowed env name (grammar and reserved families, so a tenant hears at
/// provisioning, not at boot, that `LD_PRELOAD` is not theirs to set).
pub fn build(input: &AppComposeInput<'_>, isolation: Isolation) -> Result<BuiltApp, ApiError> {
    validate_compose(input.docker_compose_file, isolation)?;
    if let Some(key) = input.owner_key {
        let k = contract::app::normalize_hex(key);
        let ok = k.len() == 66
            && (k.starts_with("02") || k.starts_with("03"))
            && k.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return Err(ApiError::invalid(
                "berth_owner_key must be a compressed secp256k1 public key (66 hex characters starting with 02 or 03)",
            ));
        }
    }
    for key in input.allowed_envs {
        contract::env_rules::check_tenant_key(key)
            .map_err(|e| ApiError::invalid(format!("allowed_envs: {e}")))?;
    }
    let bytes = input.render();
    let m = Measurement::of(&bytes);
    Ok(BuiltApp {
        app_id: m.app_id,
        compose_hash: m.compose_hash,
        bytes,
    })
}

/// What is asked of a manifest's images besides the compose policy.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImageRules<'a> {
    /// The app's image policy, rendered into the manifest (so the compose
    /// hash measures it).
    pub policy: Option<&'a ImagePolicy>,
    /// The operator refuses images without a digest (`berth up
    /// --require-digests`).
    pub operator_requires_digests: bool,
}

/// Reads the image policy a client sent (`berth_image_policy`): a
/// malformed one is a 400 with the sentence saying what is wrong.
pub fn image_policy(value: Option<&serde_json::Value>) -> Result<Option<ImagePolicy>, ApiError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => ImagePolicy::from_value(v)
            .map(Some)
            .map_err(|e| ApiError::invalid(e.to_string())),
    }
}

/// [`build`] with the app's image policy and the operator's rule on
/// digests: an image without a digest that either requires is refused with
/// a sentence naming it (the boot agent checks the policy again).
pub fn build_with_images(
    input: &AppComposeInput<'_>,
    isolation: Isolation,
    images: ImageRules<'_>,
) -> Result<BuiltApp, ApiError> {
    let compose = validate_compose(input.docker_compose_file, isolation)?;
    let policy_requires = images.policy.is_some_and(|p| p.require_digests);
    if (images.operator_requires_digests || policy_requires)
        && let Some(subject) = contract::image_policy::first_unpinned(&compose)
    {
        let who = if images.operator_requires_digests {
            "this cloud's operator"
        } else {
            "the app's image policy"
        };
        return Err(ApiError::invalid(
            contract::image_policy::unpinned_sentence(&subject, who),
        ));
    }
    let mut built = build(input, isolation)?;
    if images.policy.is_some_and(|p| !p.is_empty()) {
        built.bytes = input.render_with_policy(images.policy);
        let m = Measurement::of(&built.bytes);
        built.app_id = m.app_id;
        built.compose_hash = m.compose_hash;
    }
    Ok(built)
}

/// Builds the next manifest of the app `app_id` (an update): the same
/// checks as [`build`]; the app id stays the one its first manifest fixed.
pub fn build_update(
    input: &AppComposeInput<'_>,
    app_id: &str,
    isolation: Isolation,
) -> Result<BuiltApp, ApiError> {
    build_update_with_images(input, app_id, isolation, ImageRules::default())
}

/// [`build_update`] with [`ImageRules`] (see [`build_with_images`]).
pub fn build_update_with_images(
    input: &AppComposeInput<'_>,
    app_id: &str,
    isolation: Isolation,
    images: ImageRules<'_>,
) -> Result<BuiltApp, ApiError> {
    let mut built = build_with_images(input, isolation, images)?;
    built.app_id = app_id.to_owned();
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["my-private-app", "abcde", "a1234"] {
            validate_name(ok).unwrap();
        }
        for bad in ["abcd", "1abcde", "abcde-", "ab_cde", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn builds_stable_manifest() {
        let envs = vec!["A".to_string(), "B_2".to_string(), "A".to_string()];
        let input = AppComposeInput {
            name: "my-app",
            docker_compose_file: "services:\n  web:\n    image: nginx\n",
            allowed_envs: &envs,
            public_logs: true,
            public_sysinfo: true,
            owner: None,
            owner_key: None,
        };
        let a = build(&input, Isolation::Shared).unwrap();
        assert_eq!(a, build(&input, Isolation::Shared).unwrap());
        assert_eq!(&a.compose_hash[..40], a.app_id);
        let v: serde_json::Value = serde_json::from_slice(&a.bytes).unwrap();
        assert_eq!(v["allowed_envs"], serde_json::json!(["A", "B_2"]));
        assert_eq!(v["runner"], "docker-compose");
        let bad = vec!["1X".to_string()];
        assert!(
            build(
                &AppComposeInput {
                    allowed_envs: &bad,
                    ..input.clone()
                },
                Isolation::Shared
            )
            .is_err()
        );
        assert!(
            build(
                &AppComposeInput {
                    docker_compose_file: "services:\n  x:\n    build: .\n",
                    ..input.clone()
                },
                Isolation::Shared
            )
            .is_err()
        );
        assert!(
            build(
                &AppComposeInput {
                    docker_compose_file: "services: [",
                    ..input
                },
                Isolation::Shared
            )
            .is_err()
        );
    }
}
