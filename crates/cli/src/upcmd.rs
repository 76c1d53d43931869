//! `berth up` (the local confidential cloud) and `berth kms serve`.

use crate::failure::Failure;
use clap::Args;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncBufReadExt;

#[derive(Args)]
pub struct UpArgs {
    /// Where the database, the KMS root key and the CVMs live.
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
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
    /// The most CVMs booting at once, all users together (more answer 429).
    #[arg(long = "max-boots", value_name = "N", default_value_t = 8)]
    max_boots: usize,
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
    /// e.g. https://berth.example.com; default: the --listen address.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Replace the secret of log URL tokens: every log URL handed out before
    /// stops working.
    #[arg(long)]
    rotate_log_secret: bool,
    /// Seconds a client has to send its request headers.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    header_timeout: u64,
    /// The most connections the API serves at once (others wait).
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_connections: usize,
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

/// What `berth up` tells the node on its standard input (it holds the node
/// secret, so it never goes on a command line).
#[derive(serde::Serialize, serde::Deserialize)]
struct NodeSettings {
    node_secret: String,
    kms_url: String,
    docker_host: String,
    registry_endpoints: BTreeMap<String, String>,
    ca_certs: Vec<String>,
    aws_endpoint_url_ecr: Option<String>,
}

pub fn default_state() -> PathBuf {
    crate::data_dir().join("cloud")
}

fn io_fail(what: &str, e: std::io::Error) -> Failure {
    Failure::io(what, &e)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    cloud::node::write_private(path, text.as_bytes())
}

/// Files of the state folder only its owner may read, whatever umask made them.
const PRIVATE_FILES: &[&str] = &[
    "berth.db",
    "berth.db-wal",
    "berth.db-shm",
    "api-key",
    "berth.lock",
    "log-secret",
    "kms-public-key",
    "dockerd.log",
];

/// Makes the state folder private: 0700 folders, 0600 files (fixing, and
/// saying so, what an older Berth or a careless umask left open).
fn lock_down_state(state: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for dir in ["", "kms", "cvms", "node", "run"] {
        let d = state.join(dir);
        let was = std::fs::metadata(&d).map(|m| m.mode() & 0o777).ok();
        cloud::node::private_dir(&d)
            .map_err(|e| io_fail(&format!("cannot create {}", d.display()), e))?;
        if let Some(mode) = was.filter(|m| m & 0o077 != 0) {
            eprintln!("berth up: {} was mode {mode:o}; now 0700", d.display());
        }
    }
    let fix = |p: &Path, want: u32| {
        if let Ok(m) = std::fs::symlink_metadata(p)
            && !m.file_type().is_symlink()
            && m.mode() & 0o077 != 0
        {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(want));
            eprintln!(
                "berth up: {} was mode {:o}; now {want:o}",
                p.display(),
                m.mode() & 0o777
            );
        }
    };
    for f in PRIVATE_FILES {
        fix(&state.join(f), 0o600);
    }
    if let Ok(rd) = std::fs::read_dir(state.join("cvms")) {
        for e in rd.flatten() {
            fix(&e.path(), 0o700);
            for f in ["serial.log", "shared", "state"] {
                let p = e.path().join(f);
                fix(&p, if f == "serial.log" { 0o600 } else { 0o700 });
            }
            if let Ok(rd) = std::fs::read_dir(e.path().join("shared")) {
                for f in rd.flatten() {
                    fix(&f.path(), 0o600);
                }
            }
        }
    }
    Ok(())
}

/// New files and folders of this process are its owner's alone.
fn private_umask() {
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// Makes a child die with this process (SIGTERM when its parent is gone),
/// with a cleared environment but for `PATH` and the locale.
fn child_command(exe: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.env_clear();
    for name in ["PATH", "LANG", "TZ"] {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    set_parent_death_signal(cmd.as_std_mut());
    cmd.kill_on_drop(true);
    cmd
}

/// Makes the child get SIGTERM when this process dies (also by `kill -9`),
/// and not start at all when this process died before the setting took
/// effect (then it has another parent already).
fn set_parent_death_signal(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid, prctl and getppid are async-signal-safe.
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 || libc::getppid() != parent
            {
                return Err(std::io::Error::other("berth up is gone"));
            }
            Ok(())
        });
    }
}

/// Reads one line of standard input as a secret.
fn secret_line_from_stdin(what: &str) -> Result<zeroize::Zeroizing<String>, Failure> {
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| io_fail(&format!("cannot read {what} from standard input"), e))?;
    Ok(zeroize::Zeroizing::new(line.trim().to_owned()))
}

pub fn kms_serve(args: KmsServeArgs) -> Result<(), Failure> {
    private_umask();
    let root = kms::KmsRootKey::load_or_create(&args.root_key).map_err(|e| {
        Failure::config(e.to_string())
            .hint("the KMS root key file must be readable by this user only (chmod 600)")
    })?;
    let node_secret = if args.node_secret_stdin {
        Some(secret_line_from_stdin("the node secret")?)
    } else {
        None
    };
    let rt = crate::runtime();
    rt.block_on(async {
        let listener = kms::server::bind_socket(&args.socket).map_err(|e| {
            io_fail(&format!("cannot listen on {}", args.socket.display()), e)
        })?;
        println!("kms listening on unix:{}", args.socket.display());
        println!("kms public key {}", root.public_key().to_hex());
        eprintln!("kms: simulated TEE: env keys are released against a one-time boot ticket and a computed measurement, not a hardware attestation");
        let state = Arc::new(kms::server::Kms::new(root, node_secret));
        kms::server::serve(listener, state).await.map_err(|e| io_fail("the KMS stopped", e))
    })
}

pub fn node_serve(args: NodeServeArgs) -> Result<(), Failure> {
    private_umask();
    let text = secret_line_from_stdin("the node settings")?;
    let settings: NodeSettings = serde_json::from_str(&text)
        .map_err(|_| Failure::config("the node settings on standard input are not valid"))?;
    drop(text);
    let exe =
        std::env::current_exe().map_err(|e| io_fail("cannot find the berth executable", e))?;
    let rt = crate::runtime();
    rt.block_on(async move {
        let db = Arc::new(
            cloud::Db::open(&args.state.join("berth.db"))
                .map_err(|e| Failure::config(e.message))?,
        );
        let node = cloud::Node::new(
            cloud::NodeConfig {
                root: args.state.join("cvms"),
                berth_bin: exe,
                kms_url: settings.kms_url,
                node_secret: cloud::NodeSecret(zeroize::Zeroizing::new(settings.node_secret)),
                docker_host: settings.docker_host,
                registry_endpoints: settings.registry_endpoints,
                ca_certs: settings.ca_certs,
                aws_endpoint_url_ecr: settings.aws_endpoint_url_ecr,
            },
            db.clone(),
        );
        let listener = kms::server::bind_socket(&args.socket)
            .map_err(|e| io_fail(&format!("cannot listen on {}", args.socket.display()), e))?;
        let resumed = node
            .resume()
            .await
            .map_err(|e| Failure::config(e.message))?;
        println!("node listening on unix:{}", args.socket.display());
        println!("node resumed {resumed}");
        cloud::nodeapi::serve(listener, node, db)
            .await
            .map_err(|e| io_fail("the node stopped", e))
    })
}

/// The engine the node uses: `DOCKER_HOST`, else the default socket, else
/// a private `dockerd` under the state folder.
async fn docker_host(state: &Path) -> Result<(String, Option<tokio::process::Child>), Failure> {
    if let Ok(h) = std::env::var("DOCKER_HOST")
        && !h.is_empty()
    {
        return Ok((h, None));
    }
    if Path::new("/var/run/docker.sock").exists() && ping("/var/run/docker.sock").await {
        return Ok(("unix:///var/run/docker.sock".into(), None));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("dockerd").is_file()))
        .unwrap_or(false);
    if !on_path {
        return Err(Failure::config("no Docker engine: DOCKER_HOST is not set, /var/run/docker.sock does not answer, and dockerd is not installed")
            .hint("install Docker (Debian: apt-get install docker.io) or set DOCKER_HOST"));
    }
    // The engine's socket and exec-root live in the private state folder;
    // when that path is too long for a Unix socket (108 bytes), in a fresh
    // folder with a random name that this call creates itself (never one
    // that already exists, which another user could have made first).
    let mut run = state.join("run");
    if run.join("docker.sock").as_os_str().len() > 100 {
        run = fresh_private_tmp_dir()
            .map_err(|e| io_fail("cannot create the dockerd run folder", e))?;
    }
    cloud::node::private_dir(&run)
        .map_err(|e| io_fail("cannot create the dockerd run folder", e))?;
    let data = state.join("docker");
    std::fs::create_dir_all(&data)
        .map_err(|e| io_fail("cannot create the dockerd data folder", e))?;
    let sock = run.join("docker.sock");
    let log =
        std::fs::File::create(state.join("dockerd.log")).map_err(|e| io_fail("dockerd log", e))?;
    let mut dockerd = tokio::process::Command::new("dockerd");
    set_parent_death_signal(dockerd.as_std_mut());
    let child = dockerd
        .arg("--host")
        .arg(format!("unix://{}", sock.display()))
        .arg("--data-root")
        .arg(&data)
        .arg("--exec-root")
        .arg(run.join("exec"))
        .arg("--pidfile")
        .arg(run.join("docker.pid"))
        .args([
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--log-level=warn",
        ])
        .stdout(log.try_clone().map_err(|e| io_fail("dockerd log", e))?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| io_fail("cannot start dockerd", e))?;
    for _ in 0..600 {
        if ping(&sock.to_string_lossy()).await {
            return Ok((format!("unix://{}", sock.display()), Some(child)));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(Failure::config(format!(
        "the private dockerd did not answer within 60 s; see {}",
        state.join("dockerd.log").display()
    )))
}

/// A new folder `/tmp/berth-<random>`, created by this call (mode 0700).
fn fresh_private_tmp_dir() -> std::io::Result<PathBuf> {
    use rand_core::RngCore;
    use std::os::unix::fs::DirBuilderExt;
    let mut b = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut b);
    let dir = std::env::temp_dir().join(format!("berth-{}", hex_lower(&b)));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn ping(sock: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::UnixStream::connect(sock).await else {
        return false;
    };
    if s.write_all(b"GET /_ping HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(2), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && buf.starts_with(b"HTTP/1.")
}

/// Takes the exclusive lock of one `berth up` on `state` (`STATE/berth.lock`,
/// holding its PID), kept until the returned file is closed — by the
/// kernel, too, when this process dies however it dies.
fn lock_state(state: &Path) -> Result<std::fs::File, Failure> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let path = state.join("berth.lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_fail(&format!("cannot open {}", path.display()), e))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_fail(&format!("cannot lock {}", path.display()), err));
        }
        let mut text = String::new();
        let _ = f.read_to_string(&mut text);
        let holder = match text.trim().parse::<u32>() {
            Ok(pid) => format!("PID {pid}"),
            Err(_) => "a process that is still starting".to_owned(),
        };
        return Err(Failure::config(format!(
            "another `berth up` ({holder}) is running on {}",
            state.display()
        ))
        .hint("stop it first (Ctrl-C, or kill -TERM its PID), or give this one another --state"));
    }
    let mut write = || -> std::io::Result<()> {
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{}", std::process::id())?;
        f.sync_all()
    };
    write().map_err(|e| io_fail(&format!("cannot write {}", path.display()), e))?;
    Ok(f)
}

/// Where the API listens and how: checked before anything starts.
struct Listen {
    addr: std::net::SocketAddr,
    tls: Option<Arc<cloud::serve::TlsConfig>>,
    public_url: Option<String>,
}

fn check_listen(args: &UpArgs) -> Result<Listen, Failure> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<std::net::SocketAddr> = args
        .listen
        .to_socket_addrs()
        .map_err(|_| {
            Failure::config(format!(
                "--listen {}: expected HOST:PORT, e.g. 127.0.0.1:8000",
                args.listen
            ))
        })?
        .collect();
    let addr = *addrs.first().ok_or_else(|| {
        Failure::config(format!("--listen {}: the name has no address", args.listen))
    })?;
    let loopback = addrs.iter().all(|a| a.ip().is_loopback());
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(cloud::serve::tls_config(cert, key).map_err(|e| Failure::config(e.to_string()))?)
        }
        (None, None) => None,
        _ => {
            return Err(Failure::config(
                "--tls-cert and --tls-key go together: give both, or neither",
            ));
        }
    };
    if !loopback && tls.is_none() && !args.insecure {
        return Err(Failure::config(format!(
            "--listen {} is reachable from other machines, and without TLS every API key and log token would cross the network in the clear",
            args.listen
        ))
        .hint("give --tls-cert FILE --tls-key FILE, or --insecure if a TLS proxy in front of Berth ends TLS"));
    }
    let public_url = match &args.public_url {
        Some(u) => {
            let u = u.trim_end_matches('/');
            let u = u.strip_suffix("/api/v1").unwrap_or(u);
            let host = u
                .strip_prefix("https://")
                .or_else(|| u.strip_prefix("http://"));
            if host.is_none_or(|h| h.is_empty() || h.contains(['/', '?', '#', ' '])) {
                return Err(Failure::config(format!(
                    "--public-url {u}: expected http(s)://HOST[:PORT], the address clients use to reach this API"
                )));
            }
            Some(u.to_owned())
        }
        None if addr.ip().is_unspecified() => {
            return Err(Failure::config(format!(
                "--listen {} is every address of this machine, so Berth cannot tell which one clients use in the log URLs it hands out",
                args.listen
            ))
            .hint("give --public-url https://HOST:PORT (the name clients reach this machine by)"));
        }
        None => None,
    };
    Ok(Listen {
        addr,
        tls,
        public_url,
    })
}

/// Starts the KMS: (its process, its address, its public key).
async fn start_kms(
    exe: &Path,
    state: &Path,
    node_secret: &str,
) -> Result<(tokio::process::Child, String, String), Failure> {
    let mut kms = child_command(exe)
        .args(["kms", "serve", "--node-secret-stdin", "--root-key"])
        .arg(state.join("kms/root.key"))
        .arg("--socket")
        .arg(state.join("kms/kms.sock"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| io_fail("cannot start the KMS", e))?;
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = kms.stdin.take().expect("piped");
        let mut line = zeroize::Zeroizing::new(node_secret.as_bytes().to_vec());
        line.push(b'\n');
        stdin
            .write_all(&line)
            .await
            .map_err(|e| io_fail("cannot hand the KMS its node secret", e))?;
    }
    let mut lines = tokio::io::BufReader::new(kms.stdout.take().expect("piped")).lines();
    let mut kms_url = None;
    let mut kms_pub = None;
    while let Ok(Some(l)) = lines.next_line().await {
        if let Some(u) = l.strip_prefix("kms listening on ") {
            kms_url = Some(u.to_owned());
        } else if let Some(k) = l.strip_prefix("kms public key ") {
            kms_pub = Some(k.to_owned());
            break;
        }
    }
    let (Some(kms_url), Some(kms_pub)) = (kms_url, kms_pub) else {
        let _ = kms.kill().await;
        return Err(Failure::config(
            "the KMS did not start; see the lines above",
        ));
    };
    forward_lines(lines);
    Ok((kms, kms_url, kms_pub))
}

/// Starts the node with its settings (JSON, one line): (its process, how
/// many CVMs it booted again).
async fn start_node(
    exe: &Path,
    state: &Path,
    settings: &[u8],
) -> Result<(tokio::process::Child, usize), Failure> {
    let mut node = child_command(exe)
        .args(["node", "serve", "--state"])
        .arg(state)
        .arg("--socket")
        .arg(state.join("node/node.sock"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| io_fail("cannot start the node", e))?;
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = node.stdin.take().expect("piped");
        stdin
            .write_all(settings)
            .await
            .map_err(|e| io_fail("cannot hand the node its settings", e))?;
    }
    let mut lines = tokio::io::BufReader::new(node.stdout.take().expect("piped")).lines();
    let mut resumed = None;
    while let Ok(Some(l)) = lines.next_line().await {
        if let Some(n) = l.strip_prefix("node resumed ") {
            resumed = n.parse::<usize>().ok();
            break;
        }
    }
    let Some(resumed) = resumed else {
        let _ = node.kill().await;
        return Err(Failure::config(
            "the node did not start; see the lines above",
        ));
    };
    forward_lines(lines);
    Ok((node, resumed))
}

/// Passes a child's later standard output on (so it never fills its pipe).
fn forward_lines(mut lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>) {
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            println!("{l}");
        }
    });
}

/// A supervised child: the KMS or the node.
struct Part {
    name: &'static str,
    child: tokio::process::Child,
    pid: u32,
    /// When it died lately (restarts are counted over [`RESTART_WINDOW`]).
    deaths: Vec<std::time::Instant>,
}

impl Part {
    fn new(name: &'static str, child: tokio::process::Child) -> Self {
        let pid = child.id().unwrap_or(0);
        Self {
            name,
            child,
            pid,
            deaths: Vec::new(),
        }
    }
}

/// The most restarts of one part within [`RESTART_WINDOW`] before `berth up`
/// gives up and stops.
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// What a restart needs (the node secret and the node's settings stay in
/// this process's memory, as they were handed out at the start).
struct Respawn {
    exe: PathBuf,
    state: PathBuf,
    node_secret: zeroize::Zeroizing<String>,
    node_settings: zeroize::Zeroizing<Vec<u8>>,
    kms_pub: String,
}

fn describe_exit(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (_, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "ended".to_owned(),
        },
        Err(e) => format!("cannot be waited for ({e})"),
    }
}

/// Starts `part` again after a backoff (1, 2, 4, 8, 16 s), or fails when it
/// died more than [`MAX_RESTARTS`] times within [`RESTART_WINDOW`].
async fn restart(part: &mut Part, how: &Respawn) -> Result<(), Failure> {
    loop {
        part.deaths.retain(|t| t.elapsed() < RESTART_WINDOW);
        part.deaths.push(std::time::Instant::now());
        let n = part.deaths.len();
        if n > MAX_RESTARTS {
            return Err(Failure::config(format!(
                "the {} died {n} times within 10 minutes; berth up stops",
                part.name
            ))
            .hint("its last messages are above; the CVMs' state is kept for the next `berth up`"));
        }
        let delay = std::time::Duration::from_secs(1 << (n - 1));
        eprintln!(
            "berth up: restarting the {} in {} s (restart {n} of at most {MAX_RESTARTS} in 10 minutes)",
            part.name,
            delay.as_secs()
        );
        tokio::time::sleep(delay).await;
        let started = if part.name == "KMS" {
            start_kms(&how.exe, &how.state, &how.node_secret)
                .await
                .map(|(child, _, public_key)| {
                    if public_key != how.kms_pub {
                        eprintln!("berth up: warning: the restarted KMS has another public key ({public_key}); clients that trust the old one will refuse its keys");
                    }
                    child
                })
        } else {
            start_node(&how.exe, &how.state, &how.node_settings)
                .await
                .map(|(child, _)| child)
        };
        match started {
            Ok(child) => {
                *part = Part {
                    deaths: std::mem::take(&mut part.deaths),
                    ..Part::new(part.name, child)
                };
                eprintln!("berth up: the {} is back (PID {})", part.name, part.pid);
                return Ok(());
            }
            Err(f) => eprintln!(
                "berth up: the {} did not start again: {}",
                part.name, f.message
            ),
        }
    }
}

/// Watches the KMS and the node until `stop`: a part that dies is restarted
/// (meanwhile the API answers 503 for what needs it); one that keeps dying
/// ends `berth up` (through `fatal`), with the reason.
async fn supervise(
    mut kms: Part,
    mut node: Part,
    how: Respawn,
    mut stop: tokio::sync::watch::Receiver<bool>,
    fatal: Arc<tokio::sync::Notify>,
) -> (Part, Part, Option<Failure>) {
    loop {
        let (is_kms, status) = tokio::select! {
            s = kms.child.wait() => (true, s),
            s = node.child.wait() => (false, s),
            _ = stop.changed() => return (kms, node, None),
        };
        let part = if is_kms { &mut kms } else { &mut node };
        eprintln!(
            "berth up: the {} (PID {}) {}; the API answers 503 for what needs it until it is back",
            part.name,
            part.pid,
            describe_exit(status)
        );
        let outcome = tokio::select! {
            r = restart(part, &how) => Some(r),
            _ = stop.changed() => None,
        };
        match outcome {
            None => return (kms, node, None),
            Some(Ok(())) => {}
            Some(Err(f)) => {
                eprintln!("berth up: {}", f.message);
                fatal.notify_one();
                return (kms, node, Some(f));
            }
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`.
async fn terminate(child: &mut tokio::process::Child, grace: std::time::Duration) {
    if let Some(pid) = child.id() {
        // SAFETY: sending SIGTERM to our own child.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Generates (or, with `rotate`, replaces) the secret log URL tokens are
/// derived from.
fn log_secret(state: &Path, rotate: bool) -> Result<[u8; 32], Failure> {
    let secret_file = state.join("log-secret");
    if !rotate
        && let Ok(b) = std::fs::read(&secret_file)
        && let Ok(secret) = <[u8; 32]>::try_from(b.as_slice())
    {
        return Ok(secret);
    }
    use rand_core::RngCore;
    let mut b = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut b);
    cloud::node::write_private(&secret_file, &b)
        .map_err(|e| io_fail("cannot write the log secret", e))?;
    if rotate {
        println!("Log secret rotated: log URLs handed out before no longer work.");
    }
    Ok(b)
}

/// The admin's API key: set from `BERTH_ADMIN_API_KEY`, made at the first
/// start (and shown then, once), or kept. Says what to print about it.
async fn admin_key(db: &cloud::Db, key_file: &Path) -> Result<String, Failure> {
    let cfg = |e: cloud::ApiError| Failure::config(e.message);
    let exists = db.user_by_name("admin").await.map_err(cfg)?.is_some();
    if let Some(k) = std::env::var("BERTH_ADMIN_API_KEY")
        .ok()
        .filter(|k| !k.is_empty())
    {
        if exists {
            db.set_api_key("admin", &k).await.map_err(cfg)?;
        } else {
            db.create_user("admin", &k, true).await.map_err(cfg)?;
        }
        write_private(key_file, &format!("{k}\n"))
            .map_err(|e| io_fail("cannot write the API key file", e))?;
        return Ok(format!(
            "from BERTH_ADMIN_API_KEY (also in {})",
            key_file.display()
        ));
    }
    if !exists {
        let k = cloud::new_api_key();
        db.create_user("admin", &k, true).await.map_err(cfg)?;
        write_private(key_file, &format!("{k}\n"))
            .map_err(|e| io_fail("cannot write the API key file", e))?;
        return Ok(format!(
            "{k}  (shown this once; also in {})",
            key_file.display()
        ));
    }
    let k = std::fs::read_to_string(key_file)
        .map(|s| s.trim().to_owned())
        .map_err(|_| {
            Failure::config(format!(
                "the admin API key is not in {} any more",
                key_file.display()
            ))
            .hint("set BERTH_ADMIN_API_KEY to give the admin a new key")
        })?;
    let works = db
        .user_by_key(&k)
        .await
        .map_err(cfg)?
        .is_some_and(|u| u.is_admin);
    Ok(if works {
        format!("in {}", key_file.display())
    } else {
        format!(
            "rotated since {} was written: use the key `berth users rotate admin` printed, or set BERTH_ADMIN_API_KEY",
            key_file.display()
        )
    })
}

pub fn up(args: UpArgs) -> Result<(), Failure> {
    private_umask();
    let listen = check_listen(&args)?;
    let state = args.state.clone().unwrap_or_else(default_state);
    cloud::node::private_dir(&state)
        .map_err(|e| io_fail(&format!("cannot create {}", state.display()), e))?;
    let state = state
        .canonicalize()
        .map_err(|e| io_fail("state folder", e))?;
    let _lock = lock_state(&state)?;
    lock_down_state(&state)?;
    let mut endpoints = BTreeMap::new();
    for m in &args.registry_endpoint {
        let (r, u) = m.split_once('=').ok_or_else(|| {
            Failure::config(format!("--registry-endpoint {m}: expected REGISTRY=URL"))
        })?;
        endpoints.insert(r.to_owned(), u.to_owned());
    }
    let mut ca_certs = Vec::new();
    for f in &args.ca_cert {
        ca_certs.push(
            std::fs::read_to_string(f)
                .map_err(|e| io_fail(&format!("cannot read {}", f.display()), e))?,
        );
    }
    // The secret that lets the node, and only the node, mint boot tickets.
    let node_secret = {
        use rand_core::RngCore;
        let mut b = zeroize::Zeroizing::new([0u8; 32]);
        rand_core::OsRng.fill_bytes(b.as_mut());
        zeroize::Zeroizing::new(hex_lower(b.as_ref()))
    };
    let rt = crate::runtime();
    rt.block_on(async move {
        let exe = std::env::current_exe().map_err(|e| io_fail("cannot find the berth executable", e))?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| io_fail("cannot watch for SIGTERM", e))?;
        // The KMS: its own process, on a socket in the private kms/ folder.
        let (kms, kms_url, kms_pub) = start_kms(&exe, &state, &node_secret).await?;
        let kms = Part::new("KMS", kms);
        let _ = write_private(&state.join("kms-public-key"), &format!("{kms_pub}\n"));
        let (docker_host, dockerd) = docker_host(&state).await?;

        let db = Arc::new(cloud::Db::open(&state.join("berth.db")).map_err(|e| Failure::config(e.message))?);
        let key_file = state.join("api-key");
        let admin_line = admin_key(&db, &key_file).await?;
        let log_secret = log_secret(&state, args.rotate_log_secret)?;

        // The node: its own process, the only holder of the node secret.
        let node_settings = {
            let settings = NodeSettings {
                node_secret: node_secret.to_string(),
                kms_url: kms_url.clone(),
                docker_host: docker_host.clone(),
                registry_endpoints: endpoints,
                ca_certs,
                aws_endpoint_url_ecr: std::env::var("AWS_ENDPOINT_URL_ECR")
                    .ok()
                    .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
                    .filter(|v| !v.is_empty()),
            };
            let mut line = zeroize::Zeroizing::new(serde_json::to_vec(&settings).expect("json"));
            let mut settings = settings;
            zeroize::Zeroize::zeroize(&mut settings.node_secret);
            line.push(b'\n');
            line
        };
        let (node, resumed) = start_node(&exe, &state, &node_settings).await?;
        let node = Part::new("node", node);

        let listener = tokio::net::TcpListener::bind(listen.addr)
            .await
            .map_err(|e| io_fail(&format!("cannot listen on {}", args.listen), e))?;
        let addr = listener.local_addr().map_err(|e| io_fail("listener", e))?;
        let scheme = if listen.tls.is_some() { "https" } else { "http" };
        let public_url = listen
            .public_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{addr}"));
        let kms_endpoint = contract::kms::KmsEndpoint::parse(&kms_url)
            .ok_or_else(|| Failure::config("the KMS announced an address that is not valid"))?;
        let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let contract::kms::KmsEndpoint::Unix(p) = &kms_endpoint {
            http = http.unix_socket(p.clone());
        }
        let app_state = Arc::new(cloud::AppState {
            db,
            node: cloud::NodeClient::new(&state.join("node/node.sock")),
            kms: kms_endpoint,
            cvms_root: state.join("cvms"),
            public_url: public_url.clone(),
            http: http.build().map_err(|_| Failure::config("cannot build the KMS client"))?,
            log_secret,
            limits: cloud::db::Limits {
                max_cvms_per_user: args.max_cvms_per_user,
                max_boots_in_flight: args.max_boots,
            },
        });
        println!("Berth local cloud is up (simulated TEE: measurements are computed, not attested by hardware).");
        println!("API:            {public_url}/api/v1");
        if public_url != format!("{scheme}://{addr}") {
            println!("Listening on:   {scheme}://{addr}");
        }
        println!("Admin API key:  {admin_line}");
        println!("KMS public key: {kms_pub}  (berth deploy checks env keys against it)");
        println!("State:          {}", state.display());
        println!("Docker engine:  {docker_host}");
        if resumed > 0 {
            println!("Resumed {resumed} CVMs.");
        }
        println!(
            "Use: export BERTH_API_URL={public_url}/api/v1 BERTH_API_KEY=$(cat {})",
            key_file.display()
        );
        println!("Stop with Ctrl-C.");

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let fatal = Arc::new(tokio::sync::Notify::new());
        let respawn = Respawn {
            exe,
            state: state.clone(),
            node_secret,
            node_settings,
            kms_pub,
        };
        let supervisor = tokio::spawn(supervise(kms, node, respawn, stop_rx, fatal.clone()));
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
                _ = fatal.notified() => {},
            }
        };
        let opts = cloud::serve::ServeOptions {
            header_timeout: std::time::Duration::from_secs(args.header_timeout.max(1)),
            max_connections: args.max_connections.max(1),
            tls: listen.tls,
        };
        let served = cloud::serve::serve(listener, cloud::router(app_state), opts, shutdown)
            .await
            .map_err(|e| io_fail("the API stopped", e));
        let _ = stop_tx.send(true);
        let (mut kms, mut node, failure) = supervisor
            .await
            .map_err(|_| Failure::config("the supervisor of the KMS and the node failed"))?;
        // The node first (it stops its boot agents), then the KMS.
        terminate(&mut node.child, std::time::Duration::from_secs(10)).await;
        terminate(&mut kms.child, std::time::Duration::from_secs(10)).await;
        if let Some(mut d) = dockerd {
            // SIGTERM, so the engine stops its containers cleanly; they are
            // booted again (cheaply) at the next `berth up`.
            terminate(&mut d, std::time::Duration::from_secs(15)).await;
        }
        served?;
        if let Some(f) = failure {
            return Err(f);
        }
        eprintln!("berth up: stopped");
        Ok(())
    })
}
