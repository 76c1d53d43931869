//! The host-shared folder a CVM receives: `app-compose.json`,
//! `encrypted-env`, `sys-config.json`, and what is measured from them.

use crate::error::BootError;
use envseal::SealedEnv;
use registry::Category;
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::path::Path;

/// `app-compose.json`: the app's manifest. Unknown fields are kept (they are
/// part of the measured bytes) and ignored.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct AppCompose {
    /// Manifest version.
    #[serde(default)]
    pub manifest_version: Option<serde_json::Value>,
    /// The app's name.
    pub name: String,
    /// `docker-compose` (the only runner Berth supports).
    pub runner: String,
    /// The compose YAML, as a string.
    #[serde(default)]
    pub docker_compose_file: Option<String>,
    /// Env keys that survive decryption.
    #[serde(default)]
    pub allowed_envs: Vec<String>,
    /// Whether the env key comes from the KMS.
    #[serde(default)]
    pub kms_enabled: bool,
    /// Whether the app's logs are public.
    #[serde(default)]
    pub public_logs: bool,
}

/// The app's identity as measured at boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measurement {
    /// sha256 of the exact `app-compose.json` bytes, hex.
    pub compose_hash: String,
    /// The app id: the first 20 bytes of the compose hash, hex (unless pinned).
    pub app_id: String,
}

impl Measurement {
    /// Measures the exact bytes of `app-compose.json`.
    pub fn of(app_compose_bytes: &[u8]) -> Self {
        let hash = hex::encode(sha2::Sha256::digest(app_compose_bytes));
        Self {
            app_id: hash[..40].to_owned(),
            compose_hash: hash,
        }
    }
}

/// `sys-config.json`: what the platform (not the app) tells the agent.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct SysConfig {
    /// The KMS to ask for the env key.
    pub kms_url: Option<String>,
    /// Registry name to endpoint URL (mirrors, caches, test registries).
    pub registry_endpoints: BTreeMap<String, String>,
    /// Extra trusted CA certificates, PEM text.
    pub ca_certs: Vec<String>,
    /// ECR API endpoint override.
    pub aws_endpoint_url_ecr: Option<String>,
    /// The compose project name (the node sets one unique per CVM).
    pub project_name: Option<String>,
    /// App id pinned by the platform instead of the measured one.
    pub app_id: Option<String>,
}

/// Everything read from the host-shared folder.
#[derive(Debug)]
pub struct HostShared {
    /// The exact bytes of `app-compose.json` (what is measured).
    pub app_compose_bytes: Vec<u8>,
    /// Its parsed form.
    pub app_compose: AppCompose,
    /// The sealed env, if any.
    pub sealed_env: Option<SealedEnv>,
    /// The platform's settings.
    pub sys_config: SysConfig,
}

impl HostShared {
    /// Reads `dir`.
    pub fn read(dir: &Path) -> Result<Self, BootError> {
        let path = dir.join("app-compose.json");
        let app_compose_bytes = std::fs::read(&path).map_err(|e| {
            BootError::new(
                Category::Config,
                format!("cannot read {}: {e}", path.display()),
            )
            .hint("the host-shared folder must hold the app's app-compose.json")
        })?;
        let app_compose: AppCompose = serde_json::from_slice(&app_compose_bytes).map_err(|e| {
            BootError::new(
                Category::Config,
                format!("app-compose.json is not a valid app manifest (line {}, column {}): {}", e.line(), e.column(), json_reason(&e)),
            )
            .hint("it needs at least \"name\", \"runner\": \"docker-compose\" and \"docker_compose_file\"")
        })?;
        if app_compose.runner != "docker-compose" {
            return Err(BootError::new(
                Category::Config,
                format!(
                    "app-compose.json asks for runner `{}`; Berth runs `docker-compose` apps",
                    app_compose.runner
                ),
            ));
        }
        let env_path = dir.join("encrypted-env");
        let sealed_env = match std::fs::read(&env_path) {
            Ok(bytes) if bytes.iter().all(|b| b.is_ascii_whitespace()) => None,
            Ok(bytes) => Some(
                SealedEnv::from_file_contents(bytes)
                    .map_err(|e| BootError::new(Category::Config, format!("encrypted-env: {e}")))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(BootError::new(
                    Category::Config,
                    format!("cannot read {}: {e}", env_path.display()),
                ));
            }
        };
        let sys_path = dir.join("sys-config.json");
        let sys_config = match std::fs::read(&sys_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                BootError::new(
                    Category::Config,
                    format!(
                        "sys-config.json is not valid (line {}, column {}): {}",
                        e.line(),
                        e.column(),
                        json_reason(&e)
                    ),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SysConfig::default(),
            Err(e) => {
                return Err(BootError::new(
                    Category::Config,
                    format!("cannot read {}: {e}", sys_path.display()),
                ));
            }
        };
        Ok(Self {
            app_compose_bytes,
            app_compose,
            sealed_env,
            sys_config,
        })
    }
}

/// A serde_json error's kind without any quoted input.
fn json_reason(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Data => "a field is missing or has the wrong type",
        serde_json::error::Category::Syntax => "it is not valid JSON",
        serde_json::error::Category::Eof => "it ends too early",
        serde_json::error::Category::Io => "it could not be read",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurement_is_sha256_of_exact_bytes() {
        let m = Measurement::of(b"{}");
        assert_eq!(
            m.compose_hash,
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(m.app_id, "44136fa355b3678a1146ad16f7e8649e94fb4fc2");
        assert_ne!(Measurement::of(b"{} ").compose_hash, m.compose_hash);
    }
}
