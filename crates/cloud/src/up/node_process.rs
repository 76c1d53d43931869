//! The node process (`berth node serve`, started by the local cloud): its
//! settings, handed over on standard input because they hold the node
//! secret (and the database URL, which may hold a password), its
//! announcement, and its entry point [`serve_node`].

use crate::node::{Node, NodeConfig, NodeSecret};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the local cloud tells the node on its standard input, as one JSON
/// line (it holds the node secret and the database URL, so it never goes
/// on a command line).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct NodeSettings {
    pub node_secret: String,
    pub kms_url: String,
    pub docker_host: String,
    pub registry_endpoints: BTreeMap<String, String>,
    pub ca_certs: Vec<String>,
    pub aws_endpoint_url_ecr: Option<String>,
    /// Host ports no CVM may publish (the API's).
    #[serde(default)]
    pub reserved_ports: Vec<contract::policy::ReservedPort>,
    /// What a CVM is.
    #[serde(default)]
    pub isolation: contract::Isolation,
    /// The most boots running at once (`--max-boots`); more wait in the
    /// node's boot queue.
    #[serde(default = "default_max_boots")]
    pub max_boots: usize,
    /// The most boots of one user running at once (`--max-boots-per-user`).
    #[serde(default = "default_max_boots_per_user")]
    pub max_boots_per_user: usize,
    /// The PostgreSQL database (its URL, password included); `None`: SQLite
    /// in the state folder.
    #[serde(default)]
    pub database_url: Option<String>,
}

fn default_max_boots() -> usize {
    crate::db::Limits::default().max_boots_in_flight
}

fn default_max_boots_per_user() -> usize {
    crate::db::Limits::default().max_boots_per_user
}

impl NodeSettings {
    /// The settings as the line the node reads; the secret is wiped from
    /// `self` and lives on only in the returned bytes (wiped on drop).
    pub fn into_line(mut self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut line = zeroize::Zeroizing::new(serde_json::to_vec(&self).expect("json"));
        zeroize::Zeroize::zeroize(&mut self.node_secret);
        if let Some(url) = &mut self.database_url {
            zeroize::Zeroize::zeroize(url);
        }
        line.push(b'\n');
        line
    }
}

impl std::fmt::Debug for NodeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeSettings([redacted])")
    }
}

/// How the node process runs.
pub struct NodeServeConfig {
    /// The local cloud's state folder (database, CVM folders).
    pub state: PathBuf,
    /// The Unix socket to listen on (its folder must be mode 0700).
    pub socket: PathBuf,
    /// The `berth` executable the node starts boot agents with.
    pub berth_exe: PathBuf,
    /// The settings line the local cloud wrote on the node's standard input.
    pub settings: zeroize::Zeroizing<String>,
}

/// Why the node process could not serve.
#[derive(Debug, thiserror::Error)]
pub enum NodeServeError {
    /// The settings line is not what the local cloud writes.
    #[error("the node settings on standard input are not valid")]
    BadSettings,
    /// The database could not be opened.
    #[error("{0}")]
    Database(String),
    /// The socket could not be bound.
    #[error("cannot listen on {}: {source}", socket.display())]
    Bind {
        /// The socket path.
        socket: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The CVMs that were running could not be booted again.
    #[error("{0}")]
    Resume(String),
    /// Serving stopped with an error.
    #[error("the node stopped: {0}")]
    Stopped(std::io::Error),
}

/// A node that serves: where, and how many CVMs it booted again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeReady {
    /// The socket it listens on.
    pub socket: PathBuf,
    /// How many CVMs it booted again.
    pub resumed: usize,
}

const LISTENING: &str = "node listening on unix:";
const RESUMED: &str = "node resumed ";

impl NodeReady {
    /// The lines the node writes on its standard output, each ending in a
    /// newline (the local cloud waits for them).
    pub fn render(&self) -> String {
        format!(
            "{LISTENING}{}\n{RESUMED}{}\n",
            self.socket.display(),
            self.resumed
        )
    }
}

/// Reads [`NodeReady`] back, one line at a time.
#[derive(Debug, Default)]
pub(crate) struct NodeReadyReader {
    socket: Option<PathBuf>,
}

impl NodeReadyReader {
    pub fn line(&mut self, line: &str) -> Option<NodeReady> {
        if let Some(s) = line.strip_prefix(LISTENING) {
            self.socket = Some(PathBuf::from(s));
        } else if let Some(n) = line.strip_prefix(RESUMED) {
            return Some(NodeReady {
                socket: self.socket.take().unwrap_or_default(),
                resumed: n.parse().ok()?,
            });
        }
        None
    }
}

/// The node process: makes new files of this process private (umask 077),
/// opens the database, binds the socket, boots again the CVMs that were
/// running, hands `ready` what the local cloud waits for (to be written on
/// standard output), and serves until the process ends.
pub async fn serve_node(
    mut config: NodeServeConfig,
    ready: impl FnOnce(&NodeReady),
) -> Result<(), NodeServeError> {
    super::state::private_umask();
    let mut settings: NodeSettings =
        serde_json::from_str(&config.settings).map_err(|_| NodeServeError::BadSettings)?;
    // The line held the node secret and the database URL.
    zeroize::Zeroize::zeroize(&mut config.settings);
    let url = match settings.database_url.take().map(zeroize::Zeroizing::new) {
        Some(text) => Some(
            crate::db::DbUrl::parse(&text).map_err(|e| NodeServeError::Database(e.to_string()))?,
        ),
        None => None,
    };
    let location = super::replica::location(&config.state, url.as_ref());
    let db = super::replica::open(&location)
        .await
        .map_err(|e| NodeServeError::Database(e.to_string()))?;
    let node = Node::new(
        NodeConfig {
            root: config.state.join("cvms"),
            berth_bin: config.berth_exe,
            kms_url: settings.kms_url,
            node_secret: NodeSecret(zeroize::Zeroizing::new(settings.node_secret)),
            docker_host: settings.docker_host,
            registry_endpoints: settings.registry_endpoints,
            ca_certs: settings.ca_certs,
            aws_endpoint_url_ecr: settings.aws_endpoint_url_ecr,
            reserved_ports: settings.reserved_ports,
            isolation: settings.isolation,
            max_boots: settings.max_boots,
            max_boots_per_user: settings.max_boots_per_user,
        },
        db.clone(),
    );
    let listener = bind_private_socket(&config.socket).map_err(|source| NodeServeError::Bind {
        socket: config.socket.clone(),
        source,
    })?;
    let resumed = node
        .resume()
        .await
        .map_err(|e| NodeServeError::Resume(e.to_string()))?;
    ready(&NodeReady {
        socket: config.socket,
        resumed,
    });
    // SIGTERM (`berth up` stopping) powers the CVMs' own machines off, as
    // stopping the shared engine stops its containers: the next start boots
    // them again from their disks. A node killed outright leaves them
    // running, and the next node finds them.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(NodeServeError::Stopped)?;
    tokio::select! {
        served = crate::nodeapi::serve(listener, node.clone(), db) => {
            served.map_err(NodeServeError::Stopped)
        }
        _ = term.recv() => {
            node.power_off_all().await;
            Ok(())
        }
    }
}

/// Binds the node's socket at `path`, whose folder must be closed to
/// everyone but its owner (mode 0700). A stale socket file left by a killed
/// process is replaced; anything else at `path` is an error
/// ([`ownership::bind_private_socket`], the rule the KMS's socket keeps too).
fn bind_private_socket(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    let listener = ownership::bind_private_socket(path, "the socket")?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_reads_back() {
        let ready = NodeReady {
            socket: "/s/node/node.sock".into(),
            resumed: 3,
        };
        let mut r = NodeReadyReader::default();
        let got: Vec<_> = ready.render().lines().filter_map(|l| r.line(l)).collect();
        assert_eq!(got, [ready]);
    }

    #[test]
    fn the_settings_line_keeps_no_secret_in_debug() {
        let s = NodeSettings {
            node_secret: "s3cret".into(),
            kms_url: "unix:/k".into(),
            docker_host: "unix:///d".into(),
            registry_endpoints: BTreeMap::new(),
            ca_certs: Vec::new(),
            aws_endpoint_url_ecr: None,
            reserved_ports: Vec::new(),
            isolation: contract::Isolation::Shared,
            max_boots: 2,
            max_boots_per_user: 1,
            database_url: Some("postgres://berth:db-s3cret@127.0.0.1/berth".into()),
        };
        assert!(!format!("{s:?}").contains("s3cret"));
        let line = s.into_line();
        let back: NodeSettings = serde_json::from_slice(&line).unwrap();
        assert_eq!(back.node_secret, "s3cret");
        assert_eq!(
            back.database_url.as_deref(),
            Some("postgres://berth:db-s3cret@127.0.0.1/berth")
        );
    }

    #[tokio::test]
    async fn a_socket_in_an_open_folder_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("berth-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = bind_private_socket(&dir.join("n.sock")).unwrap_err();
        assert!(err.to_string().contains("open to other users"), "{err}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(bind_private_socket(&dir.join("n.sock")).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
