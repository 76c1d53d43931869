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
//!
//! **Process lifecycle.** Each boot agent runs in its own process group
//! (with the compose tool it starts) and dies with the node
//! (`PR_SET_PDEATHSIG`). Stop, restart and delete end the whole group
//! (SIGTERM, a grace period, SIGKILL) before they touch the engine, and
//! always record their terminal status; a boot that ends afterwards never
//! overwrites it (its final write is a conditional transition from
//! `starting`). Before it starts an agent, the node takes an exclusive
//! `flock` on the CVM's `state/.boot.lock`, which the agent inherits: as
//! long as any process of that boot lives, no other node process on the
//! same state boots the CVM again.

use crate::db::{App, Cvm, Db, DbError};
use contract::app::{APP_COMPOSE_FILE, ENCRYPTED_ENV_FILE, SYS_CONFIG_FILE};
use contract::kms::{KmsEndpoint, TICKET_PATH, TicketAnswer, TicketRequest};
use contract::{BootOutcome, Category, CvmStatus, SysConfig};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
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

/// How long a boot agent's process group has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(4);

/// The serial log is rotated past this size (`serial.log` →
/// `serial.log.1`, one old file kept).
pub const SERIAL_LOG_MAX_BYTES: u64 = 8 << 20;

/// The lock file in a CVM's state folder, held while a boot of it runs.
pub const BOOT_LOCK_FILE: &str = ".boot.lock";

/// Why the node could not do what it was asked, on either side of
/// [`crate::nodeapi`]. The API maps these to HTTP statuses
/// (`crate::error`); the node's own socket answers with the same mapping,
/// and [`NodeError::Refused`] carries such an answer back.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The node's Docker engine cannot be reached.
    #[error("cannot reach the node's Docker engine: {0}")]
    EngineUnreachable(#[source] bollard::errors::Error),
    /// The engine refused or failed an operation.
    #[error("the node's Docker engine cannot {what}: {source}")]
    Engine {
        /// What the node asked (`list containers`, `remove a network`, …).
        what: &'static str,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// Another node process holds the CVM's boot lock.
    #[error(
        "CVM {id} is already booting: another node process holds its state lock; wait for that boot to end"
    )]
    AlreadyBooting {
        /// The CVM.
        id: String,
    },
    /// The CVM's folders could not be written.
    #[error("cannot prepare the CVM folder: {0}")]
    Folder(#[source] std::io::Error),
    /// The CVM does not exist or is deleted.
    #[error("no such CVM")]
    NoSuchCvm,
    /// The CVM's app row is gone.
    #[error("the CVM's app is gone")]
    AppGone,
    /// The container named is not one of the CVM's.
    #[error("no such container in this CVM")]
    NoSuchContainer,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// (API side) nobody listens on the node's socket.
    #[error(
        "the node is not running: CVMs cannot be started, stopped or inspected until it is back"
    )]
    NotRunning,
    /// (API side) the node did not answer in time.
    #[error("the node did not answer in time")]
    Timeout,
    /// (API side) the node's answer ended early.
    #[error("the node's answer broke off")]
    BrokeOff,
    /// (API side) the node's answer is not what the interface says.
    #[error("the node answered nonsense")]
    Nonsense,
    /// (API side) the node answered with an error body, kept as it was.
    #[error("{detail}")]
    Refused {
        /// Its HTTP status.
        status: u16,
        /// Its machine-readable code.
        code: Option<String>,
        /// Its sentence.
        detail: String,
    },
    /// (API side) the node answered an error without a body that says why.
    #[error("the node answered {status}")]
    Unexplained {
        /// Its HTTP status.
        status: u16,
    },
}

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

/// A boot in flight on this node.
struct Boot {
    generation: u64,
    cancel: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

/// The node.
pub struct Node {
    cfg: NodeConfig,
    db: Arc<Db>,
    boots: Mutex<HashMap<String, Boot>>,
    generation: AtomicU64,
    /// Boots hold it shared; removing a deleted CVM's images takes it
    /// exclusively, so no image goes while a boot may be about to run it.
    images: tokio::sync::RwLock<()>,
}

/// What [`Node::start`] found.
enum Started {
    Booting,
    /// Another process holds the CVM's boot lock.
    AlreadyBooting,
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
            generation: AtomicU64::new(0),
            images: tokio::sync::RwLock::new(()),
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

    fn docker(&self) -> Result<bollard::Docker, NodeError> {
        bollard::Docker::connect_with_host(&self.cfg.docker_host)
            .map_err(NodeError::EngineUnreachable)
    }

    /// Writes the CVM's host-shared folder and boots it in the background.
    /// A boot of it already in flight on this node is ended first; one
    /// that another process runs (its state lock is held) is a conflict.
    pub async fn start(self: &Arc<Self>, cvm: &Cvm, app: &App) -> Result<(), NodeError> {
        match self.try_start(cvm, app).await? {
            Started::Booting => Ok(()),
            Started::AlreadyBooting => Err(NodeError::AlreadyBooting { id: cvm.id.clone() }),
        }
    }

    async fn try_start(self: &Arc<Self>, cvm: &Cvm, app: &App) -> Result<Started, NodeError> {
        self.end_boot(&cvm.id).await;
        let dir = self.dir(&cvm.id);
        let shared = dir.join("shared");
        let io = NodeError::Folder;
        for d in [&dir, &shared, &dir.join("state")] {
            private_dir(d).map_err(io)?;
        }
        let Some(lock) = BootLock::try_take(&dir.join("state").join(BOOT_LOCK_FILE)).map_err(io)?
        else {
            return Ok(Started::AlreadyBooting);
        };
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
            cpu_millis: u64::try_from(cvm.vcpu)
                .ok()
                .filter(|v| *v > 0)
                .map(|v| v.saturating_mul(1000)),
            memory_mb: u64::try_from(cvm.memory).ok().filter(|m| *m > 0),
        };
        write_private(&shared.join(SYS_CONFIG_FILE), sys.render().as_bytes()).map_err(io)?;
        self.db
            .set_status(&cvm.id, CvmStatus::Starting, None, None)
            .await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let (cancel, cancel_rx) = tokio::sync::watch::channel(false);
        let me = self.clone();
        let id = cvm.id.clone();
        let (app_id, compose_hash) = (app.app_id.clone(), app.compose_hash.clone());
        // The task waits for this record before it can finish.
        let mut boots = self.boots.lock().unwrap();
        let handle = tokio::spawn(async move {
            me.boot_task(id, generation, app_id, compose_hash, lock, cancel_rx)
                .await;
        });
        boots.insert(
            cvm.id.clone(),
            Boot {
                generation,
                cancel,
                handle,
            },
        );
        Ok(Started::Booting)
    }

    async fn boot_task(
        self: Arc<Self>,
        id: String,
        generation: u64,
        app_id: String,
        compose_hash: String,
        lock: BootLock,
        mut cancel: tokio::sync::watch::Receiver<bool>,
    ) {
        let _images = self.images.read().await;
        let result = tokio::select! {
            ticket = self.mint_ticket(&app_id, &compose_hash) => match ticket {
                Ok(ticket) => self.run_boot(&id, ticket, &lock, &mut cancel).await,
                Err(e) => Err(e),
            },
            _ = cancelled(&mut cancel) => Ok(None),
        };
        drop(lock);
        let (status, cat, msg) = match result {
            // Ended by stop, restart or delete, which record the status.
            Ok(None) => return,
            Ok(Some(BootOutcome::Ok { .. })) => (CvmStatus::Running, None, None),
            Ok(Some(outcome @ BootOutcome::Failed { category, .. })) => (
                CvmStatus::BootFailed,
                Some(category.as_str().to_owned()),
                Some(outcome.render()),
            ),
            Err((category, e)) => {
                self.append_serial(&id, &e).await;
                let line = BootOutcome::Failed {
                    category,
                    message: e,
                }
                .render();
                (
                    CvmStatus::BootFailed,
                    Some(category.as_str().to_owned()),
                    Some(line),
                )
            }
        };
        let current = |boots: &HashMap<String, Boot>| {
            boots.get(&id).is_some_and(|b| b.generation == generation)
        };
        // Only the current boot of a CVM still `starting` records its end:
        // a stop, restart or delete meanwhile keeps its own status.
        if current(&self.boots.lock().unwrap()) {
            let _ = self
                .db
                .transition(
                    &id,
                    &[CvmStatus::Starting],
                    status,
                    cat.as_deref(),
                    msg.as_deref(),
                )
                .await;
        }
        let mut boots = self.boots.lock().unwrap();
        if current(&boots) {
            boots.remove(&id);
        }
    }

    /// Ends the boot of `id` in flight on this node, if any: its agent's
    /// whole process group gets SIGTERM, then SIGKILL after a grace period,
    /// and the boot records nothing.
    async fn end_boot(&self, id: &str) {
        let boot = self.boots.lock().unwrap().remove(id);
        if let Some(boot) = boot {
            let _ = boot.cancel.send(true);
            let mut handle = boot.handle;
            if tokio::time::timeout(STOP_GRACE + Duration::from_secs(3), &mut handle)
                .await
                .is_err()
            {
                handle.abort();
                let _ = handle.await;
            }
        }
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

    /// Runs one boot agent to its end: its outcome, or `None` when
    /// `cancel` ended it.
    async fn run_boot(
        &self,
        id: &str,
        ticket: zeroize::Zeroizing<String>,
        lock: &BootLock,
        cancel: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<BootOutcome>, (Category, String)> {
        let dir = self.dir(id);
        let runtime = |m: String| (Category::Runtime, m);
        let mut log = SerialFile::open(&dir.join("serial.log"), SERIAL_LOG_MAX_BYTES)
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
            // Its own process group: stop ends the agent and its compose tool together.
            .process_group(0)
            .kill_on_drop(true);
        let lock_fd = lock.fd();
        // SAFETY: prctl and fcntl are async-signal-safe. PR_SET_PDEATHSIG:
        // the agent ends with the node instead of booting on unsupervised.
        // The boot lock's descriptor stays open in the agent (and the
        // compose tool), so the lock lives exactly as long as the boot.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::fcntl(lock_fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| runtime(format!("cannot start the boot agent: {e}")))?;
        let group = ProcessGroup(child.id().and_then(|p| i32::try_from(p).ok()));
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
        let mut stopped = loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some((is_stdout, line)) => {
                        let _ = log.write_line(&line).await;
                        if is_stdout {
                            last = Some(line);
                        }
                    }
                    None => break false,
                },
                _ = cancelled(cancel) => break true,
            }
        };
        if !stopped {
            // Its output closed: the agent is ending.
            tokio::select! {
                _ = group.leader_exited() => {}
                _ = cancelled(cancel) => stopped = true,
            }
        }
        if stopped {
            group.signal(libc::SIGTERM);
            let _ = tokio::time::timeout(STOP_GRACE, group.leader_exited()).await;
        }
        // Whatever ended the agent, nothing of its group outlives it (a
        // compose tool it left running). The leader is not reaped yet, so
        // the group id cannot name anyone else.
        group.signal(libc::SIGKILL);
        let _ = log.flush().await;
        let status = child
            .wait()
            .await
            .map_err(|e| runtime(format!("the boot agent vanished: {e}")))?;
        if stopped {
            return Ok(None);
        }
        // Only the agent's own final line, confirmed by its exit code.
        let text = last
            .as_deref()
            .map(|l| l.split_once("] ").map(|(_, t)| t).unwrap_or(l));
        BootOutcome::confirmed(text, status.code())
            .map(Some)
            .ok_or_else(|| {
                runtime(format!(
                    "the boot agent ended ({status}) without a final line that matches its exit code"
                ))
            })
    }

    /// Stops the CVM: its boot (the agent's whole process group) and its
    /// containers, and records `stopped`, also when the engine cannot be
    /// reached (the serial log says what was left running).
    pub async fn stop(&self, cvm: &Cvm) -> Result<(), NodeError> {
        self.end_boot(&cvm.id).await;
        let engine = self.stop_containers(&cvm.id).await;
        self.db
            .set_status(&cvm.id, CvmStatus::Stopped, None, None)
            .await?;
        match engine {
            Ok(()) => self.append_serial(&cvm.id, "CVM stopped by the node").await,
            Err(e) => {
                self.append_serial(
                    &cvm.id,
                    &format!("CVM stopped by the node; its containers could not be stopped: {e}"),
                )
                .await
            }
        }
        Ok(())
    }

    async fn stop_containers(&self, id: &str) -> Result<(), NodeError> {
        let docker = self.docker()?;
        for c in self.containers(&docker, id).await? {
            let opts = bollard::query_parameters::StopContainerOptionsBuilder::new()
                .t(5)
                .build();
            let _ = docker.stop_container(&c, Some(opts)).await;
        }
        Ok(())
    }

    /// Stops the CVM and boots it again (its state folder makes that cheap).
    pub async fn restart(self: &Arc<Self>, cvm: &Cvm, app: &App) -> Result<(), NodeError> {
        self.stop(cvm).await?;
        self.start(cvm, app).await
    }

    /// Deletes the CVM: ends its boot, removes what it made in the engine
    /// (containers, compose networks and named volumes, and, in the
    /// background, the images it loaded that no other CVM runs) and its
    /// folders, and records `deleted`, also when the engine cannot be
    /// reached.
    pub async fn delete(self: &Arc<Self>, cvm: &Cvm) -> Result<(), NodeError> {
        self.end_boot(&cvm.id).await;
        let dir = self.dir(&cvm.id);
        let images = images_of(&dir);
        let engine = self.remove_engine_objects(&cvm.id).await;
        let _ = std::fs::remove_dir_all(&dir);
        self.db
            .set_status(&cvm.id, CvmStatus::Deleted, None, None)
            .await?;
        if let Err(e) = engine {
            eprintln!(
                "node: CVM {} deleted, but the engine kept some of its objects: {e}",
                cvm.id
            );
        }
        self.spawn_image_cleanup(cvm.id.clone(), images);
        Ok(())
    }

    /// Removes the CVM's containers (with their anonymous volumes), then
    /// its compose project's networks and named volumes.
    async fn remove_engine_objects(&self, id: &str) -> Result<(), NodeError> {
        let docker = self.docker()?;
        let engine = |what: &'static str, source: bollard::errors::Error| NodeError::Engine { what, source };
        for c in self.containers(&docker, id).await? {
            let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                .force(true)
                .v(true)
                .build();
            let _ = docker.remove_container(&c, Some(opts)).await;
        }
        let label = HashMap::from([("label", vec![project_label(id)])]);
        let networks = docker
            .list_networks(Some(
                bollard::query_parameters::ListNetworksOptionsBuilder::new()
                    .filters(&label)
                    .build(),
            ))
            .await
            .map_err(|e| engine("list networks", e))?;
        let mut first_error = None;
        for n in networks {
            if let Some(nid) = n.id
                && let Err(e) = docker.remove_network(&nid).await
            {
                first_error.get_or_insert(engine("remove a network", e));
            }
        }
        let volumes = docker
            .list_volumes(Some(
                bollard::query_parameters::ListVolumesOptionsBuilder::new()
                    .filters(&label)
                    .build(),
            ))
            .await
            .map_err(|e| engine("list volumes", e))?;
        for v in volumes.volumes.unwrap_or_default() {
            let opts = bollard::query_parameters::RemoveVolumeOptionsBuilder::new()
                .force(true)
                .build();
            if let Err(e) = docker.remove_volume(&v.name, Some(opts)).await {
                first_error.get_or_insert(engine("remove a volume", e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes, in the background, the `images` (IDs) of a deleted CVM that
    /// no other CVM's compose file names, once no boot is in flight on this
    /// node (a boot may have loaded one and not yet written its file).
    fn spawn_image_cleanup(self: &Arc<Self>, deleted: String, images: BTreeSet<String>) {
        if images.is_empty() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
            let _quiet = loop {
                if let Ok(g) = me.images.try_write() {
                    break g;
                }
                if tokio::time::Instant::now() > deadline {
                    eprintln!(
                        "node: the images of deleted CVM {deleted} stay in the engine: boots never stopped for 10 minutes"
                    );
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            let mut in_use = BTreeSet::new();
            for e in std::fs::read_dir(&me.cfg.root)
                .into_iter()
                .flatten()
                .flatten()
            {
                if e.file_name().to_str() != Some(&deleted) {
                    in_use.extend(images_of(&e.path()));
                }
            }
            let Ok(docker) = me.docker() else { return };
            for image in images.difference(&in_use) {
                remove_image(&docker, image).await;
            }
        });
    }

    /// Every container of the CVM's compose project, running or not.
    async fn project_containers(
        &self,
        docker: &bollard::Docker,
        cvm_id: &str,
    ) -> Result<Vec<bollard::models::ContainerSummary>, NodeError> {
        let filters = HashMap::from([("label", vec![project_label(cvm_id)])]);
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        docker
            .list_containers(Some(opts))
            .await
            .map_err(|source| NodeError::Engine {
                what: "list containers",
                source,
            })
    }

    async fn containers(
        &self,
        docker: &bollard::Docker,
        cvm_id: &str,
    ) -> Result<Vec<String>, NodeError> {
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
        if let Ok(mut f) = SerialFile::open(&self.serial_log_path(id), SERIAL_LOG_MAX_BYTES).await {
            let _ = f.write_line(&format!("[node] {text}")).await;
        }
    }

    /// After a restart of `berth up`: CVMs that were running and still are
    /// stay as they are; CVMs that were booting, or were running but whose
    /// containers are gone, boot again (their state folder makes that
    /// cheap), unless a boot of theirs is still alive (its state lock is
    /// held): those are reported and left alone, so no CVM boots twice.
    pub async fn resume(self: &Arc<Self>) -> Result<usize, NodeError> {
        let mut resumed = 0;
        for cvm in self.db.live_cvms().await? {
            let again = match cvm.status {
                CvmStatus::Provisioning | CvmStatus::Starting => true,
                CvmStatus::Running => !self.containers_running(&cvm.id).await,
                _ => false,
            };
            let Some(app) = (if again {
                self.db.app(&cvm.app_id).await?
            } else {
                None
            }) else {
                continue;
            };
            match self.try_start(&cvm, &app).await? {
                Started::Booting => {
                    self.append_serial(&cvm.id, "node restarted: booting the CVM again")
                        .await;
                    resumed += 1;
                }
                Started::AlreadyBooting => {
                    eprintln!(
                        "node: CVM {} is already booting (another process holds its state lock); not booting it again",
                        cvm.id
                    );
                }
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
    pub async fn container_names(&self, cvm_id: &str) -> Result<Vec<(String, String)>, NodeError> {
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
    ) -> Result<String, NodeError> {
        use futures_util::StreamExt;
        let mine = self.container_names(cvm_id).await?;
        let Some((id, _)) = mine
            .into_iter()
            .find(|(id, name)| id.starts_with(container) || name == container)
        else {
            return Err(NodeError::NoSuchContainer);
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
    ) -> Result<String, NodeError> {
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

/// A serial log that rotates itself: past `max` bytes, `serial.log` becomes
/// `serial.log.1` (replacing the older one) and a new `serial.log` starts.
/// Both stay 0600.
pub struct SerialFile {
    path: PathBuf,
    file: tokio::fs::File,
    size: u64,
    max: u64,
}

impl SerialFile {
    /// Opens (creating) the log at `path` for appending.
    pub async fn open(path: &Path, max: u64) -> std::io::Result<Self> {
        let file = open_log(path).await?;
        let size = file.metadata().await?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
            max,
        })
    }

    /// Appends one line (a newline is added), rotating first if the line
    /// would take the file past its size.
    pub async fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max {
            self.file.flush().await?;
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            tokio::fs::rename(&self.path, &old).await?;
            self.file = open_log(&self.path).await?;
            self.size = 0;
        }
        self.file.write_all(format!("{line}\n").as_bytes()).await?;
        self.size += len;
        Ok(())
    }

    /// Flushes what was written.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush().await
    }
}

/// Resolves once `cancel` holds `true` (never, if its sender is gone
/// without saying so).
async fn cancelled(cancel: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *cancel.borrow_and_update() {
            return;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A boot agent's process group (its id is the agent's pid). Dropped
/// before the agent is reaped (the node shutting down, a boot task
/// aborted), it kills the whole group.
struct ProcessGroup(Option<i32>);

impl ProcessGroup {
    fn signal(&self, signal: i32) {
        if let Some(pgid) = self.0 {
            // SAFETY: killpg has no memory-safety preconditions; the
            // leader is not reaped, so `pgid` is still this group's.
            unsafe {
                libc::killpg(pgid, signal);
            }
        }
    }

    /// Resolves when the group's leader (the agent) has exited, without
    /// reaping it: until it is reaped, its pid (the group id) is not reused.
    async fn leader_exited(&self) {
        let Some(pid) = self.0 else { return };
        while !exited_unreaped(pid) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether the child `pid` has exited (true also when it is not a child
/// of this process any more), without reaping it.
fn exited_unreaped(pid: i32) -> bool {
    // SAFETY: an all-zero siginfo_t is valid; waitid writes only into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is set (or left zero) by a successful waitid.
    rc != 0 || unsafe { info.si_pid() } != 0
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// An exclusive `flock` on a CVM's `state/.boot.lock`.
struct BootLock(std::fs::File);

impl BootLock {
    /// The lock, or `None` when another open file holds it.
    fn try_take(path: &Path) -> std::io::Result<Option<Self>> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(Self(f)));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e)
        }
    }

    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

fn project_label(cvm_id: &str) -> String {
    format!("com.docker.compose.project={}", project_of(cvm_id))
}

/// The image IDs (`sha256:…`) the CVM in `dir` last ran: its compose file
/// as handed to the compose tool names every service's image by ID.
fn images_of(dir: &Path) -> BTreeSet<String> {
    let path = dir.join("state/compose/docker-compose.yml");
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeSet::new();
    };
    let Ok(doc) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) else {
        return BTreeSet::new();
    };
    doc.get("services")
        .and_then(|s| s.as_mapping())
        .into_iter()
        .flatten()
        .filter_map(|(_, svc)| svc.get("image")?.as_str())
        .filter(|i| i.starts_with("sha256:"))
        .map(str::to_owned)
        .collect()
}

/// Removes an image: its tags one by one, then the image, never by force,
/// so the engine keeps it if any container still uses it.
async fn remove_image(docker: &bollard::Docker, id: &str) {
    let opts = || {
        Some(
            bollard::query_parameters::RemoveImageOptionsBuilder::new()
                .force(false)
                .build(),
        )
    };
    if let Ok(info) = docker.inspect_image(id).await {
        for tag in info.repo_tags.unwrap_or_default() {
            let _ = docker.remove_image(&tag, opts(), None).await;
        }
    }
    let _ = docker.remove_image(id, opts(), None).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("berth-node-{name}-{}", uuid::Uuid::new_v4()));
        private_dir(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn serial_log_rotates_past_its_size_and_stays_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = temp("serial");
        let path = d.join("serial.log");
        let mut log = SerialFile::open(&path, 1000).await.unwrap();
        for i in 0..100 {
            log.write_line(&format!("line {i:04} {}", "x".repeat(20)))
                .await
                .unwrap();
        }
        log.flush().await.unwrap();
        let old = d.join("serial.log.1");
        let (now, before) = (
            std::fs::read_to_string(&path).unwrap(),
            std::fs::read_to_string(&old).unwrap(),
        );
        assert!(
            now.len() <= 1000 && before.len() <= 1000,
            "{} {}",
            now.len(),
            before.len()
        );
        assert!(now.ends_with(&format!("line 0099 {}\n", "x".repeat(20))));
        // The two files hold the newest lines, in order, none cut.
        let all: Vec<&str> = before.lines().chain(now.lines()).collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert!(all.iter().all(|l| l.len() == 30));
        assert!(!std::fs::exists(d.join("serial.log.2")).unwrap());
        for p in [&path, &old] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", p.display());
        }
        // Reopened, it keeps counting from the file's size.
        let mut again = SerialFile::open(&path, 1000).await.unwrap();
        for _ in 0..40 {
            again.write_line(&"y".repeat(29)).await.unwrap();
        }
        again.flush().await.unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() <= 1000);
        assert!(std::fs::read_to_string(&old).unwrap().contains("line 0099"));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn boot_lock_is_exclusive_until_released() {
        let d = temp("lock");
        let path = d.join(BOOT_LOCK_FILE);
        let held = BootLock::try_take(&path).unwrap().expect("free");
        assert!(BootLock::try_take(&path).unwrap().is_none());
        // Another process (flock(1)) sees it held too.
        let other = std::process::Command::new("flock")
            .args(["--nonblock", "--conflict-exit-code", "7"])
            .arg(&path)
            .arg("true")
            .status()
            .unwrap();
        assert_eq!(other.code(), Some(7));
        drop(held);
        assert!(BootLock::try_take(&path).unwrap().is_some());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn images_named_by_a_cvm_compose_file() {
        let d = temp("images");
        assert!(images_of(&d).is_empty());
        std::fs::create_dir_all(d.join("state/compose")).unwrap();
        std::fs::write(
            d.join("state/compose/docker-compose.yml"),
            "services:\n  a:\n    image: sha256:aaa\n  b:\n    image: sha256:bbb\n  c:\n    image: busybox\n",
        )
        .unwrap();
        assert_eq!(
            images_of(&d).into_iter().collect::<Vec<_>>(),
            ["sha256:aaa", "sha256:bbb"]
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}
