//! `make bench` (API): requests per second and latency of the control
//! plane's API under load, with `wrk` (Debian's package) as the load
//! generator, against a real `berth up`, on SQLite and, when
//! `BERTH_TEST_PG_URL` names a PostgreSQL server (`scripts/with-pg.sh`
//! sets it), on a fresh database of that server too.
//!
//! The database is seeded before `berth up` starts, through the control
//! plane's own database API (`cloud::Db::import_stopped_cvms`, one
//! transaction per 2,000 rows): one user, and N CVMs, each with its own app
//! (a real `app-compose.json` built by `cloud::appcompose`), all `stopped`
//! so the node has nothing to boot (it runs without an engine). Routes of
//! the same server, same generator and settings:
//!
//! - baseline: `GET /api/v1/no-such-route`, the API's fallback (a 501 JSON
//!   error): no authentication, no database, the same listener, router and
//!   request log;
//! - `GET /api/v1/auth/me`: authentication only;
//! - `GET /api/v1/cvms/paginated?page=P&page_size=50` (P the middle page)
//!   and page 1, and `GET /api/v1/apps?page=P&page_size=50` (what the
//!   official CLI's `cvms list` calls);
//! - `GET /api/v1/cvms`: the full list (streamed), the peer of the page:
//!   the way to read CVMs before pages existed.
//!
//! Usage: bench_api BERTH_BINARY [CVMS] [SECONDS] [CONNECTIONS]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::bench::median;
use testkit::workdir;

const KEY: &str = "berth_bench_admin_key_0123456789abcdef";

/// Where the control plane keeps its state for one run.
enum Engine {
    Sqlite,
    /// A fresh database's URL (password included: given to `berth up` in
    /// its environment, never printed).
    Postgres(String),
}

impl Engine {
    fn name(&self) -> &'static str {
        match self {
            Engine::Sqlite => "SQLite",
            Engine::Postgres(_) => "PostgreSQL",
        }
    }
}

fn open(engine: &Engine, state: &std::path::Path) -> cloud::Db {
    use cloud::db::{DbLocation, DbOptions, DbUrl};
    let location = match engine {
        Engine::Sqlite => DbLocation::Sqlite(state.join("berth.db")),
        Engine::Postgres(url) => DbLocation::Postgres(DbUrl::parse(url).expect("a PostgreSQL URL")),
    };
    cloud::Db::open_location(&location, DbOptions::default()).expect("open the database")
}

fn seed(engine: &Engine, state: &std::path::Path, cvms: usize) {
    use cloud::appcompose::{AppComposeInput, build};
    use cloud::db::{App, NewCvm};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = open(engine, state);
        let user = db.create_user("admin", KEY, true).await.unwrap();
        // Another user's CVMs share the table, as on a real cloud.
        let other = db.create_user("neighbour", "berth_bench_neighbour_key_0123456789", false).await.unwrap();
        let envs = vec!["DSTACK_DOCKER_USERNAME".to_owned(), "DSTACK_DOCKER_PASSWORD".to_owned(), "GREETING".to_owned()];
        let mut rows = Vec::new();
        for i in 0..cvms + cvms / 10 {
            let owner = if i < cvms { &user } else { &other };
            let name = format!("bench-app-{i:05}");
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
                    owner: Some(&owner.app_salt),
                    owner_key: None,
                },
                contract::Isolation::Shared,
            )
            .expect("a valid manifest");
            let app = App {
                app_id: built.app_id,
                user_id: owner.id,
                name: name.clone(),
                app_compose: built.bytes,
                compose_hash: built.compose_hash,
                env_pubkey: "ab".repeat(32),
                env_pubkey_signature: "cd".repeat(65),
            };
            let cvm = NewCvm {
                name,
                user_id: owner.id,
                app_id: app.app_id.clone(),
                encrypted_env: Some(vec![7u8; 600]),
                env_keys: envs.clone(),
                vcpu: 1,
                memory: 2048,
                disk_size: 20,
            };
            rows.push((app, cvm));
            if rows.len() == 2000 {
                db.import_stopped_cvms(std::mem::take(&mut rows)).await.unwrap();
            }
        }
        db.import_stopped_cvms(rows).await.unwrap();
    });
    if let Engine::Postgres(url) = engine {
        // What PostgreSQL's autovacuum does after a bulk insert (its
        // insert threshold is passed many times over), done now rather
        // than whenever it wakes: statistics for the planner, and the
        // visibility map that lets a page's offset walk the index alone.
        testkit::pg::query(url, "VACUUM ANALYZE").expect("VACUUM ANALYZE");
    }
}

/// The time to the first byte of a body and to its last, over a fresh
/// connection, and its length.
fn timed_get(port: u16, path: &str) -> (Duration, Duration, usize) {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = None;
    let mut total = 0;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        first.get_or_insert_with(|| started.elapsed());
        total += n;
    }
    (first.unwrap_or_default(), started.elapsed(), total)
}

/// The resident memory of process `pid` now and at its peak, MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One `GET` over a fresh connection (HTTP/1.0: the body is not chunked,
/// the server closes when it is done): status code, body, time.
fn get(port: u16, path: &str, key: Option<&str>) -> (u16, Vec<u8>, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let auth = key
        .map(|k| format!("X-API-Key: {k}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}\r\n").unwrap();
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
    let cvms: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(10_000);
    let seconds: u64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(10);
    let connections: u32 = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(16);
    let mut engines = vec![Engine::Sqlite];
    if std::env::var_os(testkit::pg::PG_URL_VAR).is_some() {
        engines.push(Engine::Postgres(testkit::pg::fresh_database()));
    } else {
        println!(
            "(PostgreSQL skipped: {} is not set; run under scripts/with-pg.sh)",
            testkit::pg::PG_URL_VAR
        );
    }
    for engine in &engines {
        run(&berth, engine, cvms, seconds, connections);
    }
}

fn run(berth: &str, engine: &Engine, cvms: usize, seconds: u64, connections: u32) {
    println!("-- {} --", engine.name());
    let work = workdir("bench-api");
    let state = work.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let seeding = Instant::now();
    seed(engine, &state, cvms);
    println!(
        "seeded {cvms} CVMs of the user (+{} of another user), one app each, stopped, through cloud::Db in {:.1} s",
        cvms / 10,
        seeding.elapsed().as_secs_f64()
    );

    let mut cmd = Command::new(berth);
    cmd.args(["up", "--isolation", "shared", "--state"])
        .arg(&state)
        .args(["--listen", "127.0.0.1:0"])
        // The node boots nothing: every CVM is stopped.
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("BERTH_ADMIN_API_KEY", KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Engine::Postgres(url) = engine {
        cmd.env("BERTH_DATABASE_URL", url);
    }
    let mut up = Up(cmd.spawn().expect("berth up"));
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

    // The lists really hold every CVM of the user, and nobody else's.
    let middle = cvms.div_ceil(50).div_ceil(2).max(1);
    let (code, body, _) = get(port, "/api/v1/cvms", Some(KEY));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(cvms));
    let (code, body, _) = get(
        port,
        &format!("/api/v1/cvms/paginated?page={middle}&page_size=50"),
        Some(KEY),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["total"], cvms);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(50.min(cvms)));
    let (code, fallback, _) = get(port, "/api/v1/no-such-route", None);
    assert_eq!(code, 501, "{}", String::from_utf8_lossy(&fallback));
    let pid = up.0.id();
    let (rss_before, _) = rss_mib(pid);
    let mut firsts = Vec::new();
    let mut wholes = Vec::new();
    let mut len = 0;
    for _ in 0..10 {
        let (first, whole, n) = timed_get(port, "/api/v1/cvms");
        firsts.push(first.as_secs_f64() * 1e3);
        wholes.push(whole.as_secs_f64() * 1e3);
        len = n;
    }
    let (rss_after, hwm) = rss_mib(pid);
    println!(
        "GET /api/v1/cvms, {cvms} CVMs, {} KiB of JSON, alone (median of 10, fresh connections): first byte {:.1} ms, last byte {:.1} ms; berth up RSS {rss_before:.0} -> {rss_after:.0} MiB (peak {hwm:.0} MiB)",
        len / 1024,
        median(&mut firsts),
        median(&mut wholes),
    );
    let mut alone: Vec<f64> = (0..20)
        .map(|_| {
            get(
                port,
                &format!("/api/v1/cvms/paginated?page={middle}&page_size=50"),
                Some(KEY),
            )
            .2
            .as_secs_f64()
                * 1e3
        })
        .collect();
    println!(
        "GET /api/v1/cvms/paginated?page={middle}&page_size=50: {:.1} ms alone (median of 20, fresh connections)",
        median(&mut alone)
    );

    let base = format!("http://127.0.0.1:{port}/api/v1");
    println!(
        "wrk -t2 -c{connections} -d{seconds}s --latency, keep-alive, against the same berth up ({}):",
        engine.name()
    );
    let runs = [
        (
            "baseline GET /no-such-route (501 JSON, no auth, no DB)".to_owned(),
            format!("{base}/no-such-route"),
            None,
        ),
        (
            "GET /auth/me (auth only)".to_owned(),
            format!("{base}/auth/me"),
            Some(KEY),
        ),
        (
            format!("GET /cvms/paginated?page={middle}&page_size=50"),
            format!("{base}/cvms/paginated?page={middle}&page_size=50"),
            Some(KEY),
        ),
        (
            "GET /cvms/paginated?page=1&page_size=50".to_owned(),
            format!("{base}/cvms/paginated?page=1&page_size=50"),
            Some(KEY),
        ),
        (
            format!("GET /apps?page={middle}&page_size=50 (the CLI's list)"),
            format!("{base}/apps?page={middle}&page_size=50"),
            Some(KEY),
        ),
        (
            format!("GET /cvms (all {cvms}, streamed)"),
            format!("{base}/cvms"),
            Some(KEY),
        ),
    ];
    let mut results = Vec::new();
    for (what, url, key) in &runs {
        let r = wrk(url, *key, seconds, connections);
        println!(
            "  {what:<52} {:>9.1} req/s   p50 {:>8.2} ms   p99 {:>8.2} ms   ({} requests)",
            r.rps, r.p50_ms, r.p99_ms, r.requests
        );
        results.push(r);
    }
    let (_, hwm) = rss_mib(pid);
    assert_eq!(
        results[0].non_2xx, results[0].requests,
        "the baseline is the fallback route"
    );
    for (r, (what, _, _)) in results.iter().zip(&runs).skip(1) {
        assert_eq!(r.non_2xx, 0, "{what} answered errors under load");
    }
    let (page, full) = (&results[2], &results[5]);
    println!(
        "  before/after: a page of 50 vs the full list of {cvms}: {:.0}x the requests per second, p99 {:.2} ms vs {:.2} ms; berth up's peak RSS {hwm:.0} MiB",
        page.rps / full.rps,
        page.p99_ms,
        full.p99_ms
    );
    println!(
        "  goals: page >= 2,000 req/s and p99 < 20 ms: {}; /auth/me >= 20,000 req/s: {}",
        if page.rps >= 2000.0 && page.p99_ms < 20.0 {
            "met"
        } else {
            "NOT met"
        },
        if results[1].rps >= 20_000.0 {
            "met"
        } else {
            "NOT met"
        },
    );
    drop(up);
}
