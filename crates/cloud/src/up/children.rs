//! The KMS and the node as child processes of the local cloud: started with
//! a cleared environment, handed their secrets on standard input, watched,
//! restarted with backoff, and stopped; both die with their parent.

use super::node_process::NodeReadyReader;
use super::{Exit, Part, UpError, UpEvent, UpEvents};
use contract::announce::{KmsReady, KmsReadyReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdout, Command};

/// The most restarts of one part within [`RESTART_WINDOW`] before the local
/// cloud gives up and stops.
pub const MAX_RESTARTS: usize = 5;
/// The window restarts are counted over.
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);

/// Makes a child die with this process (SIGTERM when its parent is gone),
/// with a cleared environment but for `PATH` and the locale.
fn child_command(exe: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.env_clear();
    for name in ["PATH", "LANG", "TZ"] {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    set_parent_death_signal(cmd.as_std_mut());
    cmd.kill_on_drop(true);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    cmd
}

/// Makes the child get SIGTERM when this process dies (also by `kill -9`),
/// and not start at all when this process died before the setting took
/// effect (then it has another parent already).
pub(crate) fn set_parent_death_signal(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid, prctl and getppid are async-signal-safe.
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 || libc::getppid() != parent
            {
                return Err(std::io::Error::other("berth up is gone"));
            }
            Ok(())
        });
    }
}

/// Writes `line` (a secret: it is not kept) to the child's standard input.
async fn hand_over(child: &mut Child, line: &[u8], what: &str) -> Result<(), UpError> {
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(line)
        .await
        .map_err(UpError::io(format!("cannot hand the {what}")))
}

/// Starts the KMS (`berth kms serve`, socket `STATE/kms/kms.sock`) and
/// waits for its announcement.
pub(crate) async fn start_kms(
    exe: &Path,
    state: &Path,
    node_secret: &str,
    events: &UpEvents,
) -> Result<(Child, KmsReady), UpError> {
    let mut kms = child_command(exe)
        .args(["kms", "serve", "--node-secret-stdin", "--root-key"])
        .arg(state.join("kms/root.key"))
        .arg("--socket")
        .arg(state.join("kms/kms.sock"))
        .spawn()
        .map_err(UpError::io("cannot start the KMS"))?;
    let mut line = zeroize::Zeroizing::new(node_secret.as_bytes().to_vec());
    line.push(b'\n');
    hand_over(&mut kms, &line, "KMS its node secret").await?;
    let mut lines = tokio::io::BufReader::new(kms.stdout.take().expect("piped")).lines();
    let mut reader = KmsReadyReader::default();
    let mut ready = None;
    while let Ok(Some(l)) = lines.next_line().await {
        if let Some(r) = reader.line(&l) {
            ready = Some(r);
            break;
        }
    }
    let Some(ready) = ready else {
        let _ = kms.kill().await;
        return Err(UpError::DidNotStart(Part::Kms));
    };
    forward_lines(Part::Kms, lines, events);
    Ok((kms, ready))
}

/// Starts the node (`berth node serve`, socket `STATE/node/node.sock`) with
/// its settings (one JSON line on its standard input): (its process, how
/// many CVMs it booted again).
pub(crate) async fn start_node(
    exe: &Path,
    state: &Path,
    settings: &[u8],
    events: &UpEvents,
) -> Result<(Child, usize), UpError> {
    let mut node = child_command(exe)
        .args(["node", "serve", "--state"])
        .arg(state)
        .arg("--socket")
        .arg(state.join("node/node.sock"))
        .spawn()
        .map_err(UpError::io("cannot start the node"))?;
    hand_over(&mut node, settings, "node its settings").await?;
    let mut lines = tokio::io::BufReader::new(node.stdout.take().expect("piped")).lines();
    let mut reader = NodeReadyReader::default();
    let mut resumed = None;
    while let Ok(Some(l)) = lines.next_line().await {
        if let Some(r) = reader.line(&l) {
            resumed = Some(r.resumed);
            break;
        }
    }
    let Some(resumed) = resumed else {
        let _ = node.kill().await;
        return Err(UpError::DidNotStart(Part::Node));
    };
    forward_lines(Part::Node, lines, events);
    Ok((node, resumed))
}

/// Passes a child's later standard output on (so it never fills its pipe).
fn forward_lines(
    part: Part,
    mut lines: tokio::io::Lines<tokio::io::BufReader<ChildStdout>>,
    events: &UpEvents,
) {
    let events = events.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            events(UpEvent::Output { part, line });
        }
    });
}

/// A supervised child.
pub(crate) struct Supervised {
    pub part: Part,
    pub child: Child,
    pub pid: u32,
    /// When it died lately (restarts are counted over [`RESTART_WINDOW`]).
    deaths: Vec<Instant>,
}

impl Supervised {
    pub fn new(part: Part, child: Child) -> Self {
        let pid = child.id().unwrap_or(0);
        Self {
            part,
            child,
            pid,
            deaths: Vec::new(),
        }
    }
}

/// What a restart needs (the node secret and the node's settings stay in
/// this process's memory, as they were handed out at the start).
pub(crate) struct Respawn {
    pub exe: PathBuf,
    pub state: PathBuf,
    pub node_secret: zeroize::Zeroizing<String>,
    pub node_settings: zeroize::Zeroizing<Vec<u8>>,
    pub kms_public_key: String,
    pub events: UpEvents,
}

impl Exit {
    fn of(status: std::io::Result<std::process::ExitStatus>) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(c), _) => Exit::Code(c),
                (_, Some(sig)) => Exit::Signal(sig),
                _ => Exit::Ended,
            },
            Err(e) => Exit::NotWaitable(e.to_string()),
        }
    }
}

/// Starts `part` again after a backoff (1, 2, 4, 8, 16 s), or fails when it
/// died more than [`MAX_RESTARTS`] times within [`RESTART_WINDOW`].
async fn restart(part: &mut Supervised, how: &Respawn) -> Result<(), UpError> {
    let events = &how.events;
    loop {
        part.deaths.retain(|t| t.elapsed() < RESTART_WINDOW);
        part.deaths.push(Instant::now());
        let n = part.deaths.len();
        if n > MAX_RESTARTS {
            return Err(UpError::KeepsDying {
                part: part.part,
                deaths: n,
            });
        }
        let delay = Duration::from_secs(1 << (n - 1));
        events(UpEvent::Restarting {
            part: part.part,
            delay,
            restart: n,
            max: MAX_RESTARTS,
        });
        tokio::time::sleep(delay).await;
        let started = match part.part {
            Part::Kms => start_kms(&how.exe, &how.state, &how.node_secret, events)
                .await
                .map(|(child, ready)| {
                    if ready.public_key != how.kms_public_key {
                        events(UpEvent::KmsKeyChanged {
                            public_key: ready.public_key,
                        });
                    }
                    child
                }),
            Part::Node => start_node(&how.exe, &how.state, &how.node_settings, events)
                .await
                .map(|(child, _)| child),
        };
        match started {
            Ok(child) => {
                *part = Supervised {
                    deaths: std::mem::take(&mut part.deaths),
                    ..Supervised::new(part.part, child)
                };
                events(UpEvent::Back {
                    part: part.part,
                    pid: part.pid,
                });
                return Ok(());
            }
            Err(e) => events(UpEvent::RestartFailed {
                part: part.part,
                reason: e.to_string(),
            }),
        }
    }
}

/// Watches the KMS and the node until `stop`: a part that dies is restarted
/// (meanwhile the API answers 503 for what needs it); one that keeps dying
/// ends the local cloud (through `fatal`), with the reason.
pub(crate) async fn supervise(
    mut kms: Supervised,
    mut node: Supervised,
    how: Respawn,
    mut stop: tokio::sync::watch::Receiver<bool>,
    fatal: Arc<tokio::sync::Notify>,
) -> (Supervised, Supervised, Option<UpError>) {
    loop {
        let (is_kms, status) = tokio::select! {
            s = kms.child.wait() => (true, s),
            s = node.child.wait() => (false, s),
            _ = stop.changed() => return (kms, node, None),
        };
        let part = if is_kms { &mut kms } else { &mut node };
        (how.events)(UpEvent::Died {
            part: part.part,
            pid: part.pid,
            exit: Exit::of(status),
        });
        let outcome = tokio::select! {
            r = restart(part, &how) => Some(r),
            _ = stop.changed() => None,
        };
        match outcome {
            None => return (kms, node, None),
            Some(Ok(())) => {}
            Some(Err(e)) => {
                if let UpError::KeepsDying { part, deaths } = &e {
                    (how.events)(UpEvent::GaveUp {
                        part: *part,
                        deaths: *deaths,
                    });
                }
                fatal.notify_one();
                return (kms, node, Some(e));
            }
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`.
pub(crate) async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        // SAFETY: sending SIGTERM to our own child.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}
