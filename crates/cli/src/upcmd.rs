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
        cloud::node::private_dir(&d).map_err(|e| io_fail(&format!("cannot create {}", d.display()), e))?;
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
            eprintln!("berth up: {} was mode {:o}; now {want:o}", p.display(), m.mode() & 0o777);
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
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.kill_on_drop(true);
    cmd
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
    let exe = std::env::current_exe().map_err(|e| io_fail("cannot find the berth executable", e))?;
    let rt = crate::runtime();
    rt.block_on(async move {
        let db = Arc::new(cloud::Db::open(&args.state.join("berth.db")).map_err(|e| Failure::config(e.message))?);
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
        let resumed = node.resume().await.map_err(|e| Failure::config(e.message))?;
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
        run = fresh_private_tmp_dir().map_err(|e| io_fail("cannot create the dockerd run folder", e))?;
    }
    cloud::node::private_dir(&run).map_err(|e| io_fail("cannot create the dockerd run folder", e))?;
    let data = state.join("docker");
    std::fs::create_dir_all(&data)
        .map_err(|e| io_fail("cannot create the dockerd data folder", e))?;
    let sock = run.join("docker.sock");
    let log =
        std::fs::File::create(state.join("dockerd.log")).map_err(|e| io_fail("dockerd log", e))?;
    let child = tokio::process::Command::new("dockerd")
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

pub fn up(args: UpArgs) -> Result<(), Failure> {
    private_umask();
    let state = args.state.clone().unwrap_or_else(default_state);
    cloud::node::private_dir(&state)
        .map_err(|e| io_fail(&format!("cannot create {}", state.display()), e))?;
    let state = state
        .canonicalize()
        .map_err(|e| io_fail("state folder", e))?;
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
        // The KMS: its own process, on a socket in the private kms/ folder.
        let kms_socket = state.join("kms/kms.sock");
        let mut kms = child_command(&exe)
            .args(["kms", "serve", "--node-secret-stdin", "--root-key"])
            .arg(state.join("kms/root.key"))
            .arg("--socket")
            .arg(&kms_socket)
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
            stdin.write_all(&line).await.map_err(|e| io_fail("cannot hand the KMS its node secret", e))?;
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
            return Err(Failure::config("the KMS did not start; see the lines above"));
        };
        let _ = write_private(&state.join("kms-public-key"), &format!("{kms_pub}\n"));
        let (docker_host, dockerd) = docker_host(&state).await?;

        let db = Arc::new(cloud::Db::open(&state.join("berth.db")).map_err(|e| Failure::config(e.message))?);
        let key_file = state.join("api-key");
        let admin_key = match std::env::var("BERTH_ADMIN_API_KEY").ok().filter(|k| !k.is_empty()) {
            Some(k) => {
                if db.user_by_name("admin").map_err(|e| Failure::config(e.message))?.is_none() {
                    db.create_user("admin", &k, true).map_err(|e| Failure::config(e.message))?;
                } else {
                    db.set_api_key("admin", &k).map_err(|e| Failure::config(e.message))?;
                }
                k
            }
            None => {
                if db.user_by_name("admin").map_err(|e| Failure::config(e.message))?.is_none() {
                    let k = cloud::new_api_key();
                    db.create_user("admin", &k, true).map_err(|e| Failure::config(e.message))?;
                    k
                } else {
                    std::fs::read_to_string(&key_file).map(|s| s.trim().to_owned()).map_err(|_| {
                        Failure::config(format!("the admin API key is not in {} any more", key_file.display()))
                            .hint("set BERTH_ADMIN_API_KEY to give the admin a new key")
                    })?
                }
            }
        };
        write_private(&key_file, &format!("{admin_key}\n")).map_err(|e| io_fail("cannot write the API key file", e))?;
        let secret_file = state.join("log-secret");
        let log_secret: [u8; 32] = match std::fs::read(&secret_file) {
            Ok(b) if b.len() == 32 => b.try_into().expect("32 bytes"),
            _ => {
                use rand_core::RngCore;
                let mut b = [0u8; 32];
                rand_core::OsRng.fill_bytes(&mut b);
                cloud::node::write_private(&secret_file, &b).map_err(|e| io_fail("cannot write the log secret", e))?;
                b
            }
        };

        // The node: its own process, the only holder of the node secret.
        let node_socket = state.join("node/node.sock");
        let mut node = child_command(&exe)
            .args(["node", "serve", "--state"])
            .arg(&state)
            .arg("--socket")
            .arg(&node_socket)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .map_err(|e| io_fail("cannot start the node", e))?;
        {
            use tokio::io::AsyncWriteExt;
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
            let mut stdin = node.stdin.take().expect("piped");
            stdin.write_all(&line).await.map_err(|e| io_fail("cannot hand the node its settings", e))?;
        }
        drop(node_secret);
        let mut lines = tokio::io::BufReader::new(node.stdout.take().expect("piped")).lines();
        let mut resumed = None;
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(n) = l.strip_prefix("node resumed ") {
                resumed = n.parse::<usize>().ok();
                break;
            }
        }
        let Some(resumed) = resumed else {
            return Err(Failure::config("the node did not start; see the lines above"));
        };

        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| io_fail(&format!("cannot listen on {}", args.listen), e))?;
        let addr = listener.local_addr().map_err(|e| io_fail("listener", e))?;
        let public_url = format!("http://{addr}");
        let kms_endpoint = contract::kms::KmsEndpoint::parse(&kms_url)
            .ok_or_else(|| Failure::config("the KMS announced an address that is not valid"))?;
        let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let contract::kms::KmsEndpoint::Unix(p) = &kms_endpoint {
            http = http.unix_socket(p.clone());
        }
        let app_state = Arc::new(cloud::AppState {
            db,
            node: cloud::NodeClient::new(&node_socket),
            kms: kms_endpoint,
            cvms_root: state.join("cvms"),
            public_url: public_url.clone(),
            http: http.build().map_err(|_| Failure::config("cannot build the KMS client"))?,
            log_secret,
        });
        println!("Berth local cloud is up (simulated TEE: measurements are computed, not attested by hardware).");
        println!("API:            {public_url}/api/v1");
        println!("Admin API key:  {admin_key}  (also in {})", key_file.display());
        println!("KMS public key: {kms_pub}  (berth deploy checks env keys against it)");
        println!("State:          {}", state.display());
        println!("Docker engine:  {docker_host}");
        if resumed > 0 {
            println!("Resumed {resumed} CVMs.");
        }
        println!("Use: export BERTH_API_URL={public_url}/api/v1 BERTH_API_KEY=<the key above>");
        println!("Stop with Ctrl-C.");
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        };
        axum::serve(listener, cloud::router(app_state))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| io_fail("the API stopped", e))?;
        // The node first (it stops its boot agents), then the KMS.
        for child in [&mut node, &mut kms] {
            if let Some(pid) = child.id() {
                // SAFETY: sending SIGTERM to our own child.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
            if tokio::time::timeout(std::time::Duration::from_secs(10), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
        if let Some(mut d) = dockerd {
            // SIGTERM, so the engine stops its containers cleanly; they are
            // booted again (cheaply) at the next `berth up`.
            if let Some(pid) = d.id() {
                let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            }
            if tokio::time::timeout(std::time::Duration::from_secs(15), d.wait()).await.is_err() {
                let _ = d.kill().await;
            }
        }
        eprintln!("berth up: stopped");
        Ok(())
    })
}
