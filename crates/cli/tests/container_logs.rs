//! Container logs through a real `berth up` and engine: a container that
//! writes tens of megabytes of output costs the node a bounded amount of
//! memory to read (`tail=all` included) and the answer is bounded and ends
//! with the container's last line; and each container's log on disk is
//! rotated and capped by the platform.

mod common;
use common::*;
use serde_json::Value;
use std::process::Command;
use std::time::Instant;
use testkit::Dockerd;

const ADMIN_KEY: &str = "berth_test_admin_key_0123456789";

/// Lines the chatty container writes, each about 1 KiB: some 50 MB.
const CHATTY_LINES: usize = 50_000;

/// The most the node's peak memory may grow while it answers
/// [`CONCURRENT_READS`] `tail=all` reads at once (each may hold about one
/// answer, [`MAX_ANSWER`], and a quarter more).
const MAX_NODE_GROWTH_KB: u64 = 64 << 10;

/// `tail=all` reads sent at once.
const CONCURRENT_READS: usize = 4;

/// The most bytes a log answer may hold (the API's cap, 4 MiB).
const MAX_ANSWER: usize = 4 << 20;

impl Cloud {
    fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.json_as(ADMIN_KEY, method, path, body)
    }

    /// Provisions and commits `name`, returning the CVM's id.
    fn deploy(&self, name: &str, compose: &str) -> String {
        self.deploy_public_as(ADMIN_KEY, name, compose)
    }

    /// Waits until the CVM's boot has ended; its view then.
    fn wait_booted(&self, id: &str) -> Value {
        self.wait_booted_as(ADMIN_KEY, id)
    }

    /// The pid of the node process (`berth node serve`, a child of `berth up`).
    fn node_pid(&self) -> u32 {
        let parent = self.pid();
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`: comm may hold spaces, so split after ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            let args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = args.split(|b| *b == 0).collect();
            if ppid == Some(parent) && args.windows(2).any(|w| w[0] == b"node" && w[1] == b"serve")
            {
                found.push(pid);
            }
        }
        assert_eq!(found.len(), 1, "one node process under berth up: {found:?}");
        found[0]
    }
}

/// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`).
fn status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A busybox service that writes [`CHATTY_LINES`] lines of about 1 KiB,
/// then `LAST-LINE`, then sleeps. `$$` is compose's escape for `$`.
fn chatty_compose(host: &str) -> String {
    format!(
        "services:\n  chatty:\n    image: {host}/acme/tiny:1\n    network_mode: none\n    command: [\"sh\", \"-c\", \"s=x; for i in 1 2 3 4 5 6 7 8 9 10; do s=$$s$$s; done; i=0; while [ $$i -lt {CHATTY_LINES} ]; do echo \\\"$$i $$s\\\"; i=$$((i+1)); done; echo LAST-LINE; exec sleep 3600\"]\n"
    )
}

/// Deploys the chatty app and waits until its container has written all
/// of its output; (CVM id, container id).
fn chatty(cloud: &Cloud, engine: &Dockerd, host: &str, name: &str) -> (String, String) {
    let id = cloud.deploy(name, &chatty_compose(host));
    let v = cloud.wait_booted(&id);
    assert_eq!(v["status"], "running", "{v}");
    let (code, comp) = cloud.admin("GET", &format!("/cvms/{id}/composition"), None);
    assert_eq!(code, 200, "{comp}");
    let container = comp["containers"][0]["id"].as_str().unwrap().to_owned();
    // The engine's own CLI, not the node: the test waits for the end of
    // the output without costing the node anything.
    eventually(180, "the container to write its last line", || {
        engine
            .docker_out(&["logs", "--tail", "1", &container])
            .contains("LAST-LINE")
    });
    (id, container)
}

/// GET `url`: (status, body bytes, seconds).
fn get(url: &str) -> (u16, Vec<u8>, f64) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let body =
        std::env::temp_dir().join(format!("berth-container-logs-{}-{n}", std::process::id()));
    let t = Instant::now();
    let out = Command::new("curl")
        .args(["-s", "--max-time", "300", "-o"])
        .arg(&body)
        .args(["-w", "%{http_code}", url])
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let bytes = std::fs::read(&body).unwrap_or_default();
    let _ = std::fs::remove_file(&body);
    (code, bytes, secs)
}

/// Finding 10 (a): `tail=all` (and a huge `tail`) of a container that wrote
/// some 50 MB is answered from the end of its log, within the answer cap,
/// and the node's peak memory barely moves: it never holds the whole log.
#[test]
fn tail_all_of_a_chatty_container_is_bounded() {
    let engine = Dockerd::start();
    let (_reg, host, endpoint) = busybox_registry(None, "acme/tiny");
    let dir = tempdir("container-logs");
    let cloud = Cloud::start(
        &dir.join("state"),
        &engine.host(),
        Some(ADMIN_KEY),
        &[&endpoint],
    );
    let (id, _container) = chatty(&cloud, &engine, &host, "chatty");
    let node = cloud.node_pid();
    let (rss0, hwm0) = (status_kb(node, "VmRSS"), status_kb(node, "VmHWM"));

    let (_, comp) = cloud.admin("GET", &format!("/cvms/{id}/composition"), None);
    let one = comp["containers"][0]["log_endpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, v) = cloud.admin("GET", &format!("/cvms/{id}"), None);
    let syslog = v["syslog_endpoint"].as_str().unwrap().to_owned();
    for url in [
        format!("{one}&tail=all"),
        format!("{one}&tail=100000000"),
        format!("{syslog}&ch=stdout&tail=all"),
    ] {
        let (code, body, secs) = get(&url);
        let shown = url.split_once("token=").map_or(&url[..], |(a, _)| a);
        eprintln!(
            "{shown}…{}: {code}, {} bytes in {secs:.1} s; node VmRSS {} kB, VmHWM {} kB (before: {rss0} kB, {hwm0} kB)",
            url.rsplit_once('&').map_or("", |(_, t)| t),
            body.len(),
            status_kb(node, "VmRSS"),
            status_kb(node, "VmHWM"),
        );
        assert_eq!(
            code,
            200,
            "{}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
        assert!(body.len() <= MAX_ANSWER, "{} bytes answered", body.len());
        assert!(
            body.len() > MAX_ANSWER / 2,
            "the answer holds the end of the log, up to the cap: {} bytes",
            body.len()
        );
        assert!(
            body.ends_with(b"LAST-LINE\n"),
            "the answer ends with the container's last line: …{:?}",
            String::from_utf8_lossy(&body[body.len().saturating_sub(80)..])
        );
        assert!(secs < 30.0, "{secs:.1} s for one log answer");
    }
    // Several at once: each costs the node about one answer, not a log.
    let readers: Vec<_> = (0..CONCURRENT_READS)
        .map(|_| {
            let url = format!("{one}&tail=all");
            std::thread::spawn(move || get(&url))
        })
        .collect();
    for r in readers {
        let (code, body, _) = r.join().unwrap();
        assert_eq!(code, 200);
        assert!(body.len() <= MAX_ANSWER && body.ends_with(b"LAST-LINE\n"));
    }
    let (rss, hwm) = (status_kb(node, "VmRSS"), status_kb(node, "VmHWM"));
    eprintln!(
        "after {CONCURRENT_READS} concurrent tail=all reads: node VmRSS {rss} kB, VmHWM {hwm} kB (before any read: {rss0} kB, {hwm0} kB)"
    );
    assert!(
        hwm.saturating_sub(hwm0) < MAX_NODE_GROWTH_KB,
        "the node's peak memory grew from {hwm0} kB to {hwm} kB reading container logs"
    );
    let _ = cloud.stop();
}

/// A size like `10m`, `512k`, `1g` or `1048576` in bytes.
fn size_bytes(s: &str) -> u64 {
    let s = s.trim().to_ascii_lowercase();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().unwrap_or_else(|_| panic!("a size: {s}"));
    n * match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        other => panic!("a size unit: {other}"),
    }
}

/// Bytes of every file under `dir`.
fn bytes_under(dir: &std::path::Path) -> u64 {
    files_under(dir)
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Finding 10 (b): every container of a CVM logs through a rotating
/// driver (`json-file` or `local`) with `max-size` and `max-file` set by
/// the platform, and a container that wrote some 50 MB keeps at most that
/// on disk.
#[test]
fn container_logs_are_rotated_and_capped_on_disk() {
    let engine = Dockerd::start();
    let (_reg, host, endpoint) = busybox_registry(None, "acme/tiny");
    let dir = tempdir("container-logs-rotate");
    let cloud = Cloud::start(
        &dir.join("state"),
        &engine.host(),
        Some(ADMIN_KEY),
        &[&endpoint],
    );
    let (_id, container) = chatty(&cloud, &engine, &host, "rotated");
    let config = engine.docker_out(&[
        "inspect",
        "--format",
        "{{json .HostConfig.LogConfig}}",
        &container,
    ]);
    let config: Value = serde_json::from_str(config.trim()).unwrap();
    let driver = config["Type"].as_str().unwrap_or("");
    assert!(
        driver == "json-file" || driver == "local",
        "a rotating log driver: {config}"
    );
    let max_size = config["Config"]["max-size"]
        .as_str()
        .unwrap_or_else(|| panic!("max-size is set: {config}"));
    let max_file: u64 = config["Config"]["max-file"]
        .as_str()
        .unwrap_or_else(|| panic!("max-file is set: {config}"))
        .parse()
        .unwrap();
    let cap = size_bytes(max_size) * max_file;
    let written = (CHATTY_LINES * 1030) as u64;
    assert!(
        cap < written,
        "the cap ({cap} bytes) is below what the container wrote"
    );
    let root = engine.docker_out(&["info", "--format", "{{.DockerRootDir}}"]);
    let full = engine.docker_out(&["inspect", "--format", "{{.Id}}", &container]);
    let on_disk = bytes_under(
        &std::path::Path::new(root.trim())
            .join("containers")
            .join(full.trim()),
    );
    eprintln!("driver {driver}, max-size {max_size}, max-file {max_file}: {on_disk} bytes on disk");
    // The container's folder holds its logs and a few small files.
    assert!(
        on_disk <= cap + (1 << 20),
        "{on_disk} bytes of logs on disk, over the cap of {cap}"
    );
    let _ = cloud.stop();
}
