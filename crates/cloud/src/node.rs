//! [`Node`]: the local node that runs CVMs.
//!
//! A CVM here is a `berth guest boot` process with its own host-shared folder
//! (what a real CVM receives from its host: `app-compose.json`,
//! `encrypted-env`, `sys-config.json`) and its own state folder that survives
//! restarts, its stdout and stderr captured as the serial log, and its
//! containers in the node's Docker engine under a project name unique to it.
//! The node never opens the sealed env: it copies the opaque bytes into the
//! shared folder, and the boot agent gets the key from the KMS.

use crate::db::{App, Cvm, Db};
use crate::error::ApiError;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// How the node runs CVMs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where CVM folders live (`<root>/<cvm id>/{shared,state,serial.log}`).
    pub root: PathBuf,
    /// The `berth` executable (for `berth guest boot`).
    pub berth_bin: PathBuf,
    /// The KMS the CVMs ask for their env key.
    pub kms_url: String,
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
        let shared = self.dir(&cvm.id).join("shared");
        let io =
            |e: std::io::Error| ApiError::internal(format!("cannot prepare the CVM folder: {e}"));
        std::fs::create_dir_all(&shared).map_err(io)?;
        std::fs::create_dir_all(self.dir(&cvm.id).join("state")).map_err(io)?;
        std::fs::write(shared.join("app-compose.json"), &app.app_compose).map_err(io)?;
        let env_path = shared.join("encrypted-env");
        match &cvm.encrypted_env {
            Some(bytes) => std::fs::write(&env_path, bytes).map_err(io)?,
            None => {
                let _ = std::fs::remove_file(&env_path);
            }
        }
        let sys = serde_json::json!({
            "kms_url": self.cfg.kms_url,
            "registry_endpoints": self.cfg.registry_endpoints,
            "ca_certs": self.cfg.ca_certs,
            "aws_endpoint_url_ecr": self.cfg.aws_endpoint_url_ecr,
            "project_name": project_of(&cvm.id),
            "instance_id": cvm.id,
        });
        std::fs::write(shared.join("sys-config.json"), sys.to_string()).map_err(io)?;
        self.db.set_status(&cvm.id, "starting", None, None)?;
        let me = self.clone();
        let id = cvm.id.clone();
        let handle = tokio::spawn(async move {
            let result = me.run_boot(&id).await;
            let (status, cat, msg) = match result {
                Ok(Outcome::Ok) => ("running", None, None),
                Ok(Outcome::Failed { category, line }) => {
                    ("boot_failed", Some(category), Some(line))
                }
                Err(e) => ("boot_failed", Some("runtime".to_owned()), Some(e)),
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

    async fn run_boot(&self, id: &str) -> Result<Outcome, String> {
        let dir = self.dir(id);
        let mut log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("serial.log"))
            .await
            .map_err(|e| format!("cannot open the serial log: {e}"))?;
        let mut child = tokio::process::Command::new(&self.cfg.berth_bin)
            .args(["guest", "boot", "--shared"])
            .arg(dir.join("shared"))
            .arg("--state")
            .arg(dir.join("state"))
            .env("DOCKER_HOST", &self.cfg.docker_host)
            .env_remove("BERTH_ADMIN_API_KEY")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the boot agent: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
        for stream in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stream).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if tx.send(l).await.is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut outcome = None;
        while let Some(line) = rx.recv().await {
            let _ = log.write_all(format!("{line}\n").as_bytes()).await;
            let text = line.split_once("] ").map(|(_, t)| t).unwrap_or(&line);
            if text.starts_with("BOOT OK") {
                outcome = Some(Outcome::Ok);
            } else if let Some(rest) = text.strip_prefix("BOOT FAILED: ") {
                let category = rest
                    .split(':')
                    .next()
                    .unwrap_or("runtime")
                    .trim()
                    .to_owned();
                outcome = Some(Outcome::Failed {
                    category,
                    line: text.to_owned(),
                });
            }
        }
        let _ = log.flush().await;
        let status = child
            .wait()
            .await
            .map_err(|e| format!("the boot agent vanished: {e}"))?;
        Ok(outcome.unwrap_or_else(|| Outcome::Failed {
            category: "runtime".into(),
            line: format!(
                "BOOT FAILED: runtime: the boot agent ended without a final line ({status})"
            ),
        }))
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
        if let Ok(mut f) = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.serial_log_path(id))
            .await
        {
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

enum Outcome {
    Ok,
    Failed { category: String, line: String },
}
