//! `make bench` (API): requests per second and latency of the control
//! plane's API under load, with `wrk` (Debian's package) as the load
//! generator, against a real `berth up`.
//!
//! The database is seeded before `berth up` starts, through the control
//! plane's own database API (`cloud::Db`): one user, and N CVMs, each with
//! its own app (a real `app-compose.json` built by `cloud::appcompose`), all
//! `stopped` so the node has nothing to boot (it runs without an engine).
//! Three routes of the same server, same generator and settings:
//!
//! - baseline: `GET /api/v1/no-such-route`, the API's fallback (a 501 JSON
//!   error, "not supported"): no authentication, no database, the same
//!   listener, router and request log;
//! - `GET /api/v1/auth/me`: authentication (one indexed read) only;
//! - `GET /api/v1/cvms`: authentication and the list of all N CVMs.
//!
//! Usage: bench_api BERTH_BINARY [CVMS] [SECONDS] [CONNECTIONS]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::bench::median;
use testkit::workdir;

const KEY: &str = "berth_bench_admin_key_0123456789abcdef";

fn seed(db_path: &Path, cvms: usize) {
    use cloud::appcompose::{AppComposeInput, build};
    use cloud::db::{App, Limits, NewCvm};
    use contract::CvmStatus;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = cloud::Db::open(db_path).expect("open the database");
        let user = db.create_user("admin", KEY, true).await.unwrap();
        let limits = Limits {
            max_cvms_per_user: usize::MAX,
            max_boots_in_flight: usize::MAX,
            max_boots_per_user: usize::MAX,
            ..Limits::default()
        };
        let envs = vec!["DSTACK_DOCKER_USERNAME".to_owned(), "DSTACK_DOCKER_PASSWORD".to_owned(), "GREETING".to_owned()];
        for i in 0..cvms {
            let name = format!("bench-app-{i:04}");
            let compose = format!(
                "services:\n  web:\n    image: registry.example:5000/team/web-{i}:1\n    environment:\n      - GREETING=${{GREETING}}\n    ports:\n      - \"8080:80\"\n  worker:\n    image: registry.example:5000/team/worker:2\n    command: [\"sh\", \"-c\", \"sleep 600\"]\n"
            );
            let built = build(
                &AppComposeInput {
                    name: &name,
                    docker_compose_file: &compose,
                    allowed_envs: &envs,
                    public_logs: true,
                    public_sysinfo: true,
                    owner: Some(&user.app_salt),
                    owner_key: None,
                },
                contract::Isolation::Shared,
            )
            .expect("a valid manifest");
            let app = db
                .upsert_app(&App {
                    app_id: built.app_id,
                    user_id: user.id,
                    name: name.clone(),
                    app_compose: built.bytes,
                    compose_hash: built.compose_hash,
                    env_pubkey: "ab".repeat(32),
                    env_pubkey_signature: "cd".repeat(65),
                })
                .await
                .unwrap();
            let cvm = db
                .create_cvm(
                    NewCvm {
                        name,
                        user_id: user.id,
                        app_id: app.app_id,
                        encrypted_env: Some(vec![7u8; 600]),
                        env_keys: envs.clone(),
                        vcpu: 1,
                        memory: 2048,
                        disk_size: 20,
                    },
                    limits,
                )
                .await
                .unwrap();
            let applied = db
                .transition(&cvm.id, &[CvmStatus::Provisioning], CvmStatus::Stopped, None, None)
                .await
                .unwrap();
            assert!(applied);
        }
    });
}

/// Where the list's time goes, measured in-process on the seeded database
/// with the calls `GET /cvms` makes: one `cvms_of` (every CVM, one query)
/// and one `app` per CVM (today's handler: one blocking-pool round trip
/// each). Medians of 5, in ms.
fn db_breakdown(db_path: &Path, cvms: usize) -> (f64, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = cloud::Db::open(db_path).expect("open the database");
        let user = db.user_by_key(KEY).await.unwrap().expect("the admin");
        let (mut list, mut apps) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let t = Instant::now();
            let rows = db.cvms_of(user.id).await.unwrap();
            list.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(rows.len(), cvms);
            let t = Instant::now();
            for cvm in &rows {
                db.app(&cvm.app_id).await.unwrap().expect("its app");
            }
            apps.push(t.elapsed().as_secs_f64() * 1e3);
        }
        (median(&mut list), median(&mut apps))
    })
}

/// One `GET` over a fresh connection: status code, body, time.
fn get(port: u16, path: &str, key: Option<&str>) -> (u16, Vec<u8>, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let auth = key
        .map(|k| format!("X-API-Key: {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let took = started.elapsed();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..split]);
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, raw[split + 4..].to_vec(), took)
}

/// wrk's latency ("1.23ms", "850.00us", "1.02s") in milliseconds.
fn wrk_ms(v: &str) -> f64 {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().unwrap_or(f64::NAN) * scale
}

struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    non_2xx: u64,
}

fn wrk(url: &str, key: Option<&str>, seconds: u64, connections: u32) -> WrkResult {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if let Some(k) = key {
        cmd.args(["-H", &format!("X-API-Key: {k}")]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("wrk is not installed: run `make deps` (Debian: apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wrk failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
    };
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    WrkResult {
        rps: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN),
        p50_ms: field("50%").map(|v| wrk_ms(&v)).unwrap_or(f64::NAN),
        p99_ms: field("99%").map(|v| wrk_ms(&v)).unwrap_or(f64::NAN),
        requests,
        non_2xx: field("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    }
}

/// `berth up`, ended (SIGTERM, then SIGKILL after 30 s) when the benchmark
/// ends, also when it fails.
struct Up(std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let berth = args
        .get(1)
        .expect("usage: bench_api BERTH_BINARY [CVMS] [SECONDS] [CONNECTIONS]")
        .clone();
    let cvms: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(1000);
    let seconds: u64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(10);
    let connections: u32 = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(16);

    let work = workdir("bench-api");
    let state = work.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let seeding = Instant::now();
    seed(&state.join("berth.db"), cvms);
    eprintln!(
        "seeded {cvms} CVMs (one app each, stopped) through cloud::Db in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    let (list_ms, apps_ms) = db_breakdown(&state.join("berth.db"), cvms);
    println!(
        "in-process, same database: cvms_of (1 call, {cvms} rows) {list_ms:.1} ms; app() x {cvms} (1 call per CVM, as GET /cvms does) {apps_ms:.1} ms"
    );

    let mut up = Up(Command::new(&berth)
        .args(["up", "--isolation", "shared", "--state"])
        .arg(&state)
        .args(["--listen", "127.0.0.1:0"])
        // The node boots nothing: every CVM is stopped.
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("BERTH_ADMIN_API_KEY", KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("berth up"));
    // berth up writes one line per request on stderr: drained (and kept
    // short), as an operator's terminal or journal would take it.
    let output = Arc::new(Mutex::new(String::new()));
    for stream in [
        Box::new(up.0.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(up.0.stderr.take().unwrap()),
    ] {
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let mut o = out.lock().unwrap();
                if o.len() < 64 * 1024 {
                    o.push_str(&line);
                    o.push('\n');
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !output.lock().unwrap().contains("Stop with Ctrl-C") {
        if let Ok(Some(status)) = up.0.try_wait() {
            panic!("berth up exited ({status}):\n{}", output.lock().unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "berth up did not come up:\n{}",
            output.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The port it bound, from the API URL it prints ("API: http://127.0.0.1:PORT/api/v1").
    let port: u16 = output
        .lock()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("API:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|url| url.trim_end_matches("/api/v1").rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .expect("berth up prints its API URL");

    // The list really holds every CVM, and what one request costs alone.
    let (code, body, _) = get(port, "/api/v1/cvms", Some(KEY));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(cvms));
    let (code, fallback, _) = get(port, "/api/v1/no-such-route", None);
    assert_eq!(code, 501, "{}", String::from_utf8_lossy(&fallback));
    serde_json::from_slice::<serde_json::Value>(&fallback).expect("a JSON error");
    let mut alone: Vec<f64> = (0..20)
        .map(|_| get(port, "/api/v1/cvms", Some(KEY)).2.as_secs_f64() * 1e3)
        .collect();
    println!(
        "GET /api/v1/cvms with {cvms} CVMs: {} KiB of JSON, {:.1} ms alone (median of 20, fresh connections)",
        body.len() / 1024,
        median(&mut alone)
    );

    let base = format!("http://127.0.0.1:{port}/api/v1");
    println!(
        "wrk -t2 -c{connections} -d{seconds}s --latency, keep-alive, against the same berth up:"
    );
    let runs = [
        (
            "baseline GET /api/v1/no-such-route (501 JSON, no auth, no DB)",
            format!("{base}/no-such-route"),
            None,
        ),
        (
            "GET /api/v1/auth/me (auth only)",
            format!("{base}/auth/me"),
            Some(KEY),
        ),
        (
            "GET /api/v1/cvms (auth + {cvms} CVMs)",
            format!("{base}/cvms"),
            Some(KEY),
        ),
    ];
    let mut results = Vec::new();
    for (what, url, key) in &runs {
        let r = wrk(url, *key, seconds, connections);
        let what = what.replace("{cvms}", &cvms.to_string());
        println!(
            "  {what:<64} {:>9.1} req/s   p50 {:>8.2} ms   p99 {:>8.2} ms   ({} requests)",
            r.rps, r.p50_ms, r.p99_ms, r.requests
        );
        results.push(r);
    }
    let (baseline, me, list) = (&results[0], &results[1], &results[2]);
    assert_eq!(
        baseline.non_2xx, baseline.requests,
        "the baseline is the fallback route"
    );
    assert_eq!(me.non_2xx, 0, "auth/me answered errors under load");
    assert_eq!(list.non_2xx, 0, "GET /cvms answered errors under load");
    println!(
        "  ratio GET /cvms / baseline: {:.3} (req/s), {:.1}x (p99); auth/me / baseline: {:.2} (req/s)",
        list.rps / baseline.rps,
        list.p99_ms / baseline.p99_ms,
        me.rps / baseline.rps
    );
}
