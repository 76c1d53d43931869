//! [`Haproxy`]: Debian's HAProxy as an HTTP load balancer in front of
//! servers on loopback, for tests of several API replicas.
//!
//! Round-robin over the servers, each health-checked every 500 ms with an
//! HTTP `GET` (down after 2 failed checks, up after 2 good ones); a request
//! whose connection is refused is sent to another server (`option
//! redispatch`, 3 retries), a request already sent to a server that dies
//! fails with the balancer's 502, as it would in production. The config
//! lives in a temporary folder; the process runs in the foreground
//! (`haproxy -f CFG -db`) and is killed on drop.

use crate::util::{ManagedChild, Startup, read_lossy, tool, wait_ready};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A running HAProxy, killed on drop.
pub struct Haproxy {
    _child: ManagedChild,
    addr: SocketAddr,
    log_path: PathBuf,
    _workdir: tempfile::TempDir,
}

impl Haproxy {
    /// HAProxy on a free port of 127.0.0.1, balancing over `servers`
    /// (`HOST:PORT` each), health-checked with `GET health_path` (any 2xx
    /// or 3xx answer is healthy).
    pub fn start(servers: &[String], health_path: &str) -> Haproxy {
        Self::start_on(crate::free_port(), servers, health_path)
    }

    /// [`Haproxy::start`] on `port` (from [`crate::free_port`]: the servers
    /// may need the balancer's URL before it starts).
    pub fn start_on(port: u16, servers: &[String], health_path: &str) -> Haproxy {
        assert!(!servers.is_empty(), "a balancer needs at least one server");
        let bin = tool("BERTH_TEST_HAPROXY", "haproxy");
        let workdir = crate::workdir("haproxy");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config_path = workdir.path().join("haproxy.cfg");
        std::fs::write(&config_path, config(addr, servers, health_path)).expect("haproxy config");
        let log_path = workdir.path().join("haproxy.log");
        let log = std::fs::File::create(&log_path).expect("haproxy log");
        let child = Command::new(&bin)
            .arg("-f")
            .arg(&config_path)
            .arg("-db")
            .current_dir(workdir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut child = ManagedChild { child };
        match wait_ready(&mut child.child, addr, None, Duration::from_secs(15)) {
            Startup::Ready => {}
            Startup::Exited(status) => {
                panic!("haproxy exited ({status}):\n{}", read_lossy(&log_path))
            }
            Startup::TimedOut => panic!(
                "haproxy did not listen on {addr} within 15 s:\n{}",
                read_lossy(&log_path)
            ),
        }
        Haproxy {
            _child: child,
            addr,
            log_path,
            _workdir: workdir,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// What HAProxy wrote (warnings, servers going down and up).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }
}

/// The configuration: one HTTP frontend on `addr`, one round-robin backend.
fn config(addr: SocketAddr, servers: &[String], health_path: &str) -> String {
    let mut cfg = format!(
        "global\n\
         \x20   maxconn 2048\n\
         defaults\n\
         \x20   mode http\n\
         \x20   log stderr format short local0 info\n\
         \x20   option httplog\n\
         \x20   timeout connect 2s\n\
         \x20   timeout client 300s\n\
         \x20   timeout server 300s\n\
         \x20   retries 3\n\
         \x20   option redispatch\n\
         frontend berth\n\
         \x20   bind {addr}\n\
         \x20   default_backend replicas\n\
         backend replicas\n\
         \x20   balance roundrobin\n\
         \x20   option httpchk GET {health_path}\n\
         \x20   default-server inter 500ms fall 2 rise 2\n"
    );
    for (i, s) in servers.iter().enumerate() {
        cfg.push_str(&format!("    server s{i} {s} check\n"));
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_every_server_with_a_health_check() {
        let cfg = config(
            "127.0.0.1:9000".parse().unwrap(),
            &["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            "/",
        );
        assert!(cfg.contains("bind 127.0.0.1:9000"), "{cfg}");
        assert!(cfg.contains("server s0 127.0.0.1:1 check"), "{cfg}");
        assert!(cfg.contains("server s1 127.0.0.1:2 check"), "{cfg}");
        assert!(cfg.contains("balance roundrobin"), "{cfg}");
    }
}
