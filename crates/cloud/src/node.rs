//! [`Node`]: the local node that runs CVMs.
//!
//! A CVM here is a `berth guest boot` process with its own host-shared folder
//! (what a real CVM receives from its host: `app-compose.json`,
//! `encrypted-env`, `sys-config.json`) and its own state folder that survives
//! restarts, its stdout and stderr captured as the serial log, and its
//! containers in the node's Docker engine under a project name unique to it.
//! The node never opens the sealed env: it copies the opaque bytes into the
//! shared folder, and the boot agent gets the key from the KMS.
//!
//! The node runs as its own process (`berth node serve`, started by `berth
//! up`), and is the only holder of the **node secret** that lets it ask the
//! KMS for a one-time boot ticket. It asks for one per boot, for the app's
//! registered compose hash, and hands it to the boot agent it starts on that
//! agent's standard input: never on a command line, in the environment or in
//! a file. The API process tells the node what to do through
//! [`crate::nodeapi`] and has no way to mint tickets.
//!
//! Every CVM folder is 0700 and every file in it 0600; the boot agent starts
//! with a cleared environment plus an allowlist, so nothing of the
//! operator's environment reaches a tenant.

use crate::db::{App, Cvm, Db};
use crate::error::ApiError;
use contract::app::{APP_COMPOSE_FILE, ENCRYPTED_ENV_FILE, SYS_CONFIG_FILE};
use contract::kms::{KmsEndpoint, TICKET_PATH, TicketAnswer, TicketRequest};
use contract::{BootOutcome, Category, SysConfig};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// The secret that lets the node (and nobody else) ask the KMS for boot
/// tickets. `Debug` redacts it.
#[derive(Clone)]
pub struct NodeSecret(pub zeroize::Zeroizing<String>);

impl std::fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeSecret([redacted])")
    }
}

/// Variables of the node's own environment that a boot agent inherits;
/// everything else is cleared.
const BOOT_ENV_ALLOWLIST: &[&str] = &["PATH", "LANG", "TZ"];

/// How the node runs CVMs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where CVM folders live (`<root>/<cvm id>/{shared,state,serial.log}`).
    pub root: PathBuf,
    /// The `berth` executable (for `berth guest boot`).
    pub berth_bin: PathBuf,
    /// The KMS the CVMs ask for their env key (`unix:/path/kms.sock`).
    pub kms_url: String,
    /// The secret for minting boot tickets at the KMS.
    pub node_secret: NodeSecret,
    /// The engine (`unix://…`).
    pub docker_host: String,
    /// Registry endpoint mappings passed to every CVM.
    pub registry_endpoints: BTreeMap<String, String>,
    /// Extra CA certificates (PEM) passed to every CVM.
    pub ca_certs: Vec<String>,
    /// ECR API endpoint override passed to every CVM.
    pub aws_endpoint_url_ecr: Option<String>,
}

/// The node.
pub struct Node {
    cfg: NodeConfig,
    db: Arc<Db>,
    boots: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

/// The compose project of a CVM.
pub fn project_of(cvm_id: &str) -> String {
    format!(
        "berth-{}",
        cvm_id.replace('-', "").chars().take(12).collect::<String>()
    )
}

impl Node {
    /// A node with `cfg`, recording status in `db`.
    pub fn new(cfg: NodeConfig, db: Arc<Db>) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            db,
            boots: Mutex::new(HashMap::new()),
        })
    }

    /// The node's settings.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join(id)
    }

    /// The serial log file of a CVM.
    pub fn serial_log_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("serial.log")
    }

    fn docker(&self) -> Result<bollard::Docker, ApiError> {
        bollard::Docker::connect_with_host(&self.cfg.docker_host)
            .map_err(|e| ApiError::upstream(format!("cannot reach the node's Docker engine: {e}")))
    }

    /// Writes the CVM's host-shared folder and boots it in the background.
    pub fn start(self: &Arc<Self>, cvm: &Cvm, app: &App) -> Result<(), ApiError> {
        let dir = self.dir(&cvm.id);
        let shared = dir.join("shared");
        let io =
            |e: std::io::Error| ApiError::internal(format!("cannot prepare the CVM folder: {e}"));
        for d in [&dir, &shared, &dir.join("state")] {
            private_dir(d).map_err(io)?;
        }
        write_private(&shared.join(APP_COMPOSE_FILE), &app.app_compose).map_err(io)?;
        let env_path = shared.join(ENCRYPTED_ENV_FILE);
        match &cvm.encrypted_env {
            Some(bytes) => write_private(&env_path, bytes).map_err(io)?,
            None => {
                let _ = std::fs::remove_file(&env_path);
            }
        }
        let sys = SysConfig {
            kms_url: Some(self.cfg.kms_url.clone()),
            registry_endpoints: self.cfg.registry_endpoints.clone(),
            ca_certs: self.cfg.ca_certs.clone(),
            aws_endpoint_url_ecr: self.cfg.aws_endpoint_url_ecr.clone(),
            project_name: Some(project_of(&cvm.id)),
            instance_id: Some(cvm.id.clone()),
            app_id: None,
        };
        write_private(&shared.join(SYS_CONFIG_FILE), sys.render().as_bytes()).map_err(io)?;
        self.db.set_status(&cvm.id, "starting", None, None)?;
        let me = self.clone();
        let id = cvm.id.clone();
        let (app_id, compose_hash) = (app.app_id.clone(), app.compose_hash.clone());
        let handle = tokio::spawn(async move {
            let result = match me.mint_ticket(&app_id, &compose_hash).await {
                Ok(ticket) => me.run_boot(&id, ticket).await,
                Err(e) => Err(e),
            };
            let (status, cat, msg) = match result {
                Ok(BootOutcome::Ok { .. }) => ("running", None, None),
                Ok(outcome @ BootOutcome::Failed { category, .. }) => (
                    "boot_failed",
                    Some(category.as_str().to_owned()),
                    Some(outcome.render()),
                ),
                Err((category, e)) => {
                    me.append_serial(&id, &e).await;
                    let line = BootOutcome::Failed {
                        category,
                        message: e,
                    }
                    .render();
                    ("boot_failed", Some(category.as_str().to_owned()), Some(line))
                }
            };
            // A CVM stopped or deleted meanwhile keeps that status.
            if let Ok(Some(c)) = me.db.cvm(&id)
                && c.status == "starting"
            {
                let _ = me
                    .db
                    .set_status(&id, status, cat.as_deref(), msg.as_deref());
            }
            me.boots.lock().unwrap().remove(&id);
        });
        if let Some(old) = self.boots.lock().unwrap().insert(cvm.id.clone(), handle) {
            old.abort();
        }
        Ok(())
    }

    /// A one-time boot ticket for the app's registered compose hash.
    async fn mint_ticket(
        &self,
        app_id: &str,
        compose_hash: &str,
    ) -> Result<zeroize::Zeroizing<String>, (Category, String)> {
        let endpoint = KmsEndpoint::parse(&self.cfg.kms_url).ok_or((
            Category::Config,
            "the node's KMS address is not valid".to_owned(),
        ))?;
        let unreachable = |e: reqwest::Error| {
            (
                Category::Unreachable,
                format!(
                    "the node cannot reach the KMS for a boot ticket ({})",
                    if e.is_connect() {
                        "no KMS listening"
                    } else {
                        "request failed"
                    }
                ),
            )
        };
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let KmsEndpoint::Unix(p) = &endpoint {
            builder = builder.unix_socket(p.clone());
        }
        let client = builder.build().map_err(unreachable)?;
        let resp = client
            .post(endpoint.url(TICKET_PATH))
            .bearer_auth(self.cfg.node_secret.0.as_str())
            .json(&TicketRequest {
                app_id: app_id.to_owned(),
                compose_hash: compose_hash.to_owned(),
            })
            .send()
            .await
            .map_err(unreachable)?;
        if !resp.status().is_success() {
            return Err((
                Category::AccessDenied,
                format!("the KMS refused a boot ticket ({})", resp.status()),
            ));
        }
        let bytes = zeroize::Zeroizing::new(resp.bytes().await.map_err(unreachable)?.to_vec());
        let answer: TicketAnswer = serde_json::from_slice(&bytes).map_err(|_| {
            (
                Category::RegistryError,
                "the KMS answered without a ticket".to_owned(),
            )
        })?;
        Ok(zeroize::Zeroizing::new(answer.ticket))
    }

    async fn run_boot(
        &self,
        id: &str,
        ticket: zeroize::Zeroizing<String>,
    ) -> Result<BootOutcome, (Category, String)> {
        let dir = self.dir(id);
        let runtime = |m: String| (Category::Runtime, m);
        let mut log = open_log(&dir.join("serial.log"))
            .await
            .map_err(|e| runtime(format!("cannot open the serial log: {e}")))?;
        let mut cmd = tokio::process::Command::new(&self.cfg.berth_bin);
        cmd.args(["guest", "boot", "--kms-ticket-stdin", "--shared"])
            .arg(dir.join("shared"))
            .arg("--state")
            .arg(dir.join("state"))
            .env_clear();
        for name in BOOT_ENV_ALLOWLIST {
            if let Some(v) = std::env::var_os(name) {
                cmd.env(name, v);
            }
        }
        cmd.env("HOME", dir.join("state"))
            .env("DOCKER_HOST", &self.cfg.docker_host)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe: the agent
        // ends with the node instead of booting on unsupervised.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| runtime(format!("cannot start the boot agent: {e}")))?;
        // The ticket goes to the agent on its standard input, then the pipe closes.
        if let Some(mut stdin) = child.stdin.take() {
            let mut line = zeroize::Zeroizing::new(ticket.as_bytes().to_vec());
            line.push(b'\n');
            let _ = stdin.write_all(&line).await;
            drop(stdin);
        }
        drop(ticket);
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(bool, String)>(64);
        for (is_stdout, stream) in [
            (
                true,
                Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            ),
            (false, Box::new(stderr)),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stream).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if tx.send((is_stdout, l)).await.is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut last = None;
        while let Some((is_stdout, line)) = rx.recv().await {
            let _ = log.write_all(format!("{line}\n").as_bytes()).await;
            if is_stdout {
                last = Some(line);
            }
        }
        let _ = log.flush().await;
        let status = child
            .wait()
            .await
            .map_err(|e| runtime(format!("the boot agent vanished: {e}")))?;
        // Only the agent's own final line, confirmed by its exit code.
        let text = last
            .as_deref()
            .map(|l| l.split_once("] ").map(|(_, t)| t).unwrap_or(l));
        BootOutcome::confirmed(text, status.code()).ok_or_else(|| {
            runtime(format!(
                "the boot agent ended ({status}) without a final line that matches its exit code"
            ))
        })
    }

    /// Stops the CVM: its boot (if running) and its containers.
    pub async fn stop(&self, cvm: &Cvm) -> Result<(), ApiError> {
        if let Some(h) = self.boots.lock().unwrap().remove(&cvm.id) {
            h.abort();
        }
        let docker = self.docker()?;
        for id in self.containers(&docker, &cvm.id).await? {
            let opts = bollard::query_parameters::StopContainerOptionsBuilder::new()
                .t(5)
                .build();
            let _ = docker.stop_container(&id, Some(opts)).await;
        }
        self.db.set_status(&cvm.id, "stopped", None, None)?;
        self.append_serial(&cvm.id, "CVM stopped by the node").await;
        Ok(())
    }

    /// Stops the CVM and boots it again (its state folder makes that cheap).
    pub async fn restart(self: &Arc<Self>, cvm: &Cvm, app: &App) -> Result<(), ApiError> {
        self.stop(cvm).await?;
        self.start(cvm, app)
    }

    /// Deletes the CVM: stops it, removes its containers and its folders.
    pub async fn delete(&self, cvm: &Cvm) -> Result<(), ApiError> {
        if let Some(h) = self.boots.lock().unwrap().remove(&cvm.id) {
            h.abort();
        }
        let docker = self.docker()?;
        for id in self.containers(&docker, &cvm.id).await? {
            let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                .force(true)
                .build();
            let _ = docker.remove_container(&id, Some(opts)).await;
        }
        let _ = std::fs::remove_dir_all(self.dir(&cvm.id));
        self.db.set_status(&cvm.id, "deleted", None, None)?;
        Ok(())
    }

    /// Every container of the CVM's compose project, running or not.
    async fn project_containers(
        &self,
        docker: &bollard::Docker,
        cvm_id: &str,
    ) -> Result<Vec<bollard::models::ContainerSummary>, ApiError> {
        let mut filters = HashMap::new();
        filters.insert(
            "label",
            vec![format!("com.docker.compose.project={}", project_of(cvm_id))],
        );
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        docker.list_containers(Some(opts)).await.map_err(|e| {
            ApiError::upstream(format!(
                "the node's Docker engine cannot list containers: {e}"
            ))
        })
    }

    async fn containers(
        &self,
        docker: &bollard::Docker,
        cvm_id: &str,
    ) -> Result<Vec<String>, ApiError> {
        Ok(self
            .project_containers(docker, cvm_id)
            .await?
            .into_iter()
            .filter_map(|c| c.id)
            .collect())
    }

    /// Whether all of the CVM's containers are running (and there are some).
    pub async fn containers_running(&self, cvm_id: &str) -> bool {
        let Ok(docker) = self.docker() else {
            return false;
        };
        match self.project_containers(&docker, cvm_id).await {
            Ok(list) => {
                !list.is_empty()
                    && list.iter().all(|c| {
                        c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
                    })
            }
            Err(_) => false,
        }
    }

    async fn append_serial(&self, id: &str, text: &str) {
        if let Ok(mut f) = open_log(&self.serial_log_path(id)).await {
            let _ = f.write_all(format!("[node] {text}\n").as_bytes()).await;
        }
    }

    /// After a restart of `berth up`: CVMs that were running and still are
    /// stay as they are; CVMs that were booting, or were running but whose
    /// containers are gone, boot again (their state folder makes that cheap).
    pub async fn resume(self: &Arc<Self>) -> Result<usize, ApiError> {
        let mut resumed = 0;
        for cvm in self.db.live_cvms()? {
            let again = match cvm.status.as_str() {
                "provisioning" | "starting" => true,
                "running" => !self.containers_running(&cvm.id).await,
                _ => false,
            };
            if again && let Some(app) = self.db.app(&cvm.app_id)? {
                self.append_serial(&cvm.id, "node restarted: booting the CVM again")
                    .await;
                self.start(&cvm, &app)?;
                resumed += 1;
            }
        }
        Ok(resumed)
    }

    /// The last `tail` lines (all when `None`) of a file.
    pub fn tail_file(path: &Path, tail: Option<usize>) -> String {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        match tail {
            None => text,
            Some(n) => {
                let lines: Vec<&str> = text.lines().collect();
                let start = lines.len().saturating_sub(n);
                let mut out = lines[start..].join("\n");
                if !out.is_empty() {
                    out.push('\n');
                }
                out
            }
        }
    }

    /// The CVM's containers: (id, compose service name).
    pub async fn container_names(&self, cvm_id: &str) -> Result<Vec<(String, String)>, ApiError> {
        let docker = self.docker()?;
        Ok(self
            .project_containers(&docker, cvm_id)
            .await?
            .into_iter()
            .map(|c| {
                let service = c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("com.docker.compose.service").cloned())
                    .unwrap_or_default();
                (c.id.unwrap_or_default(), service)
            })
            .collect())
    }

    /// One container's output (stdout and stderr interleaved), if it belongs to the CVM.
    pub async fn one_container_logs(
        &self,
        cvm_id: &str,
        container: &str,
        tail: Option<usize>,
    ) -> Result<String, ApiError> {
        use futures_util::StreamExt;
        let mine = self.container_names(cvm_id).await?;
        let Some((id, _)) = mine
            .into_iter()
            .find(|(id, name)| id.starts_with(container) || name == container)
        else {
            return Err(ApiError::not_found("no such container in this CVM"));
        };
        let docker = self.docker()?;
        let mut b = bollard::query_parameters::LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true);
        if let Some(n) = tail {
            b = b.tail(&n.to_string());
        }
        let mut out = String::new();
        let mut stream = docker.logs(&id, Some(b.build()));
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        Ok(out)
    }

    /// The app's container output (`stderr` or stdout), all services, oldest first.
    pub async fn container_logs(
        &self,
        cvm_id: &str,
        stderr: bool,
        tail: Option<usize>,
    ) -> Result<String, ApiError> {
        use futures_util::StreamExt;
        let docker = self.docker()?;
        let mut out = String::new();
        for id in self.containers(&docker, cvm_id).await? {
            let mut b = bollard::query_parameters::LogsOptionsBuilder::new()
                .stdout(!stderr)
                .stderr(stderr);
            if let Some(n) = tail {
                b = b.tail(&n.to_string());
            }
            let mut stream = docker.logs(&id, Some(b.build()));
            while let Some(Ok(chunk)) = stream.next().await {
                out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        }
        Ok(out)
    }
}

/// Creates `dir` (and its parents) and makes it 0700.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Writes `bytes` to `path` readable by its owner only (0600, also when the
/// file existed), through a temporary file and a rename, so a reader never
/// sees half a file.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Opens a log for appending, mode 0600.
async fn open_log(path: &Path) -> std::io::Result<tokio::fs::File> {
    let f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .await?;
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .await?;
    Ok(f)
}
