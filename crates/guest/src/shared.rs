//! The host-shared folder a CVM receives: `app-compose.json`,
//! `encrypted-env`, `sys-config.json`, and what is measured from them.

use crate::error::BootError;
use contract::app::{APP_COMPOSE_FILE, ENCRYPTED_ENV_FILE, SYS_CONFIG_FILE};
use envseal::SealedEnv;
use registry::Category;
use std::path::Path;

pub use contract::{AppCompose, Measurement, SysConfig};

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
        let path = dir.join(APP_COMPOSE_FILE);
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
        let env_path = dir.join(ENCRYPTED_ENV_FILE);
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
        let sys_path = dir.join(SYS_CONFIG_FILE);
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
