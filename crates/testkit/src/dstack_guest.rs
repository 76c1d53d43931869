//! [`DstackGuest`]: a folder laid out as a dstack guest, and a runner that
//! does what dstack's `app-compose.service` does, written from dstack's
//! documented boot contract (`os/common/rootfs/app-compose.sh` and
//! `app-compose.service`, `docs/encrypted-env-spec.md`):
//!
//! - `ROOT/dstack` is the guest's tmpfs: wiped at every [`DstackGuest::reboot`]
//!   but for `ROOT/dstack/persistent`, the data disk, which is kept;
//! - `ROOT/dstack/.host-shared/` holds what the host shares at boot:
//!   `app-compose.json` (with the `pre_launch_script`), `.sys-config.json`,
//!   and the decrypted env as dstack-util writes it, `.decrypted-env`
//!   (shell lines) and `.decrypted-env.json` (an object); the manifest is
//!   also linked as `ROOT/dstack/app-compose.json`;
//! - a `dstack-util` stub on `PATH` records every `notify-host -e EVENT -d
//!   TEXT`, and can be made to fail or hang ([`NotifyMode`]);
//! - the runner ([`DstackGuest::boot`]): with the decrypted env as its
//!   environment (systemd's `EnvironmentFile=`), in `ROOT/dstack`, it
//!   *sources* the pre-launch script (with `set -euo pipefail` as dstack's
//!   current `app-compose.sh`, or without as v0.5.x), writes
//!   `docker-compose.yaml` from the manifest if it is not there, runs
//!   `docker compose up --remove-orphans -d --build` (or `docker-compose`
//!   where the plugin is missing), then prunes unused images and volumes.
//!
//! A pre-launch script is told the root with `BERTH_GUEST_ROOT` (empty in a
//! real CVM). The engine is a private [`crate::Dockerd`] (`DOCKER_HOST`); the
//! runner's environment is cleared but for `PATH`, `DOCKER_HOST` and the
//! env (no `HOME`, as under systemd).

use crate::Dockerd;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the `dstack-util` stub does after recording a notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyMode {
    /// Exit 0.
    Record,
    /// Exit 1.
    Fail,
    /// Never return (until killed).
    Hang,
}

/// How the runner sources the pre-launch script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    /// `set -euo pipefail` first (dstack's current `app-compose.sh`).
    Strict,
    /// No options (dstack v0.5.x).
    Lax,
}

/// An app as the host hands it to the guest.
#[derive(Clone, Debug, Default)]
pub struct GuestApp {
    /// The compose file.
    pub compose: String,
    /// The pre-launch script (`None`: the manifest has none).
    pub pre_launch_script: Option<String>,
    /// The decrypted env, in order.
    pub env: Vec<(String, String)>,
    /// The runner (`docker-compose` unless set).
    pub runner: Option<String>,
    /// Extra fields of `.sys-config.json`.
    pub sys_config: Option<serde_json::Value>,
}

/// One run of the runner.
#[derive(Debug)]
pub struct BootRun {
    /// Whether the runner exited 0.
    pub ok: bool,
    /// Its exit code.
    pub code: Option<i32>,
    /// What it wrote to standard output (the serial console).
    pub stdout: String,
    /// What it wrote to standard error.
    pub stderr: String,
    /// How long it took.
    pub elapsed: Duration,
}

/// A dstack guest's folders, its host-shared files and its runner.
pub struct DstackGuest {
    dir: crate::TestDir,
    root: PathBuf,
    host: PathBuf,
    bin: PathBuf,
    docker_host: String,
    quiet: bool,
}

const RUNNER: &str = r#"#!/bin/bash
# app-compose.service + app-compose.sh, as documented by dstack.
if [ "$HARNESS_STRICT" = 1 ]; then set -euo pipefail; fi
cd "$BERTH_GUEST_ROOT/dstack"
APP_COMPOSE_FILE=app-compose.json
COMPOSE_FILE=docker-compose.yaml
if [ "$(jq 'has("pre_launch_script")' "$APP_COMPOSE_FILE")" = true ]; then
    echo "Running pre-launch script"
    HARNESS_RUNNER=1 dstack-util notify-host -e "boot.progress" -d "pre-launch" || true
    # shellcheck disable=SC1090
    source <(jq -r '.pre_launch_script' "$APP_COMPOSE_FILE")
fi
if ! [ -f "$COMPOSE_FILE" ]; then
    jq -r '.docker_compose_file' "$APP_COMPOSE_FILE" >"$COMPOSE_FILE"
fi
echo "Starting containers"
HARNESS_RUNNER=1 dstack-util notify-host -e "boot.progress" -d "starting containers" || true
if docker compose version >/dev/null 2>&1; then
    up() { docker compose -f "$COMPOSE_FILE" up --remove-orphans -d --build; }
else
    up() { docker-compose -f "$COMPOSE_FILE" up --remove-orphans -d --build; }
fi
if ! up; then
    HARNESS_RUNNER=1 dstack-util notify-host -e "boot.error" -d "failed to start containers"
    exit 1
fi
echo "Pruning unused Docker images and volumes"
docker image prune -af
docker volume prune -f
HARNESS_RUNNER=1 dstack-util notify-host -e "boot.progress" -d "done" || true
echo "HARNESS: the env seen by compose: $(env | cut -d= -f1 | sort | tr '\n' ' ')"
"#;

fn stub(dir: &Path) -> String {
    format!(
        r#"#!/bin/bash
# dstack-util stub: records notify-host events.
[ "${{1:-}}" = notify-host ] || exit 2
shift
ev=; d=
while [ $# -gt 0 ]; do
    case "$1" in
    -e|--event) ev="$2"; shift 2 ;;
    -d|--payload) d="$2"; shift 2 ;;
    *) shift ;;
    esac
done
printf '%s\t%s\n' "$ev" "$d" >>'{log}'
[ -n "${{HARNESS_RUNNER:-}}" ] && exit 0
case "$(cat '{mode}' 2>/dev/null)" in
fail) exit 1 ;;
hang) exec sleep 3600 ;;
esac
exit 0
"#,
        log = dir.join("notify.log").display(),
        mode = dir.join("notify.mode").display()
    )
}

/// dstack-util's shell form of a value (`parse_env_file::escape_value`).
fn shell_value(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@%+,=".contains(c))
    {
        return v.to_owned();
    }
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '$' => out.push_str("\\$"),
            '`' => out.push_str("\\`"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl DstackGuest {
    /// A fresh guest whose containers run on `engine`.
    pub fn new(name: &str, engine: &Dockerd) -> DstackGuest {
        let dir = crate::tempdir(name);
        let root = dir.join("root");
        let host = dir.join("host-shared");
        let bin = dir.join("bin");
        for d in [&root, &host, &bin] {
            std::fs::create_dir_all(d).expect("guest folders");
        }
        std::fs::create_dir_all(root.join("dstack/persistent")).expect("persistent");
        std::fs::create_dir_all(root.join("etc")).expect("etc");
        std::fs::create_dir_all(root.join("home/root")).expect("home");
        // No password yet, as in a fresh guest image.
        std::fs::write(
            root.join("etc/shadow"),
            "root::19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
        )
        .expect("shadow");
        let stub_path = bin.join("dstack-util");
        std::fs::write(&stub_path, stub(dir.path())).expect("stub");
        std::fs::set_permissions(&stub_path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let runner = dir.join("app-compose.sh");
        std::fs::write(&runner, RUNNER).expect("runner");
        std::fs::set_permissions(&runner, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let guest = DstackGuest {
            dir,
            root,
            host,
            bin,
            docker_host: engine.host(),
            quiet: false,
        };
        guest.notify_mode(NotifyMode::Record);
        guest
    }

    /// Whether a boot's output is copied to standard error only when the
    /// boot fails (a benchmark's), rather than always (a test's).
    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    /// The guest's root folder (`/` of the CVM).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ROOT/dstack/persistent`, kept across reboots.
    pub fn persistent(&self) -> PathBuf {
        self.root.join("dstack/persistent")
    }

    /// A folder of the test outside the guest (for the binary's download).
    pub fn outside(&self) -> PathBuf {
        self.dir.join("outside")
    }

    /// Hands `app` to the guest (it takes effect at the next boot, and now).
    pub fn install(&self, app: &GuestApp) {
        let mut manifest = serde_json::json!({
            "manifest_version": 2,
            "name": "app",
            "runner": app.runner.clone().unwrap_or_else(|| "docker-compose".into()),
            "docker_compose_file": app.compose,
            "allowed_envs": app.env.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            "kms_enabled": true,
            "gateway_enabled": false,
            "public_logs": true,
            "public_sysinfo": true,
        });
        if let Some(s) = &app.pre_launch_script {
            manifest["pre_launch_script"] = serde_json::Value::String(s.clone());
        }
        std::fs::write(
            self.host.join("app-compose.json"),
            serde_json::to_vec(&manifest).expect("json"),
        )
        .expect("app-compose.json");
        let mut shell = String::new();
        let mut json = serde_json::Map::new();
        for (k, v) in &app.env {
            shell.push_str(&format!("{k}={}\n", shell_value(v)));
            json.insert(k.clone(), serde_json::Value::String(v.clone()));
        }
        std::fs::write(self.host.join(".decrypted-env"), shell).expect(".decrypted-env");
        std::fs::write(
            self.host.join(".decrypted-env.json"),
            serde_json::Value::Object(json).to_string(),
        )
        .expect(".decrypted-env.json");
        let mut sys = serde_json::json!({
            "kms_urls": [], "gateway_urls": [], "pccs_url": "", "docker_registry": "",
            "host_api_url": "vsock://2:10000/api", "vm_config": "{}",
        });
        if let Some(serde_json::Value::Object(extra)) = &app.sys_config {
            for (k, v) in extra {
                sys[k] = v.clone();
            }
        }
        std::fs::write(self.host.join(".sys-config.json"), sys.to_string()).expect("sys-config");
        self.share();
    }

    /// Copies the host-shared files into `ROOT/dstack` as dstack-prepare does.
    fn share(&self) {
        let shared = self.root.join("dstack/.host-shared");
        std::fs::create_dir_all(&shared).expect("host-shared");
        for f in std::fs::read_dir(&self.host).expect("host dir") {
            let f = f.expect("entry").path();
            std::fs::copy(&f, shared.join(f.file_name().expect("name"))).expect("share");
        }
        std::fs::copy(
            shared.join("app-compose.json"),
            self.root.join("dstack/app-compose.json"),
        )
        .expect("link app-compose.json");
    }

    /// Wipes `ROOT/dstack` but for `persistent`, and shares the host's
    /// files again: what a reboot leaves.
    pub fn reboot(&self) {
        let d = self.root.join("dstack");
        for e in std::fs::read_dir(&d).expect("dstack") {
            let p = e.expect("entry").path();
            if p.file_name().is_some_and(|n| n == "persistent") {
                continue;
            }
            if p.is_dir() {
                std::fs::remove_dir_all(&p).expect("wipe");
            } else {
                std::fs::remove_file(&p).expect("wipe");
            }
        }
        self.share();
    }

    /// What the `dstack-util` stub does from now on.
    pub fn notify_mode(&self, mode: NotifyMode) {
        let m = match mode {
            NotifyMode::Record => "record",
            NotifyMode::Fail => "fail",
            NotifyMode::Hang => "hang",
        };
        std::fs::write(self.dir.join("notify.mode"), m).expect("mode");
    }

    /// The notifications recorded so far: (event, text).
    pub fn notifications(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.dir.join("notify.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(e, d)| (e.to_owned(), d.to_owned()))
            .collect()
    }

    /// Boots: the runner, as `app-compose.service` starts it, within
    /// `limit` (killed after it).
    pub fn boot(&self, shell: Shell, limit: Duration) -> BootRun {
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let mut cmd = Command::new("bash");
        cmd.arg(self.dir.join("app-compose.sh"))
            .env_clear()
            .env("PATH", path)
            .env("DOCKER_HOST", &self.docker_host)
            .env("BERTH_GUEST_ROOT", &self.root)
            .env(
                "HARNESS_STRICT",
                if shell == Shell::Strict { "1" } else { "0" },
            );
        // systemd's EnvironmentFile=: the decrypted env is the runner's
        // environment.
        if let Ok(text) = std::fs::read(self.root.join("dstack/.host-shared/.decrypted-env.json"))
            && let Ok(serde_json::Value::Object(m)) = serde_json::from_slice(&text)
        {
            for (k, v) in m {
                if let Some(v) = v.as_str() {
                    cmd.env(k, v);
                }
            }
        }
        let out_path = self.dir.join("boot.stdout");
        let err_path = self.dir.join("boot.stderr");
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("stdout"))
            .stderr(std::fs::File::create(&err_path).expect("stderr"));
        let started = Instant::now();
        let mut child = cmd.spawn().expect("start the runner");
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let run = BootRun {
            ok: status.is_some_and(|s| s.success()),
            code: status.and_then(|s| s.code()),
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
            elapsed: started.elapsed(),
        };
        if self.quiet && run.ok {
            return run;
        }
        let _ = std::io::stderr().write_all(
            format!(
                "--- guest boot ({:?}, {} ms, exit {:?}) ---\n{}{}",
                shell,
                run.elapsed.as_millis(),
                run.code,
                run.stdout,
                run.stderr
            )
            .as_bytes(),
        );
        run
    }

    /// Every file under the guest's root whose bytes contain `needle`,
    /// except the decrypted env dstack itself writes in `.host-shared`.
    pub fn files_containing(&self, needle: &str) -> Vec<PathBuf> {
        let mut hits = Vec::new();
        let mut stack = vec![self.root.clone()];
        let skip = [".decrypted-env", ".decrypted-env.json"];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                let Ok(meta) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                if meta.is_dir() {
                    stack.push(p);
                } else if meta.is_file() {
                    let shared_env = p.parent().is_some_and(|par| par.ends_with(".host-shared"))
                        && p.file_name().is_some_and(|n| skip.iter().any(|s| n == *s));
                    if shared_env {
                        continue;
                    }
                    if let Ok(bytes) = std::fs::read(&p)
                        && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
                    {
                        hits.push(p);
                    }
                }
            }
        }
        hits
    }
}
