//! A CVM's own machine as the node drives it (`--isolation container`):
//! started before its boot, its console copied to the serial log, its
//! declared ports published once it booted, powered off by stop, delete
//! and a failed boot. The machine itself is `sandbox`.

use super::serial::{SERIAL_LOG_MAX_BYTES, SerialFile};
use super::{Node, project_of, sandbox};
use contract::Isolation;
use contract::app::{APP_COMPOSE_FILE, AppCompose};

/// The longest console line kept (in characters); the rest is cut.
const CONSOLE_LINE_MAX: usize = 4096;

/// A console line as the serial log shows it: what the machine's engine
/// prints may carry a tenant's names, so control characters (a terminal's
/// escape sequences, a forged line break) are shown escaped, and a line is
/// at most [`CONSOLE_LINE_MAX`] characters.
fn console_text(line: &str) -> String {
    line.chars()
        .take(CONSOLE_LINE_MAX)
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl Node {
    /// The compose folder of the CVM `id`'s boot agent, which its machine
    /// sees at the same path.
    fn compose_dir(&self, id: &str) -> std::path::PathBuf {
        self.dir(id).join("state").join("compose")
    }

    /// The CVM's machine: the running one (after a node restart, or a
    /// boot again), or a new one. Says in the serial log what isolates it.
    pub(super) async fn ensure_machine(
        &self,
        id: &str,
        bounds: sandbox::Bounds,
    ) -> Result<sandbox::Machine, String> {
        let dir = self.dir(id);
        let project = project_of(id);
        let d = dir.clone();
        let slot = tokio::task::spawn_blocking(move || sandbox::slot_for(&d))
            .await
            .map_err(|e| format!("cannot find the CVM a slot: {e}"))??;
        let compose_dir = self.compose_dir(id);
        if let Some(m) = sandbox::running(&dir, &project).await {
            // Its shared files were written again: they are handed over again.
            sandbox::hand_over(&dir, &compose_dir, &slot)
                .map_err(|e| format!("cannot hand the CVM its files: {e}"))?;
            return Ok(m);
        }
        self.append_serial(
            id,
            &format!(
                "isolation: container (a machine of its own: user, mount, network, PID, IPC, UTS and cgroup namespaces by rootlesskit, host user {}, its own Docker engine)",
                slot.user
            ),
        )
        .await;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(256);
        let path = self.serial_log_path(id);
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if let Ok(mut f) = SerialFile::open(&path, SERIAL_LOG_MAX_BYTES).await {
                    let _ = f
                        .write_line(&format!("[console] {}", console_text(&line)))
                        .await;
                }
            }
        });
        let started = std::time::Instant::now();
        let name: String = id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        let machine = sandbox::start(
            &dir,
            &project,
            &format!("cvm-{name}"),
            &slot,
            bounds,
            &compose_dir,
            tx,
        )
        .await?;
        self.append_serial(
            id,
            &format!(
                "machine up: its engine answered {:.2} s after the start",
                started.elapsed().as_secs_f64()
            ),
        )
        .await;
        Ok(machine)
    }

    /// Powers the CVM's machine off (every process of it), in container
    /// isolation; nothing on the shared engine.
    pub(super) async fn power_off(&self, id: &str) {
        if self.cfg.isolation != Isolation::Container {
            return;
        }
        let off = sandbox::kill(&project_of(id)).await;
        sandbox::unexpose(&self.dir(id));
        if !off {
            self.append_serial(
                id,
                "some processes of the CVM's machine did not end; stop it again",
            )
            .await;
        }
    }

    /// Powers off every CVM machine this node runs (container isolation),
    /// leaving their status as it is: the next node boots them again.
    pub async fn power_off_all(&self) {
        if self.cfg.isolation != Isolation::Container {
            return;
        }
        let Ok(cvms) = self.db.live_cvms().await else {
            return;
        };
        for cvm in cvms {
            self.end_boot(&cvm.id).await;
            self.end_agent(&cvm.id).await;
            if sandbox::alive(&project_of(&cvm.id)) {
                self.power_off(&cvm.id).await;
                self.append_serial(&cvm.id, "the node stopped: the CVM's machine is off")
                    .await;
            }
        }
    }

    /// Publishes on the host the ports the CVM's compose file declares
    /// (container isolation): what was published, or which port could not be.
    pub(super) async fn publish_ports(&self, id: &str) -> Result<Vec<String>, String> {
        let text = std::fs::read_to_string(self.dir(id).join("shared").join(APP_COMPOSE_FILE))
            .map_err(|e| format!("cannot read the CVM's app-compose.json: {e}"))?;
        let app: AppCompose = serde_json::from_str(&text)
            .map_err(|_| "the CVM's app-compose.json is not valid".to_owned())?;
        let yaml = app.docker_compose_file.unwrap_or_default();
        let file = contract::policy::ComposeFile::parse_for(&yaml, Isolation::Container)
            .map_err(|e| e.message)?;
        sandbox::publish(&self.dir(id), &file.published_ports()).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn console_lines_show_control_characters_escaped_and_are_bounded() {
        assert_eq!(
            super::console_text("a\u{1b}[31mred\rBOOT OK\tx"),
            "a\\u{1b}[31mred\\rBOOT OK\tx"
        );
        assert_eq!(
            super::console_text(&"y".repeat(10_000)).len(),
            super::CONSOLE_LINE_MAX
        );
    }
}
