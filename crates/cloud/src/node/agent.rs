//! One guest agent per running CVM: the node binds the CVM's agent sockets
//! (`<cvm>/agent/dstack.sock`, `tappd.sock`) and keeps them for as long as
//! the CVM runs, and a watcher task starts `berth guest agent` on them,
//! restarting it with backoff whenever it ends.
//!
//! Why the node holds the sockets: a container's bind mount of a socket
//! file holds its inode. An agent that bound its own socket would leave
//! every container with a dead socket after a restart; listening
//! descriptors handed down to each agent it starts keep the same socket
//! (connections made meanwhile wait in its backlog).
//!
//! Each agent, like a boot agent, runs in its own process group with a
//! cleared environment, dies with the node (`PR_SET_PDEATHSIG`), writes its
//! lines to the serial log, and gets its own one-time ticket (purpose
//! `agent`) on its standard input: it redeems it at the KMS for the app key
//! itself, so the node never holds a key. The sockets are 0666 inside the
//! CVM's 0700 folder: a container's user (root or not) reaches the socket
//! through its mount, no other host user through the folder.

use super::boot::{ProcessGroup, cancelled};
use super::serial::{SERIAL_LOG_MAX_BYTES, SerialFile};
use super::{Node, STOP_GRACE};
use contract::kms::TicketPurpose;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

pub use super::layout::{AGENT_DIR, AGENT_SOCKETS};

/// The agent's private folder for its own socket, in [`AGENT_DIR`].
const INNER_DIR: &str = "inner";

/// Variables of the node's environment an agent inherits.
const AGENT_ENV_ALLOWLIST: &[&str] = &["PATH", "LANG", "TZ"];

/// The first wait before an ended agent is started again; it doubles up
/// to [`MAX_BACKOFF`] and starts over after an agent ran for a minute.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The lock a node holds on a CVM's agent folder while it runs the CVM's
/// agent: a second node process on the same state leaves it alone.
const AGENT_LOCK_FILE: &str = ".agent.lock";

/// A CVM's agent watcher on this node.
pub(super) struct AgentRun {
    cancel: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

/// Binds `name` in the folder `dir` (through `/proc/self/fd`, so a long
/// state path does not hit `sun_path`'s 108 bytes), replacing a stale
/// socket or an empty folder an engine made in its place.
fn bind_in(dir: &std::fs::File, dir_path: &Path, name: &str) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let path = dir_path.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&path)?,
        Ok(m) if m.is_dir() => std::fs::remove_dir(&path)?,
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
        Err(_) => {}
    }
    let short = format!("/proc/self/fd/{}/{name}", dir.as_raw_fd());
    let listener = UnixListener::bind(&short)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Binds the CVM's agent sockets in `dir` (made 0700, with its private
/// `inner` folder).
pub(super) fn bind_agent_sockets(dir: &Path) -> std::io::Result<Vec<UnixListener>> {
    super::files::private_dir(dir)?;
    super::files::private_dir(&dir.join(INNER_DIR))?;
    let folder = std::fs::File::open(dir)?;
    AGENT_SOCKETS
        .iter()
        .map(|name| bind_in(&folder, dir, name))
        .collect()
}

impl Node {
    /// The folder of the CVM's agent sockets.
    pub(super) fn agent_dir(&self, id: &str) -> PathBuf {
        self.dir(id).join(AGENT_DIR)
    }

    /// Binds the CVM's agent sockets (before its boot, so that compose
    /// finds them) and starts the watcher that runs its agent. An agent
    /// already running for it is ended first.
    pub(super) async fn start_agent(
        self: &Arc<Self>,
        id: &str,
        app_id: &str,
        compose_hash: &str,
    ) -> std::io::Result<()> {
        self.end_agent(id).await;
        let dir = self.agent_dir(id);
        super::files::private_dir(&dir)?;
        let Some(lock) = super::files::BootLock::try_take(&dir.join(AGENT_LOCK_FILE))? else {
            eprintln!(
                "node: the guest agent of CVM {id} runs under another node process; leaving it"
            );
            return Ok(());
        };
        let listeners = bind_agent_sockets(&dir)?;
        if self.cfg.isolation == contract::Isolation::Container {
            // The CVM's machine reaches them through its own mount of `dir`.
            let slot = super::sandbox::slot_for(&self.dir(id)).map_err(std::io::Error::other)?;
            super::sandbox::hand_agent_sockets(&dir, &slot)?;
        }
        let (cancel, cancel_rx) = tokio::sync::watch::channel(false);
        let me = self.clone();
        let (id2, app_id, hash) = (id.to_owned(), app_id.to_owned(), compose_hash.to_owned());
        let mut agents = self.agents.lock().unwrap();
        let handle = tokio::spawn(async move {
            me.agent_task(id2, app_id, hash, listeners, cancel_rx).await;
            drop(lock);
        });
        agents.insert(id.to_owned(), AgentRun { cancel, handle });
        Ok(())
    }

    /// Ends the CVM's agent (its process group: SIGTERM, then SIGKILL) and
    /// its watcher, and removes its sockets, when this node runs it.
    pub(super) async fn end_agent(&self, id: &str) {
        let run = self.agents.lock().unwrap().remove(id);
        if let Some(run) = run {
            let _ = run.cancel.send(true);
            let mut handle = run.handle;
            if tokio::time::timeout(STOP_GRACE + Duration::from_secs(3), &mut handle)
                .await
                .is_err()
            {
                handle.abort();
                let _ = handle.await;
            }
            for name in AGENT_SOCKETS {
                let _ = std::fs::remove_file(self.agent_dir(id).join(name));
            }
        }
    }

    /// Runs the CVM's agent until cancelled, starting it again (with
    /// backoff) whenever it ends.
    async fn agent_task(
        self: Arc<Self>,
        id: String,
        app_id: String,
        compose_hash: String,
        listeners: Vec<UnixListener>,
        mut cancel: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = Instant::now();
            let ended = match self
                .mint_ticket(&app_id, &compose_hash, TicketPurpose::Agent)
                .await
            {
                Ok(ticket) => self.run_agent(&id, ticket, &listeners, &mut cancel).await,
                Err((_, why)) => Some(why),
            };
            let Some(why) = ended else { return };
            if started.elapsed() > Duration::from_secs(60) {
                backoff = FIRST_BACKOFF;
            }
            self.append_serial(
                &id,
                &format!(
                    "the guest agent ended ({why}): starting it again in {} ms",
                    backoff.as_millis()
                ),
            )
            .await;
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = cancelled(&mut cancel) => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Runs one agent to its end: why it ended, or `None` when `cancel`
    /// ended it.
    async fn run_agent(
        &self,
        id: &str,
        ticket: zeroize::Zeroizing<String>,
        listeners: &[UnixListener],
        cancel: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<String> {
        let dir = self.dir(id);
        let mut cmd = tokio::process::Command::new(&self.cfg.berth_bin);
        cmd.args(["guest", "agent", "--kms-ticket-stdin", "--shared"])
            .arg(dir.join("shared"))
            .arg("--sockets-dir")
            .arg(self.agent_dir(id).join(INNER_DIR));
        let fds: Vec<i32> = listeners.iter().map(|l| l.as_raw_fd()).collect();
        for fd in &fds {
            cmd.arg("--listen-fd").arg(fd.to_string());
        }
        cmd.env_clear();
        for name in AGENT_ENV_ALLOWLIST {
            if let Some(v) = std::env::var_os(name) {
                cmd.env(name, v);
            }
        }
        cmd.env("HOME", dir.join("state"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl and fcntl are async-signal-safe. The agent ends
        // with the node; the listening sockets stay open across exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                for fd in &fds {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Some(format!("cannot start it: {e}")),
        };
        let mut group = ProcessGroup(child.id().and_then(|p| i32::try_from(p).ok()));
        if let Some(mut stdin) = child.stdin.take() {
            let mut line = zeroize::Zeroizing::new(ticket.as_bytes().to_vec());
            line.push(b'\n');
            let _ = stdin.write_all(&line).await;
        }
        drop(ticket);
        let log_path = dir.join("serial.log");
        let mut copies = Vec::new();
        for stream in [
            Box::new(child.stdout.take().expect("piped"))
                as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let path = log_path.clone();
            copies.push(tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stream).lines();
                let Ok(mut log) = SerialFile::open(&path, SERIAL_LOG_MAX_BYTES).await else {
                    return;
                };
                while let Ok(Some(l)) = lines.next_line().await {
                    let _ = log.write_line(&format!("[agent] {l}")).await;
                    let _ = log.flush().await;
                }
            }));
        }
        let stopped = tokio::select! {
            _ = group.leader_exited() => false,
            _ = cancelled(cancel) => true,
        };
        if stopped {
            group.signal(libc::SIGTERM);
            let _ = tokio::time::timeout(STOP_GRACE, group.leader_exited()).await;
        }
        group.signal(libc::SIGKILL);
        let status = child.wait().await;
        // Reaped: its pid may be reused, so the group is signalled no more.
        group.0 = None;
        for c in copies {
            let _ = tokio::time::timeout(Duration::from_secs(1), c).await;
        }
        if stopped {
            return None;
        }
        Some(match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("vanished: {e}"),
        })
    }
}
