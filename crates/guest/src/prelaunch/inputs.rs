//! What a dstack guest gives the pre-launch step, read from dstack's
//! documented layout under a root folder (`/` in a CVM):
//!
//! - `/dstack/app-compose.json` (dstack's working copy; else
//!   `/dstack/.host-shared/app-compose.json`): `runner`,
//!   `docker_compose_file`, `allowed_envs`;
//! - `/dstack/docker-compose.yaml` when it exists (what `app-compose.sh`
//!   runs), else the manifest's `docker_compose_file` (which it writes
//!   there after the pre-launch script);
//! - the environment the script is sourced with (systemd's
//!   `EnvironmentFile=/dstack/.host-shared/.decrypted-env`, plus what the
//!   script exported), and `/dstack/.host-shared/.decrypted-env.json`, the
//!   same variables with their exact values, preferred where it exists;
//! - `/dstack/.host-shared/.sys-config.json`: only Berth's optional
//!   `registry_endpoints`, `aws_endpoint_url_ecr` and `ca_certs` are read
//!   (an emulated guest maps registries to loopback with them; a dstack
//!   sys-config has none of them).

use crate::error::BootError;
use contract::SecretValue;
use envseal::{Env, EnvVar, Origin};
use registry::Category;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The manifest's runners, as `app-compose.sh` knows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Runner {
    /// `docker compose … up`: supported.
    DockerCompose,
    /// `nerdctl compose` (containerd): images are not loaded by Berth.
    NerdctlCompose,
    /// A bash script: nothing to pull.
    Bash,
    /// Anything else (`app-compose.sh` refuses it).
    Other(String),
}

/// The guest's inputs to the pre-launch step.
pub struct GuestInputs {
    /// The runner `app-compose.sh` will use.
    pub runner: Runner,
    /// The compose file's text (`None` for a runner without one).
    pub compose_yaml: Option<String>,
    /// Where it came from, for the log.
    pub compose_source: PathBuf,
    /// The variables the compose tool will interpolate (process env, with
    /// `.decrypted-env.json`'s exact values over it).
    pub vars: BTreeMap<String, String>,
    /// The app's secrets: every variable of `.decrypted-env.json`, and the
    /// `DSTACK_*` and `allowed_envs` variables of the process environment.
    pub secrets: Env,
    /// Whether `.decrypted-env.json` was read.
    pub from_json: bool,
    /// Berth's mappings, when the sys-config carries them.
    pub sys: contract::SysConfig,
}

fn config_err(message: impl Into<String>) -> BootError {
    BootError::new(Category::Config, message)
}

/// `root/dstack/…`.
pub fn dstack_dir(root: &Path) -> PathBuf {
    root.join("dstack")
}

/// Reads the guest's inputs under `root`, with `process_env` the
/// environment the agent was started with.
pub fn read(root: &Path, process_env: &[(String, String)]) -> Result<GuestInputs, BootError> {
    let dstack = dstack_dir(root);
    let shared = dstack.join(".host-shared");
    let manifest_path = [
        dstack.join("app-compose.json"),
        shared.join("app-compose.json"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .ok_or_else(|| {
        config_err(format!(
            "no app-compose.json in {} or {}",
            dstack.display(),
            shared.display()
        ))
    })?;
    let manifest: serde_json::Value = std::fs::read(&manifest_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| config_err(format!("{} is not JSON", manifest_path.display())))?;
    let runner = match manifest.get("runner").and_then(|r| r.as_str()) {
        None | Some("docker-compose") => Runner::DockerCompose,
        Some("nerdctl-compose") => Runner::NerdctlCompose,
        Some("bash") => Runner::Bash,
        Some(other) => Runner::Other(other.to_owned()),
    };
    let compose_file = dstack.join("docker-compose.yaml");
    let (compose_yaml, compose_source) = if compose_file.is_file() {
        let text = std::fs::read_to_string(&compose_file)
            .map_err(|e| config_err(format!("cannot read {}: {e}", compose_file.display())))?;
        (Some(text), compose_file)
    } else {
        (
            manifest
                .get("docker_compose_file")
                .and_then(|c| c.as_str())
                .map(str::to_owned),
            manifest_path.clone(),
        )
    };
    let allowed: Vec<String> = manifest
        .get("allowed_envs")
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();

    let mut vars: BTreeMap<String, String> = process_env.iter().cloned().collect();
    let mut secrets = Env::new();
    let json_path = shared.join(".decrypted-env.json");
    let from_json = json_path.is_file();
    if from_json {
        let bytes = std::fs::read(&json_path)
            .map_err(|e| config_err(format!("cannot read {}: {e}", json_path.display())))?;
        // `{"KEY": "value", …}`, as dstack-util writes it. Never quoted
        // back in an error: it holds the app's secrets.
        let map: BTreeMap<String, String> = serde_json::from_slice(&bytes).map_err(|_| {
            config_err(format!(
                "{} is not a JSON object of strings",
                json_path.display()
            ))
        })?;
        for (k, v) in map {
            secrets.set(EnvVar::new(
                k.clone(),
                SecretValue::from(v.clone()),
                Origin::Sealed,
            ));
            vars.insert(k, v);
        }
    }
    for (k, v) in process_env {
        let secret = k.starts_with("DSTACK_") || allowed.iter().any(|a| a == k);
        if secret && secrets.get(k).is_none() {
            secrets.set(EnvVar::new(
                k.clone(),
                SecretValue::from(v.clone()),
                Origin::Sealed,
            ));
        }
    }

    let sys_path = shared.join(".sys-config.json");
    let sys = std::fs::read(&sys_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<contract::SysConfig>(&b).ok())
        .unwrap_or_default();

    Ok(GuestInputs {
        runner,
        compose_yaml,
        compose_source,
        vars,
        secrets,
        from_json,
        sys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decrypted_env_json_is_preferred_and_the_compose_file_found() {
        let root = std::env::temp_dir().join(format!("berth-inputs-{}", std::process::id()));
        let shared = root.join("dstack/.host-shared");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::write(
            shared.join("app-compose.json"),
            r#"{"runner":"docker-compose","docker_compose_file":"services: {a: {image: x}}","allowed_envs":["TOKEN"]}"#,
        )
        .unwrap();
        // systemd's parsing of `.decrypted-env` may differ from the exact value.
        std::fs::write(
            shared.join(".decrypted-env.json"),
            r#"{"DSTACK_DOCKER_PASSWORD":"p\"w $x","TOKEN":"t0k3n-value"}"#,
        )
        .unwrap();
        let env = vec![
            ("DSTACK_DOCKER_PASSWORD".to_owned(), "p\\\"w".to_owned()),
            ("DSTACK_DOCKER_USERNAME".to_owned(), "alice".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let g = read(&root, &env).unwrap();
        assert_eq!(g.runner, Runner::DockerCompose);
        assert_eq!(g.compose_yaml.as_deref(), Some("services: {a: {image: x}}"));
        assert!(g.from_json);
        assert_eq!(
            g.secrets.get("DSTACK_DOCKER_PASSWORD").unwrap().expose(),
            "p\"w $x"
        );
        assert_eq!(
            g.secrets.get("DSTACK_DOCKER_USERNAME").unwrap().expose(),
            "alice"
        );
        assert!(g.secrets.get("PATH").is_none());
        assert_eq!(g.vars.get("TOKEN").map(String::as_str), Some("t0k3n-value"));
        // dstack's working copy of the compose file wins once it exists.
        std::fs::write(
            root.join("dstack/docker-compose.yaml"),
            "services: {b: {image: y}}",
        )
        .unwrap();
        let g = read(&root, &env).unwrap();
        assert_eq!(g.compose_yaml.as_deref(), Some("services: {b: {image: y}}"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
