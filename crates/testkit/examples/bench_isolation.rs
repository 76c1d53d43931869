//! `make bench` (isolation, issue 17): what a CVM that is a machine of its
//! own (`berth up --isolation container`: a rootless system container with
//! its own dockerd per CVM) costs next to today's shared engine
//! (`--isolation shared`, all CVMs' containers on one engine), both through
//! a real `berth up`, side by side in one run, alternating:
//!
//! - cold boot: a new CVM's first deploy (`POST /cvms` until `GET /cvms/{id}`
//!   says `running`), and warm boot: its restart (`POST /cvms/{id}/restart`
//!   until `running` again; the stop in it waits out the node's stop grace,
//!   as `sleep` ignores SIGTERM as PID 1) and its start after a stop
//!   (`POST /cvms/{id}/start` until `running`), of a one-service app
//!   (busybox, `sleep 600`), median of RUNS, per mode, their difference and
//!   ratio (goal: the boundary adds ≤ 1.5 s);
//! - memory of one idle CVM: in container mode the PSS of every process in
//!   the CVM's cgroup (`/sys/fs/cgroup/memory/berth/<project>`, or the v2
//!   one) and the cgroup's own usage; in shared mode the PSS of the CVM's
//!   containers' processes (`docker ps --filter label=…project=<project>`),
//!   their containerd shims and the CVM's `berth guest agent` (goal
//!   ≤ 128 MiB);
//! - FLEET CVMs (default 20) deployed at once in container mode: time until
//!   all run, their PSS and cgroups in total, `MemAvailable` before and
//!   after.
//!
//! The shared mode's engine is a testkit [`Dockerd`]; the registry a testkit
//! [`Registry`] mapped for CVMs with `--registry-endpoint`. Everything it
//! made is deleted through the API and both clouds are stopped (SIGTERM,
//! then wait) at the end, also when it fails. Needs root (the container
//! mode makes users and cgroups).
//!
//! `--isolation shared` is passed explicitly: `berth up`'s default (`auto`)
//! is the container mode where it can run. `BENCH_SHOW_LOG=1` prints the
//! idle shared-mode CVM's API view, serial log and engine's containers.
//!
//! Usage: bench_isolation BERTH_BINARY [RUNS] [FLEET]

use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::bench::median;
use testkit::images::{ImageSpec, PushTarget, push_image};
use testkit::{Dockerd, Registry, tempdir};

const KEY: &str = "berth_bench_isolation_admin_key_0123456789";

/// Seconds a CVM is left alone before its memory is read.
const IDLE_SECS: u64 = 10;

const MIB: f64 = (1 << 20) as f64;

/// A running `berth up`: its API, and the CVMs the benchmark made on it,
/// which are deleted, and the cloud stopped (SIGTERM, then SIGKILL after
/// 60 s), when it is dropped, also on a panic.
struct Up {
    mode: &'static str,
    child: Child,
    api: String,
    output: Arc<Mutex<String>>,
    made: Mutex<BTreeSet<String>>,
}

impl Up {
    fn start(
        mode: &'static str,
        berth: &str,
        state: &Path,
        docker_host: &str,
        args: &[&str],
    ) -> Up {
        let mut child = Command::new(berth)
            .args(["up", "--state"])
            .arg(state)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("DOCKER_HOST", docker_host)
            .env("BERTH_ADMIN_API_KEY", KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("berth up");
        // Its request log is drained (and kept short).
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap();
                    if o.len() < 256 * 1024 {
                        o.push_str(&line);
                        o.push('\n');
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = output.lock().unwrap().clone();
            if text.contains("Stop with Ctrl-C") {
                // "API: http://127.0.0.1:PORT/api/v1"
                let api = text
                    .lines()
                    .find_map(|l| l.strip_prefix("API:"))
                    .and_then(|v| v.split_whitespace().next())
                    .expect("berth up prints its API URL")
                    .to_owned();
                return Up {
                    mode,
                    child,
                    api,
                    output,
                    made: Mutex::new(BTreeSet::new()),
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("berth up ({mode}) exited ({status}):\n{text}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("berth up ({mode}) did not come up within 60 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One API call with curl: status code and JSON body (`Null` if none).
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "300", "-X", method])
            .args(["-H", &format!("X-API-Key: {KEY}")])
            .args(["-w", "\n%{http_code}"]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(b.to_string());
        }
        let out = cmd
            .arg(format!("{}{path}", self.api))
            .stdin(Stdio::null())
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        let code = code.trim().parse().unwrap_or(0);
        (code, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// `POST /cvms/provision`: the app's id and compose hash.
    fn provision(&self, name: &str, compose: &str) -> (Value, Value) {
        let (code, p) = self.call(
            "POST",
            "/cvms/provision",
            Some(&json!({"name": name, "compose_file": {"docker_compose_file": compose, "allowed_envs": []}})),
        );
        assert_eq!(code, 200, "{}: provision {name}: {p}", self.mode);
        (p["app_id"].clone(), p["compose_hash"].clone())
    }

    /// `POST /cvms` of a provisioned app: the CVM's id.
    fn commit(&self, name: &str, app: &(Value, Value)) -> String {
        let (code, c) = self.call(
            "POST",
            "/cvms",
            Some(&json!({"app_id": app.0, "compose_hash": app.1, "name": name})),
        );
        assert_eq!(code, 200, "{}: commit {name}: {c}", self.mode);
        let id = match c["id"].as_str() {
            Some(id) => id.to_owned(),
            None => self.call("GET", &format!("/cvms/{name}"), None).1["id"]
                .as_str()
                .expect("the CVM's id")
                .to_owned(),
        };
        self.made.lock().unwrap().insert(id.clone());
        id
    }

    /// The CVM's serial log (its `syslog_endpoint` with `&ch=serial`).
    fn serial_log(&self, id: &str) -> String {
        let (_, v) = self.call("GET", &format!("/cvms/{id}"), None);
        let Some(url) = v["syslog_endpoint"].as_str() else {
            return format!("(no syslog_endpoint: {v})");
        };
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", &format!("{url}&ch=serial")])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether `id` runs (its boot ended well); a failed boot panics with
    /// the CVM's serial log.
    fn is_running(&self, id: &str) -> bool {
        let (code, v) = self.call("GET", &format!("/cvms/{id}"), None);
        assert_eq!(code, 200, "{}: GET /cvms/{id}: {v}", self.mode);
        let in_progress = v["in_progress"].as_bool().unwrap_or(false);
        match v["status"].as_str().unwrap_or("") {
            "running" if !in_progress => true,
            "boot_failed" => panic!(
                "{} mode: CVM {id} boot_failed: {v}\nits serial log:\n{}",
                self.mode,
                self.serial_log(id)
            ),
            "starting" | "provisioning" | "running" => false,
            _ if in_progress => false,
            other => panic!(
                "{} mode: CVM {id} is `{other}`, not booting: {v}\nits serial log:\n{}",
                self.mode,
                self.serial_log(id)
            ),
        }
    }

    /// Polls until `id` runs (at most 300 s).
    fn wait_running(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !self.is_running(id) {
            assert!(
                Instant::now() < deadline,
                "{} mode: CVM {id} still booting after 300 s; its serial log:\n{}",
                self.mode,
                self.serial_log(id)
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Deploys `name` and waits until it runs: its id and the seconds from
    /// `POST /cvms` to `running`.
    fn deploy(&self, name: &str, compose: &str) -> (String, f64) {
        let app = self.provision(name, compose);
        let t = Instant::now();
        let id = self.commit(name, &app);
        self.wait_running(&id);
        (id, t.elapsed().as_secs_f64())
    }

    /// Restarts `id`: the seconds from `POST /cvms/{id}/restart` to
    /// `running`.
    fn restart(&self, id: &str) -> f64 {
        let t = Instant::now();
        let (code, r) = self.call("POST", &format!("/cvms/{id}/restart"), None);
        assert_eq!(code, 200, "{}: restart {id}: {r}", self.mode);
        self.wait_running(id);
        t.elapsed().as_secs_f64()
    }

    /// Stops `id` (`POST /cvms/{id}/stop`, until `stopped`), then starts it
    /// again: the seconds from `POST /cvms/{id}/start` to `running` (a warm
    /// boot without the stop in it).
    fn stop_start(&self, id: &str) -> f64 {
        let (code, r) = self.call("POST", &format!("/cvms/{id}/stop"), None);
        assert_eq!(code, 200, "{}: stop {id}: {r}", self.mode);
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.call("GET", &format!("/cvms/{id}"), None).1["status"] != "stopped" {
            assert!(Instant::now() < deadline, "{}: {id} not stopped", self.mode);
            std::thread::sleep(Duration::from_millis(50));
        }
        let t = Instant::now();
        let (code, r) = self.call("POST", &format!("/cvms/{id}/start"), None);
        assert_eq!(code, 200, "{}: start {id}: {r}", self.mode);
        self.wait_running(id);
        t.elapsed().as_secs_f64()
    }

    /// `DELETE /cvms/{id}`, then waits until the API no longer shows it live.
    fn delete(&self, id: &str) {
        let (code, v) = self.call("DELETE", &format!("/cvms/{id}"), None);
        assert!(
            code == 204 || code == 200 || code == 404,
            "{}: delete {id}: {code} {v}",
            self.mode
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (code, v) = self.call("GET", &format!("/cvms/{id}"), None);
            if code == 404 || v["status"] == "deleted" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {id} not deleted: {v}",
                self.mode
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.made.lock().unwrap().remove(id);
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let left: Vec<String> = self.made.lock().unwrap().iter().cloned().collect();
        for id in &left {
            let (code, v) = self.call("DELETE", &format!("/cvms/{id}"), None);
            if code != 204 && code != 200 && code != 404 {
                eprintln!("{} mode: could not delete {id}: {code} {v}", self.mode);
            }
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            eprintln!(
                "{} mode: berth up did not stop within 60 s of SIGTERM: killed",
                self.mode
            );
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            let out = self.output.lock().unwrap();
            let tail: String = out
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!("{} mode: the end of berth up's output:\n{tail}", self.mode);
        }
    }
}

/// The compose project of CVM `id`: `berth-` + 12 hex digits of its UUID.
fn project_of(id: &str) -> String {
    format!(
        "berth-{}",
        id.replace('-', "").chars().take(12).collect::<String>()
    )
}

/// The CVM's memory cgroup (v1 memory hierarchy, or v2), if it exists.
fn cgroup_of(project: &str) -> Option<PathBuf> {
    [
        format!("/sys/fs/cgroup/memory/berth/{project}"),
        format!("/sys/fs/cgroup/berth/{project}"),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.join("cgroup.procs").exists())
}

/// Every pid in `cg` and the cgroups below it.
fn cgroup_pids(cg: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for entry in std::fs::read_dir(cg).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(cgroup_pids(&entry.path()));
        }
    }
    pids
}

/// The cgroup's memory use in bytes (`memory.usage_in_bytes`, v2
/// `memory.current`).
fn cgroup_usage(cg: &Path) -> u64 {
    ["memory.usage_in_bytes", "memory.current"]
        .iter()
        .find_map(|f| std::fs::read_to_string(cg.join(f)).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// (PSS, RSS) of `pid` in bytes, from `/proc/PID/smaps_rollup`; zeros for
/// a process that is gone (or a kernel thread).
fn pss_rss(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("Pss:"), field("Rss:"))
}

fn sum_pss_rss(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .map(|p| pss_rss(*p))
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

/// Parent of every process: pid → ppid, from `/proc/*/stat`.
fn parents() -> HashMap<u32, u32> {
    let mut map = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "PID (comm) S PPID …": the command may hold spaces and parens.
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        {
            map.insert(pid, ppid);
        }
    }
    map
}

/// `root` and all its descendants.
fn tree(root: u32, parents: &HashMap<u32, u32>) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// Pids whose command line holds every one of `needles`.
fn pids_with(needles: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if needles.iter().all(|n| text.contains(n)) {
            out.push(pid);
        }
    }
    out
}

/// What one idle CVM in container mode holds.
struct MachineMemory {
    processes: usize,
    pss: u64,
    rss: u64,
    cgroup: u64,
}

fn machine_memory(id: &str) -> MachineMemory {
    let project = project_of(id);
    let cg = cgroup_of(&project)
        .unwrap_or_else(|| panic!("no memory cgroup berth/{project} for the CVM {id}"));
    let pids = cgroup_pids(&cg);
    let (pss, rss) = sum_pss_rss(&pids);
    MachineMemory {
        processes: pids.len(),
        pss,
        rss,
        cgroup: cgroup_usage(&cg),
    }
}

/// What one idle CVM in shared mode holds on the host: its containers'
/// processes, their containerd shims, its guest agent; the cgroup the node
/// puts its containers under, if any.
struct SharedMemory {
    containers: usize,
    processes: usize,
    pss: u64,
    rss: u64,
    shims_pss: u64,
    agent_pss: u64,
    cgroup: Option<u64>,
}

fn shared_memory(engine: &Dockerd, id: &str) -> SharedMemory {
    let project = project_of(id);
    let ids = engine.docker_out(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
    ]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert!(
        !ids.is_empty(),
        "no container of {project} on the engine: {}",
        engine.docker_out(&["ps", "-a", "--format", "{{.Names}} {{.Status}} {{.Labels}}"])
    );
    let parents = parents();
    let (mut procs, mut shims) = (Vec::new(), Vec::new());
    for c in &ids {
        let pid: u32 = engine
            .docker_out(&["inspect", "-f", "{{.State.Pid}}", c])
            .trim()
            .parse()
            .expect("a container's pid");
        procs.extend(tree(pid, &parents));
        if let Some(shim) = parents.get(&pid) {
            shims.push(*shim);
        }
    }
    let (pss, rss) = sum_pss_rss(&procs);
    let agent = pids_with(&["guest", "agent", &format!("/cvms/{id}/")]);
    SharedMemory {
        containers: ids.len(),
        processes: procs.len(),
        pss,
        rss,
        shims_pss: sum_pss_rss(&shims).0,
        agent_pss: sum_pss_rss(&agent).0,
        cgroup: cgroup_of(&project).map(|cg| cgroup_usage(&cg)),
    }
}

fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

/// Waits (at most 30 s) until the shared engine holds no image of `repo`,
/// so that the next shared-mode deploy is cold (the node removes a deleted
/// CVM's images in the background).
fn wait_no_image(engine: &Dockerd, repo: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = engine.docker_out(&["images", "-q", repo]);
        if left.trim().is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let ids: Vec<&str> = left.split_whitespace().collect();
            let mut rmi = engine.docker();
            rmi.args(["rmi", "-f"]).args(&ids);
            let _ = rmi.output();
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let berth = args
        .get(1)
        .expect("usage: bench_isolation BERTH_BINARY [RUNS] [FLEET]")
        .clone();
    let runs: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(3);
    let fleet: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(20);
    // /proc/self belongs to the process's effective uid.
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()),
        0,
        "bench_isolation needs root: `berth up --isolation container` makes users and cgroups"
    );

    let registry = Registry::start();
    let host = registry.host_port();
    push_image(
        &PushTarget::new(&host),
        "acme/tiny",
        "1",
        &ImageSpec::new().busybox(),
    );
    let image = format!("{host}/acme/tiny:1");
    let endpoint = format!("--registry-endpoint={host}={}", registry.base_url());
    let compose = format!(
        "services:\n  app:\n    image: {image}\n    network_mode: none\n    command: [\"sleep\", \"600\"]\n"
    );
    let engine = Dockerd::start();
    let work = tempdir("bench-iso");
    let max = fleet.max(2).to_string();
    eprintln!("starting berth up --isolation shared (testkit engine) and --isolation container…");
    let shared = Up::start(
        "shared",
        &berth,
        &work.join("s"),
        &engine.host(),
        &[&endpoint, "--isolation", "shared"],
    );
    let container = Up::start(
        "container",
        &berth,
        &work.join("c"),
        "unix:///nonexistent/docker.sock",
        &[
            &endpoint,
            "--isolation",
            "container",
            "--max-boots",
            &max,
            "--max-boots-per-user",
            &max,
        ],
    );

    // Per mode: cold boots, restarts, starts after a stop.
    let mut times: [[Vec<f64>; 3]; 2] = Default::default();
    println!("run  mode        cold_s  restart_s  start_s");
    for i in 0..runs {
        for (m, up) in [&shared, &container].into_iter().enumerate() {
            let (id, c) = up.deploy(&format!("iso-{}-{i}", up.mode), &compose);
            let r = up.restart(&id);
            let w = up.stop_start(&id);
            if i == 0 && up.mode == "container" {
                let log = up.serial_log(&id);
                if let Some(line) = log.lines().find(|l| l.contains("isolation:")) {
                    eprintln!("container mode's serial log says: {line}");
                }
            }
            up.delete(&id);
            if up.mode == "shared" {
                wait_no_image(&engine, &format!("{host}/acme/tiny"));
            }
            println!("{i:>3}  {:<10}  {c:>6.2}  {r:>9.2}  {w:>7.2}", up.mode);
            for (k, v) in [c, r, w].into_iter().enumerate() {
                times[m][k].push(v);
            }
        }
    }
    let [[cs, rs, ws], [cc, rc, wc]] = times.map(|mode| mode.map(|mut v| median(&mut v)));
    println!();
    println!(
        "app: one service, {image} (busybox), `sleep 600`, network_mode: none; median of {runs}"
    );
    println!(
        "cold boot (first deploy: POST /cvms until running): shared {cs:.2} s, container {cc:.2} s, difference {:+.2} s, ratio {:.2} (goal: difference ≤ 1.5 s)",
        cc - cs,
        cc / cs
    );
    println!(
        "warm boot, restart (POST /cvms/{{id}}/restart until running; the stop in it waits out the node's stop grace for `sleep`, which ignores SIGTERM as PID 1): shared {rs:.2} s, container {rc:.2} s, difference {:+.2} s, ratio {:.2}",
        rc - rs,
        rc / rs
    );
    println!(
        "warm boot, start of a stopped CVM (POST /cvms/{{id}}/start until running): shared {ws:.2} s, container {wc:.2} s, difference {:+.2} s, ratio {:.2} (goal: difference ≤ 1.5 s)",
        wc - ws,
        wc / ws
    );

    // One idle CVM per mode, alone on its cloud.
    let (sid, _) = shared.deploy("iso-idle-shared", &compose);
    let (cid, _) = container.deploy("iso-idle-container", &compose);
    std::thread::sleep(Duration::from_secs(IDLE_SECS));
    let m = machine_memory(&cid);
    if std::env::var_os("BENCH_SHOW_LOG").is_some() {
        eprintln!(
            "shared: {}\n{}\nengine {}: {}",
            shared.call("GET", &format!("/cvms/{sid}"), None).1,
            shared.serial_log(&sid),
            engine.host(),
            engine.docker_out(&["ps", "-a"])
        );
    }
    let s = shared_memory(&engine, &sid);
    println!(
        "idle CVM ({IDLE_SECS} s after running), container mode: {} processes in its cgroup, PSS {:.1} MiB (RSS {:.1} MiB), cgroup memory usage {:.1} MiB (goal ≤ 128 MiB)",
        m.processes,
        mib(m.pss),
        mib(m.rss),
        mib(m.cgroup)
    );
    println!(
        "idle CVM, shared mode: {} container(s), {} process(es), PSS {:.1} MiB (RSS {:.1} MiB); + containerd shim(s) PSS {:.1} MiB, + its berth guest agent PSS {:.1} MiB = {:.1} MiB; cgroup of its containers {}",
        s.containers,
        s.processes,
        mib(s.pss),
        mib(s.rss),
        mib(s.shims_pss),
        mib(s.agent_pss),
        mib(s.pss + s.shims_pss + s.agent_pss),
        s.cgroup
            .map_or("none".to_owned(), |u| format!("{:.1} MiB", mib(u)))
    );
    println!(
        "  container / shared (PSS, all of it): {:.1}x, difference {:+.1} MiB",
        m.pss as f64 / (s.pss + s.shims_pss + s.agent_pss) as f64,
        mib(m.pss) - mib(s.pss + s.shims_pss + s.agent_pss)
    );
    shared.delete(&sid);
    container.delete(&cid);

    // FLEET CVMs at once in container mode.
    if fleet > 0 {
        let apps: Vec<(String, (Value, Value))> = (0..fleet)
            .map(|i| {
                let name = format!("iso-fleet-{i:02}");
                let app = container.provision(&name, &compose);
                (name, app)
            })
            .collect();
        std::thread::sleep(Duration::from_secs(2));
        let before = mem_available();
        let t = Instant::now();
        let ids: Vec<String> = std::thread::scope(|sc| {
            let handles: Vec<_> = apps
                .iter()
                .map(|(name, app)| sc.spawn(|| container.commit(name, app)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let committed = t.elapsed().as_secs_f64();
        let mut pending: Vec<&String> = ids.iter().collect();
        let mut first = None;
        let deadline = Instant::now() + Duration::from_secs(600);
        while !pending.is_empty() {
            pending.retain(|id| !container.is_running(id));
            if first.is_none() && pending.len() < ids.len() {
                first = Some(t.elapsed().as_secs_f64());
            }
            assert!(
                Instant::now() < deadline,
                "{} of {fleet} CVMs still booting after 600 s",
                pending.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let all = t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(IDLE_SECS));
        let mems: Vec<MachineMemory> = ids.iter().map(|id| machine_memory(id)).collect();
        let after = mem_available();
        let pss: u64 = mems.iter().map(|m| m.pss).sum();
        let cg: u64 = mems.iter().map(|m| m.cgroup).sum();
        let procs: usize = mems.iter().map(|m| m.processes).sum();
        println!(
            "fleet: {fleet} CVMs committed at once (container mode; all commits answered in {committed:.2} s): first running at {:.2} s, all running at {all:.2} s",
            first.unwrap_or(all)
        );
        println!(
            "  idle ({IDLE_SECS} s later): {procs} processes, PSS {:.1} MiB in total ({:.1} MiB per CVM), cgroups {:.1} MiB in total ({:.1} MiB per CVM); MemAvailable {:.0} MiB before, {:.0} MiB after ({:+.0} MiB)",
            mib(pss),
            mib(pss) / fleet as f64,
            mib(cg),
            mib(cg) / fleet as f64,
            mib(before),
            mib(after),
            mib(after) - mib(before)
        );
        let t = Instant::now();
        std::thread::scope(|sc| {
            for id in &ids {
                let c = &container;
                sc.spawn(move || c.delete(id));
            }
        });
        let left: Vec<String> = ids
            .iter()
            .map(|id| project_of(id))
            .filter(|p| cgroup_of(p).is_some())
            .collect();
        println!(
            "  deleted all {fleet} in {:.2} s; cgroups left: {}",
            t.elapsed().as_secs_f64(),
            left.len()
        );
    }
    drop(container);
    drop(shared);
}
