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
//!
//! **The guest agent.** For as long as a CVM runs, the node holds its agent
//! sockets (`<cvm>/agent/dstack.sock`, `tappd.sock`, bound before the boot
//! so compose finds them) and runs one `berth guest agent` on them, with a
//! ticket of its own, started again with backoff when it ends, ended by
//! stop, delete and a failed boot (`agent`). The node never holds the app
//! key: the agent redeems its ticket itself.
//!
//! **Layout.** This file: [`Node`] and [`NodeConfig`], and the start, stop,
//! restart, delete and resume of a CVM; `boot`: one boot (the ticket, the
//! agent in its own process group, its final status); `agent`: the CVM's
//! guest agent (its sockets, its watcher); `engine`: what a CVM
//! owns in the Docker engine (containers, networks, volumes, images) and its
//! container logs; `serial`: the rotating serial log; `files`: private
//! folders and files and the boot lock.

mod agent;

mod boot;

mod cgroup;

mod dispatch;

mod engine;

mod error;

mod files;

mod layout;

mod machine;

mod queue;

mod sandbox;

mod serial;

pub use engine::{ContainerView, project_of};

pub use error::NodeError;

pub use files::{BOOT_LOCK_FILE, private_dir, write_private};

pub use queue::waiting_message;

pub use sandbox::check_host as check_container_host;

pub use serial::{SERIAL_LOG_MAX_BYTES, SerialFile};

use crate::db::{App, Cvm, Db};
use contract::app::{APP_COMPOSE_FILE, ENCRYPTED_ENV_FILE, SYS_CONFIG_FILE};
use contract::{CvmStatus, SysConfig};
use engine::images_of;
use files::BootLock;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The secret that lets the node (and nobody else) ask the KMS for boot
/// tickets. `Debug` redacts it.
#[derive(Clone)]
pub struct NodeSecret(pub zeroize::Zeroizing<String>);

impl std::fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeSecret([redacted])")
    }
}

/// How long a boot agent's process group has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(4);

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
    /// Host ports no CVM may publish (the API's), besides the mapped
    /// registries'.
    pub reserved_ports: Vec<contract::policy::ReservedPort>,
    /// What a CVM is: containers on the shared engine, or a system
    /// container with its own engine (`sandbox`).
    pub isolation: contract::Isolation,
    /// The most boots running at once (`berth up --max-boots`); more wait
    /// in the boot queue.
    pub max_boots: usize,
    /// The most boots of one user running at once (`berth up
    /// --max-boots-per-user`), so one user's stuck boots leave the other
    /// slots to others.
    pub max_boots_per_user: usize,
}

/// A boot in flight on this node.
struct Boot {
    /// Whose CVM it boots (the queue's fairness counts a user's boots).
    user_id: i64,
    generation: u64,
    cancel: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

/// The node.
pub struct Node {
    cfg: NodeConfig,
    db: Arc<Db>,
    boots: Mutex<HashMap<String, Boot>>,
    /// The guest agent watcher of each running CVM.
    agents: Mutex<HashMap<String, agent::AgentRun>>,
    generation: AtomicU64,
    /// Boots hold it shared; removing a deleted CVM's images takes it
    /// exclusively, so no image goes while a boot may be about to run it.
    images: tokio::sync::RwLock<()>,
    /// The CVMs waiting for a boot slot. Held while one is queued (its
    /// status written), taken out (stop, delete) or started, so a CVM is
    /// either waiting or booting, never both, and never booted after a
    /// stop took it out.
    waiting: tokio::sync::Mutex<Waiting>,
    /// Wakes the queue's dispatcher: a CVM queued or taken out, a boot ended.
    wake: Arc<tokio::sync::Notify>,
    /// Whether the dispatcher task runs (started at the first queued CVM).
    dispatching: std::sync::Once,
}

/// The boot queue and what its CVMs were last told.
#[derive(Default)]
struct Waiting {
    queue: queue::FairQueue<i64, String>,
    /// The position each waiting CVM's status message says, with the turn
    /// it was queued in (a CVM taken out and queued again is another turn).
    shown: HashMap<String, (u64, usize)>,
    /// The turn of each waiting CVM.
    turns: HashMap<String, u64>,
    next_turn: u64,
}

/// What [`Node::start`] found.
enum Started {
    Booting,
    /// Another process holds the CVM's boot lock.
    AlreadyBooting,
}

impl Node {
    /// A node with `cfg`, recording status in `db`.
    pub fn new(cfg: NodeConfig, db: Arc<Db>) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            db,
            boots: Mutex::new(HashMap::new()),
            agents: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            images: tokio::sync::RwLock::new(()),
            waiting: tokio::sync::Mutex::new(Waiting::default()),
            wake: Arc::new(tokio::sync::Notify::new()),
            dispatching: std::sync::Once::new(),
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

    /// Writes the CVM's host-shared folder and boots it in the background
    /// (the queue's dispatcher calls it when a slot is free). A boot of it
    /// already in flight on this node is ended first; one that another
    /// process runs (its state lock is held) is a conflict. When its
    /// folders cannot be written (a full disk), a CVM that is not running
    /// records `boot_failed` with the reason, as far as the database can
    /// still be written.
    async fn boot_now(self: &Arc<Self>, cvm: &Cvm, app: &App) -> Result<(), NodeError> {
        match self.try_start(cvm, app).await {
            Ok(Started::Booting) => Ok(()),
            Ok(Started::AlreadyBooting) => Err(NodeError::AlreadyBooting { id: cvm.id.clone() }),
            Err(e @ NodeError::Folder(_)) => {
                let line = contract::BootOutcome::Failed {
                    category: contract::Category::Runtime,
                    message: format!("the node {e}"),
                }
                .render();
                self.append_serial(&cvm.id, &line).await;
                let _ = self
                    .db
                    .transition(
                        &cvm.id,
                        &[
                            CvmStatus::Provisioning,
                            CvmStatus::Starting,
                            CvmStatus::Stopped,
                            CvmStatus::BootFailed,
                        ],
                        CvmStatus::BootFailed,
                        Some(contract::Category::Runtime.as_str()),
                        Some(&line),
                    )
                    .await;
                Err(e)
            }
            Err(e) => Err(e),
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
        let cpu_millis = u64::try_from(cvm.vcpu)
            .ok()
            .filter(|v| *v > 0)
            .map(|v| v.saturating_mul(1000));
        let memory_mb = u64::try_from(cvm.memory).ok().filter(|m| *m > 0);
        let container = self.cfg.isolation == contract::Isolation::Container;
        // In a container, the CVM's cgroup holds the whole machine (made
        // at its start); on the shared engine, it is its containers' parent.
        let cgroup_parent = if container {
            None
        } else {
            self.cvm_cgroup(&cvm.id, cpu_millis, memory_mb).await
        };
        let sys = SysConfig {
            kms_url: Some(self.cfg.kms_url.clone()),
            registry_endpoints: self.cfg.registry_endpoints.clone(),
            ca_certs: self.cfg.ca_certs.clone(),
            aws_endpoint_url_ecr: self.cfg.aws_endpoint_url_ecr.clone(),
            project_name: Some(project_of(&cvm.id)),
            instance_id: Some(cvm.id.clone()),
            // An updated app's manifest no longer measures to its app id:
            // the platform says which app this is (the KMS checks that the
            // measured compose hash is the one the app may boot).
            app_id: Some(app.app_id.clone()),
            cpu_millis,
            memory_mb,
            pids_max: Some(contract::app::DEFAULT_CVM_PIDS),
            cgroup_parent,
            reserved_ports: self.cfg.reserved_ports.clone(),
            // Inside its own machine, a CVM has the agent's sockets at
            // their dstack paths.
            agent_socket_dir: (!container).then(|| self.agent_dir(&cvm.id).display().to_string()),
            isolation: self.cfg.isolation,
        };
        write_private(&shared.join(SYS_CONFIG_FILE), sys.render().as_bytes()).map_err(io)?;
        // A CVM being deleted (or deleted) does not boot.
        if !self
            .db
            .set_status(&cvm.id, CvmStatus::Starting, None, None)
            .await?
        {
            return Err(NodeError::NoSuchCvm);
        }
        // The guest agent's sockets exist before compose runs (an engine
        // would make a folder where a mounted path is missing).
        self.start_agent(&cvm.id, &app.app_id, &app.compose_hash)
            .await
            .map_err(io)?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let (cancel, cancel_rx) = tokio::sync::watch::channel(false);
        let me = self.clone();
        let id = cvm.id.clone();
        let (app_id, compose_hash) = (app.app_id.clone(), app.compose_hash.clone());
        let bounds = sandbox::Bounds {
            cpu_millis,
            memory_bytes: memory_mb.map(|m| m.saturating_mul(1 << 20)),
            pids: contract::app::DEFAULT_CVM_PIDS,
        };
        // The task waits for this record before it can finish.
        let mut boots = self.boots.lock().unwrap();
        let handle = tokio::spawn(async move {
            let plan = boot::BootPlan {
                app_id,
                compose_hash,
                bounds,
            };
            me.boot_task(id, generation, plan, lock, cancel_rx).await;
        });
        boots.insert(
            cvm.id.clone(),
            Boot {
                user_id: cvm.user_id,
                generation,
                cancel,
                handle,
            },
        );
        Ok(Started::Booting)
    }

    /// The cgroup that holds the CVM `id` as a whole, made (or updated)
    /// now; `None`, said in its serial log, where the node cannot make one
    /// (the boot agent then gives each container a share of the CVM).
    async fn cvm_cgroup(
        &self,
        id: &str,
        cpu_millis: Option<u64>,
        memory_mb: Option<u64>,
    ) -> Option<String> {
        let res = cgroup::CvmResources {
            cpu_millis,
            memory_bytes: memory_mb.map(|m| m.saturating_mul(1 << 20)),
            pids: contract::app::DEFAULT_CVM_PIDS,
        };
        let docker = self.docker().ok()?;
        match cgroup::prepare(&docker, &self.cfg.docker_host, &project_of(id), res).await {
            Ok(parent) => Some(parent),
            Err(why) => {
                self.append_serial(
                    id,
                    &format!(
                        "no cgroup for the CVM as a whole ({why}): each container gets an equal share of its vCPUs, memory and processes"
                    ),
                )
                .await;
                None
            }
        }
    }

    /// Ends the boot of `id` in flight on this node, if any: its agent's
    /// whole process group gets SIGTERM, then SIGKILL after a grace period,
    /// and the boot records nothing.
    async fn end_boot(&self, id: &str) {
        let boot = self.boots.lock().unwrap().remove(id);
        if let Some(boot) = boot {
            // Its slot is free.
            self.wake.notify_one();
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

    /// Stops the CVM: its boot (the agent's whole process group) and its
    /// containers, and records `stopped`, also when the engine cannot be
    /// reached (the serial log says what was left running). The status is
    /// written first: when it cannot be (a full disk), the containers keep
    /// running and the status stays true.
    pub async fn stop(&self, cvm: &Cvm) -> Result<(), NodeError> {
        // A CVM waiting for a slot is taken out: nothing boots it later.
        self.unqueue(&cvm.id).await;
        self.end_boot(&cvm.id).await;
        self.end_agent(&cvm.id).await;
        self.db
            .set_status(&cvm.id, CvmStatus::Stopped, None, None)
            .await?;
        let engine = self.stop_containers(&cvm.id).await;
        self.power_off(&cvm.id).await;
        match engine {
            Ok(_) => self.append_serial(&cvm.id, "CVM stopped by the node").await,
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

    /// Stops the CVM and queues it to boot again (its state folder makes
    /// that cheap). A CVM waiting for a slot keeps its place (it boots
    /// once, with its app and env as they are when its turn comes).
    pub async fn restart(self: &Arc<Self>, cvm: &Cvm, app: &App) -> Result<(), NodeError> {
        if self.waiting.lock().await.queue.contains(&cvm.id) {
            return Ok(());
        }
        self.stop(cvm).await?;
        self.start(cvm, app).await
    }

    /// Deletes the CVM: records `deleting` first (a node that dies from
    /// then on finishes the delete when it starts again, see
    /// [`Node::resume`], and never boots the CVM), ends its boot, removes
    /// what it made in the engine (containers, compose networks and named
    /// volumes, and, in the background, the images it loaded that no other
    /// CVM runs) and its folders, and records `deleted`, also when the
    /// engine cannot be reached.
    pub async fn delete(self: &Arc<Self>, cvm: &Cvm) -> Result<(), NodeError> {
        let mut from = CvmStatus::LIVE.to_vec();
        from.push(CvmStatus::Deleting);
        if !self
            .db
            .transition(&cvm.id, &from, CvmStatus::Deleting, None, None)
            .await?
        {
            return Err(NodeError::NoSuchCvm);
        }
        self.unqueue(&cvm.id).await;
        self.end_boot(&cvm.id).await;
        self.end_agent(&cvm.id).await;
        let dir = self.dir(&cvm.id);
        let images = images_of(&dir);
        let container = self.cfg.isolation == contract::Isolation::Container;
        // A CVM's own machine takes all it made with it: its engine, its
        // containers, networks and volumes (on its disk, in its folder).
        let engine = if container {
            self.power_off(&cvm.id).await;
            sandbox::release(&dir);
            Ok(())
        } else {
            self.remove_engine_objects(&cvm.id).await
        };
        cgroup::remove(&project_of(&cvm.id));
        let _ = std::fs::remove_dir_all(&dir);
        self.db
            .transition(
                &cvm.id,
                &[CvmStatus::Deleting],
                CvmStatus::Deleted,
                None,
                None,
            )
            .await?;
        if let Err(e) = engine {
            eprintln!(
                "node: CVM {} deleted, but the engine kept some of its objects: {e}",
                cvm.id
            );
        }
        if !container {
            self.spawn_image_cleanup(cvm.id.clone(), images);
        }
        Ok(())
    }

    /// After a restart of `berth up`: deletes that a crash interrupted
    /// (`deleting`) are finished; CVMs that were running and still are
    /// stay as they are; CVMs that were booting or waiting for a boot slot
    /// (`provisioning`, `starting`), or were running but whose containers
    /// are gone, are queued to boot again (their state folder makes that
    /// cheap; oldest CVM first), unless a boot of theirs is still alive
    /// (its state lock is held): those are reported and left alone, so no
    /// CVM boots twice.
    pub async fn resume(self: &Arc<Self>) -> Result<usize, NodeError> {
        let _ = tokio::task::spawn_blocking(cgroup::remove_unused).await;
        let mut resumed = 0;
        for cvm in self.db.live_cvms().await? {
            if cvm.status == CvmStatus::Deleting {
                eprintln!(
                    "node: CVM {} was being deleted when the node stopped: finishing the delete",
                    cvm.id
                );
                if let Err(e) = self.delete(&cvm).await {
                    eprintln!("node: the delete of CVM {} failed again: {e}", cvm.id);
                }
                continue;
            }
            let again = match cvm.status {
                CvmStatus::Provisioning | CvmStatus::Starting => true,
                CvmStatus::Running => !self.containers_running(&cvm.id).await,
                _ => false,
            };
            if cvm.status == CvmStatus::Running
                && !again
                && let Some(app) = self.db.app(&cvm.app_id).await?
            {
                // Its agent died with the node that ran it. Containers that
                // mount the old socket keep a dead one until they start
                // again: those are restarted on the new one.
                match self
                    .start_agent(&cvm.id, &app.app_id, &app.compose_hash)
                    .await
                {
                    Err(e) => {
                        eprintln!("node: the guest agent of CVM {} cannot start: {e}", cvm.id)
                    }
                    Ok(()) => match self
                        .restart_containers_mounting(&cvm.id, &self.agent_dir(&cvm.id))
                        .await
                    {
                        Ok(0) => {}
                        Ok(n) => {
                            self.append_serial(
                                &cvm.id,
                                &format!(
                                    "node restarted: {n} container(s) mounting the guest agent restarted on its new socket"
                                ),
                            )
                            .await
                        }
                        Err(e) => self
                            .append_serial(
                                &cvm.id,
                                &format!(
                                    "node restarted: the containers mounting the guest agent could not be restarted ({e}); restart the CVM"
                                ),
                            )
                            .await,
                    },
                }
            }
            let Some(app) = (if again {
                self.db.app(&cvm.app_id).await?
            } else {
                None
            }) else {
                continue;
            };
            match self.start(&cvm, &app).await {
                Ok(()) => {
                    self.append_serial(&cvm.id, "node restarted: booting the CVM again")
                        .await;
                    resumed += 1;
                }
                Err(NodeError::AlreadyBooting { .. }) => {
                    eprintln!(
                        "node: CVM {} is already booting (another process holds its state lock); not booting it again",
                        cvm.id
                    );
                }
                Err(NodeError::NoSuchCvm) => {}
                Err(e) => return Err(e),
            }
        }
        self.adopt_orphans();
        Ok(resumed)
    }
}
