//! What a CVM owns in the node's Docker engine: its compose project's
//! containers, networks and named volumes (found by the project label),
//! the images it ran (removed after a delete once no other CVM names
//! them), and its containers' logs.

use super::{Node, NodeError};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// One container of a CVM.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ContainerView {
    /// The engine's container id.
    pub id: String,
    /// The compose service.
    pub service: String,
    /// The engine's state: `running`, `exited`, `created`, `restarting`, …
    #[serde(default)]
    pub state: String,
    /// The engine's status text (`Up 3 minutes`, `Exited (1) 5 seconds ago`).
    #[serde(default)]
    pub status: String,
}

/// The compose project of a CVM.
pub fn project_of(cvm_id: &str) -> String {
    format!(
        "berth-{}",
        cvm_id.replace('-', "").chars().take(12).collect::<String>()
    )
}

impl Node {
    /// The node's shared engine.
    pub(super) fn docker(&self) -> Result<bollard::Docker, NodeError> {
        bollard::Docker::connect_with_host(&self.cfg.docker_host)
            .map_err(NodeError::EngineUnreachable)
    }

    /// The engine the CVM `id` runs on: its own (container isolation) or
    /// the node's shared one.
    pub(super) fn docker_for(&self, id: &str) -> Result<bollard::Docker, NodeError> {
        bollard::Docker::connect_with_host(&self.docker_host_for(id))
            .map_err(NodeError::EngineUnreachable)
    }

    /// The address of [`Node::docker_for`]'s engine.
    pub(super) fn docker_host_for(&self, id: &str) -> String {
        match self.cfg.isolation {
            contract::Isolation::Container => super::sandbox::docker_host_of(&self.dir(id)),
            contract::Isolation::Shared => self.cfg.docker_host.clone(),
        }
    }

    /// Stops the CVM's containers (SIGTERM, SIGKILL after 5 s); how many
    /// of them were running and stopped.
    pub(super) async fn stop_containers(&self, id: &str) -> Result<usize, NodeError> {
        // A machine that is off has nothing running.
        if self.cfg.isolation == contract::Isolation::Container
            && !super::sandbox::alive(&project_of(id))
        {
            return Ok(0);
        }
        let docker = self.docker_for(id)?;
        let mut stopped = 0;
        for c in self.project_containers(&docker, id).await? {
            let (Some(cid), running) = (
                c.id,
                c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
            ) else {
                continue;
            };
            let opts = bollard::query_parameters::StopContainerOptionsBuilder::new()
                .t(5)
                .build();
            if docker.stop_container(&cid, Some(opts)).await.is_ok() && running {
                stopped += 1;
            }
        }
        Ok(stopped)
    }

    /// Removes the CVM's containers (with their anonymous volumes), then
    /// its compose project's networks and named volumes.
    pub(super) async fn remove_engine_objects(&self, id: &str) -> Result<(), NodeError> {
        let docker = self.docker()?;
        let engine =
            |what: &'static str, source: bollard::errors::Error| NodeError::Engine { what, source };
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
    pub(super) fn spawn_image_cleanup(self: &Arc<Self>, deleted: String, images: BTreeSet<String>) {
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

    /// Restarts the CVM's running containers that bind-mount a path under
    /// `dir` (its agent sockets, bound again by this node: a container's
    /// mount holds the old socket until the container starts again); how
    /// many it restarted.
    pub(super) async fn restart_containers_mounting(
        &self,
        id: &str,
        dir: &Path,
    ) -> Result<usize, NodeError> {
        let docker = self.docker_for(id)?;
        let mut restarted = 0;
        for c in self.project_containers(&docker, id).await? {
            let running = c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
            // In a machine of its own, a CVM's containers mount the sockets
            // at their dstack paths (links into `/run/berth/agent`).
            let inside = self.cfg.isolation == contract::Isolation::Container;
            let mounts_dir = c.mounts.iter().flatten().any(|m| {
                m.source.as_deref().is_some_and(|s| {
                    Path::new(s).starts_with(dir)
                        || (inside
                            && (Path::new(s).starts_with("/run/berth/agent")
                                || contract::policy::AGENT_SOCKET_PATHS.contains(&s)))
                })
            });
            let Some(cid) = c.id.filter(|_| running && mounts_dir) else {
                continue;
            };
            let opts = bollard::query_parameters::RestartContainerOptionsBuilder::new()
                .t(5)
                .build();
            docker
                .restart_container(&cid, Some(opts))
                .await
                .map_err(|source| NodeError::Engine {
                    what: "restart a container",
                    source,
                })?;
            restarted += 1;
        }
        Ok(restarted)
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
        let Ok(docker) = self.docker_for(cvm_id) else {
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

    /// The CVM's containers: id, compose service, state.
    pub async fn container_states(&self, cvm_id: &str) -> Result<Vec<ContainerView>, NodeError> {
        let docker = self.docker_for(cvm_id)?;
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
                ContainerView {
                    id: c.id.unwrap_or_default(),
                    service,
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                    status: c.status.unwrap_or_default(),
                }
            })
            .collect())
    }

    /// The CVM's containers: (id, compose service name).
    pub async fn container_names(&self, cvm_id: &str) -> Result<Vec<(String, String)>, NodeError> {
        Ok(self
            .container_states(cvm_id)
            .await?
            .into_iter()
            .map(|c| (c.id, c.service))
            .collect())
    }

    /// One container's output (stdout and stderr interleaved), if it
    /// belongs to the CVM: its last `tail` lines (all when `None`), at most
    /// [`crate::logs::MAX_TAIL_LINES`] and
    /// [`crate::logs::MAX_ANSWER_BYTES`].
    pub async fn one_container_logs(
        &self,
        cvm_id: &str,
        container: &str,
        tail: Option<usize>,
    ) -> Result<String, NodeError> {
        let mine = self.container_names(cvm_id).await?;
        let Some((id, _)) = mine
            .into_iter()
            .find(|(id, name)| id.starts_with(container) || name == container)
        else {
            return Err(NodeError::NoSuchContainer);
        };
        let docker = self.docker_for(cvm_id)?;
        let opts = log_options(true, true, tail);
        Ok(last_log_text(&docker, &id, opts, crate::logs::MAX_ANSWER_BYTES as usize).await)
    }

    /// The app's container output (`stderr` or stdout), all services, one
    /// after the other: of each, its last `tail` lines (all when `None`),
    /// at most [`crate::logs::MAX_TAIL_LINES`] and an equal share of
    /// [`crate::logs::MAX_ANSWER_BYTES`].
    pub async fn container_logs(
        &self,
        cvm_id: &str,
        stderr: bool,
        tail: Option<usize>,
    ) -> Result<String, NodeError> {
        let docker = self.docker_for(cvm_id)?;
        let ids = self.containers(&docker, cvm_id).await?;
        let share = crate::logs::MAX_ANSWER_BYTES as usize / ids.len().max(1);
        let mut out = String::new();
        for id in ids {
            let opts = log_options(!stderr, stderr, tail);
            out.push_str(&last_log_text(&docker, &id, opts, share).await);
        }
        Ok(out)
    }
}

/// Log options for a read of `tail` lines (never more than
/// [`crate::logs::MAX_TAIL_LINES`]: `tail=all` is that many).
fn log_options(
    stdout: bool,
    stderr: bool,
    tail: Option<usize>,
) -> bollard::query_parameters::LogsOptions {
    bollard::query_parameters::LogsOptionsBuilder::new()
        .stdout(stdout)
        .stderr(stderr)
        .tail(&crate::logs::engine_tail(tail).to_string())
        .build()
}

/// The last `max` bytes of a container's log as text, streamed from the
/// engine: the node holds little more than `max`, however much it logged.
async fn last_log_text(
    docker: &bollard::Docker,
    id: &str,
    opts: bollard::query_parameters::LogsOptions,
    max: usize,
) -> String {
    use futures_util::StreamExt;
    let mut last = crate::logs::LastBytes::new(max);
    let mut stream = docker.logs(id, Some(opts));
    while let Some(Ok(chunk)) = stream.next().await {
        last.push(&chunk.into_bytes());
    }
    last.into_text()
}

fn project_label(cvm_id: &str) -> String {
    format!("com.docker.compose.project={}", project_of(cvm_id))
}

/// The image IDs (`sha256:…`) the CVM in `dir` last ran: its compose file
/// as handed to the compose tool names every service's image by ID.
pub(super) fn images_of(dir: &Path) -> BTreeSet<String> {
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
    use super::super::files::temp;
    use super::*;

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
