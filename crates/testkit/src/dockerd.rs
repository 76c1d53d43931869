//! [`Dockerd`]: Debian's Docker engine (`dockerd`, package docker.io) with its
//! own socket, data root and exec root, so tests never touch a system engine.
//!
//! Started with `--iptables=false --bridge=none`, which work on these
//! machines; containers use `network_mode: none` or `host`.

use crate::util::{read_lossy, tool};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `dockerd`, stopped (with its containers) on drop.
pub struct Dockerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Dockerd {
    /// Starts a private engine and waits until it answers `/_ping`.
    pub fn start() -> Dockerd {
        let bin = tool("BERTH_TESTKIT_DOCKERD", "dockerd");
        // A short path: the socket path must fit in sun_path (108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("bdk")
            .tempdir_in("/tmp")
            .expect("dockerd dir");
        let d = dir.path();
        let log = std::fs::File::create(d.join("dockerd.log")).expect("dockerd log");
        let child = Command::new(bin)
            .arg("--host")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--shutdown-timeout=2",
                "--log-level=warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd (package docker.io; run scripts/deps.sh as root)");
        let mut me = Dockerd {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Ok(Some(status))) = me.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "dockerd exited at start ({status}); its log:\n{}",
                    read_lossy(&me.dir.path().join("dockerd.log"))
                );
            }
            if me.ping() {
                return me;
            }
            if Instant::now() > deadline {
                panic!(
                    "dockerd did not answer within 60 s; its log:\n{}",
                    read_lossy(&me.dir.path().join("dockerd.log"))
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = UnixStream::connect(self.socket()) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /_ping HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
    }

    /// The engine's socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// `unix://…`, for `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The engine's working directory (data root, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The engine's log.
    pub fn log_contents(&self) -> String {
        read_lossy(&self.dir.path().join("dockerd.log"))
    }

    /// A `docker` CLI command aimed at this engine.
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", self.host());
        c
    }

    /// Runs `docker ARGS` and returns stdout; panics on failure.
    pub fn docker_out(&self, args: &[&str]) -> String {
        let out = self.docker().args(args).output().expect("docker CLI");
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Remove containers first so the engine stops quickly and cleanly.
        if let Ok(out) = self.docker().args(["ps", "-aq"]).output() {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            if !ids.is_empty() {
                let _ = self
                    .docker()
                    .args(["rm", "-f"])
                    .args(&ids)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        // Networks too: an engine that stops leaves its bridges on the
        // host, and those left by finished tests would take every default
        // address pool of the next engines.
        let _ = self
            .docker()
            .args(["network", "prune", "-f"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            // SIGTERM, then SIGKILL if it does not stop in time.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
