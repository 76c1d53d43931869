//! The node's process lifecycle against a real engine and registry: stop
//! and delete end the boot agent's whole process group and always record
//! their status, delete leaves nothing of the CVM in the engine, a CVM's
//! vCPUs and memory bound its containers, and no two node processes boot
//! the same CVM.

mod common;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::Dockerd;

const ADMIN_KEY: &str = "berth_test_admin_key_0123456789";

fn up(state: &Path, docker_host: &str, args: &[&str]) -> Cloud {
    Cloud::start(state, docker_host, Some(ADMIN_KEY), args)
}

impl Cloud {
    /// `METHOD /api/v1{path}` with the admin key, in the current shape:
    /// (status, JSON body).
    fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.json_as(ADMIN_KEY, method, path, body)
    }

    /// Provisions and commits `name` (no env: public images), returning
    /// the CVM's id without waiting for its boot.
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
}

/// `(pid, pgid, args)` of every process whose arguments contain `needle`.
fn processes_with(needle: &str) -> Vec<(i32, i32, String)> {
    let out = Command::new("ps")
        .args(["-eo", "pid=,pgid=,args="])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle) && !l.contains("ps -eo"))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let pid = it.next()?.parse().ok()?;
            let pgid = it.next()?.parse().ok()?;
            Some((pid, pgid, it.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

fn project_of(id: &str) -> String {
    format!(
        "berth-{}",
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

/// Docker's default address pools hold about 30 networks: without the
/// cleanup, the 31st deploy of an app with a compose network fails.
#[test]
fn deploy_delete_cycles_leave_nothing_in_the_engine() {
    let engine = Dockerd::start();
    let (_reg, host, endpoint) = busybox_registry(None, "acme/tiny");
    let dir = tempdir("node-cycles");
    let cloud = up(&dir.join("state"), &engine.host(), &[&endpoint]);
    let builtin_networks = lines(&engine, &["network", "ls", "-q"]).len();
    // A compose network (the default one) and a named volume.
    let compose = format!(
        "services:\n  app:\n    image: {host}/acme/tiny:1\n    command: [\"sleep\", \"600\"]\n    volumes: [\"data:/data\"]\nvolumes:\n  data: {{}}\n"
    );
    let started = Instant::now();
    for i in 0..35 {
        let id = cloud.deploy(&format!("cycle-{i}"), &compose);
        let v = cloud.wait_booted(&id);
        assert_eq!(v["status"], "running", "cycle {i}: {v}");
        if i == 0 {
            let project = project_of(&id);
            let label = format!("label=com.docker.compose.project={project}");
            assert_eq!(
                lines(&engine, &["network", "ls", "-q", "--filter", &label]).len(),
                1
            );
            assert_eq!(
                lines(&engine, &["volume", "ls", "-q", "--filter", &label]).len(),
                1
            );
        }
        let (code, body) = cloud.admin("DELETE", &format!("/cvms/{id}"), None);
        assert!(code == 204 || code == 200, "delete {i}: {code} {body}");
        assert_eq!(cloud.admin("GET", &format!("/cvms/{id}"), None).0, 404);
    }
    let elapsed = started.elapsed();
    eprintln!("35 deploy/delete cycles in {:.1} s", elapsed.as_secs_f64());
    assert!(lines(&engine, &["ps", "-aq"]).is_empty());
    assert_eq!(
        lines(&engine, &["network", "ls", "-q"]).len(),
        builtin_networks,
        "{}",
        engine.docker_out(&["network", "ls"])
    );
    assert!(lines(&engine, &["volume", "ls", "-q"]).is_empty());
    // The image went with the last CVM that ran it...
    eventually(30, "the image to be removed", || {
        lines(&engine, &["images", "-q"]).is_empty()
    });
    // ...but stays while another CVM runs it.
    let a = cloud.deploy("keeper", &compose);
    let b = cloud.deploy("goner", &compose);
    assert_eq!(cloud.wait_booted(&a)["status"], "running");
    assert_eq!(cloud.wait_booted(&b)["status"], "running");
    assert_eq!(cloud.admin("DELETE", &format!("/cvms/{b}"), None).0, 204);
    // The image cleanup runs in the background and says nothing when it
    // keeps an image: the image must be there throughout.
    holds(2, "the image of the CVM still running", || {
        lines(&engine, &["images", "-q"]).len() == 1
    });
    let (code, v) = cloud.admin("POST", &format!("/cvms/{a}/restart"), None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(cloud.wait_booted(&a)["status"], "running");
    let _ = cloud.stop();
}

/// A CVM's vCPUs and memory bound each of its containers; a tenant's
/// smaller limit is kept, a larger one lowered.
#[test]
fn vcpu_and_memory_bound_every_container() {
    let engine = Dockerd::start();
    let (_reg, host, endpoint) = busybox_registry(None, "acme/tiny");
    let dir = tempdir("node-limits");
    let cloud = up(&dir.join("state"), &engine.host(), &[&endpoint]);
    let compose = format!(
        "services:\n  plain:\n    image: {host}/acme/tiny:1\n    network_mode: none\n    command: [\"sleep\", \"600\"]\n  greedy:\n    image: {host}/acme/tiny:1\n    network_mode: none\n    command: [\"sleep\", \"600\"]\n    cpus: 64\n    mem_limit: 100g\n  modest:\n    image: {host}/acme/tiny:1\n    network_mode: none\n    command: [\"sleep\", \"600\"]\n    mem_limit: 64m\n"
    );
    let id = cloud.deploy("limited", &compose);
    let v = cloud.wait_booted(&id);
    assert_eq!(v["status"], "running", "{v}");
    let vcpu = v["resource"]["vcpu"]
        .as_i64()
        .or(v["vcpu"].as_i64())
        .expect("vcpu");
    let memory_mb = v["resource"]["memory_in_gb"]
        .as_f64()
        .map(|g| (g * 1024.0).round() as i64)
        .or(v["memory"].as_i64())
        .expect("memory");
    assert!(vcpu > 0 && memory_mb > 64, "{v}");
    let label = format!("label=com.docker.compose.project={}", project_of(&id));
    let containers = lines(&engine, &["ps", "-q", "--filter", &label]);
    assert_eq!(containers.len(), 3);
    for c in containers {
        let out = engine.docker_out(&[
            "inspect",
            "--format",
            "{{index .Config.Labels \"com.docker.compose.service\"}} {{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}",
            &c,
        ]);
        let f: Vec<&str> = out.split_whitespace().collect();
        let (service, nano, mem): (&str, i64, i64) =
            (f[0], f[1].parse().unwrap(), f[2].parse().unwrap());
        assert_eq!(nano, vcpu * 1_000_000_000, "{service}: {out}");
        let want = if service == "modest" { 64 } else { memory_mb };
        assert_eq!(mem, want << 20, "{service}: {out}");
    }
    let _ = cloud.stop();
}

/// The second audit's finding 7: `mem_limit: 0` was no limit, no
/// container had a pids limit, and `scale: 12` gave twelve full-size
/// containers. Every container of a CVM now sits in the CVM's cgroup,
/// which holds its vCPUs, memory and processes as a whole, and has a
/// memory and pids limit of its own.
#[test]
fn a_cvm_is_bounded_as_a_whole() {
    let engine = Dockerd::start();
    let (_reg, host, endpoint) = busybox_registry(None, "acme/tiny");
    let dir = tempdir("node-cgroup");
    let cloud = up(&dir.join("state"), &engine.host(), &[&endpoint]);
    let compose = format!(
        "services:\n  many:\n    image: {host}/acme/tiny:1\n    network_mode: none\n    command: [\"sleep\", \"600\"]\n    scale: 3\n    mem_limit: 0\n    pids_limit: -1\n"
    );
    let id = cloud.deploy("bounded", &compose);
    let v = cloud.wait_booted(&id);
    assert_eq!(v["status"], "running", "{v}");
    let memory_mb = v["resource"]["memory_in_gb"]
        .as_f64()
        .map(|g| (g * 1024.0).round() as u64)
        .or(v["memory"].as_u64())
        .expect("memory");
    let project = project_of(&id);
    let label = format!("label=com.docker.compose.project={project}");
    let containers = lines(&engine, &["ps", "-q", "--filter", &label]);
    assert_eq!(containers.len(), 3);
    for c in &containers {
        let out = engine.docker_out(&[
            "inspect",
            "--format",
            "{{.HostConfig.CgroupParent}} {{.HostConfig.Memory}} {{.HostConfig.PidsLimit}}",
            c,
        ]);
        let f: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(f[0], format!("/berth/{project}"), "{out}");
        assert_eq!(f[1].parse::<u64>().unwrap(), memory_mb << 20, "{out}");
        assert!(f[2].parse::<i64>().unwrap() > 0, "no pids limit: {out}");
    }
    // The CVM's cgroup: its memory and processes, all containers together.
    let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_owned());
    let v1 = format!("/sys/fs/cgroup/memory/berth/{project}/memory.limit_in_bytes");
    let v2 = format!("/sys/fs/cgroup/berth/{project}/memory.max");
    let limit = read(&v1).or_else(|_| read(&v2)).expect("the CVM's cgroup");
    assert_eq!(limit.parse::<u64>().unwrap(), memory_mb << 20);
    let pids = read(&format!("/sys/fs/cgroup/pids/berth/{project}/pids.max"))
        .or_else(|_| read(&format!("/sys/fs/cgroup/berth/{project}/pids.max")))
        .unwrap();
    assert_eq!(pids, "4096");
    let tasks = read(&format!("/sys/fs/cgroup/pids/berth/{project}/pids.current"))
        .or_else(|_| read(&format!("/sys/fs/cgroup/berth/{project}/pids.current")))
        .unwrap();
    assert!(tasks.parse::<u64>().unwrap() >= 3, "{tasks}");
    // Deleting the CVM removes its cgroup.
    let (code, body) = cloud.admin("DELETE", &format!("/cvms/{id}"), None);
    assert!(code == 204 || code == 200, "{code} {body}");
    for gone in [
        format!("/sys/fs/cgroup/pids/berth/{project}"),
        format!("/sys/fs/cgroup/memory/berth/{project}"),
        format!("/sys/fs/cgroup/berth/{project}"),
    ] {
        assert!(!std::path::Path::new(&gone).exists(), "{gone} stayed");
    }
    let _ = cloud.stop();
}

/// Stop in the middle of a boot ends the agent and the compose tool it
/// runs, records `stopped` for good; a second node process on the same
/// state does not boot a CVM whose boot is alive; with the engine gone,
/// stop and delete still record their status.
#[test]
fn stop_ends_the_boot_process_group_and_its_status_holds() {
    let engine = Dockerd::start();
    let (_reg, host, endpoint) = busybox_registry(None, "acme/tiny");
    let dir = tempdir("node-stop");
    let state = dir.join("state");
    let cloud = up(&state, &engine.host(), &[&endpoint]);
    // The compose tool waits for a health check that takes an hour.
    let slow = format!(
        "services:\n  db:\n    image: {host}/acme/tiny:1\n    network_mode: none\n    command: [\"sleep\", \"3600\"]\n    healthcheck:\n      test: [\"CMD\", \"sleep\", \"3600\"]\n      interval: 1s\n      timeout: 3600s\n  web:\n    image: {host}/acme/tiny:1\n    network_mode: none\n    command: [\"sleep\", \"600\"]\n    depends_on:\n      db:\n        condition: service_healthy\n"
    );
    let id = cloud.deploy("slow-app", &slow);
    let project = project_of(&id);
    eventually(60, "the compose tool to run", || {
        !processes_with(&format!("--project-name {project}")).is_empty()
    });
    let agents = processes_with(&format!("cvms/{id}/shared --state"));
    assert_eq!(agents.len(), 1, "{agents:?}");
    let (agent, group, _) = agents[0].clone();
    assert_eq!(agent, group, "the agent leads its own process group");
    let compose = processes_with(&format!("--project-name {project}"));
    assert!(compose.iter().all(|p| p.1 == group), "{compose:?}");
    assert_eq!(cloud.cvm(&id)["status"], "starting");

    // A second node process on the same state leaves the booting CVM alone.
    let sock_dir = dir.join("node2");
    std::fs::create_dir_all(&sock_dir).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let settings = serde_json::json!({
        "node_secret": "not-the-real-one",
        "kms_url": format!("unix:{}", dir.join("no-kms.sock").display()),
        "docker_host": engine.host(),
        "registry_endpoints": {},
        "ca_certs": [],
        "aws_endpoint_url_ecr": null,
        // The same database (BERTH_TEST_DATABASE=postgres), as berth up hands it.
        "database_url": database_url(&state),
    });
    let mut second = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["node", "serve", "--state"])
        .arg(&state)
        .arg("--socket")
        .arg(sock_dir.join("node.sock"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = second.stdin.take().unwrap();
        writeln!(stdin, "{settings}").unwrap();
    }
    let mut out = BufReader::new(second.stdout.take().unwrap());
    let resumed = loop {
        let mut l = String::new();
        assert!(out.read_line(&mut l).unwrap() > 0, "the second node ended");
        if l.starts_with("node resumed ") {
            break l;
        }
    };
    let _ = second.kill();
    let second_out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&second_out.stderr);
    assert_eq!(resumed.trim(), "node resumed 0", "{stderr}");
    assert!(stderr.contains("already booting"), "{stderr}");
    assert_eq!(
        processes_with(&format!("cvms/{id}/shared --state")).len(),
        1
    );

    // Stop: the whole group ends, the status is `stopped` and stays so.
    let t = Instant::now();
    let (code, v) = cloud.admin("POST", &format!("/cvms/{id}/stop"), None);
    assert_eq!(code, 200, "{v}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(processes_with(&format!("--project-name {project}")).is_empty());
    assert!(processes_with(&format!("cvms/{id}/shared --state")).is_empty());
    let label = format!("label=com.docker.compose.project={project}");
    assert!(lines(&engine, &["ps", "-q", "--filter", &label]).is_empty());
    eventually(10, "the status `stopped`", || {
        cloud.cvm(&id)["status"] == "stopped"
    });
    holds(2, "the status `stopped`", || {
        let v = cloud.cvm(&id);
        assert_eq!(v["in_progress"], false, "{v}");
        v["status"] == "stopped"
    });

    // With the engine gone, stop and delete still record their status.
    let ok = cloud.deploy(
        "fine-app",
        &format!("services:\n  app:\n    image: {host}/acme/tiny:1\n    network_mode: none\n    command: [\"sleep\", \"600\"]\n"),
    );
    assert_eq!(cloud.wait_booted(&ok)["status"], "running");
    let pid = std::fs::read_to_string(engine.dir().join("docker.pid")).unwrap();
    let _ = Command::new("kill").args(["-9", pid.trim()]).status();
    eventually(10, "the engine to be gone", || {
        !engine
            .docker()
            .arg("info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let (code, v) = cloud.admin("POST", &format!("/cvms/{ok}/stop"), None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(cloud.cvm(&ok)["status"], "stopped");
    let (code, v) = cloud.admin("DELETE", &format!("/cvms/{id}"), None);
    assert_eq!(code, 204, "{v}");
    assert_eq!(cloud.admin("GET", &format!("/cvms/{id}"), None).0, 404);
    assert!(!state.join("cvms").join(&id).exists());
    let _ = cloud.stop();
}

/// After `berth up` restarts, a CVM whose boot lock is held elsewhere is
/// not booted again; once free, it is.
#[test]
fn resume_skips_a_cvm_whose_boot_lock_is_held() {
    let engine = Dockerd::start();
    let (_reg, host, endpoint) = busybox_registry(None, "acme/tiny");
    let dir = tempdir("node-resume");
    let state = dir.join("state");
    let cloud = up(&state, &engine.host(), &[&endpoint]);
    let id = cloud.deploy(
        "resumable",
        &format!("services:\n  app:\n    image: {host}/acme/tiny:1\n    network_mode: none\n    command: [\"sleep\", \"600\"]\n"),
    );
    assert_eq!(cloud.wait_booted(&id)["status"], "running");
    let _ = cloud.stop();
    // Its containers are gone: a restart would boot it again...
    let label = format!("label=com.docker.compose.project={}", project_of(&id));
    for c in lines(&engine, &["ps", "-aq", "--filter", &label]) {
        engine.docker_out(&["rm", "-f", &c]);
    }
    // ...but another process holds its boot lock.
    let lock = state.join("cvms").join(&id).join("state/.boot.lock");
    let mut holder = Command::new("flock")
        .arg("--no-fork")
        .arg(&lock)
        .args(["sleep", "120"])
        .spawn()
        .unwrap();
    eventually(10, "flock to hold the lock", || {
        Command::new("flock")
            .args(["--nonblock", "--conflict-exit-code", "7"])
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap()
            .code()
            == Some(7)
    });
    let cloud = up(&state, &engine.host(), &[&endpoint]);
    eventually(10, "the node to leave the locked CVM alone", || {
        cloud.output().contains("already booting")
    });
    assert!(processes_with(&format!("cvms/{id}/shared --state")).is_empty());
    assert!(lines(&engine, &["ps", "-aq", "--filter", &label]).is_empty());
    let _ = cloud.stop();
    let _ = holder.kill();
    let _ = holder.wait();
    // Lock released: the next start boots it again, once.
    let cloud = up(&state, &engine.host(), &[&endpoint]);
    assert!(
        cloud.output().contains("Resumed 1 CVMs"),
        "{}",
        cloud.output()
    );
    assert_eq!(cloud.wait_booted(&id)["status"], "running");
    assert_eq!(lines(&engine, &["ps", "-q", "--filter", &label]).len(), 1);
    let _ = cloud.stop();
}
