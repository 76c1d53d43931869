//! Reports to the host: `dstack-util notify-host -e EVENT -d TEXT` (or the
//! older `tdxctl`), as dstack's own boot does. Time-bounded, and a notify
//! that fails or hangs never fails the boot. The text is an argument, so it
//! is redacted first: no secret in any process's argv.

use crate::serial::SerialLog;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `boot.progress`: a step of the boot.
pub const PROGRESS: &str = "boot.progress";
/// `boot.error`: why the boot stops.
pub const ERROR: &str = "boot.error";

/// The host notifier.
pub struct Notifier {
    tool: Option<PathBuf>,
    timeout: Duration,
    serial: SerialLog,
    warned: Mutex<bool>,
    /// Set once the tool hung: later progress events are not sent (an
    /// error still is), so a hanging tool costs one timeout, not one each.
    hung: AtomicBool,
}

impl Notifier {
    /// Finds `dstack-util` (else `tdxctl`) on `PATH`.
    pub fn new(serial: SerialLog, timeout: Duration) -> Self {
        let tool = ["dstack-util", "tdxctl"].iter().find_map(|name| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(name))
                    .find(|f| f.is_file())
            })
        });
        Self {
            tool,
            timeout,
            serial,
            warned: Mutex::new(false),
            hung: AtomicBool::new(false),
        }
    }

    fn warn_once(&self, what: &str) {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if !*warned {
            *warned = true;
            self.serial.line(&format!(
                "warning: notify-host: {what}; the boot goes on without host notifications"
            ));
        }
    }

    /// Sends `event` with `text` (redacted), waiting at most the timeout.
    pub async fn send(&self, event: &str, text: &str) {
        let Some(tool) = &self.tool else {
            self.warn_once("neither dstack-util nor tdxctl is on PATH");
            return;
        };
        if event != ERROR && self.hung.load(Ordering::Relaxed) {
            return;
        }
        let text = self.serial.redact(text);
        let mut cmd = tokio::process::Command::new(tool);
        cmd.args(["notify-host", "-e", event, "-d", &text])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                self.warn_once(&format!("cannot run {}: {e}", tool.display()));
                return;
            }
        };
        match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => self.warn_once(&format!("{} ended with {status}", tool.display())),
            Ok(Err(e)) => self.warn_once(&format!("{}: {e}", tool.display())),
            Err(_) => {
                let _ = child.kill().await;
                self.hung.store(true, Ordering::Relaxed);
                self.warn_once(&format!(
                    "{} did not answer within {} ms",
                    tool.display(),
                    self.timeout.as_millis()
                ));
            }
        }
    }
}
