//! The node under faults, against a real `berth up` and engine: a boot
//! that fails leaves no container running, a delete interrupted by a node
//! crash is finished (never undone) when the node comes back, and a restart
//! on a full disk leaves a status that tells the truth.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::Dockerd;

const ADMIN_KEY: &str = "berth_test_admin_key_0123456789";

impl Cloud {
    fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.json_as(ADMIN_KEY, method, path, body)
    }

    /// Provisions and commits `name`, returning the CVM's id.
    fn deploy(&self, name: &str, compose: &str) -> String {
        self.deploy_public_as(ADMIN_KEY, name, compose)
    }

    fn cvm(&self, id: &str) -> Value {
        self.cvm_as(ADMIN_KEY, id)
    }

    /// Waits until the CVM's boot has ended; its view then.
    fn wait_booted(&self, id: &str) -> Value {
        self.wait_booted_as(ADMIN_KEY, id)
    }

    /// The pid of the node process (`berth node serve`, a child of `berth
    /// up`), if one runs.
    fn node_pid(&self) -> Option<u32> {
        let parent = self.pid();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    return false;
                };
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                let args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = args.split(|b| *b == 0).collect();
                ppid == Some(parent) && args.windows(2).any(|w| w[0] == b"node" && w[1] == b"serve")
            })
    }
}

fn label(id: &str) -> String {
    format!(
        "label=com.docker.compose.project=berth-{}",
        id.replace('-', "").chars().take(12).collect::<String>()
    )
}

fn lines(engine: &Dockerd, args: &[&str]) -> Vec<String> {
    engine
        .docker_out(args)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

/// The CVM's containers that are running.
fn running(engine: &Dockerd, id: &str) -> Vec<String> {
    lines(engine, &["ps", "-q", "--filter", &label(id)])
}

/// The CVM's containers, running or not.
fn all_containers(engine: &Dockerd, id: &str) -> Vec<String> {
    lines(engine, &["ps", "-aq", "--filter", &label(id)])
}

/// Whether a boot agent of the CVM runs.
fn agent_runs(id: &str) -> bool {
    let needle = format!("cvms/{id}/shared --state");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .is_ok_and(|c| c.contains(&needle))
        })
}

fn sleeper(host: &str, name: &str) -> String {
    format!(
        "  {name}:\n    image: {host}/acme/tiny:1\n    network_mode: none\n    command: [\"sleep\", \"3600\"]\n"
    )
}

/// Finding 11 (e): a boot that fails after some containers started (a
/// dependency never becomes healthy) ends `boot_failed` with nothing of
/// the CVM left running.
#[test]
fn a_failed_boot_stops_the_containers_it_started() {
    let engine = Dockerd::start();
    let (_reg, host, endpoint) = busybox_registry(None, "acme/tiny");
    let dir = tempdir("node-faults-failed");
    let cloud = Cloud::start(
        &dir.join("state"),
        &engine.host(),
        Some(ADMIN_KEY),
        &[&endpoint],
    );
    let compose = format!(
        "services:\n{}    healthcheck:\n      test: [\"CMD\", \"sh\", \"-c\", \"exit 1\"]\n      interval: 1s\n      timeout: 2s\n      retries: 1\n  web:\n    image: {host}/acme/tiny:1\n    network_mode: none\n    command: [\"sleep\", \"3600\"]\n    depends_on:\n      sick:\n        condition: service_healthy\n",
        sleeper(&host, "sick")
    );
    let id = cloud.deploy("sickly", &compose);
    let v = cloud.wait_booted(&id);
    assert_eq!(v["status"], "boot_failed", "{v}");
    assert!(
        !all_containers(&engine, &id).is_empty(),
        "the boot started a container before it failed"
    );
    eventually(30, "the failed boot's containers to stop", || {
        running(&engine, &id).is_empty()
    });
    assert_eq!(cloud.cvm(&id)["status"], "boot_failed");
    let serial = cloud.serial_log(ADMIN_KEY, &id, "no-secret-here");
    assert!(
        serial.contains("the node stopped the 1 container(s)"),
        "{serial}"
    );
    let _ = cloud.stop();
}

/// Finding 11 (c): the node dies (SIGKILL) in the middle of a delete,
/// after it removed some of the CVM's containers; `berth up` starts it
/// again, and the delete is finished: the CVM is gone, and it is not booted
/// again.
#[test]
fn a_delete_interrupted_by_a_node_crash_is_finished_not_undone() {
    const SERVICES: usize = 12;
    let engine = Dockerd::start();
    let (_reg, host, endpoint) = busybox_registry(None, "acme/tiny");
    let dir = tempdir("node-faults-delete");
    let state = dir.join("state");
    let cloud = Cloud::start(&state, &engine.host(), Some(ADMIN_KEY), &[&endpoint]);
    let services: String = (0..SERVICES)
        .map(|i| sleeper(&host, &format!("s{i}")))
        .collect();
    let id = cloud.deploy("doomed", &format!("services:\n{services}"));
    assert_eq!(cloud.wait_booted(&id)["status"], "running");
    assert_eq!(running(&engine, &id).len(), SERVICES);
    let node = cloud.node_pid().expect("the node runs");

    // DELETE in the background; once the node has removed a container,
    // it dies.
    let url = format!("{}/cvms/{id}", cloud.api);
    let key = format!("X-API-Key: {ADMIN_KEY}");
    let mut delete = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "60",
            "-X",
            "DELETE",
            "-H",
            &key,
            &url,
        ])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = all_containers(&engine, &id).len();
        if left < SERVICES {
            let _ = Command::new("kill")
                .args(["-9", &node.to_string()])
                .status();
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the delete removed nothing in 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let left = all_containers(&engine, &id).len();
    let _ = delete.wait();
    assert!(
        left > 0,
        "the node finished the delete before it was killed: nothing was interrupted"
    );
    eprintln!("node killed with {left} of {SERVICES} containers left");

    // `berth up` starts the node again; the delete ends, the CVM stays gone.
    eventually(60, "a new node process", || {
        cloud.node_pid().is_some_and(|p| p != node)
    });
    eventually(60, "the interrupted delete to be finished", || {
        cloud.admin("GET", &format!("/cvms/{id}"), None).0 == 404
    });
    eventually(30, "the CVM's containers to be gone", || {
        all_containers(&engine, &id).is_empty()
    });
    assert!(!agent_runs(&id), "the deleted CVM is booting again");
    assert!(!state.join("cvms").join(&id).exists());
    let (code, list) = cloud.admin("GET", "/cvms", None);
    assert_eq!(code, 200, "{list}");
    assert!(!list.to_string().contains(&id), "{list}");
    let _ = cloud.stop();
}

/// A tmpfs of `mb` MiB mounted on `at` for the test's life (the test runs
/// as root; without a mount the test fails, it never passes vacuously).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mb: u32) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mb}m,mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .expect("mount(8)");
        assert!(
            out.status.success(),
            "this test needs to mount a tmpfs (run it as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_owned())
    }

    /// Fills it: a file that takes every free byte.
    fn fill(&self) {
        let filler = self.0.join("filler");
        for bs in ["1M", "4k"] {
            let _ = Command::new("dd")
                .args([
                    "if=/dev/zero",
                    "oflag=append",
                    "conv=notrunc",
                    &format!("bs={bs}"),
                ])
                .arg(format!("of={}", filler.display()))
                .stderr(std::process::Stdio::null())
                .status();
        }
        let free = nix_free_bytes(&self.0);
        assert!(free < 64 << 10, "{free} bytes still free");
    }

    fn free_up(&self) {
        let _ = std::fs::remove_file(self.0.join("filler"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Free bytes of the file system holding `p` (`df`).
fn nix_free_bytes(p: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(u64::MAX)
}

/// Finding 11 (b): a restart on a full disk (the state folder is a full
/// tmpfs) cannot boot the CVM again; its status then says so (`stopped`
/// or `boot_failed`, with a sentence), never `running` with its containers
/// stopped. With space again, a restart boots it.
#[test]
fn a_restart_on_a_full_disk_tells_the_truth() {
    let engine = Dockerd::start();
    let (_reg, host, endpoint) = busybox_registry(None, "acme/tiny");
    let dir = tempdir("node-faults-full");
    let state = dir.join("state");
    let disk = Tmpfs::mount(&state, 48);
    let cloud = Cloud::start(&state, &engine.host(), Some(ADMIN_KEY), &[&endpoint]);
    let id = cloud.deploy("cramped", &format!("services:\n{}", sleeper(&host, "app")));
    assert_eq!(cloud.wait_booted(&id)["status"], "running");
    assert_eq!(running(&engine, &id).len(), 1);

    disk.fill();
    let (code, v) = cloud.admin("POST", &format!("/cvms/{id}/restart"), None);
    eprintln!("restart on a full disk: {code} {v}");
    let v = cloud.wait_booted(&id);
    eprintln!("then: {v}");
    let up = running(&engine, &id);
    if up.is_empty() {
        assert!(
            v["status"] == "stopped" || v["status"] == "boot_failed",
            "the containers are stopped, the status says {}",
            v["status"]
        );
        let said = v["boot_error"]
            .as_str()
            .or(v["boot_message"].as_str())
            .or(v["error"].as_str())
            .unwrap_or("");
        assert!(
            said.contains("space") || said.contains("disk"),
            "the status says why: {v}"
        );
    } else {
        assert_eq!(v["status"], "running", "containers run: {up:?}");
    }

    disk.free_up();
    let (code, v) = cloud.admin("POST", &format!("/cvms/{id}/restart"), None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(cloud.wait_booted(&id)["status"], "running");
    assert_eq!(running(&engine, &id).len(), 1);
    let _ = cloud.stop();
    drop(disk);
}
