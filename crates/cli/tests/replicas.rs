//! The control plane on PostgreSQL with API replicas (issue 21, items 1, 2
//! and 5): a `berth up` (the node and the KMS, and an API) plus a second
//! `berth up --role api` on the same state folder and database, behind
//! Debian's HAProxy, on a private PostgreSQL the test owns and a private
//! Docker engine.
//!
//! - 20 deployments from 4 users at once through the balancer while one
//!   replica is killed (SIGKILL): every deployment ends `running` (clients
//!   retry what failed, as a client does), none is doubled;
//! - PostgreSQL stopped for 5 s during deployments: the API answers 503
//!   with a sentence meanwhile (no hang, no 500), then recovers by itself;
//!   every CVM a client was told was created exists, once;
//! - the database password (a canary) never shows: not in `berth up`'s
//!   output, not in any process's arguments, not in the node's
//!   environment, not in the errors of a wrong password or an unreachable
//!   server; `--database` with a password is refused.

mod common;
use common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use testkit::pg::{PgServer, query};
use testkit::{Dockerd, Haproxy};

const ADMIN_KEY: &str = "berth_test_admin_key_replicas_0123456789";

/// The primary (`berth up`: API, KMS, node) and an API replica on the same
/// state folder and database, and HAProxy in front of both.
struct Replicated {
    primary: Cloud,
    replica: Cloud,
    balancer: Haproxy,
    /// The balancer's API URL (`…/api/v1`).
    api: String,
}

impl Replicated {
    /// `berth up` on `state` with `database_url` (in the environment, as an
    /// operator gives a URL with a password), then `berth up --role api`,
    /// then HAProxy; both APIs hand out the balancer's URL.
    fn start(
        state: &Path,
        engine: &Dockerd,
        database_url: &str,
        primary_args: &[&str],
    ) -> Replicated {
        let port = testkit::free_port();
        let public = format!("http://127.0.0.1:{port}");
        let mut args = vec!["--public-url", &public];
        args.extend_from_slice(primary_args);
        let mut cmd = Cloud::command(state, &engine.host(), Some(ADMIN_KEY), &args);
        cmd.env("BERTH_DATABASE_URL", database_url);
        let primary = Cloud::spawn(cmd).unwrap_or_else(|out| panic!("berth up:\n{out}"));
        let mut cmd = Cloud::command(
            state,
            &engine.host(),
            None,
            &["--role", "api", "--public-url", &public],
        );
        cmd.env("BERTH_DATABASE_URL", database_url);
        let replica = Cloud::spawn(cmd).unwrap_or_else(|out| panic!("berth up --role api:\n{out}"));
        let servers = [&primary, &replica].map(|c| {
            c.listening
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned()
        });
        let balancer = Haproxy::start_on(port, &servers, "/");
        Replicated {
            api: format!("{}/api/v1", balancer.url()),
            primary,
            replica,
            balancer,
        }
    }

    /// Creates `n` users through the balancer: (name, API key) each.
    fn users(&self, n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| {
                let name = format!("tenant{i}");
                let (code, v) = call(
                    &self.api,
                    ADMIN_KEY,
                    "POST",
                    "/users",
                    Some(&json!({"username": name})),
                );
                assert_eq!(code, 200, "create user {name}: {v}");
                (name, v["api_key"].as_str().unwrap().to_owned())
            })
            .collect()
    }
}

/// `METHOD {api}{path}` as `key` with curl (at most 20 s): (status, JSON
/// or `Null`); status 0 when no answer came in time.
fn call(api: &str, key: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let (code, text) = call_text(api, key, method, path, body);
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn call_text(
    api: &str,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let key_header = format!("X-API-Key: {key}");
    let body = body.map(Value::to_string);
    let mut args = vec!["-X", method, "-H", &key_header];
    if let Some(b) = &body {
        args.extend(["-H", "Content-Type: application/json", "-d", b]);
    }
    curl(&args, &format!("{api}{path}"))
}

/// What one deployment's client saw.
#[derive(Debug, Default)]
struct Deployment {
    user: usize,
    name: String,
    /// The client was told the CVM was created (a commit answered 200, or a
    /// retried commit answered that the name is taken: the earlier commit
    /// had landed).
    created: bool,
    /// Every answer that was not a success: (step, status, body).
    errors: Vec<(&'static str, u16, String)>,
}

/// Provisions and commits `name` as `key` through `api`, as a client that
/// retries what failed (every 300 ms, until `patience` is spent).
fn deploy(
    api: &str,
    key: &str,
    user: usize,
    name: &str,
    compose: &str,
    patience: Duration,
) -> Deployment {
    let mut d = Deployment {
        user,
        name: name.to_owned(),
        ..Deployment::default()
    };
    let deadline = Instant::now() + patience;
    let mut tried_commit = false;
    while Instant::now() < deadline {
        let (code, p) = call_text(
            api,
            key,
            "POST",
            "/cvms/provision",
            Some(
                &json!({"name": name, "compose_file": {"docker_compose_file": compose, "allowed_envs": []}}),
            ),
        );
        // A name taken after a commit whose answer was lost: that commit
        // landed (provisioning checks the name too).
        let landed = |code: u16, body: &str| {
            code == 409 && tried_commit && body.contains("already have a CVM named")
        };
        if landed(code, &p) {
            d.created = true;
            return d;
        }
        if code != 200 {
            d.errors.push(("provision", code, p));
            std::thread::sleep(Duration::from_millis(300));
            continue;
        }
        let p: Value = serde_json::from_str(&p).unwrap();
        let (code, c) = call_text(
            api,
            key,
            "POST",
            "/cvms",
            Some(&json!({"app_id": p["app_id"], "compose_hash": p["compose_hash"], "name": name})),
        );
        if code == 200 || landed(code, &c) {
            d.created = true;
            return d;
        }
        tried_commit = true;
        d.errors.push(("commit", code, c));
        std::thread::sleep(Duration::from_millis(300));
    }
    d
}

/// The user's CVMs (through `api`), by name: how many of each, and one's view.
fn cvms_by_name(api: &str, key: &str) -> BTreeMap<String, (usize, Value)> {
    let (code, list) = call(api, key, "GET", "/cvms", None);
    assert_eq!(code, 200, "{list}");
    let mut by = BTreeMap::new();
    for cvm in list.as_array().unwrap() {
        let name = cvm["name"].as_str().unwrap().to_owned();
        let e = by.entry(name).or_insert((0, Value::Null));
        e.0 += 1;
        e.1 = cvm.clone();
    }
    by
}

/// Waits (at most `secs`) until the CVM `name` of `key` has booted; its
/// view then.
fn settled(api: &str, key: &str, name: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (code, v) = call(api, key, "GET", &format!("/cvms/{name}"), None);
        if code == 200 && !v["in_progress"].as_bool().unwrap_or(true) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "CVM {name} still booting after {secs} s: {code} {v}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Every deployment the client was told was created exists exactly once and
/// is `running`; none of any user's names exists twice; a deployment that
/// never succeeded left at most one CVM and saw its errors.
fn check_outcomes(api: &str, users: &[(String, String)], outcomes: &[Deployment]) {
    for (u, (user, key)) in users.iter().enumerate() {
        let by = cvms_by_name(api, key);
        for (name, (n, cvm)) in &by {
            assert_eq!(*n, 1, "{user}'s CVM {name} exists {n} times: {cvm}");
        }
        for d in outcomes.iter().filter(|d| d.user == u) {
            if d.created {
                assert!(
                    by.contains_key(&d.name),
                    "{user} was told {} was created, and it is gone",
                    d.name
                );
                let v = settled(api, key, &d.name, 180);
                assert_eq!(v["status"], "running", "{user}'s {}: {v}", d.name);
            } else {
                assert!(!d.errors.is_empty(), "{}: no success and no error", d.name);
            }
        }
    }
}

fn compose(host: &str) -> String {
    format!(
        "services:\n  app:\n    image: {host}/replicas/app:1\n    network_mode: none\n    command: [\"sh\", \"-c\", \"echo up; sleep 600\"]\n"
    )
}

#[test]
fn twenty_deployments_through_a_balancer_survive_a_killed_replica() {
    let started = Instant::now();
    let pg = PgServer::start();
    let engine = Dockerd::start();
    let (_reg, host, mapped) = busybox_registry(None, "replicas/app");
    let dir = tempdir("replicas-kill");
    let cloud = Replicated::start(
        &dir.join("state"),
        &engine,
        &pg.create_database(),
        &[&mapped, "--max-boots", "20", "--max-boots-per-user", "20"],
    );
    let users = cloud.users(4);
    let compose = compose(&host);

    // 20 deployments at once, 5 per user; the replica is killed once the first
    // deployment is in (the others are in flight then).
    let committed = Arc::new(AtomicUsize::new(0));
    let deployments: Vec<_> = (0..20)
        .map(|i| {
            let (api, key, compose, committed) = (
                cloud.api.clone(),
                users[i % 4].1.clone(),
                compose.clone(),
                committed.clone(),
            );
            std::thread::spawn(move || {
                let d = deploy(
                    &api,
                    &key,
                    i % 4,
                    &format!("app-{i:02}"),
                    &compose,
                    Duration::from_secs(60),
                );
                committed.fetch_add(1, Ordering::SeqCst);
                d
            })
        })
        .collect();
    eventually(60, "a deployment committed", || {
        committed.load(Ordering::SeqCst) >= 1
    });
    let killed_at = committed.load(Ordering::SeqCst);
    let status = Command::new("kill")
        .args(["-KILL", &cloud.replica.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let outcomes: Vec<Deployment> = deployments.into_iter().map(|t| t.join().unwrap()).collect();

    let errors: usize = outcomes.iter().map(|d| d.errors.len()).sum();
    for d in &outcomes {
        assert!(d.created, "{} never deployed: {:?}", d.name, d.errors);
        for (step, code, body) in &d.errors {
            // What a client may see of a replica dying: the balancer's 502
            // (the request was on it), or a 503 from the API.
            assert!(
                (502..=504).contains(code),
                "{} {step}: {code} {body}",
                d.name
            );
        }
    }
    check_outcomes(&cloud.api, &users, &outcomes);
    let running = engine.docker_out(&["ps", "-q", "--filter", "status=running"]);
    assert_eq!(
        running.lines().count(),
        20,
        "containers running in the engine:\n{running}"
    );
    eprintln!(
        "replicas: 20 deployments from 4 users through HAProxy, replica killed after {killed_at} were in; \
         {errors} errors seen and retried by the clients; every CVM running once; {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn postgres_stopped_for_five_seconds_gives_503_then_recovers_with_nothing_lost() {
    let started = Instant::now();
    let mut pg = PgServer::start();
    let engine = Dockerd::start();
    let (_reg, host, mapped) = busybox_registry(None, "replicas/app");
    let dir = tempdir("replicas-pg-down");
    let cloud = Replicated::start(
        &dir.join("state"),
        &engine,
        &pg.create_database(),
        &[&mapped, "--max-boots", "12", "--max-boots-per-user", "12"],
    );
    let users = cloud.users(4);
    let compose = compose(&host);

    // 12 deployments, 3 per user, started 200 ms apart so that some
    // happen before, during and after the outage.
    let deployments: Vec<_> = (0..12)
        .map(|i| {
            let (api, key, compose) = (cloud.api.clone(), users[i % 4].1.clone(), compose.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200 * i as u64));
                deploy(
                    &api,
                    &key,
                    i % 4,
                    &format!("db-app-{i:02}"),
                    &compose,
                    Duration::from_secs(90),
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    pg.stop();
    let down = Instant::now();
    let mut answers = Vec::new();
    while down.elapsed() < Duration::from_secs(5) {
        let asked = Instant::now();
        let (code, v) = call(&cloud.api, ADMIN_KEY, "GET", "/cvms", None);
        answers.push((code, asked.elapsed()));
        assert_eq!(code, 503, "GET /cvms with PostgreSQL down: {code} {v}");
        let sentence = v["detail"].as_str().unwrap_or_default();
        assert!(sentence.len() > 20 && sentence.contains("database"), "{v}");
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "a hang: {:?}",
            asked.elapsed()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    pg.start_again();
    let up = Instant::now();
    eventually(60, "the API answers again once PostgreSQL is back", || {
        call(&cloud.api, ADMIN_KEY, "GET", "/cvms", None).0 == 200
    });
    let recovered = up.elapsed();
    let outcomes: Vec<Deployment> = deployments.into_iter().map(|t| t.join().unwrap()).collect();

    for d in &outcomes {
        assert!(d.created, "{} never deployed: {:?}", d.name, d.errors);
        for (step, code, body) in &d.errors {
            assert!(
                *code == 503,
                "{} {step} while PostgreSQL was away: {code} {body}",
                d.name
            );
        }
    }
    check_outcomes(&cloud.api, &users, &outcomes);

    // A log URL handed out through the balancer verifies on each replica.
    let (key, name) = (&users[0].1, &outcomes[0].name);
    let (_, v) = call(&cloud.api, key, "GET", &format!("/cvms/{name}"), None);
    let url = v["syslog_endpoint"].as_str().unwrap().to_owned();
    for api in [&cloud.primary.listening, &cloud.replica.listening] {
        let direct = url.replace(&cloud.balancer.url(), api);
        let (code, _) = curl(&[], &format!("{direct}&ch=serial"));
        assert_eq!(code, 200, "{direct}");
    }
    let worst = answers.iter().map(|a| a.1).max().unwrap();
    eprintln!(
        "replicas: PostgreSQL down 5 s: {} requests answered 503 (slowest {:.2} s); \
         back {:.1} s after it started again; {} deployments, every one running once; {:.1} s in all",
        answers.len(),
        worst.as_secs_f64(),
        recovered.as_secs_f64(),
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn the_database_password_shows_nowhere() {
    const CANARY: &str = "dbCanaryPw7e3f19a2";
    const WRONG: &str = "wrongCanaryPw55d0c1";
    let pg = PgServer::start();
    // A role of its own with the canary password, owning a fresh database.
    let admin_url = pg.create_database();
    let db = admin_url.rsplit('/').next().unwrap().to_owned();
    query(
        &admin_url,
        &format!("CREATE ROLE berth_app LOGIN PASSWORD '{CANARY}'"),
    )
    .unwrap();
    query(
        &admin_url,
        &format!("ALTER DATABASE {db} OWNER TO berth_app"),
    )
    .unwrap();
    query(&admin_url, "GRANT ALL ON SCHEMA public TO berth_app").unwrap();
    let url = |pw: &str| format!("postgres://berth_app:{pw}@127.0.0.1:{}/{db}", pg.port());
    let dir = tempdir("replicas-canary");
    let state = dir.join("state");

    // On the command line: refused, saying where it goes instead. (This
    // one berth puts the password in its own arguments: the watch of every
    // process's arguments starts after it.)
    let out = berth(
        &[
            "up",
            "--state",
            state.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--database",
            &url(CANARY),
        ],
        b"",
    );
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("BERTH_DATABASE_URL"), "{}", out.stderr);
    assert!(
        !out.stderr.contains(CANARY) && !out.stdout.contains(CANARY),
        "{}",
        out.stderr
    );

    let watch = ArgvWatch::start(CANARY, None, Duration::from_millis(20));

    // A wrong password, an unreachable server: a sentence, no password.
    for (bad, pw) in [
        (url(WRONG), WRONG),
        (
            format!(
                "postgres://berth_app:{CANARY}@127.0.0.1:{}/{db}",
                testkit::free_port()
            ),
            CANARY,
        ),
    ] {
        let mut cmd = Cloud::command(&state, "unix:///nonexistent/docker.sock", None, &[]);
        cmd.env("BERTH_DATABASE_URL", &bad);
        let said = match Cloud::spawn(cmd) {
            Ok(_) => panic!("berth up started on {}", bad.replace(pw, "***")),
            Err(text) => text,
        };
        assert!(
            !said.contains(pw),
            "the password in berth up's error:\n{}",
            said.replace(pw, "***")
        );
        assert!(said.contains("127.0.0.1:"), "{said}");
    }

    // The right one, in the environment: a primary and a replica serve.
    let engine = Dockerd::start();
    let cloud = Replicated::start(&state, &engine, &url(CANARY), &[]);
    let (code, v) = call(
        &cloud.api,
        ADMIN_KEY,
        "POST",
        "/users",
        Some(&json!({"username": "canary-user"})),
    );
    assert_eq!(code, 200, "{v}");
    for c in [&cloud.primary, &cloud.replica] {
        let (code, _) = call(
            &format!("{}/api/v1", c.listening),
            ADMIN_KEY,
            "GET",
            "/auth/me",
            None,
        );
        assert_eq!(code, 200);
    }
    // The node has the URL (it opens the same database) but not in its
    // arguments nor its environment.
    let state_text = state.canonicalize().unwrap().to_string_lossy().into_owned();
    let mut nodes = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<_> = cmdline
            .split(|b| *b == 0)
            .map(String::from_utf8_lossy)
            .collect();
        if args.get(1).is_some_and(|a| a == "node") && args.iter().any(|a| a.contains(&state_text))
        {
            nodes += 1;
            let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
            assert!(
                !environ
                    .windows(CANARY.len())
                    .any(|w| w == CANARY.as_bytes()),
                "the password in the node's environment"
            );
        }
    }
    assert_eq!(nodes, 1, "the node process of this test");
    let scan = watch.finish();
    assert!(scan.passes > 10, "{scan:?}");
    assert!(
        scan.found.is_empty(),
        "the password in a process's arguments: {:?}",
        scan.found
    );
    let replica_said = cloud.replica.stop();
    let primary_said = cloud.primary.stop();
    for said in [&primary_said, &replica_said] {
        assert!(!said.contains(CANARY), "the password in berth up's output");
    }
    // Where the state is, shown without the password.
    let shown = format!(
        "Database:       PostgreSQL at postgres://berth_app:***@127.0.0.1:{}/{db}",
        pg.port()
    );
    assert!(primary_said.contains(&shown), "{primary_said}");
    assert!(replica_said.contains(&shown), "{replica_said}");
}

/// An operator's mistake: a second `berth up` (the node and the KMS) on
/// the same PostgreSQL database, from another state folder. It is refused
/// with a sentence naming the one that runs (two nodes would boot the same
/// CVMs twice); once that one stops, it starts. And the same state folder
/// started again right after a `kill -9` takes its own lease over at once.
#[test]
fn a_second_node_on_one_database_is_refused_naming_the_first() {
    let pg = PgServer::start();
    let url = pg.create_database();
    let engine = Dockerd::start();
    let dir = tempdir("replicas-two-nodes");
    let (a, b) = (dir.join("a"), dir.join("b"));
    let up = |state: &Path| {
        let mut cmd = Cloud::command(state, &engine.host(), Some(ADMIN_KEY), &[]);
        cmd.env("BERTH_DATABASE_URL", &url);
        Cloud::spawn(cmd)
    };
    let first = up(&a).unwrap_or_else(|out| panic!("berth up:\n{out}"));
    let said = match up(&b) {
        Ok(_) => panic!("a second node started on the same database"),
        Err(said) => said,
    };
    assert!(
        said.contains("another `berth up` runs the node of this database"),
        "{said}"
    );
    let a_shown = a.canonicalize().unwrap().display().to_string();
    assert!(said.contains(&format!("state {a_shown}")), "{said}");
    assert!(said.contains("--role api"), "the hint: {said}");
    first.stop();
    let second = up(&b).unwrap_or_else(|out| panic!("berth up after the first stopped:\n{out}"));
    // kill -9: no lease given back; the same state folder takes it over.
    unsafe { libc::kill(second.pid() as i32, libc::SIGKILL) };
    // Its node and KMS go with it; the state folder's lock is free once
    // the process is gone.
    let gone = Instant::now();
    while Path::new(&format!("/proc/{}", second.pid())).exists()
        && std::fs::read_to_string(format!("/proc/{}/stat", second.pid()))
            .is_ok_and(|s| !s.contains(") Z "))
        && gone.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let again = up(&b).unwrap_or_else(|out| panic!("berth up right after kill -9:\n{out}"));
    let (code, _) = call(&again.api, ADMIN_KEY, "GET", "/auth/me", None);
    assert_eq!(code, 200);
}
