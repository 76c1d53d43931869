//! The local confidential cloud (`berth up`) as one library call, [`run`],
//! so that every front end (the `berth` CLI, a web console, an operator
//! tool) starts the same thing the same way.
//!
//! What [`run`] composes, in order:
//!
//! 1. the listen settings, checked before anything starts (TLS off
//!    loopback, a public URL when listening on every address);
//! 2. the state folder: refused if another user owns it or could replace
//!    it (a folder above it another user owns, or every user may write
//!    to without the sticky bit), created 0700, locked for one local cloud
//!    (`STATE/berth.lock`, holding the PID), and locked down (modes an
//!    older Berth or a careless umask left open are fixed, and reported);
//! 3. the database (SQLite in the state folder, or PostgreSQL), and the
//!    settings API replicas read (`replica`);
//! 4. the KMS, its own process (`berth kms serve`) on a socket in the 0700
//!    `STATE/kms/`, handed a fresh node secret on its standard input;
//! 5. the Docker engine: the configured one, the system's, or a private
//!    `dockerd` under the state folder;
//! 6. the admin's API key and the log URL secret;
//! 7. the node, its own process (`berth node serve`), the only other holder
//!    of the node secret;
//! 8. the API, served until the caller's `shutdown` completes or a child
//!    keeps dying; meanwhile the KMS and the node are supervised and
//!    restarted with backoff;
//! 9. shutdown: the node (which stops its boot agents), the KMS, then a
//!    private `dockerd`.
//!
//! With [`Role::Api`], [`run`] starts only an API replica (`replica`): no
//! KMS, no node, no engine of its own; it joins the local cloud whose state
//! folder it is given (its node's and KMS's sockets, its log URL secret and
//! the settings it writes for replicas) and shares its database, which
//! should then be PostgreSQL ([`UpConfig::database`]).
//!
//! The children run the same executable ([`UpConfig::berth_exe`]), so this
//! crate never links the KMS's code. Their entry points are
//! `kms::server::run` and [`serve_node`].
//!
//! Nothing here prints: what a person may want to see is an [`UpEvent`],
//! and errors are [`UpError`]s whose sentences name no front end's options.

mod children;
mod engine;
mod error;
mod listen;
mod node_process;
mod replica;
mod state;

pub use children::{MAX_RESTARTS, RESTART_WINDOW};
pub use error::{Part, UpError};
pub use node_process::{NodeReady, NodeServeConfig, NodeServeError, serve_node};
pub use replica::REPLICA_SETTINGS_FILE;
pub use state::{API_KEY_FILE, KMS_PUBLIC_KEY_FILE, LOCK_FILE};

use children::{Respawn, Supervised, start_kms, start_node, supervise, terminate};
use node_process::NodeSettings;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What one `berth up` runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// The API, the KMS and the node: a whole local cloud.
    #[default]
    All,
    /// An API replica: no node and no KMS of its own; it reaches those of
    /// the local cloud on [`UpConfig::state`] (same machine) and shares its
    /// database.
    Api,
}

/// How to run the local cloud. Front ends fill it from their own options and
/// environment; nothing here reads an environment variable but `PATH`.
#[derive(Debug)]
pub struct UpConfig {
    /// Where the database, the KMS root key and the CVMs live (created);
    /// for an API replica, the state folder of the local cloud it joins.
    pub state: PathBuf,
    /// What this `berth up` runs.
    pub role: Role,
    /// The PostgreSQL database; `None`: SQLite in `STATE/berth.db`.
    pub database: Option<crate::db::DbUrl>,
    /// The API's address, `HOST:PORT`.
    pub listen: String,
    /// Serve HTTPS with this certificate chain and key.
    pub tls: Option<TlsFiles>,
    /// Allow plain HTTP on an address other machines reach.
    pub insecure: bool,
    /// The URL clients reach the API by (for the log URLs it hands out);
    /// `None`: the listen address.
    pub public_url: Option<String>,
    /// Registry name → URL, in every CVM.
    pub registry_endpoints: BTreeMap<String, String>,
    /// Extra CA certificates (PEM text) trusted in every CVM.
    pub ca_certs: Vec<String>,
    /// The ECR API endpoint every CVM uses (tests, private endpoints).
    pub aws_endpoint_url_ecr: Option<String>,
    /// The Docker engine (`unix://…`); `None`: the system's, else a private
    /// `dockerd`.
    pub docker_host: Option<String>,
    /// Set the admin's API key to this one (else one is made at the first
    /// start and kept).
    pub admin_api_key: Option<contract::SecretValue>,
    /// Replace the log URL secret: every log URL handed out before stops
    /// working.
    pub rotate_log_secret: bool,
    /// The operator's caps.
    pub limits: crate::db::Limits,
    /// How long a client has to send its request headers.
    pub header_timeout: Duration,
    /// How long a client has, from a request's headers, to send its body.
    pub body_timeout: Duration,
    /// The most connections the API serves at once.
    pub max_connections: usize,
    /// The most connections the API serves at once for one client address
    /// (loopback excepted).
    pub max_connections_per_client: usize,
    /// The `berth` executable, which the KMS and the node run as.
    pub berth_exe: PathBuf,
}

/// A PEM certificate chain and its private key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// What became of the admin's API key at this start.
#[derive(Debug)]
pub enum AdminKey {
    /// Set to [`UpConfig::admin_api_key`] (and written to the key file).
    Configured,
    /// Made now, the first start: the only time it is shown.
    Created(contract::SecretValue),
    /// Kept, and still in the key file.
    InFile,
    /// Kept, but the key file holds an older one (the admin rotated it).
    RotatedSinceWritten,
}

/// The local cloud serves.
#[derive(Debug)]
pub struct Ready {
    /// What this `berth up` runs.
    pub role: Role,
    /// Where the state is kept, without a password (`SQLite at …`,
    /// `PostgreSQL at postgres://user:***@host:port/db`).
    pub database: String,
    /// The URL clients reach the API by, without `/api/v1`.
    pub public_url: String,
    /// What the listener is bound to (`http(s)://addr:port`).
    pub listening: String,
    /// The admin's key.
    pub admin_key: AdminKey,
    /// The file holding the admin's key.
    pub api_key_file: PathBuf,
    /// The KMS public key clients pin (also in [`KMS_PUBLIC_KEY_FILE`]).
    pub kms_public_key: String,
    /// The public key that checks the CVMs' simulated quotes.
    pub attestation_public_key: String,
    /// The state folder (canonical).
    pub state: PathBuf,
    /// The Docker engine CVMs run on (empty when each has its own).
    pub docker_host: String,
    /// What a CVM is.
    pub isolation: contract::Isolation,
    /// How many CVMs were booted again.
    pub resumed: usize,
}

/// How a supervised child ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// With this status.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Otherwise.
    Ended,
    /// It could not be waited for.
    NotWaitable(String),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with status {c}"),
            Exit::Signal(s) => write!(f, "was killed by signal {s}"),
            Exit::Ended => f.write_str("ended"),
            Exit::NotWaitable(e) => write!(f, "cannot be waited for ({e})"),
        }
    }
}

/// What happens while the local cloud runs, for a front end to show.
#[derive(Debug)]
pub enum UpEvent {
    /// A file or folder of the state was open to others and is not any more.
    ModeFixed {
        /// Which.
        path: PathBuf,
        /// Its mode before.
        was: u32,
        /// Its mode now.
        now: u32,
    },
    /// The log URL secret was replaced.
    LogSecretRotated,
    /// Something the local cloud changed on the host, said once.
    Note(String),
    /// Everything is up and the API serves.
    Ready(Ready),
    /// A line a child wrote on its standard output after it started.
    Output {
        /// Which child.
        part: Part,
        /// The line.
        line: String,
    },
    /// A child died; the API answers 503 for what needs it until it is back.
    Died {
        /// Which.
        part: Part,
        /// Its PID.
        pid: u32,
        /// How.
        exit: Exit,
    },
    /// A child is started again after `delay`.
    Restarting {
        /// Which.
        part: Part,
        /// The backoff.
        delay: Duration,
        /// The how-manieth restart within [`RESTART_WINDOW`].
        restart: usize,
        /// [`MAX_RESTARTS`].
        max: usize,
    },
    /// A restart attempt failed (another follows, within the limit).
    RestartFailed {
        /// Which.
        part: Part,
        /// Why.
        reason: String,
    },
    /// The restarted KMS has another public key than at the start.
    KmsKeyChanged {
        /// The new one.
        public_key: String,
    },
    /// A child is back.
    Back {
        /// Which.
        part: Part,
        /// Its new PID.
        pid: u32,
    },
    /// A child died too often: the local cloud stops ([`UpError::KeepsDying`]).
    GaveUp {
        /// Which.
        part: Part,
        /// How often within [`RESTART_WINDOW`].
        deaths: usize,
    },
}

/// Where a front end receives [`UpEvent`]s (called from any task).
pub type UpEvents = Arc<dyn Fn(UpEvent) + Send + Sync>;

/// Runs the local cloud until `shutdown` completes (or a child keeps
/// dying), then stops its children and returns.
///
/// Makes new files of this process private (umask 077) for its whole life.
pub async fn run(
    config: UpConfig,
    events: UpEvents,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), UpError> {
    state::private_umask();
    let listen = listen::check(&config)?;
    if config.role == Role::Api {
        return replica::run(config, listen, events, shutdown).await;
    }
    state::check_state_owner(&config.state)?;
    crate::node::private_dir(&config.state).map_err(UpError::io(format!(
        "cannot create {}",
        config.state.display()
    )))?;
    let state = config
        .state
        .canonicalize()
        .map_err(UpError::io("state folder"))?;
    let _lock = state::lock_state(&state)?;
    state::lock_down_state(&state, &events, config.limits.isolation)?;
    // The database first: a wrong URL or an unreachable server is said
    // before any child starts.
    let location = replica::location(&state, config.database.as_ref());
    let db = replica::open(&location).await?;
    // One node per database: on PostgreSQL another `berth up`, with
    // another state folder, on this or another machine, may be on it.
    let node_lease = NodeLease::take(db.clone(), &state).await?;
    replica::record(&state, &location, &config.limits)?;
    // The secret that lets the node, and only the node, mint boot tickets.
    let node_secret = state::random_hex::<32>();
    let exe = config.berth_exe.clone();

    // The KMS: its own process, on a socket in the private kms/ folder.
    let (kms, kms_ready) = start_kms(&exe, &state, &node_secret, &events).await?;
    let kms = Supervised::new(Part::Kms, kms);
    let _ = crate::node::write_private(
        &state.join(KMS_PUBLIC_KEY_FILE),
        format!("{}\n", kms_ready.public_key).as_bytes(),
    );
    let isolation = config.limits.isolation;
    // CVMs of their own bring their own engines: no shared one is started.
    let (docker_host, dockerd) = match isolation {
        contract::Isolation::Container => {
            for note in crate::node::check_container_host().map_err(UpError::Isolation)? {
                events(UpEvent::Note(note));
            }
            (String::new(), None)
        }
        contract::Isolation::Shared => {
            engine::docker_host(
                config.docker_host.as_deref(),
                &state,
                &config.registry_endpoints,
            )
            .await?
        }
    };

    let api_key_file = state.join(API_KEY_FILE);
    let admin_key = state::admin_key(
        &db,
        &api_key_file,
        config.admin_api_key.as_ref().map(|k| k.expose()),
    )
    .await?;
    let log_secret = state::log_secret(&state, config.rotate_log_secret, &events)?;

    // The API's port is bound before the node starts, so that no CVM may
    // publish it.
    let listener = tokio::net::TcpListener::bind(listen.addr)
        .await
        .map_err(UpError::io(format!("cannot listen on {}", config.listen)))?;
    let addr = listener.local_addr().map_err(UpError::io("listener"))?;
    let reserved_ports = vec![contract::policy::ReservedPort {
        port: addr.port(),
        what: "the cloud's API".into(),
    }];

    // The node: its own process, the only other holder of the node secret.
    let node_settings = NodeSettings {
        reserved_ports,
        isolation,
        node_secret: node_secret.to_string(),
        kms_url: kms_ready.url.clone(),
        docker_host: docker_host.clone(),
        registry_endpoints: config.registry_endpoints.clone(),
        ca_certs: config.ca_certs.clone(),
        aws_endpoint_url_ecr: config
            .aws_endpoint_url_ecr
            .clone()
            .filter(|v| !v.is_empty()),
        max_boots: config.limits.max_boots_in_flight,
        max_boots_per_user: config.limits.max_boots_per_user,
        database_url: config.database.as_ref().map(|u| u.expose().to_owned()),
    }
    .into_line();
    let (node, resumed) = start_node(&exe, &state, &node_settings, &events).await?;
    let node = Supervised::new(Part::Node, node);

    let scheme = if listen.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let listening = format!("{scheme}://{addr}");
    let public_url = listen.public_url.unwrap_or_else(|| listening.clone());
    let kms_endpoint =
        contract::kms::KmsEndpoint::parse(&kms_ready.url).ok_or(UpError::BadKmsAddress)?;
    let http = kms_client(&kms_endpoint)?;
    let app_state = Arc::new(crate::AppState {
        db,
        node: crate::NodeClient::new(&state.join("node/node.sock")),
        kms: kms_endpoint,
        cvms_root: state.join("cvms"),
        public_url: public_url.clone(),
        http,
        log_secret,
        limits: config.limits,
    });
    events(UpEvent::Ready(Ready {
        role: Role::All,
        database: location.to_string(),
        public_url,
        listening,
        admin_key,
        api_key_file,
        kms_public_key: kms_ready.public_key.clone(),
        attestation_public_key: kms_ready.attestation_public_key.clone(),
        state: state.clone(),
        docker_host,
        isolation,
        resumed,
    }));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let fatal = Arc::new(tokio::sync::Notify::new());
    let respawn = Respawn {
        exe,
        state,
        node_secret,
        node_settings,
        kms_public_key: kms_ready.public_key,
        events: events.clone(),
    };
    let supervisor = tokio::spawn(supervise(kms, node, respawn, stop_rx, fatal.clone()));
    let stop = async move {
        tokio::select! {
            _ = shutdown => {},
            _ = fatal.notified() => {},
        }
    };
    let opts = serve_options(&config, listen.tls);
    let served = crate::serve::serve(listener, crate::router(app_state), opts, stop)
        .await
        .map_err(UpError::Serve);
    let _ = stop_tx.send(true);
    let (mut kms, mut node, failure) = supervisor.await.map_err(|_| UpError::Supervisor)?;
    // The node first (it stops its boot agents), then the KMS.
    terminate(&mut node.child, Duration::from_secs(10)).await;
    terminate(&mut kms.child, Duration::from_secs(10)).await;
    if let Some(mut d) = dockerd {
        // SIGTERM, so the engine stops its containers cleanly; they are
        // booted again (cheaply) at the next start.
        terminate(&mut d, Duration::from_secs(15)).await;
    }
    node_lease.release().await;
    served?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The node lease of this `berth up` (`db::NODE_LEASE`): taken before any
/// child starts, renewed every [`NODE_LEASE_RENEW`] while it runs, given
/// back when it stops. One lost to another holder (this process stalled
/// past [`NODE_LEASE_TTL`], and another `berth up` took over) is said on
/// stderr at each renewal.
struct NodeLease {
    db: Arc<crate::db::Db>,
    holder: String,
    renewer: tokio::task::JoinHandle<()>,
}

/// How long the node lease lasts unless renewed: a `berth up` killed with
/// `kill -9` holds its database's node this long.
const NODE_LEASE_TTL: Duration = Duration::from_secs(30);

/// How often the node lease is renewed.
const NODE_LEASE_RENEW: Duration = Duration::from_secs(10);

impl Drop for NodeLease {
    /// A `berth up` that fails after taking the lease stops renewing it;
    /// its next start on this host and state folder takes it over.
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl NodeLease {
    async fn take(db: Arc<crate::db::Db>, state: &std::path::Path) -> Result<Self, UpError> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "this host".into());
        let holder = format!(
            "host {host}, pid {}, state {}",
            std::process::id(),
            state.display()
        );
        match db
            .take_lease(crate::db::NODE_LEASE, &holder, NODE_LEASE_TTL)
            .await
        {
            Ok(None) => {}
            // This host's own earlier `berth up` on this state folder: it
            // is gone (this one holds the folder's lock), its lease is
            // taken over rather than waited out.
            Ok(Some(other))
                if other.starts_with(&format!("host {host}, "))
                    && other.ends_with(&format!(", state {}", state.display())) =>
            {
                let taken = async {
                    db.release_lease(crate::db::NODE_LEASE, &other).await?;
                    db.take_lease(crate::db::NODE_LEASE, &holder, NODE_LEASE_TTL)
                        .await
                };
                match taken.await {
                    Ok(None) => {}
                    Ok(Some(other)) => return Err(UpError::NodeElsewhere { holder: other }),
                    Err(e) => return Err(UpError::Database(e.to_string())),
                }
            }
            Ok(Some(other)) => return Err(UpError::NodeElsewhere { holder: other }),
            Err(e) => return Err(UpError::Database(e.to_string())),
        }
        let renewer = {
            let (db, holder) = (db.clone(), holder.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(NODE_LEASE_RENEW).await;
                    match db
                        .take_lease(crate::db::NODE_LEASE, &holder, NODE_LEASE_TTL)
                        .await
                    {
                        Ok(None) => {}
                        Ok(Some(other)) => eprintln!(
                            "berth up: another berth up ({other}) took this database's node lease while this one could not renew it: stop one of them"
                        ),
                        Err(e) => eprintln!("berth up: cannot renew the node lease: {e}"),
                    }
                }
            })
        };
        Ok(Self {
            db,
            holder,
            renewer,
        })
    }

    async fn release(self) {
        self.renewer.abort();
        let _ = self
            .db
            .release_lease(crate::db::NODE_LEASE, &self.holder)
            .await;
    }
}

/// The API listener's settings.
fn serve_options(
    config: &UpConfig,
    tls: Option<Arc<crate::serve::TlsConfig>>,
) -> crate::serve::ServeOptions {
    crate::serve::ServeOptions {
        header_timeout: config.header_timeout.max(Duration::from_secs(1)),
        body_timeout: config.body_timeout.max(Duration::from_secs(1)),
        max_connections: config.max_connections.max(1),
        max_connections_per_client: config.max_connections_per_client.max(1),
        tls,
    }
}

/// The HTTP client the API reaches the KMS with (over its socket when it
/// has one).
fn kms_client(kms: &contract::kms::KmsEndpoint) -> Result<reqwest::Client, UpError> {
    let mut http = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let contract::kms::KmsEndpoint::Unix(p) = kms {
        http = http.unix_socket(p.clone());
    }
    http.build().map_err(|_| UpError::KmsClient)
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    /// Settings and outcomes get printed with `{:?}` in errors and logs:
    /// none of them may carry the admin key.
    #[test]
    fn debug_output_holds_no_admin_key() {
        let key = "berth_canary_admin_key_d3b07384";
        let config = UpConfig {
            state: "/s".into(),
            role: Role::All,
            database: Some(
                crate::db::DbUrl::parse("postgres://berth:berth_canary_db_pw_77@127.0.0.1/berth")
                    .unwrap(),
            ),
            listen: "127.0.0.1:0".into(),
            tls: None,
            insecure: false,
            public_url: None,
            registry_endpoints: BTreeMap::new(),
            ca_certs: Vec::new(),
            aws_endpoint_url_ecr: None,
            docker_host: None,
            admin_api_key: Some(key.into()),
            rotate_log_secret: false,
            limits: crate::db::Limits::default(),
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            max_connections: 1,
            max_connections_per_client: 1,
            berth_exe: "/b".into(),
        };
        assert!(!format!("{config:?}").contains(key));
        assert!(!format!("{config:?}").contains("berth_canary_db_pw_77"));
        let created = AdminKey::Created(key.into());
        assert!(!format!("{created:?}").contains(key));
    }
}
