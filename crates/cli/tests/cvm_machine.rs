//! CVMs that are machines of their own (`berth up --isolation container`),
//! through a real `berth up` (as root: it makes a host user and a cgroup per
//! CVM), Debian's rootlesskit, slirp4netns and dockerd, and a real registry:
//!
//! - compose files shaped like dstack's examples, refused by the shared
//!   engine's rules, deploy and run: a privileged service that binds `/`
//!   and `/var/run/docker.sock` (the launcher's and the webshell's shape),
//!   with a `container_name` that a second CVM uses at the same time, a
//!   published port;
//! - what a tenant's privileged container sees through those binds is its
//!   own machine: its `/tapp`, its engine, its processes; never the host's
//!   state folder, the KMS, another CVM's files or processes, or the host's
//!   loopback;
//! - the machine is bounded as a whole (its cgroup), its ports clash with
//!   a sentence, a restart costs no pull, and stop and delete leave no
//!   process, port or folder behind.
//!
//! Needs root (the test fails, it does not skip, without it).

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const ADMIN_KEY: &str = "berth_test_admin_key_machine_01";

/// No answer of this test may hold this (there is no secret in it).
const NO_SECRET: &str = "berth-test-no-secret-7f3a9c";

fn admin(cloud: &Cloud, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let (code, text) = cloud.request(ADMIN_KEY, None, method, path, body);
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Provisions and commits `name` with `vcpu`/`memory` when given; its CVM id.
fn deploy(cloud: &Cloud, name: &str, compose: &str, memory: Option<u64>) -> String {
    let mut body = serde_json::json!({"name": name, "compose_file": {"docker_compose_file": compose, "allowed_envs": []}});
    if let Some(m) = memory {
        body["memory"] = m.into();
    }
    let (code, p) = admin(cloud, "POST", "/cvms/provision", Some(&body));
    assert_eq!(code, 200, "provision {name}: {p}");
    let body =
        serde_json::json!({"app_id": p["app_id"], "compose_hash": p["compose_hash"], "name": name});
    let (code, c) = admin(cloud, "POST", "/cvms", Some(&body));
    assert_eq!(code, 200, "commit {name}: {c}");
    c["id"].as_str().map(str::to_owned).unwrap_or_else(|| {
        admin(cloud, "GET", &format!("/cvms/{name}"), None).1["id"]
            .as_str()
            .unwrap()
            .to_owned()
    })
}

/// Waits until the boot of `id` ended; the CVM as the API shows it.
fn settled(cloud: &Cloud, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (_, v) = admin(cloud, "GET", &format!("/cvms/{id}"), None);
        if !v["in_progress"].as_bool().unwrap_or(false) && v["status"] != "starting" {
            return v;
        }
        assert!(Instant::now() < deadline, "CVM {id} still booting: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn running(cloud: &Cloud, id: &str) -> Value {
    let v = settled(cloud, id);
    let log = cloud.serial_log(ADMIN_KEY, id, NO_SECRET);
    assert_eq!(v["status"], "running", "{v}\n{log}");
    v
}

/// `docker ARGS` against the engine of CVM `id`'s machine: (ok, output).
fn cvm_docker(state: &Path, id: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .env(
            "DOCKER_HOST",
            format!(
                "unix://{}",
                state
                    .join("cvms")
                    .join(id)
                    .join("engine/docker.sock")
                    .display()
            ),
        )
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `sh -c SCRIPT` in the container `name` of CVM `id`: its output.
fn exec(state: &Path, id: &str, name: &str, script: &str) -> String {
    cvm_docker(state, id, &["exec", name, "sh", "-c", script]).1
}

fn project_of(id: &str) -> String {
    format!(
        "berth-{}",
        id.replace('-', "").chars().take(12).collect::<String>()
    )
}

/// The pids in the CVM's cgroup (its memory hierarchy, or v2).
fn machine_pids(id: &str) -> Vec<i32> {
    let project = project_of(id);
    let candidates = [
        PathBuf::from(format!(
            "/sys/fs/cgroup/memory/berth/{project}/cgroup.procs"
        )),
        PathBuf::from(format!("/sys/fs/cgroup/berth/{project}/cgroup.procs")),
    ];
    candidates
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Kills what is left of the machines of `ids` when the test ends, passed
/// or failed (a CVM's machine outlives a `berth up` killed by a panic).
struct Leftovers(Vec<String>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for id in &self.0 {
            let project = project_of(id);
            for _ in 0..20 {
                let pids = machine_pids(id);
                if pids.is_empty() {
                    break;
                }
                for p in pids {
                    // SAFETY: kill has no memory preconditions.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            for e in std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::remove_dir(e.path().join("berth").join(&project));
            }
        }
    }
}

/// `curl --unix-socket SOCKET` as the unprivileged user `nobody`: whether
/// it got an HTTP answer.
fn nobody_reaches(socket: &Path) -> bool {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-s",
            "-m",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(socket)
        .arg("http://localhost/_ping")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() != "000"
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// A dstack-shaped service: privileged, `/` and the engine's socket bound,
/// a fixed container name, an HTTP server on a published port.
fn launcher(host: &str, port: u16) -> String {
    format!(
        r#"services:
  app:
    image: {host}/acme/tiny:1
    container_name: app
    privileged: true
    command: ["sh", "-c", "busybox httpd -p 8080 -h /tmp; sleep 600"]
    volumes:
      - /:/host
      - /var/run/docker.sock:/var/run/docker.sock
    ports:
      - "127.0.0.1:{port}:8080"
"#
    )
}

#[test]
fn dstack_shaped_apps_run_in_machines_of_their_own_and_reach_nothing_else() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root: `berth up --isolation container` makes users and cgroups"
    );
    let (_reg, host, endpoint) = busybox_registry(None, "acme/tiny");
    let dir = tempdir("cm");
    let state = dir.join("s");
    let cloud = Cloud::start(
        &state,
        "unix:///nonexistent",
        Some(ADMIN_KEY),
        &[&endpoint, "--isolation", "container"],
    );

    // The shared engine's rules would refuse every line of this file.
    let (pa, pb) = (free_port(), free_port());
    let a = deploy(&cloud, "machine-a", &launcher(&host, pa), Some(256));
    let b = deploy(&cloud, "machine-b", &launcher(&host, pb), None);
    let mut leftovers = Leftovers(vec![a.clone(), b.clone()]);
    let va = running(&cloud, &a);
    running(&cloud, &b);
    let log_a = cloud.serial_log(ADMIN_KEY, &a, NO_SECRET);
    assert!(log_a.contains("isolation: container"), "{log_a}");

    // The same container name in two CVMs at once; each on its own engine.
    for id in [&a, &b] {
        let (ok, names) = cvm_docker(&state, id, &["ps", "--format", "{{.Names}}"]);
        assert!(ok && names.lines().any(|n| n == "app"), "{id}: {names}");
    }
    // The published ports reach each CVM's server (busybox httpd answers
    // 404 for an empty folder), and nothing else listens on them.
    for port in [pa, pb] {
        let (code, _) = curl(&[], &format!("http://127.0.0.1:{port}/"));
        assert_eq!(code, 404, "port {port}");
    }

    // A local user without root reaches neither the machine's engine nor
    // its guest agent.
    let cvm_dir = state.join("cvms").join(&a);
    for socket in ["engine/docker.sock", "agent/dstack.sock"] {
        assert!(cvm_dir.join(socket).exists(), "{socket}");
        assert!(
            !nobody_reaches(&cvm_dir.join(socket)),
            "nobody reached {socket}"
        );
    }

    // What the privileged container of A sees through `/`: its machine.
    let tapp = exec(&state, &a, "app", "cat /host/tapp/app-compose.json");
    assert!(tapp.contains("machine-a"), "{tapp}");
    let docker_sock = exec(
        &state,
        &a,
        "app",
        "test -S /var/run/docker.sock && echo socket",
    );
    assert!(docker_sock.contains("socket"), "{docker_sock}");
    // The host's state folder (its database, the KMS's folder, the API
    // key, B's folder) is not in A's machine: at its path there is only
    // the way to A's own compose folder, which the machine shows the boot
    // agent's compose tool at the same path.
    let state_path = state.canonicalize().unwrap();
    for root in ["/host", ""] {
        let listing = exec(
            &state,
            &a,
            "app",
            &format!(
                "ls -a {root}{0}/ {root}{0}/cvms/ 2>&1",
                state_path.display()
            ),
        );
        // The listing ran: in the machine's root (`/host`) it shows the way
        // to A's own compose folder; the container's own root has nothing
        // at that path.
        let ran = if root == "/host" {
            listing.lines().any(|l| l.trim() == a)
        } else {
            listing.contains("No such file or directory")
        };
        assert!(
            ran,
            "no listing of {root}{}: {listing}",
            state_path.display()
        );
        for host_only in ["berth.db", "kms", "api-key", "node", &b] {
            assert!(
                !listing.lines().any(|l| l.trim() == host_only),
                "{root}{} shows the host's `{host_only}`: {listing}",
                state_path.display()
            );
        }
        let kms = exec(
            &state,
            &a,
            "app",
            &format!("ls {root}{}/kms 2>&1", state_path.display()),
        );
        assert!(kms.contains("No such file or directory"), "{kms}");
        let other = exec(
            &state,
            &a,
            "app",
            &format!("ls {root}{}/cvms/{b} 2>&1", state_path.display()),
        );
        assert!(other.contains("No such file or directory"), "{other}");
    }
    // The host's processes are not in its PID namespace, even with
    // `--pid=host` in a sibling started through the machine's engine.
    let (ok, ps) = cvm_docker(
        &state,
        &a,
        &[
            "run",
            "--rm",
            "--privileged",
            "--pid=host",
            "-v",
            "/:/h",
            &format!("{host}/acme/tiny:1"),
            "sh",
            "-c",
            "busybox ps -o pid,args; ls /h; ls /h/tapp",
        ],
    );
    assert!(ok, "{ps}");
    assert!(
        ps.contains("dockerd"),
        "its own engine is in its namespace: {ps}"
    );
    for host_only in [
        "berth up",
        "kms serve",
        "node serve",
        "berth-cvm",
        "rootlesskit",
    ] {
        assert!(
            !ps.contains(host_only),
            "the host's `{host_only}` is visible: {ps}"
        );
    }
    assert!(!ps.contains(&b[..8]), "B is visible from A: {ps}");
    assert!(ps.contains("app-compose.json"), "{ps}");
    // The host's loopback (the API) is unreachable from inside.
    let api_port = cloud.port();
    let nc = exec(
        &state,
        &a,
        "app",
        &format!(
            "busybox nc -w 2 10.0.2.2 {api_port} </dev/null && echo CONNECTED || echo refused"
        ),
    );
    assert!(
        !nc.contains("CONNECTED") && nc.contains("refused"),
        "the host's loopback is reachable (or the probe did not run): {nc}"
    );

    // Bounded as a whole: its cgroup holds the machine, with its memory.
    let project = project_of(&a);
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/berth/{project}/memory.limit_in_bytes"
    ))
    .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/berth/{project}/memory.max")))
    .unwrap();
    let memory_mb = va["resource"]["memory_in_gb"]
        .as_f64()
        .map(|g| (g * 1024.0).round() as u64)
        .or(va["memory"].as_u64())
        .expect("memory");
    assert_eq!(limit.trim(), (memory_mb << 20).to_string(), "{va}");
    let pids = machine_pids(&a);
    assert!(
        pids.len() >= 4,
        "the machine's processes are in its cgroup: {pids:?}"
    );

    // A third CVM asking for A's port fails its boot with a sentence.
    let c = deploy(&cloud, "machine-c", &launcher(&host, pa), None);
    leftovers.0.push(c.clone());
    let vc = settled(&cloud, &c);
    assert_eq!(vc["status"], "boot_failed", "{vc}");
    let log_c = cloud.serial_log(ADMIN_KEY, &c, NO_SECRET);
    assert!(
        log_c.contains(&format!("127.0.0.1:{pa}")) && log_c.contains("choose another host port"),
        "{log_c}"
    );
    eventually(20, "a failed boot powers the machine off", || {
        machine_pids(&c).is_empty()
    });

    // A restart costs no pull: the machine's disk kept the image.
    let (code, r) = admin(&cloud, "POST", &format!("/cvms/{a}/restart"), None);
    assert_eq!(code, 200, "{r}");
    running(&cloud, &a);
    let log_a = cloud.serial_log(ADMIN_KEY, &a, NO_SECRET);
    let last_boot = log_a.rsplit("isolation: container").next().unwrap();
    assert!(
        last_boot.contains("already in the engine") || last_boot.contains("HEAD only"),
        "{last_boot}"
    );
    assert_eq!(curl(&[], &format!("http://127.0.0.1:{pa}/")).0, 404);

    // `berth up` stopped powers the machines off; started again, it boots
    // them from their disks (no pull) and their ports come back.
    cloud.stop();
    assert!(machine_pids(&a).is_empty() && machine_pids(&b).is_empty());
    assert!(!listening(pa));
    let cloud = Cloud::start(
        &state,
        "unix:///nonexistent",
        Some(ADMIN_KEY),
        &[&endpoint, "--isolation", "container"],
    );
    for id in [&a, &b] {
        running(&cloud, id);
    }
    let log_a = cloud.serial_log(ADMIN_KEY, &a, NO_SECRET);
    let last_boot = log_a.rsplit("node restarted").next().unwrap();
    assert!(last_boot.contains("already in the engine"), "{last_boot}");
    assert_eq!(curl(&[], &format!("http://127.0.0.1:{pa}/")).0, 404);

    // Delete leaves nothing: no process, no port, no folder.
    let (code, d) = admin(&cloud, "DELETE", &format!("/cvms/{a}"), None);
    assert!(code == 200 || code == 204, "{d}");
    eventually(30, "A's machine gone", || {
        machine_pids(&a).is_empty() && !listening(pa) && !state.join("cvms").join(&a).exists()
    });
    // B still runs.
    assert_eq!(curl(&[], &format!("http://127.0.0.1:{pb}/")).0, 404);
    for id in [&b, &c] {
        let _ = admin(&cloud, "DELETE", &format!("/cvms/{id}"), None);
    }
    eventually(30, "B's machine gone", || {
        machine_pids(&b).is_empty() && !listening(pb)
    });
    cloud.stop();
}

/// The shape of dstack's examples that build at boot: a service built from
/// an inline Dockerfile `FROM` a private image (pulled with the CVM's
/// registry credentials, never written to disk on the host in the clear),
/// next to a service that reads the guest agent's socket at its dstack
/// path; deployed with the official CLI.
#[test]
fn an_inline_dockerfile_builds_inside_the_machine_from_a_private_base() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    const PASSWORD: &str = "berth-canary-build-password-51c0";
    let (reg, host, endpoint) = busybox_registry(Some(("builder", PASSWORD)), "acme/base");
    // The launcher's shape: Debian's docker CLI in an image, driving the
    // CVM's engine through the bound socket.
    let cli_files = testkit::images::host_programs(&["/usr/bin/docker"]);
    let cli_files: Vec<(&Path, &str)> = cli_files
        .iter()
        .map(|(h, i)| (h.as_path(), i.as_str()))
        .collect();
    testkit::images::push_image(
        &testkit::images::PushTarget::new(&reg.host_port()).with_creds("builder", PASSWORD),
        "acme/cli",
        "1",
        &testkit::images::ImageSpec::new()
            .busybox()
            .host_files(&cli_files),
    );
    let dir = tempdir("cmb");
    let state = dir.join("s");
    let cloud = Cloud::start(
        &state,
        "unix:///nonexistent",
        Some(ADMIN_KEY),
        &[&endpoint, "--isolation", "container"],
    );
    let work = dir.join("app");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(
        work.join("docker-compose.yml"),
        format!(
            r#"services:
  app:
    build:
      context: .
      dockerfile_inline: |
        FROM {host}/acme/base:1
        RUN echo built-inside-the-cvm > /built
        CMD ["sh", "-c", "cat /built; sleep 600"]
  reader:
    image: {host}/acme/base:1
    volumes:
      - /var/run/dstack.sock:/var/run/dstack.sock
    command: ["sh", "-c", "test -S /var/run/dstack.sock && echo agent-socket-present; sleep 600"]
  launcher:
    image: {host}/acme/cli:1
    volumes:
      - /var/run/docker.sock:/var/run/docker.sock
    command: ["sh", "-c", "/usr/bin/docker run --rm --name sibling {host}/acme/base:1 sh -c 'echo sibling-ran-on-the-cvm-engine'; sleep 600"]
"#
        ),
    )
    .unwrap();
    std::fs::write(
        work.join(".env"),
        format!(
            "DSTACK_DOCKER_USERNAME=builder\nDSTACK_DOCKER_PASSWORD={PASSWORD}\nDSTACK_DOCKER_REGISTRY={host}\n"
        ),
    )
    .unwrap();
    let out = cloud.phala(
        ADMIN_KEY,
        &work,
        &[
            "deploy",
            "-n",
            "build-app",
            "-c",
            "docker-compose.yml",
            "-e",
            ".env",
        ],
        PASSWORD,
    );
    assert_eq!(out.code, 0, "phala deploy:\n{}\n{}", out.stdout, out.stderr);
    let (_, v) = admin(&cloud, "GET", "/cvms/build-app", None);
    let id = v["id"]
        .as_str()
        .or(v["vm_uuid"].as_str())
        .unwrap()
        .to_owned();
    let _leftovers = Leftovers(vec![id.clone()]);
    let v = running(&cloud, &id);
    assert_eq!(v["isolation"], "container", "{v}");

    let (ok, ps) = cvm_docker(&state, &id, &["ps", "--format", "{{.Names}} {{.Image}}"]);
    assert!(ok, "{ps}");
    let logs = |service: &str| {
        let name = ps
            .lines()
            .find(|l| l.contains(service))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {service} container: {ps}"))
            .to_owned();
        cvm_docker(&state, &id, &["logs", &name]).1
    };
    eventually(20, "the built image runs", || {
        logs("app").contains("built-inside-the-cvm")
    });
    eventually(20, "the agent's socket is in the container", || {
        logs("reader").contains("agent-socket-present")
    });
    eventually(
        30,
        "the launcher started a sibling on the CVM's engine",
        || logs("launcher").contains("sibling-ran-on-the-cvm-engine"),
    );
    // The registry password is in no file of the state folder, and in no
    // answer or log (phala's output was checked above).
    for f in files_under(&state) {
        if let Ok(bytes) = std::fs::read(&f) {
            assert!(
                !bytes
                    .windows(PASSWORD.len())
                    .any(|w| w == PASSWORD.as_bytes()),
                "the password is in {}",
                f.display()
            );
        }
    }
    let log = cloud.serial_log(ADMIN_KEY, &id, PASSWORD);
    assert!(log.contains("isolation: container"), "{log}");

    // The node killed outright (kill -9): the machine keeps running, the
    // next node (berth up starts one) finds it, starts its guest agent
    // again and restarts the container that mounts the agent's socket.
    let before = machine_pids(&id);
    let node = Command::new("ps")
        .args(["-eo", "pid=,args="])
        .output()
        .unwrap();
    let state_text = state.canonicalize().unwrap().display().to_string();
    let node_pid: i32 = String::from_utf8_lossy(&node.stdout)
        .lines()
        .find(|l| l.contains("node serve") && l.contains(&state_text))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("the node process");
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(node_pid, libc::SIGKILL) };
    eventually(60, "the next node restarts the agent's users", || {
        cloud
            .serial_log(ADMIN_KEY, &id, PASSWORD)
            .contains("mounting the guest agent restarted")
    });
    let after = machine_pids(&id);
    assert!(
        before.iter().filter(|p| after.contains(p)).count() >= 3,
        "the machine's processes did not survive the node: {before:?} {after:?}"
    );
    running(&cloud, &id);

    let (code, _) = admin(&cloud, "DELETE", &format!("/cvms/{id}"), None);
    assert!(code == 200 || code == 204);
    eventually(30, "the machine gone", || machine_pids(&id).is_empty());
    cloud.stop();
}
