//! API replicas (`berth up --role api`): an API with no node and no KMS of
//! its own, joining the local cloud (role `all`) whose state folder it is
//! given, on the same machine and the same database.
//!
//! What a replica takes from that state folder, and nothing else:
//!
//! - the node's socket (`STATE/node/node.sock`) and the KMS's socket
//!   (`STATE/kms/kms.sock`): every lifecycle call goes to the one node;
//! - the log URL secret (`STATE/log-secret`), so a log URL handed out by
//!   one replica verifies on every other;
//! - [`REPLICA_SETTINGS_FILE`], which the local cloud writes at each start:
//!   its database (without the password, to refuse a replica on another
//!   one), its isolation and its caps, so that every replica checks
//!   compose files and quotas by the same rules;
//! - the CVM folders (`STATE/cvms`), read for serial logs.
//!
//! Everything else a request needs lives in the database: users and keys,
//! apps and CVMs, and the per-app update lease (`Db::try_lock_app`). What
//! stays in one process's memory on purpose: the cap on one user's
//! requests in progress (`--max-requests-per-user`) counts per replica.

use super::{AdminKey, Ready, Role, UpConfig, UpError, UpEvent, UpEvents};
use crate::db::{Db, DbLocation, DbOptions, DbUrl, Limits};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use super::state::REPLICA_SETTINGS_FILE;

/// The file's content.
#[derive(Serialize, Deserialize)]
struct ReplicaSettings {
    /// `DbLocation`'s text (a URL's password shown as `***`).
    database: String,
    isolation: contract::Isolation,
    require_digests: bool,
    max_cvms_per_user: usize,
    max_boots_in_flight: usize,
    max_boots_per_user: usize,
    max_uncommitted_apps_per_user: usize,
    max_requests_per_user: usize,
}

impl ReplicaSettings {
    fn of(location: &DbLocation, limits: &Limits) -> Self {
        Self {
            database: location.to_string(),
            isolation: limits.isolation,
            require_digests: limits.require_digests,
            max_cvms_per_user: limits.max_cvms_per_user,
            max_boots_in_flight: limits.max_boots_in_flight,
            max_boots_per_user: limits.max_boots_per_user,
            max_uncommitted_apps_per_user: limits.max_uncommitted_apps_per_user,
            max_requests_per_user: limits.max_requests_per_user,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            isolation: self.isolation,
            require_digests: self.require_digests,
            max_cvms_per_user: self.max_cvms_per_user,
            max_boots_in_flight: self.max_boots_in_flight,
            max_boots_per_user: self.max_boots_per_user,
            max_uncommitted_apps_per_user: self.max_uncommitted_apps_per_user,
            max_requests_per_user: self.max_requests_per_user,
        }
    }
}

/// Where the database of a local cloud on `state` is: the PostgreSQL
/// database `url` names, else SQLite in `STATE/berth.db`.
pub(crate) fn location(state: &Path, url: Option<&DbUrl>) -> DbLocation {
    match url {
        Some(u) => DbLocation::Postgres(u.clone()),
        None => DbLocation::Sqlite(state.join("berth.db")),
    }
}

/// Opens (and migrates) the database on the blocking pool: PostgreSQL's
/// client must not run on an async worker.
pub(crate) async fn open(location: &DbLocation) -> Result<Arc<Db>, UpError> {
    let location = location.clone();
    tokio::task::spawn_blocking(move || Db::open_location(&location, DbOptions::default()))
        .await
        .map_err(|_| UpError::Database("opening the database failed".into()))?
        .map(Arc::new)
        .map_err(|e| UpError::Database(e.to_string()))
}

/// Writes [`REPLICA_SETTINGS_FILE`] (the local cloud, at each start).
pub(crate) fn record(state: &Path, location: &DbLocation, limits: &Limits) -> Result<(), UpError> {
    let text = serde_json::to_vec_pretty(&ReplicaSettings::of(location, limits)).expect("json");
    crate::node::write_private(&state.join(REPLICA_SETTINGS_FILE), &text)
        .map_err(UpError::io("cannot write the settings API replicas read"))
}

fn read_primary(path: PathBuf) -> Result<Vec<u8>, UpError> {
    std::fs::read(&path).map_err(|source| UpError::PrimaryFile { path, source })
}

/// Runs an API replica on the local cloud of `config.state` until
/// `shutdown` completes.
pub(crate) async fn run(
    config: UpConfig,
    listen: super::listen::Listen,
    events: UpEvents,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), UpError> {
    if config.rotate_log_secret {
        return Err(UpError::NotForReplica {
            what: "rotating the log secret",
        });
    }
    if config.admin_api_key.is_some() {
        return Err(UpError::NotForReplica {
            what: "setting the admin's API key",
        });
    }
    super::state::check_state_owner(&config.state)?;
    let state = config
        .state
        .canonicalize()
        .map_err(|source| UpError::PrimaryFile {
            path: config.state.clone(),
            source,
        })?;
    // The local cloud must be serving: its node answers on its socket.
    let node_socket = state.join("node/node.sock");
    if tokio::net::UnixStream::connect(&node_socket).await.is_err() {
        return Err(UpError::NoPrimary {
            state,
            socket: node_socket,
        });
    }
    let settings: ReplicaSettings = serde_json::from_slice(&read_primary(
        state.join(REPLICA_SETTINGS_FILE),
    )?)
    .map_err(|_| UpError::PrimaryFile {
        path: state.join(REPLICA_SETTINGS_FILE),
        source: std::io::Error::other("it is not what berth up writes"),
    })?;
    let location = location(&state, config.database.as_ref());
    if location.to_string() != settings.database {
        return Err(UpError::OtherDatabase {
            state,
            primary: settings.database,
            given: location.to_string(),
        });
    }
    let secret_path = state.join(super::state::LOG_SECRET_FILE);
    let log_secret =
        <[u8; 32]>::try_from(read_primary(secret_path.clone())?.as_slice()).map_err(|_| {
            UpError::PrimaryFile {
                path: secret_path,
                source: std::io::Error::other("it is not 32 bytes"),
            }
        })?;
    let db = open(&location).await?;

    let kms = contract::kms::KmsEndpoint::Unix(state.join("kms/kms.sock"));
    let http = super::kms_client(&kms)?;
    let keys = kms_keys(&http, &kms).await?;

    let listener = tokio::net::TcpListener::bind(listen.addr)
        .await
        .map_err(UpError::io(format!("cannot listen on {}", config.listen)))?;
    let addr = listener.local_addr().map_err(UpError::io("listener"))?;
    let scheme = if listen.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let listening = format!("{scheme}://{addr}");
    let public_url = listen
        .public_url
        .clone()
        .unwrap_or_else(|| listening.clone());
    let limits = settings.limits();
    let app_state = Arc::new(crate::AppState {
        db,
        node: crate::NodeClient::new(&node_socket),
        kms,
        cvms_root: state.join("cvms"),
        public_url: public_url.clone(),
        http,
        log_secret,
        limits,
    });
    events(UpEvent::Ready(Ready {
        role: Role::Api,
        database: location.to_string(),
        public_url,
        listening,
        admin_key: AdminKey::InFile,
        api_key_file: state.join(super::API_KEY_FILE),
        kms_public_key: keys.kms_public_key,
        attestation_public_key: keys.attestation_public_key,
        state,
        docker_host: String::new(),
        isolation: limits.isolation,
        resumed: 0,
    }));
    let opts = super::serve_options(&config, listen.tls);
    crate::serve::serve(listener, crate::router(app_state), opts, shutdown)
        .await
        .map_err(UpError::Serve)
}

/// The KMS's public keys, asked over its socket (which also shows it
/// answers).
async fn kms_keys(
    http: &reqwest::Client,
    kms: &contract::kms::KmsEndpoint,
) -> Result<contract::kms::KmsPublicKeyAnswer, UpError> {
    let unreachable = |_| UpError::KmsSilent {
        socket: match kms {
            contract::kms::KmsEndpoint::Unix(p) => p.clone(),
            contract::kms::KmsEndpoint::Http(u) => PathBuf::from(u),
        },
    };
    http.get(kms.url(contract::kms::PUBKEY_PATH))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(unreachable)?
        .error_for_status()
        .map_err(unreachable)?
        .json()
        .await
        .map_err(unreachable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_carry_the_caps_and_no_password() {
        let url = DbUrl::parse("postgres://berth:canary-pw-5512@127.0.0.1:5433/berth").unwrap();
        let limits = Limits {
            max_cvms_per_user: 7,
            isolation: contract::Isolation::Container,
            require_digests: true,
            ..Limits::default()
        };
        let s = ReplicaSettings::of(&location(Path::new("/s"), Some(&url)), &limits);
        let text = serde_json::to_string(&s).unwrap();
        assert!(!text.contains("canary-pw-5512"), "{text}");
        let back: ReplicaSettings = serde_json::from_str(&text).unwrap();
        assert_eq!(back.limits(), limits);
        assert_eq!(
            back.database,
            location(Path::new("/s"), Some(&url)).to_string()
        );
    }
}
