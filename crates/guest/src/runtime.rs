//! Handing pulled images to the container runtime (the Docker Engine API,
//! through `bollard`) and starting the app with the compose tool.
//!
//! Images go to the engine as `docker save`-format archives streamed from
//! the OCI store (`POST /images/load`, [`LoadArchive`]; [`crate::handoff`]
//! decides what each one carries while the pull runs): the engine verifies
//! every layer against the config's diff ids, and the image ID it reports
//! is the config digest, so "the engine already has this image" is one
//! inspect away.

use crate::error::BootError;
use crate::serial::SerialLog;
use bollard::Docker;
use bytes::Bytes;
use contract::Isolation;
use envseal::Env;
use futures_util::StreamExt;
use registry::{Category, Digest};
use std::io::Write;
use std::path::{Path, PathBuf};
use tokio::io::AsyncBufReadExt;

/// The only variables of the boot agent's own environment that the compose
/// tool inherits; everything else is cleared, so nothing of the operator's
/// environment can be interpolated into a tenant's compose file.
const INHERITED: &[&str] = &["PATH", "DOCKER_HOST", "LANG", "TZ"];

fn runtime_err(message: impl Into<String>) -> BootError {
    BootError::new(Category::Runtime, message)
}

/// The Docker engine.
pub struct DockerRuntime {
    docker: Docker,
}

/// A container created by the compose tool for a project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectContainer {
    /// Container ID.
    pub id: String,
    /// The compose service it runs.
    pub service: String,
    /// Whether it is running.
    pub running: bool,
    /// The image ID it was created from.
    pub image_id: String,
}

/// How an image reached the engine: found by [`DockerRuntime::already_has`]
/// (present, or tagged with its name), or loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// The engine already had the image under this name.
    Present,
    /// The engine had the image; the name was added.
    Tagged,
    /// The image was loaded into the engine.
    Loaded,
}

impl DockerRuntime {
    /// Connects through `DOCKER_HOST` (or the default socket) and agrees on
    /// an API version with the engine.
    pub async fn connect() -> Result<Self, BootError> {
        let hint = "start the Docker engine, or point DOCKER_HOST at its socket";
        let docker = Docker::connect_with_defaults().map_err(|e| {
            BootError::new(
                Category::Runtime,
                format!("cannot reach the Docker engine: {e}"),
            )
            .hint(hint)
        })?;
        let docker = docker.negotiate_version().await.map_err(|e| {
            BootError::new(
                Category::Runtime,
                format!("the Docker engine does not answer: {e}"),
            )
            .hint(hint)
        })?;
        Ok(Self { docker })
    }

    async fn image_id(&self, name: &str) -> Option<String> {
        self.docker
            .inspect_image(name)
            .await
            .ok()
            .and_then(|i| i.id)
    }

    /// Whether the engine holds image `image_id`; if so, it is named `name`
    /// (when given) and what that took is returned. `None`: it must be loaded.
    pub async fn already_has(
        &self,
        image_id: &str,
        name: Option<&str>,
    ) -> Result<Option<Handoff>, BootError> {
        match name {
            Some(name) => match self.image_id(name).await {
                Some(id) if id == image_id => Ok(Some(Handoff::Present)),
                _ if self.has_image(image_id).await => {
                    self.tag(image_id, name).await?;
                    Ok(Some(Handoff::Tagged))
                }
                _ => Ok(None),
            },
            None if self.has_image(image_id).await => Ok(Some(Handoff::Present)),
            None => Ok(None),
        }
    }

    /// Whether the engine holds the image with this ID.
    pub async fn has_image(&self, image_id: &str) -> bool {
        self.image_id(image_id).await.as_deref() == Some(image_id)
    }

    /// The IDs of the images whose label `label` has a value starting with
    /// `prefix`.
    pub async fn images_labelled(
        &self,
        label: &str,
        prefix: &str,
    ) -> Result<Vec<String>, BootError> {
        let mut filters = std::collections::HashMap::new();
        filters.insert("label", vec![label.to_owned()]);
        let opts = bollard::query_parameters::ListImagesOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_images(Some(opts))
            .await
            .map_err(|e| runtime_err(format!("the Docker engine cannot list images: {e}")))?;
        Ok(list
            .into_iter()
            .filter(|i| i.labels.get(label).is_some_and(|v| v.starts_with(prefix)))
            .map(|i| i.id)
            .collect())
    }

    /// Removes the image with this ID (its layers stay while another image
    /// holds them).
    pub async fn remove_image(&self, image_id: &str) -> Result<(), BootError> {
        let opts = bollard::query_parameters::RemoveImageOptionsBuilder::new().build();
        self.docker
            .remove_image(image_id, Some(opts), None)
            .await
            .map(|_| ())
            .map_err(|e| {
                runtime_err(format!(
                    "the engine could not remove image {}: {e}",
                    &image_id[..image_id.len().min(19)]
                ))
            })
    }

    /// The containers of compose project `project` (running or not).
    pub async fn project_containers(
        &self,
        project: &str,
    ) -> Result<Vec<ProjectContainer>, BootError> {
        let mut filters = std::collections::HashMap::new();
        filters.insert(
            "label",
            vec![format!("com.docker.compose.project={project}")],
        );
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list =
            self.docker.list_containers(Some(opts)).await.map_err(|e| {
                runtime_err(format!("the Docker engine cannot list containers: {e}"))
            })?;
        Ok(list
            .into_iter()
            .map(|c| ProjectContainer {
                id: c.id.unwrap_or_default(),
                service: c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("com.docker.compose.service").cloned())
                    .unwrap_or_default(),
                running: c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
                image_id: c.image_id.unwrap_or_default(),
            })
            .collect())
    }

    /// Starts an existing container.
    pub async fn start_container(&self, id: &str) -> Result<(), BootError> {
        self.docker.start_container(id, None).await.map_err(|e| {
            runtime_err(format!(
                "the Docker engine could not start container {}: {e}",
                &id[..id.len().min(12)]
            ))
        })
    }

    async fn tag(&self, image_id: &str, name: &str) -> Result<(), BootError> {
        let (repo, tag) = split_tag(name);
        let opts = bollard::query_parameters::TagImageOptionsBuilder::new()
            .repo(repo)
            .tag(tag)
            .build();
        self.docker
            .tag_image(image_id, Some(opts))
            .await
            .map_err(|e| {
                runtime_err(format!(
                    "the engine refused to tag {image_id} as {name}: {e}"
                ))
            })
    }

    /// One `POST /images/load` of `archive`, streamed from the store's
    /// files (a bounded buffer, whatever the layers' size).
    pub async fn load(&self, archive: LoadArchive) -> Result<(), BootError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
        let writer = std::thread::spawn(move || {
            let mut sink = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(1 << 20),
            };
            let result = archive.write(&mut sink).and_then(|()| sink.flush());
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let opts = bollard::query_parameters::ImportImageOptionsBuilder::new()
            .quiet(true)
            .build();
        let mut progress = self.docker.import_image_stream(opts, body, None);
        let mut failure = None;
        while let Some(item) = progress.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail {
                        failure = Some(detail.message.unwrap_or_else(|| "unknown error".into()));
                    }
                }
                Err(e) => failure = Some(e.to_string()),
            }
        }
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        match failure {
            Some(f) => Err(runtime_err(format!(
                "the Docker engine could not load the image: {f}"
            ))),
            None => Ok(()),
        }
    }
}

/// What one `POST /images/load` carries: a `docker save`-format archive
/// with an image config, the layer file each of its diff IDs maps to, and
/// the layer files themselves — only those the engine does not hold yet:
/// the engine reads no file for a layer whose chain it already has (see
/// [`crate::handoff`]).
#[derive(Clone, Debug)]
pub struct LoadArchive {
    /// The config's file name in the archive (`<hex>.json`).
    pub config_name: String,
    /// The config's bytes.
    pub config: Member,
    /// The layer file of every diff ID of the config, in order.
    pub layer_names: Vec<String>,
    /// The layer files carried: (name in the archive, file in the store).
    pub carried: Vec<(String, PathBuf)>,
    /// The names the engine gives the image.
    pub tags: Vec<String>,
}

/// Where an archive member's bytes come from.
#[derive(Clone, Debug)]
pub enum Member {
    /// A file (a verified blob in the store).
    File(PathBuf),
    /// Bytes made by the boot agent.
    Bytes(Vec<u8>),
}

impl LoadArchive {
    /// The archive's name for layer `digest`.
    pub fn layer_name(digest: &Digest) -> String {
        format!("{}/layer.tar", digest.hex())
    }

    /// Writes the archive: the config, the carried layers (compressed
    /// layers are accepted by the engine) and `manifest.json` naming them
    /// and the tags.
    fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut tar = tar::Builder::new(out);
        match &self.config {
            Member::File(path) => append_file(&mut tar, &self.config_name, path)?,
            Member::Bytes(bytes) => append_bytes(&mut tar, &self.config_name, bytes)?,
        }
        for (name, path) in &self.carried {
            append_file(&mut tar, name, path)?;
        }
        let manifest = serde_json::json!([{
            "Config": self.config_name,
            "RepoTags": self.tags,
            "Layers": self.layer_names,
        }]);
        let bytes = serde_json::to_vec(&manifest).expect("json");
        append_bytes(&mut tar, "manifest.json", &bytes)?;
        tar.into_inner()?.flush()
    }
}

/// `repo:tag` → (`repo`, `tag`), the tag after the last `:` that follows the last `/`.
fn split_tag(name: &str) -> (&str, &str) {
    let slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    match name[slash..].rfind(':') {
        Some(i) => (&name[..slash + i], &name[slash + i + 1..]),
        None => (name, "latest"),
    }
}

/// Sends what is written to it down a channel in 1 MiB chunks.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(1 << 20),
        ));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the engine stopped reading")
        })
    }
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, name, bytes)
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    path: &Path,
) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(file.metadata()?.len());
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, name, file)
}

/// The variable the node sets, in the container mode, to the PID of the
/// CVM's init: the compose tool then runs in that process's namespaces.
pub const ENTER_PID_VAR: &str = "BERTH_CVM_ENTER_PID";

/// The PID in [`ENTER_PID_VAR`], if set.
fn enter_pid() -> Result<Option<u32>, BootError> {
    match std::env::var(ENTER_PID_VAR) {
        Err(_) => Ok(None),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|p| *p > 0)
            .map(Some)
            .ok_or_else(|| {
                runtime_err(format!(
                    "{ENTER_PID_VAR} is set to something that is not a process ID"
                ))
            }),
    }
}

/// `nsenter` into every namespace of the CVM's init `pid` (user first, so
/// the others are entered as the CVM's root), working in `dir` there
/// (entering a mount namespace moves a process to its `/`). The compose
/// folder is at the same absolute path inside (the node makes it so); the
/// environment goes through the process environment, never the command
/// line.
pub fn enter_prefix(pid: u32, dir: &Path) -> Vec<String> {
    [
        "nsenter",
        "--target",
        &pid.to_string(),
        "--user",
        "--mount",
        "--net",
        "--pid",
        "--ipc",
        "--uts",
        "--cgroup",
        &format!("--wd={}", dir.display()),
        "--",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Makes the files of the compose folder `dir` (written by this agent,
/// 0600) readable by the folder's group, the CVM's host group, whose root
/// runs the compose tool inside the CVM: owner and group of the folder,
/// 0640 (folders 0750). Nothing in it is secret from the CVM: the compose
/// file and its build files (an inline Dockerfile's `${VAR}`s are filled
/// in from the CVM's own env, and those files are removed after `up`);
/// local users cannot enter the folder, which is 0750. The
/// folder is the node's and the CVM cannot write in it, so nothing here
/// can be swapped for a link to a host file meanwhile; links are skipped
/// all the same.
fn hand_to_cvm(dir: &Path) -> Result<(), BootError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let owner = std::fs::metadata(dir)
        .map_err(|e| runtime_err(format!("cannot read {}: {e}", dir.display())))?;
    let fail = |path: &Path, e: std::io::Error| {
        runtime_err(format!("cannot hand {} to the CVM: {e}", path.display()))
    };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| fail(&d, e))?;
        for e in entries.flatten() {
            let path = e.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| fail(&path, e))?;
            if meta.file_type().is_symlink() {
                continue;
            }
            std::os::unix::fs::lchown(&path, Some(owner.uid()), Some(owner.gid()))
                .map_err(|e| fail(&path, e))?;
            let mode = if meta.is_dir() { 0o750 } else { 0o640 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| fail(&path, e))?;
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

/// The compose tool found on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ComposeTool {
    /// `docker compose` (v2).
    V2,
    /// `docker-compose` (v1).
    V1,
}

impl ComposeTool {
    /// `docker compose` (v2) if its CLI plugin is installed, else
    /// `docker-compose` (v1) if it is on `PATH`. Found by looking at files,
    /// not by running the tools: starting the Python v1 tool alone takes
    /// ~0.3 s, a tenth of a whole boot.
    pub async fn detect() -> Result<Self, BootError> {
        let on_path = |name: &str| {
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
                .unwrap_or(false)
        };
        let mut plugin_dirs: Vec<std::path::PathBuf> = Vec::new();
        if let Some(cfg) = std::env::var_os("DOCKER_CONFIG") {
            plugin_dirs.push(std::path::PathBuf::from(cfg).join("cli-plugins"));
        }
        if let Some(home) = std::env::var_os("HOME") {
            plugin_dirs.push(std::path::PathBuf::from(home).join(".docker/cli-plugins"));
        }
        for d in [
            "/usr/local/lib/docker/cli-plugins",
            "/usr/local/libexec/docker/cli-plugins",
            "/usr/lib/docker/cli-plugins",
            "/usr/libexec/docker/cli-plugins",
        ] {
            plugin_dirs.push(d.into());
        }
        if on_path("docker")
            && plugin_dirs
                .iter()
                .any(|d| d.join("docker-compose").is_file())
        {
            return Ok(ComposeTool::V2);
        }
        if on_path("docker-compose") {
            return Ok(ComposeTool::V1);
        }
        Err(runtime_err("no compose tool found: neither the `docker compose` plugin nor `docker-compose` is installed")
            .hint("install the Docker Compose plugin (v2) or docker-compose (v1)"))
    }

    /// A short name for the log.
    pub fn name(&self) -> &'static str {
        match self {
            ComposeTool::V2 => "docker compose (v2)",
            ComposeTool::V1 => "docker-compose (v1)",
        }
    }

    /// `up -d` for `project` from `file`, with `env` in the tool's
    /// environment (for `${VAR}` interpolation) and pulling disabled. The
    /// tool's output is relayed to `serial`, redacted.
    ///
    /// In the shared mode nothing is built. In the container mode the
    /// services with `build:` are built (`--build`; v1 with the engine's
    /// own builder, `COMPOSE_DOCKER_CLI_BUILD=0`, so no `docker` CLI or
    /// buildx is needed), and when [`ENTER_PID_VAR`] names the CVM's init,
    /// the tool runs inside the CVM's namespaces ([`enter_prefix`]).
    pub async fn up(
        &self,
        project: &str,
        file: &Path,
        env: &Env,
        isolation: Isolation,
        serial: &SerialLog,
    ) -> Result<(), BootError> {
        let enter = match isolation {
            Isolation::Container => enter_pid()?,
            Isolation::Shared => None,
        };
        let tool: &[&str] = match self {
            ComposeTool::V2 => &["docker", "compose"],
            ComposeTool::V1 => &["docker-compose"],
        };
        let argv: Vec<String> = match enter {
            Some(pid) => enter_prefix(pid, file.parent().unwrap_or(Path::new("/")))
                .into_iter()
                .chain(tool.iter().map(|s| (*s).to_owned()))
                .collect(),
            None => tool.iter().map(|s| (*s).to_owned()).collect(),
        };
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.arg("--project-name")
            .arg(project)
            .arg("--file")
            .arg(file)
            .args(["up", "--detach"]);
        match isolation {
            Isolation::Shared => cmd.arg("--no-build"),
            Isolation::Container => cmd.arg("--build"),
        };
        if *self == ComposeTool::V2 {
            cmd.args(["--pull", "never"]);
        }
        if let Some(dir) = file.parent() {
            cmd.current_dir(dir);
        }
        // A cleared environment plus an allowlist: the operator's variables
        // never reach the tenant's `${VAR}`s, and the tenant's variables
        // never steer the tool (LD_*, DOCKER_*, COMPOSE_*, proxies, ...).
        cmd.env_clear();
        for name in INHERITED {
            // Inside the CVM, the tool uses the CVM's own engine at its
            // standard path; the host's address of it means nothing there.
            if enter.is_some() && *name == "DOCKER_HOST" {
                continue;
            }
            if let Some(v) = std::env::var_os(name) {
                cmd.env(name, v);
            }
        }
        if let Some(dir) = file.parent() {
            cmd.env("HOME", dir);
            if enter.is_some() {
                hand_to_cvm(dir)?;
            }
        }
        if isolation == Isolation::Container && *self == ComposeTool::V1 {
            cmd.env("COMPOSE_DOCKER_CLI_BUILD", "0");
        }
        for var in env.vars() {
            if let Some(why) = contract::env_rules::reserved_reason(&var.key) {
                serial.line(&format!(
                    "warning: {} from the env is not passed to the compose tool: {why}",
                    var.key
                ));
                continue;
            }
            cmd.env(&var.key, var.value.expose());
        }
        // The tool ends with the agent (it is also in the agent's process
        // group, which the node signals on stop).
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| runtime_err(format!("cannot start {}: {e}", self.name())))?;
        let relay = |stream: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
            let serial = serial.clone();
            tokio::spawn(async move {
                let Some(stream) = stream else {
                    return Vec::new();
                };
                let mut lines = tokio::io::BufReader::new(stream).lines();
                let mut tail = Vec::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    serial.line(&format!("compose: {line}"));
                    tail.push(serial.redact(&line));
                    if tail.len() > 5 {
                        tail.remove(0);
                    }
                }
                tail
            })
        };
        let out = relay(child.stdout.take().map(|s| Box::new(s) as _));
        let err = relay(child.stderr.take().map(|s| Box::new(s) as _));
        let status = child
            .wait()
            .await
            .map_err(|e| runtime_err(format!("{} did not finish: {e}", self.name())))?;
        let _ = out.await;
        let tail = err.await.unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            let last = tail.last().cloned().unwrap_or_default();
            Err(runtime_err(format!(
                "{} up failed ({}){}",
                self.name(),
                status,
                if last.is_empty() {
                    String::new()
                } else {
                    format!(": {last}")
                }
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert_eq!(
            split_tag("127.0.0.1:5000/a/b:v1"),
            ("127.0.0.1:5000/a/b", "v1")
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/a/b"),
            ("127.0.0.1:5000/a/b", "latest")
        );
        assert_eq!(split_tag("alice/web:1"), ("alice/web", "1"));
    }

    #[test]
    fn entering_the_cvm() {
        assert_eq!(
            enter_prefix(42, Path::new("/c")).join(" "),
            "nsenter --target 42 --user --mount --net --pid --ipc --uts --cgroup --wd=/c --"
        );
    }
}
