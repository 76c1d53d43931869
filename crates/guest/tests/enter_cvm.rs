//! In the container mode the compose tool runs inside the CVM: when
//! `BERTH_CVM_ENTER_PID` names the CVM's init, `ComposeTool::up` runs it
//! through `nsenter` into that process's user, mount, network, PID, IPC,
//! UTS and cgroup namespaces; the env reaches it through the process
//! environment, never the command line. Without the variable (or in the
//! shared mode) it runs where the agent runs.
//!
//! The "CVM" here is `unshare` with new namespaces of each kind around a
//! `sleep`; the "compose tool" a script named `docker-compose` first on
//! `PATH` that writes down where it ran and what it got.

use contract::Isolation;
use envseal::{Env, EnvVar, Origin};
use guest::SerialLog;
use guest::runtime::{ComposeTool, ENTER_PID_VAR};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const VALUE: &str = "value-only-in-the-environment-3f9";

/// A process in namespaces of its own, killed on drop.
struct Cvm {
    unshare: Child,
    init: u32,
}

impl Cvm {
    fn start() -> Cvm {
        let mut unshare = Command::new("unshare")
            .args([
                "--user",
                "--map-root-user",
                "--mount",
                "--net",
                "--pid",
                "--ipc",
                "--uts",
                "--cgroup",
                "--fork",
                "--kill-child",
                "sleep",
                "600",
            ])
            .spawn()
            .expect("unshare (util-linux)");
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&children).unwrap_or_default();
            if let Some(pid) = text.split_whitespace().next() {
                return Cvm {
                    init: pid.parse().unwrap(),
                    unshare,
                };
            }
            if let Ok(Some(status)) = unshare.try_wait() {
                panic!("unshare exited at start: {status} (no user namespaces here?)");
            }
            assert!(Instant::now() < deadline, "unshare made no child");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cvm {
    fn drop(&mut self) {
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

fn net_ns(pid: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .display()
        .to_string()
}

/// Runs `up` in a fresh runtime and returns what the fake tool wrote.
fn up(compose_dir: &Path, isolation: Isolation) -> String {
    let out = compose_dir.join("ran.txt");
    let _ = std::fs::remove_file(&out);
    let env = Env::from_vars(vec![EnvVar::new("GREETING", VALUE, Origin::Argument)]).unwrap();
    let serial = SerialLog::new(Box::new(std::io::sink()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let file = compose_dir.join("docker-compose.yml");
    rt.block_on(ComposeTool::V1.up("p", &file, &env, isolation, &serial))
        .unwrap();
    std::fs::read_to_string(&out).unwrap()
}

#[test]
fn the_compose_tool_runs_in_the_cvms_namespaces_when_the_node_says_which() {
    let dir = testkit::tempdir("enter-cvm");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let tool = bin.join("docker-compose");
    std::fs::write(
        &tool,
        "#!/bin/sh\n{ echo \"net=$(readlink /proc/self/ns/net)\"; echo \"uid=$(id -u)\"; echo \"greeting=$GREETING\"; echo \"cli_build=$COMPOSE_DOCKER_CLI_BUILD\"; echo \"args=$*\"; echo \"pwd=$(pwd)\"; } > ran.txt\n",
    )
    .unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let compose_dir = dir.join("compose");
    std::fs::create_dir_all(&compose_dir).unwrap();
    std::fs::write(compose_dir.join("docker-compose.yml"), "services: {}\n").unwrap();
    let cvm = Cvm::start();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    // SAFETY: this binary's only test; no runtime runs while the
    // environment changes (each `up` makes and drops its own).
    unsafe {
        std::env::set_var("PATH", &path);
        std::env::set_var(ENTER_PID_VAR, cvm.init.to_string());
    }

    let inside = up(&compose_dir, Isolation::Container);
    assert!(
        inside.contains(&format!("net={}", net_ns(&cvm.init.to_string()))),
        "{inside}"
    );
    assert_ne!(net_ns(&cvm.init.to_string()), net_ns("self"));
    assert!(inside.contains("uid=0"), "{inside}");
    assert!(inside.contains(&format!("greeting={VALUE}")), "{inside}");
    assert!(inside.contains("cli_build=0"), "{inside}");
    assert!(inside.contains("up --detach --build"), "{inside}");
    assert!(
        !inside.contains(&format!("args={VALUE}"))
            && !inside
                .lines()
                .any(|l| l.starts_with("args=") && l.contains(VALUE))
    );
    assert!(
        inside.contains(&format!("pwd={}", compose_dir.display())),
        "{inside}"
    );

    // The shared mode never enters, and never builds.
    let shared = up(&compose_dir, Isolation::Shared);
    assert!(
        shared.contains(&format!("net={}", net_ns("self"))),
        "{shared}"
    );
    assert!(shared.contains("up --detach --no-build"), "{shared}");

    // Without the variable, the container mode runs the tool directly.
    // SAFETY: as above.
    unsafe { std::env::remove_var(ENTER_PID_VAR) };
    let direct = up(&compose_dir, Isolation::Container);
    assert!(
        direct.contains(&format!("net={}", net_ns("self"))),
        "{direct}"
    );
    assert!(direct.contains("up --detach --build"), "{direct}");
}
