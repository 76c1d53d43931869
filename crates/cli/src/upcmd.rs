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
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: String,
}

pub fn default_state() -> PathBuf {
    crate::data_dir().join("cloud")
}

fn io_fail(what: &str, e: std::io::Error) -> Failure {
    Failure::io(what, &e)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    write_private_bytes(path, text.as_bytes())
}

/// Writes a file only its owner can read (mode 0600, also when it existed).
fn write_private_bytes(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

pub fn kms_serve(args: KmsServeArgs) -> Result<(), Failure> {
    let root = kms::KmsRootKey::load_or_create(&args.root_key).map_err(|e| {
        Failure::config(e.to_string())
            .hint("the KMS root key file must be readable by this user only (chmod 600)")
    })?;
    let rt = crate::runtime();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| io_fail(&format!("cannot listen on {}", args.listen), e))?;
        let addr = listener.local_addr().map_err(|e| io_fail("listener", e))?;
        println!("kms listening on http://{addr}");
        println!("kms public key {}", root.public_key().to_hex());
        eprintln!("kms: simulated TEE: env keys are released on a computed measurement, not a hardware attestation");
        kms::server::serve(listener, Arc::new(root)).await.map_err(|e| io_fail("the KMS stopped", e))
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
    // The socket path must fit in 108 bytes: keep it under /tmp, named after the state folder.
    let tag = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        state.hash(&mut h);
        format!("{:016x}", h.finish())
    };
    let run = PathBuf::from(format!("/tmp/berth-dockerd-{tag}"));
    std::fs::create_dir_all(&run)
        .map_err(|e| io_fail("cannot create the dockerd run folder", e))?;
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
    let state = args.state.clone().unwrap_or_else(default_state);
    std::fs::create_dir_all(state.join("kms"))
        .map_err(|e| io_fail(&format!("cannot create {}", state.display()), e))?;
    std::fs::create_dir_all(state.join("cvms"))
        .map_err(|e| io_fail("cannot create the CVM folder", e))?;
    let state = state
        .canonicalize()
        .map_err(|e| io_fail("state folder", e))?;
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
    let rt = crate::runtime();
    rt.block_on(async move {
        let exe = std::env::current_exe().map_err(|e| io_fail("cannot find the berth executable", e))?;
        // The KMS: its own process, so the control plane holds no env key.
        let mut kms = tokio::process::Command::new(&exe)
            .args(["kms", "serve", "--root-key"])
            .arg(state.join("kms/root.key"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .env_remove("BERTH_ADMIN_API_KEY")
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| io_fail("cannot start the KMS", e))?;
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
                write_private_bytes(&secret_file, &b).map_err(|e| io_fail("cannot write the log secret", e))?;
                b
            }
        };

        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| io_fail(&format!("cannot listen on {}", args.listen), e))?;
        let addr = listener.local_addr().map_err(|e| io_fail("listener", e))?;
        let public_url = format!("http://{addr}");
        let node = cloud::Node::new(
            cloud::NodeConfig {
                root: state.join("cvms"),
                berth_bin: exe,
                kms_url: kms_url.clone(),
                docker_host: docker_host.clone(),
                registry_endpoints: endpoints,
                ca_certs,
                aws_endpoint_url_ecr: std::env::var("AWS_ENDPOINT_URL_ECR")
                    .ok()
                    .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
                    .filter(|v| !v.is_empty()),
            },
            db.clone(),
        );
        let resumed = node.resume().await.map_err(|e| Failure::config(e.message))?;
        let app_state = Arc::new(cloud::AppState {
            db,
            node,
            kms_url: kms_url.clone(),
            public_url: public_url.clone(),
            http: reqwest::Client::new(),
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
        drop(kms);
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
