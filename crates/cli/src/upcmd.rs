//! `berth up` (the local confidential cloud), `berth kms serve` and `berth
//! node serve`: options in, [`cloud::up`] / [`kms::server::run`] called,
//! their events and errors worded for a terminal.

use crate::failure::Failure;
use clap::Args;
use cloud::up::{AdminKey, Part, UpConfig, UpError, UpEvent};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct UpArgs {
    /// Where the database, the KMS root key and the CVMs live. With
    /// `--role api`: the state folder of the `berth up` this replica joins
    /// (same machine), whose node, KMS, log URL secret, isolation and caps
    /// it uses.
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// What this `berth up` runs: `all`, the API with its own KMS and node
    /// (a whole cloud), or `api`, an API replica with neither, joining the
    /// `berth up` of --state and sharing its database (PostgreSQL: give
    /// every replica the same BERTH_DATABASE_URL). A replica takes the
    /// isolation and the caps of the cloud it joins. Run any number of
    /// replicas behind an HTTP load balancer.
    #[arg(long, value_name = "ROLE", default_value = "all", value_parser = ["all", "api"])]
    role: String,
    /// The PostgreSQL database to keep the state in, as
    /// `postgres://USER@HOST[:PORT]/DATABASE` (default: SQLite in
    /// STATE/berth.db). A URL with a password is refused here, where `ps`
    /// shows it: set the environment variable BERTH_DATABASE_URL instead.
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// Address of the API.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
    listen: String,
    /// Reach registry R at URL instead, in every CVM (repeatable).
    #[arg(long = "registry-endpoint", value_name = "R=URL")]
    registry_endpoint: Vec<String>,
    /// Trust this CA certificate (PEM) in every CVM (repeatable).
    #[arg(long = "ca-cert", value_name = "FILE")]
    ca_cert: Vec<PathBuf>,
    /// The most CVMs (not deleted) one user may have.
    #[arg(long, value_name = "N", default_value_t = 50)]
    max_cvms_per_user: usize,
    /// The most CVMs booting at once, all users together: more are not
    /// refused, they wait `starting` in the node's boot queue ("waiting
    /// for a boot slot (N ahead)"), which shares the slots round-robin
    /// between users.
    #[arg(long = "max-boots", value_name = "N", default_value_t = 8)]
    max_boots: usize,
    /// The most boots of one user running at once (their other CVMs wait
    /// in the queue), so one user's stuck boots leave the others' slots
    /// alone; default: half of --max-boots, at least 1.
    #[arg(long = "max-boots-per-user", value_name = "N")]
    max_boots_per_user: Option<usize>,
    /// The most API requests one user may have in progress at once (more
    /// answer 429).
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_requests_per_user: usize,
    /// What a CVM is: `container`, a machine of its own (a system container
    /// with its own Docker engine; needs root, rootlesskit, slirp4netns and
    /// uidmap; dstack's compose rules), or `shared`, the fast mode with no
    /// isolation between CVMs (all on one engine; strict compose rules);
    /// `auto`: `container` where this host can, else `shared`, saying why.
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = ["auto", "shared", "container"])]
    isolation: String,
    /// Refuse, at provisioning and update, a compose file naming an image
    /// by tag only: every image must be `name@sha256:…` (`berth deploy`
    /// pins tags unless --no-pin), so what a CVM runs is what its compose
    /// hash measures.
    #[arg(long)]
    require_digests: bool,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Allow plain HTTP on an address other machines can reach (e.g. behind
    /// a TLS-terminating proxy).
    #[arg(long)]
    insecure: bool,
    /// The URL clients reach this API by (for the log URLs it hands out),
    /// e.g. `https://berth.example.com`; default: the --listen address.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Replace the secret of log URL tokens: every log URL handed out before
    /// stops working.
    #[arg(long)]
    rotate_log_secret: bool,
    /// Seconds a client has to send its request headers.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a client has, from a request's headers, to send its body
    /// (then 408).
    #[arg(long, value_name = "SECS", default_value_t = 20)]
    body_timeout: u64,
    /// The most connections the API serves at once (others wait).
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_connections: usize,
    /// The most connections one client address may hold at once (more are
    /// closed); loopback clients, which all share 127.0.0.1, are bounded by
    /// --max-requests-per-user instead.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_connections_per_client: usize,
}

#[derive(Args)]
pub struct KmsServeArgs {
    /// The KMS root key file (created, mode 0600, if missing).
    #[arg(long, value_name = "FILE")]
    root_key: PathBuf,
    /// The Unix socket to listen on (its folder must be mode 0700).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// Read the node's secret (which lets it mint boot tickets) from the
    /// first line of standard input. Without it no env key is ever released.
    #[arg(long)]
    node_secret_stdin: bool,
}

#[derive(Args)]
pub struct NodeServeArgs {
    /// The state folder of `berth up` (database, CVM folders).
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    /// The Unix socket to listen on (its folder must be mode 0700).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
}

pub fn default_state() -> PathBuf {
    crate::data_dir().join("cloud")
}

/// Reads one line of standard input as a secret.
fn secret_line_from_stdin(what: &str) -> Result<zeroize::Zeroizing<String>, Failure> {
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Failure::io(format!("cannot read {what} from standard input"), &e))?;
    Ok(zeroize::Zeroizing::new(line.trim().to_owned()))
}

fn current_exe() -> Result<PathBuf, Failure> {
    std::env::current_exe().map_err(|e| Failure::io("cannot find the berth executable", &e))
}

/// Prints a child's announcement (what `berth up` waits for) at once.
fn announce(lines: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(lines.as_bytes());
    let _ = out.flush();
}

pub fn kms_serve(args: KmsServeArgs) -> Result<(), Failure> {
    let node_secret = if args.node_secret_stdin {
        Some(contract::SecretValue::new(
            secret_line_from_stdin("the node secret")?.to_string(),
        ))
    } else {
        None
    };
    let apps_dir = args
        .root_key
        .parent()
        .map(|d| d.join("apps"))
        .unwrap_or_else(|| "apps".into());
    let config = kms::server::KmsServeConfig {
        apps_dir,
        root_key: args.root_key,
        socket: args.socket,
        node_secret,
    };
    let served = crate::runtime().block_on(kms::server::run(config, |ready| {
        announce(&ready.render());
        eprintln!("kms: simulated TEE: env keys are released against a one-time boot ticket and a computed measurement, not a hardware attestation");
    }));
    served.map_err(|e| match e {
        kms::server::ServeError::RootKey(e @ kms::RootKeyError::InsecurePermissions { .. }) => {
            Failure::config(e)
                .hint("the KMS root key file must be readable by this user only (chmod 600)")
        }
        kms::server::ServeError::RootKey(e) => Failure::config(e),
        kms::server::ServeError::Bind { socket, source } => {
            Failure::io(format!("cannot listen on {}", socket.display()), &source)
        }
        kms::server::ServeError::Stopped(e) => Failure::io("the KMS stopped", &e),
    })
}

pub fn node_serve(args: NodeServeArgs) -> Result<(), Failure> {
    use cloud::up::NodeServeError;
    let settings = secret_line_from_stdin("the node settings")?;
    let config = cloud::up::NodeServeConfig {
        state: args.state,
        socket: args.socket,
        berth_exe: current_exe()?,
        settings,
    };
    let served = crate::runtime().block_on(cloud::up::serve_node(config, |ready| {
        announce(&ready.render())
    }));
    served.map_err(|e| match e {
        NodeServeError::Bind { socket, source } => {
            Failure::io(format!("cannot listen on {}", socket.display()), &source)
        }
        NodeServeError::Stopped(e) => Failure::io("the node stopped", &e),
        other => Failure::config(other),
    })
}

/// `--registry-endpoint R=URL` options as a map.
fn registry_endpoints(given: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    let mut endpoints = BTreeMap::new();
    for m in given {
        let (r, u) = m.split_once('=').ok_or_else(|| {
            Failure::config(format!("--registry-endpoint {m}: expected REGISTRY=URL"))
        })?;
        endpoints.insert(r.to_owned(), u.to_owned());
    }
    Ok(endpoints)
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The database `--database` or `BERTH_DATABASE_URL` names (`None`:
/// SQLite). A password on the command line is refused: every user of the
/// machine can read a process's arguments.
fn database(flag: Option<&str>) -> Result<Option<cloud::db::DbUrl>, Failure> {
    const VAR: &str = "BERTH_DATABASE_URL";
    let (text, from) = match (flag, env_var(VAR)) {
        (Some(_), Some(_)) => {
            return Err(Failure::config(format!(
                "the database is given twice, by --database and by {VAR}"
            ))
            .hint(format!("give it once: {VAR} when the URL holds a password")));
        }
        (Some(f), None) => (zeroize::Zeroizing::new(f.to_owned()), "--database"),
        (None, Some(v)) => (zeroize::Zeroizing::new(v), VAR),
        (None, None) => return Ok(None),
    };
    let url =
        cloud::db::DbUrl::parse(&text).map_err(|e| Failure::config(format!("{from}: {e}")))?;
    if from == "--database" && url.has_password() {
        return Err(Failure::config(
            "--database: the URL holds a password, and every user of this machine can read a command line (ps)",
        )
        .hint(format!(
            "put the URL in the environment variable {VAR} instead, e.g. read -rs {VAR}; export {VAR}"
        )));
    }
    Ok(Some(url))
}

pub fn up(args: UpArgs) -> Result<(), Failure> {
    let database = database(args.database.as_deref())?;
    let role = match args.role.as_str() {
        "api" => cloud::up::Role::Api,
        _ => cloud::up::Role::All,
    };
    let mut ca_certs = Vec::new();
    for f in &args.ca_cert {
        ca_certs.push(
            std::fs::read_to_string(f)
                .map_err(|e| Failure::io(format!("cannot read {}", f.display()), &e))?,
        );
    }
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(cloud::up::TlsFiles { cert, key }),
        (None, None) => None,
        _ => {
            return Err(Failure::config(
                "--tls-cert and --tls-key go together: give both, or neither",
            ));
        }
    };
    let config = UpConfig {
        state: args.state.unwrap_or_else(default_state),
        role,
        database,
        listen: args.listen,
        tls,
        insecure: args.insecure,
        public_url: args.public_url,
        registry_endpoints: registry_endpoints(&args.registry_endpoint)?,
        ca_certs,
        aws_endpoint_url_ecr: env_var("AWS_ENDPOINT_URL_ECR")
            .or_else(|| env_var("AWS_ENDPOINT_URL")),
        docker_host: env_var("DOCKER_HOST"),
        admin_api_key: env_var("BERTH_ADMIN_API_KEY").map(contract::SecretValue::new),
        rotate_log_secret: args.rotate_log_secret,
        limits: cloud::db::Limits {
            max_cvms_per_user: args.max_cvms_per_user,
            max_boots_in_flight: args.max_boots,
            max_boots_per_user: args.max_boots_per_user.unwrap_or(args.max_boots / 2).max(1),
            max_requests_per_user: args.max_requests_per_user,
            // A replica takes the isolation of the cloud it joins.
            isolation: match role {
                cloud::up::Role::Api => contract::Isolation::Shared,
                cloud::up::Role::All => isolation(&args.isolation),
            },
            require_digests: args.require_digests,
            ..cloud::db::Limits::default()
        },
        header_timeout: std::time::Duration::from_secs(args.header_timeout),
        body_timeout: std::time::Duration::from_secs(args.body_timeout),
        max_connections: args.max_connections,
        max_connections_per_client: args.max_connections_per_client,
        berth_exe: current_exe()?,
    };
    crate::runtime().block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Failure::io("cannot watch for SIGTERM", &e))?;
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        };
        cloud::up::run(config, Arc::new(print_event), shutdown)
            .await
            .map_err(up_failure)
    })?;
    eprintln!("berth up: stopped");
    Ok(())
}

/// How `berth up` shows what happens.
fn print_event(event: UpEvent) {
    let minutes = cloud::up::RESTART_WINDOW.as_secs() / 60;
    match event {
        UpEvent::ModeFixed { path, was, now } => {
            eprintln!(
                "berth up: {} was mode {was:o}; now {now:04o}",
                path.display()
            );
        }
        UpEvent::Note(note) => println!("Note: {note}."),
        UpEvent::LogSecretRotated => {
            println!("Log secret rotated: log URLs handed out before no longer work.");
        }
        UpEvent::Ready(ready) => print_ready(&ready),
        UpEvent::Output { line, .. } => println!("{line}"),
        UpEvent::Died { part, pid, exit } => eprintln!(
            "berth up: the {part} (PID {pid}) {exit}; the API answers 503 for what needs it until it is back"
        ),
        UpEvent::Restarting {
            part,
            delay,
            restart,
            max,
        } => eprintln!(
            "berth up: restarting the {part} in {} s (restart {restart} of at most {max} in {minutes} minutes)",
            delay.as_secs()
        ),
        UpEvent::RestartFailed { part, reason } => {
            eprintln!("berth up: the {part} did not start again: {reason}");
        }
        UpEvent::KmsKeyChanged { public_key } => eprintln!(
            "berth up: warning: the restarted KMS has another public key ({public_key}); clients that trust the old one will refuse its keys"
        ),
        UpEvent::Back { part, pid } => eprintln!("berth up: the {part} is back (PID {pid})"),
        UpEvent::GaveUp { part, deaths } => eprintln!(
            "berth up: the {part} died {deaths} times within {minutes} minutes; berth up stops"
        ),
    }
}

fn print_ready(r: &cloud::up::Ready) {
    let file = r.api_key_file.display();
    let admin = match &r.admin_key {
        AdminKey::Configured => format!("from BERTH_ADMIN_API_KEY (also in {file})"),
        AdminKey::Created(k) => format!("{}  (shown this once; also in {file})", k.expose()),
        AdminKey::InFile => format!("in {file}"),
        AdminKey::RotatedSinceWritten => format!(
            "rotated since {file} was written: use the key `berth users rotate admin` printed, or set BERTH_ADMIN_API_KEY"
        ),
    };
    match r.role {
        cloud::up::Role::All => println!(
            "Berth local cloud is up (simulated TEE: measurements are computed, not attested by hardware)."
        ),
        cloud::up::Role::Api => println!(
            "Berth API replica is up, on the node and the KMS of the berth up on {} (simulated TEE).",
            r.state.display()
        ),
    }
    println!("API:            {}/api/v1", r.public_url);
    if r.public_url != r.listening {
        println!("Listening on:   {}", r.listening);
    }
    println!("Admin API key:  {admin}");
    println!(
        "Web console:    {}/  (sign in with the admin API key)",
        r.public_url
    );
    println!(
        "KMS public key: {}  (berth deploy checks env keys against it)",
        r.kms_public_key
    );
    println!(
        "Attestation key: {}  (simulated TEE: checks the CVMs' quotes; berth attest verify)",
        r.attestation_public_key
    );
    println!("State:          {}", r.state.display());
    println!("Database:       {}", r.database);
    match r.isolation {
        contract::Isolation::Container => println!(
            "Isolation:      container (each CVM a machine of its own, with its own Docker engine)"
        ),
        contract::Isolation::Shared => {
            println!(
                "Isolation:      shared (fast mode: every CVM's containers on one engine, no isolation between CVMs)"
            );
            println!("Docker engine:  {}", r.docker_host);
        }
    }
    if r.resumed > 0 {
        println!("Resumed {} CVMs.", r.resumed);
    }
    println!(
        "Use: export BERTH_API_URL={}/api/v1 BERTH_API_KEY=$(cat {file})",
        r.public_url
    );
    println!("Stop with Ctrl-C.");
}

/// The isolation `--isolation MODE` asks for; `auto` is `container` where
/// this host can run CVMs in machines of their own (root, rootlesskit,
/// slirp4netns, uidmap), else `shared`, said once.
fn isolation(mode: &str) -> contract::Isolation {
    match mode {
        "container" => contract::Isolation::Container,
        "shared" => contract::Isolation::Shared,
        _ => match cloud::node::check_container_host() {
            Ok(notes) => {
                for note in notes {
                    println!("Note: {note}.");
                }
                contract::Isolation::Container
            }
            Err(why) => {
                println!(
                    "Note: CVMs share one Docker engine (fast mode, no isolation between CVMs), because {why}."
                );
                contract::Isolation::Shared
            }
        },
    }
}

/// [`UpError`] in `berth up`'s terms: its options and environment variables.
fn up_failure(e: UpError) -> Failure {
    match e {
        UpError::BadListen { .. }
        | UpError::ListenNoAddress { .. } => Failure::config(format!("--listen {e}")),
        UpError::PlainHttpOffLoopback { .. } => Failure::config(format!("--listen {e}")).hint(
            "give --tls-cert FILE --tls-key FILE, or --insecure if a TLS proxy in front of Berth ends TLS",
        ),
        UpError::PublicUrlNeeded { .. } => Failure::config(format!("--listen {e}"))
            .hint("give --public-url https://HOST:PORT (the name clients reach this machine by)"),
        UpError::BadPublicUrl { .. } => Failure::config(format!("--public-url {e}")),
        UpError::Io { what, source } => Failure::io(what, &source),
        UpError::Isolation(_) => Failure::config(format!("--isolation container: {e}")),
        UpError::Serve(source) => Failure::io("the API stopped", &source),
        UpError::AlreadyRunning { .. } => Failure::config(e).hint(
            "stop it first (Ctrl-C, or kill -TERM its PID), or give this one another --state",
        ),
        UpError::RegistryInCvmPool { .. } => Failure::config(e).hint(
            "map the registry (--registry-endpoint) at an address outside that range, or give Berth an engine of your own with DOCKER_HOST",
        ),
        UpError::NotOwned { .. } | UpError::UnsafeFolder { .. } => Failure::config(e)
            .hint("or give --state a folder of your own, e.g. under your home folder"),
        UpError::NoDockerEngine => Failure::config(e)
            .hint("install Docker (Debian: apt-get install docker.io) or set DOCKER_HOST"),
        UpError::AdminKeyMissing { .. } => {
            Failure::config(e).hint("set BERTH_ADMIN_API_KEY to give the admin a new key")
        }
        UpError::KeepsDying { .. } => Failure::config(e).hint(
            "its last messages are above; the CVMs' state is kept for the next `berth up`",
        ),
        UpError::NoPrimary { .. } | UpError::KmsSilent { .. } => Failure::config(e).hint(
            "start `berth up --state STATE` (the node and the KMS) first, then the API replicas with --role api --state STATE",
        ),
        UpError::NodeElsewhere { .. } => Failure::config(e).hint(
            "stop that one first, or start this one as an API replica of it (--role api --state ITS-STATE); a lease left by a berth up killed with kill -9 runs out within 30 s",
        ),
        UpError::NotForReplica { .. } => {
            Failure::config(e).hint("give it to the `berth up` without --role api")
        }
        UpError::OtherDatabase { .. } => Failure::config(e).hint(
            "give this replica the primary's database in BERTH_DATABASE_URL (or leave it out, if the primary uses SQLite)",
        ),
        UpError::PrimaryFile { .. } => Failure::config(e).hint(
            "--state of an API replica is the state folder of a running `berth up` of this version",
        ),
        UpError::DidNotStart(Part::Kms | Part::Node)
        | UpError::Tls(_)
        | UpError::DockerdSilent { .. }
        | UpError::Database(_)
        | UpError::BadKmsAddress
        | UpError::KmsClient
        | UpError::Supervisor => Failure::config(e),
    }
}
