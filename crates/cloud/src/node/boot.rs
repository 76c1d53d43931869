//! One boot of a CVM: a one-time ticket from the KMS, the `berth guest
//! boot` agent started in its own process group (with a cleared
//! environment, the ticket on its standard input, the boot lock inherited),
//! its output copied to the serial log, and its final status, derived from
//! the agent's last line confirmed by its exit code.

use super::files::BootLock;
use super::serial::{SERIAL_LOG_MAX_BYTES, SerialFile};
use super::{Boot, Node, STOP_GRACE};
use contract::kms::{KmsEndpoint, TICKET_PATH, TicketAnswer, TicketPurpose, TicketRequest};
use contract::{BootOutcome, Category, CvmStatus};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// The niceness of boot agents (and the compose tools they run).
const BOOT_NICENESS: libc::c_int = 10;

/// Variables of the node's own environment that a boot agent inherits;
/// everything else is cleared.
const BOOT_ENV_ALLOWLIST: &[&str] = &["PATH", "LANG", "TZ"];

/// What one boot boots: the app's registered compose hash, and what bounds
/// the CVM's machine (container isolation).
pub(super) struct BootPlan {
    pub app_id: String,
    pub compose_hash: String,
    pub bounds: super::sandbox::Bounds,
}

impl Node {
    pub(super) async fn boot_task(
        self: Arc<Self>,
        id: String,
        generation: u64,
        plan: BootPlan,
        lock: BootLock,
        mut cancel: tokio::sync::watch::Receiver<bool>,
    ) {
        let BootPlan {
            app_id,
            compose_hash,
            bounds,
        } = plan;
        let _images = self.images.read().await;
        let result = tokio::select! {
            ticket = self.mint_ticket(&app_id, &compose_hash, TicketPurpose::Boot) => match ticket {
                Ok(ticket) => self.run_boot(&id, ticket, bounds, &lock, &mut cancel).await,
                Err(e) => Err(e),
            },
            _ = cancelled(&mut cancel) => Ok(None),
        };
        drop(lock);
        // In its own machine, the CVM's declared ports are published on
        // the host once it runs; one that cannot be fails the boot.
        let result = match result {
            Ok(Some(BootOutcome::Ok { .. }))
                if self.cfg.isolation == contract::Isolation::Container =>
            {
                match self.publish_ports(&id).await {
                    Ok(ports) => {
                        if !ports.is_empty() {
                            self.append_serial(
                                &id,
                                &format!("ports published on the host: {}", ports.join(", ")),
                            )
                            .await;
                        }
                        result
                    }
                    Err(e) => Err((Category::Config, e)),
                }
            }
            other => other,
        };
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
        let recorded = current(&self.boots.lock().unwrap())
            && self
                .db
                .transition(
                    &id,
                    &[CvmStatus::Starting],
                    status,
                    cat.as_deref(),
                    msg.as_deref(),
                )
                .await
                .unwrap_or(false);
        // A failed boot leaves nothing running: the containers it started
        // before it failed are stopped. A start meanwhile waits for this
        // (it ends this boot first), so it never loses its own containers.
        if recorded && status == CvmStatus::BootFailed {
            self.stop_failed_boot_containers(&id).await;
            self.power_off(&id).await;
            self.end_agent(&id).await;
        }
        let mut boots = self.boots.lock().unwrap();
        if current(&boots) {
            boots.remove(&id);
            // Its slot is free for the next CVM waiting.
            self.wake.notify_one();
        }
    }

    /// Stops the containers of a boot that failed, and says so in the
    /// serial log.
    async fn stop_failed_boot_containers(&self, id: &str) {
        match self.stop_containers(id).await {
            Ok(0) => {}
            Ok(n) => {
                self.append_serial(
                    id,
                    &format!(
                        "the boot failed: the node stopped the {n} container(s) it had started"
                    ),
                )
                .await
            }
            Err(e) => {
                self.append_serial(
                    id,
                    &format!("the boot failed, and its containers could not be stopped: {e}"),
                )
                .await
            }
        }
    }

    /// A one-time ticket for the app's registered compose hash, for a boot
    /// (the env key) or a guest agent (the app key).
    pub(super) async fn mint_ticket(
        &self,
        app_id: &str,
        compose_hash: &str,
        purpose: TicketPurpose,
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
                purpose,
            })
            .send()
            .await
            .map_err(unreachable)?;
        if !resp.status().is_success() {
            let status = resp.status();
            // The KMS's own sentence (it never holds a key or a ticket),
            // e.g. that this compose hash is not the one the app may boot.
            let detail = resp
                .json::<contract::kms::ErrorAnswer>()
                .await
                .map(|e| format!(": {}", e.detail.chars().take(300).collect::<String>()))
                .unwrap_or_default();
            return Err((
                Category::AccessDenied,
                format!("the KMS refused a ticket ({status}){detail}"),
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
        bounds: super::sandbox::Bounds,
        lock: &BootLock,
        cancel: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<BootOutcome>, (Category, String)> {
        let dir = self.dir(id);
        let runtime = |m: String| (Category::Runtime, m);
        // In container isolation, the CVM's machine runs before its boot
        // agent: the agent drives the machine's engine, and runs the compose
        // tool inside the machine (`nsenter` into its init's namespaces).
        let machine = match self.cfg.isolation {
            contract::Isolation::Container => Some(tokio::select! {
                m = self.ensure_machine(id, bounds) => m.map_err(runtime)?,
                _ = cancelled(cancel) => return Ok(None),
            }),
            contract::Isolation::Shared => None,
        };
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
            .env(
                "DOCKER_HOST",
                machine
                    .as_ref()
                    .map_or(self.cfg.docker_host.as_str(), |m| m.docker_host.as_str()),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(m) = &machine {
            cmd.env("BERTH_CVM_ENTER_PID", m.init_pid.to_string());
        }
        cmd
            // Its own process group: stop ends the agent and its compose tool together.
            .process_group(0)
            .kill_on_drop(true);
        let lock_fd = lock.fd();
        // SAFETY: prctl, setpriority and fcntl are async-signal-safe. PR_SET_PDEATHSIG:
        // the agent ends with the node instead of booting on unsupervised.
        // The boot lock's descriptor stays open in the agent (and the
        // compose tool), so the lock lives exactly as long as the boot.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // Boots yield the CPU to the control plane: with many CVMs
                // booting on a small machine, the API stays responsive.
                libc::setpriority(libc::PRIO_PROCESS, 0, BOOT_NICENESS);
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
}

/// Resolves once `cancel` holds `true` (never, if its sender is gone
/// without saying so).
pub(super) async fn cancelled(cancel: &mut tokio::sync::watch::Receiver<bool>) {
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
pub(super) struct ProcessGroup(pub(super) Option<i32>);

impl ProcessGroup {
    pub(super) fn signal(&self, signal: i32) {
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
    pub(super) async fn leader_exited(&self) {
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
