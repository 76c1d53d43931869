//! Provisioning checks and the byte-exact `app-compose.json`.

use crate::error::ApiError;
use sha2::Digest as _;

/// Whether `name` is a valid CVM name: 5 to 63 characters, hostname rules
/// (letters, digits, `-`; starts with a letter, does not end with `-`).
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok_len = (5..=63).contains(&name.len());
    let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let ok_ends = name.starts_with(|c: char| c.is_ascii_alphabetic()) && !name.ends_with('-');
    if ok_len && ok_chars && ok_ends {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "name `{}` is not valid: use 5 to 63 letters, digits or `-`, starting with a letter and not ending with `-`",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// Whether `key` is a valid env variable name. The same rule as
/// `envseal::is_valid_key`, restated on purpose: `cloud` must not link
/// `envseal` (it holds the code that opens a sealed env; see ARCHITECTURE.md).
fn valid_env_key(key: &str) -> bool {
    let mut b = key.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && key.len() <= 255
}

/// Checks the compose YAML: it parses, and every service names an image.
/// The boot agent (`guest::compose`) applies the same rules again inside the
/// CVM, which must not trust the control plane's check; `cloud` cannot call
/// `guest` (it would link the env-opening code).
pub fn validate_compose(yaml: &str) -> Result<(), ApiError> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
            .unwrap_or_default();
        ApiError::invalid(format!("the compose file is not valid YAML{at}"))
    })?;
    let services = doc
        .get("services")
        .and_then(|s| s.as_mapping())
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::invalid("the compose file defines no services"))?;
    for (name, svc) in services {
        let name = name.as_str().unwrap_or("?");
        match svc.get("image").and_then(|i| i.as_str()) {
            Some(i) if !i.trim().is_empty() => {}
            _ if svc.get("build").is_some() => {
                return Err(ApiError::invalid(format!(
                    "service `{name}` has only `build:`; a CVM pulls images: build and push it, then name it with `image:`"
                )));
            }
            _ => {
                return Err(ApiError::invalid(format!(
                    "service `{name}` has no `image:`"
                )));
            }
        }
    }
    Ok(())
}

/// The image of every service, in file order (after [`validate_compose`]).
pub fn images(yaml: &str) -> Result<Vec<String>, ApiError> {
    validate_compose(yaml)?;
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml)
        .map_err(|_| ApiError::invalid("the compose file is not valid YAML"))?;
    Ok(doc
        .get("services")
        .and_then(|s| s.as_mapping())
        .map(|m| {
            m.values()
                .filter_map(|s| s.get("image").and_then(|i| i.as_str()).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// What provisioning needs to build an app manifest.
#[derive(Clone, Debug)]
pub struct AppComposeInput<'a> {
    /// The app's name.
    pub name: &'a str,
    /// The compose YAML.
    pub docker_compose_file: &'a str,
    /// Env keys allowed into the CVM.
    pub allowed_envs: &'a [String],
    /// Whether the app's logs are public.
    pub public_logs: bool,
    /// Whether the app's system info is public.
    pub public_sysinfo: bool,
}

/// The manifest bytes, its hash and the app id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltApp {
    /// `app-compose.json`, byte-exact as stored and measured.
    pub bytes: Vec<u8>,
    /// sha256 of the bytes, hex.
    pub compose_hash: String,
    /// First 20 bytes of the hash, hex.
    pub app_id: String,
}

/// Validates and builds `app-compose.json` (keys in a fixed order).
pub fn build(input: &AppComposeInput<'_>) -> Result<BuiltApp, ApiError> {
    validate_compose(input.docker_compose_file)?;
    if let Some(bad) = input.allowed_envs.iter().find(|k| !valid_env_key(k)) {
        return Err(ApiError::invalid(format!(
            "allowed_envs entry `{}` is not a valid variable name",
            bad.chars().take(80).collect::<String>()
        )));
    }
    let mut allowed: Vec<&String> = Vec::new();
    for k in input.allowed_envs {
        if !allowed.contains(&k) {
            allowed.push(k);
        }
    }
    // serde_json's `preserve_order` is off: build the object by hand so the
    // bytes are stable and documented.
    let value = serde_json::json!({
        "allowed_envs": allowed,
        "docker_compose_file": input.docker_compose_file,
        "features": ["kms"],
        "gateway_enabled": false,
        "kms_enabled": true,
        "local_key_provider_enabled": false,
        "manifest_version": 2,
        "name": input.name,
        "no_instance_id": false,
        "public_logs": input.public_logs,
        "public_sysinfo": input.public_sysinfo,
        "public_tcbinfo": false,
        "runner": "docker-compose",
        "secure_time": false,
    });
    let bytes = serde_json::to_vec(&value).expect("json");
    let hash = hex::encode(sha2::Sha256::digest(&bytes));
    Ok(BuiltApp {
        app_id: hash[..40].to_owned(),
        compose_hash: hash,
        bytes,
    })
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
        };
        let a = build(&input).unwrap();
        assert_eq!(a, build(&input).unwrap());
        assert_eq!(&a.compose_hash[..40], a.app_id);
        let v: serde_json::Value = serde_json::from_slice(&a.bytes).unwrap();
        assert_eq!(v["allowed_envs"], serde_json::json!(["A", "B_2"]));
        assert_eq!(v["runner"], "docker-compose");
        let bad = vec!["1X".to_string()];
        assert!(
            build(&AppComposeInput {
                allowed_envs: &bad,
                ..input.clone()
            })
            .is_err()
        );
        assert!(
            build(&AppComposeInput {
                docker_compose_file: "services:\n  x:\n    build: .\n",
                ..input.clone()
            })
            .is_err()
        );
        assert!(
            build(&AppComposeInput {
                docker_compose_file: "services: [",
                ..input
            })
            .is_err()
        );
    }
}
