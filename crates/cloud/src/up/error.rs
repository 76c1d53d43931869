//! [`UpError`]: why the local cloud did not start or stopped, and [`Part`].

use std::fmt;
use std::path::PathBuf;

/// A supervised child process of the local cloud.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The KMS (`berth kms serve`).
    Kms,
    /// The node (`berth node serve`).
    Node,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Kms => "KMS",
            Part::Node => "node",
        })
    }
}

/// Why the local cloud did not start, or stopped. The sentences name no
/// option of any front end: a front end that has a flag for the setting in
/// question says so in its own words (the variants carry what it needs).
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// CVMs of their own cannot run on this host (the sentence says why
    /// and what to do).
    #[error("{0}")]
    Isolation(String),
    /// The listen address is not `HOST:PORT`.
    #[error("{listen}: expected HOST:PORT, e.g. 127.0.0.1:8000")]
    BadListen {
        /// The address as given.
        listen: String,
    },
    /// The listen name resolves to no address.
    #[error("{listen}: the name has no address")]
    ListenNoAddress {
        /// The address as given.
        listen: String,
    },
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::serve::TlsError),
    /// Plain HTTP on an address other machines reach, not explicitly allowed.
    #[error(
        "{listen} is reachable from other machines, and without TLS every API key and log token would cross the network in the clear"
    )]
    PlainHttpOffLoopback {
        /// The address as given.
        listen: String,
    },
    /// The public URL is not `http(s)://HOST[:PORT]`.
    #[error("{url}: expected http(s)://HOST[:PORT], the address clients use to reach this API")]
    BadPublicUrl {
        /// The URL as given (without a trailing `/` or `/api/v1`).
        url: String,
    },
    /// The API listens on every address, so log URLs need a public URL.
    #[error(
        "{listen} is every address of this machine, so Berth cannot tell which one clients use in the log URLs it hands out"
    )]
    PublicUrlNeeded {
        /// The address as given.
        listen: String,
    },
    /// A file or folder operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, e.g. "cannot create /x".
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file or folder of the state belongs to another user, who may have
    /// planted it.
    #[error(
        "{} belongs to {owner}, not to this user ({me}), so another user may have put it there: if it is yours, chown it to this user; otherwise remove it, or use another state folder",
        .path.display()
    )]
    NotOwned {
        /// The file or folder.
        path: PathBuf,
        /// Its owner, e.g. `nobody (uid 65534)`.
        owner: String,
        /// The user this process runs as.
        me: String,
    },
    /// A folder above the state folder lets another user replace it.
    #[error(
        "the state folder {} is in {}, which {problem}, so another user could replace what is in it: use a state folder under folders only this user or root can write to",
        .state.display(),
        .folder.display()
    )]
    UnsafeFolder {
        /// The state folder.
        state: PathBuf,
        /// The folder above it.
        folder: PathBuf,
        /// What is wrong with it, e.g. `is mode 0777: writable by every user`.
        problem: String,
    },
    /// Another local cloud holds the state folder.
    #[error("another `berth up` ({}) is running on {}", holder(.pid), .state.display())]
    AlreadyRunning {
        /// The state folder.
        state: PathBuf,
        /// The holder's PID, when it wrote it yet.
        pid: Option<u32>,
    },
    /// No Docker engine answers and none can be started.
    #[error(
        "no Docker engine: DOCKER_HOST is not set, /var/run/docker.sock does not answer, and dockerd is not installed"
    )]
    NoDockerEngine,
    /// A mapped registry's address lies in the range CVM networks are
    /// given addresses from.
    #[error(
        "the registry mapped for {registry} is at {address}, inside {pool}, the range Berth's engine gives CVM networks their addresses from: a CVM network could take that address and receive the pulls meant for the registry"
    )]
    RegistryInCvmPool {
        /// The registry name as mapped.
        registry: String,
        /// Its address.
        address: String,
        /// The range.
        pool: &'static str,
    },
    /// The private `dockerd` started but never answered.
    #[error("the private dockerd did not answer within 60 s; see {}", .log.display())]
    DockerdSilent {
        /// Its log file.
        log: PathBuf,
    },
    /// The database failed.
    #[error("{0}")]
    Database(String),
    /// The admin's key file is gone and no new key was given.
    #[error("the admin API key is not in {} any more", .file.display())]
    AdminKeyMissing {
        /// The key file.
        file: PathBuf,
    },
    /// A child did not announce itself (its own messages say why).
    #[error("the {0} did not start; see the lines above")]
    DidNotStart(Part),
    /// The KMS announced an address that is not one.
    #[error("the KMS announced an address that is not valid")]
    BadKmsAddress,
    /// The HTTP client for the KMS cannot be built.
    #[error("cannot build the KMS client")]
    KmsClient,
    /// A child died too often; the local cloud stopped.
    #[error("the {part} died {deaths} times within 10 minutes; berth up stops")]
    KeepsDying {
        /// Which.
        part: Part,
        /// How often within the window.
        deaths: usize,
    },
    /// The task supervising the children failed.
    #[error("the supervisor of the KMS and the node failed")]
    Supervisor,
    /// Serving the API failed.
    #[error("the API stopped: {0}")]
    Serve(std::io::Error),
    /// Another `berth up` runs the node of this database (it holds the
    /// node lease, `db::NODE_LEASE`).
    #[error(
        "another `berth up` runs the node of this database ({holder}): two nodes on one database would boot the same CVMs twice"
    )]
    NodeElsewhere {
        /// Who holds the lease: host, PID and state folder.
        holder: String,
    },
    /// An API replica found no local cloud serving its state folder.
    #[error(
        "no `berth up` serves {}: its node does not answer on {}",
        .state.display(),
        .socket.display()
    )]
    NoPrimary {
        /// The state folder the replica was given.
        state: PathBuf,
        /// The node's socket it tried.
        socket: PathBuf,
    },
    /// A setting the API replica cannot take: the local cloud it joins
    /// owns it.
    #[error("{what} is for the `berth up` that runs the node and the KMS, not for an API replica")]
    NotForReplica {
        /// The setting, in words.
        what: &'static str,
    },
    /// An API replica found the KMS of the local cloud it joins silent.
    #[error("the KMS of the `berth up` it joins does not answer on {}", .socket.display())]
    KmsSilent {
        /// The KMS's socket.
        socket: PathBuf,
    },
    /// An API replica was given another database than the local cloud it
    /// joins.
    #[error(
        "the `berth up` on {} keeps its state in {primary}, but this API replica was given {given}: every replica must use the same database",
        .state.display()
    )]
    OtherDatabase {
        /// The state folder.
        state: PathBuf,
        /// The local cloud's database, without its password.
        primary: String,
        /// The replica's, without its password.
        given: String,
    },
    /// An API replica cannot read a file the local cloud it joins writes.
    #[error("cannot read {}, which the `berth up` on that state folder writes when it starts: {source}", .path.display())]
    PrimaryFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn holder(pid: &Option<u32>) -> String {
    match pid {
        Some(pid) => format!("PID {pid}"),
        None => "a process that is still starting".to_owned(),
    }
}

impl UpError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
