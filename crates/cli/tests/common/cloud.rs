//! [`Cloud`]: a running `berth up` on `--listen 127.0.0.1:0`, its URL read
//! back from what it prints (no port is chosen before it binds, so tests in
//! other processes never race for one).

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `X-Phala-Version` whose CVM shape the official CLI's deploy reads.
pub const LEGACY_SHAPE: &str = "2025-10-28";

/// A running `berth up`, its output collected. Dropping it stops it
/// (SIGTERM, then SIGKILL after 30 s) and, when the test is failing,
/// prints what it said.
pub struct Cloud {
    child: Child,
    /// The API's base URL as `berth up` announced it (`…/api/v1`); a test
    /// may point it elsewhere (the listener behind a `--public-url`).
    pub api: String,
    /// Where it listens: `http(s)://127.0.0.1:PORT`.
    pub listening: String,
    /// The KMS public key it printed.
    pub kms_pubkey: String,
    output: Arc<Mutex<String>>,
}

impl Cloud {
    /// `berth up --state STATE --listen 127.0.0.1:0 ARGS` on the engine at
    /// `docker_host`. `admin_key` is handed in as `BERTH_ADMIN_API_KEY`;
    /// `None` leaves it unset (`berth up` then writes one to STATE/api-key).
    pub fn command(
        state: &Path,
        docker_host: &str,
        admin_key: Option<&str>,
        args: &[&str],
    ) -> Command {
        // BERTH_TEST_BERTH runs another build of `berth` (a release build,
        // for the memory numbers in BENCHMARKS.md); the tests' own otherwise.
        let bin = std::env::var_os("BERTH_TEST_BERTH")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_berth").into());
        let mut cmd = Command::new(bin);
        cmd.args(["up", "--state"])
            .arg(state)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("DOCKER_HOST", docker_host);
        // The tests of the shared engine say so; those of CVMs with
        // machines of their own ask for `--isolation container`.
        if !args.contains(&"--isolation") {
            cmd.args(["--isolation", "shared"]);
        }
        match admin_key {
            Some(key) => cmd.env("BERTH_ADMIN_API_KEY", key),
            None => cmd.env_remove("BERTH_ADMIN_API_KEY"),
        };
        // BERTH_TEST_DATABASE=postgres: the state's database on PostgreSQL,
        // its URL (with a password) in the environment, never in argv.
        match database_url(state) {
            Some(url) => cmd.env("BERTH_DATABASE_URL", url),
            None => cmd.env_remove("BERTH_DATABASE_URL"),
        };
        cmd
    }

    /// [`Cloud::command`], started; fails the test if it does not come up.
    pub fn start(state: &Path, docker_host: &str, admin_key: Option<&str>, args: &[&str]) -> Cloud {
        Self::spawn(Self::command(state, docker_host, admin_key, args))
            .unwrap_or_else(|text| panic!("berth up exited before it was up:\n{text}"))
    }

    /// Runs `cmd` (a [`Cloud::command`], perhaps with more environment) until
    /// it says it is up; `Err(output)` when it exits first.
    pub fn spawn(mut cmd: Command) -> Result<Cloud, String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("berth up");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = output.lock().unwrap().clone();
            if text.contains("Stop with Ctrl-C") {
                let field = |name: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
                };
                let api = field("API:").expect("berth up prints its API URL");
                let kms_pubkey = field("KMS public key:").expect("berth up prints the KMS key");
                // "Listening on:" only when it differs from the API's origin.
                let listening = field("Listening on:")
                    .unwrap_or_else(|| api.trim_end_matches("/api/v1").to_owned());
                return Ok(Cloud {
                    child,
                    api,
                    listening,
                    kms_pubkey,
                    output,
                });
            }
            if let Ok(Some(_)) = child.try_wait() {
                // Let the readers drain what it said last.
                std::thread::sleep(Duration::from_millis(100));
                return Err(output.lock().unwrap().clone());
            }
            assert!(
                Instant::now() < deadline,
                "berth up did not come up:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.listening
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {}", self.listening))
    }

    /// `berth up`'s process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// `METHOD {api}{path}` as `key`, with `X-Phala-Version: version` when
    /// given and `body` as JSON: (status, body text).
    pub fn request(
        &self,
        key: &str,
        version: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, String) {
        let key_header = format!("X-API-Key: {key}");
        let version_header = version.map(|v| format!("X-Phala-Version: {v}"));
        let body = body.map(Value::to_string);
        let mut args = vec!["-X", method, "-H", &key_header];
        if let Some(v) = &version_header {
            args.extend(["-H", v]);
        }
        if let Some(b) = &body {
            args.extend(["-H", "Content-Type: application/json", "-d", b]);
        }
        super::curl(&args, &format!("{}{path}", self.api))
    }

    /// `METHOD {api}{path}` as `key`, in the current shape: (status, JSON
    /// body or `Null`).
    pub fn json_as(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let (code, text) = self.request(key, None, method, path, body);
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Provisions and commits `name` as `key` (no env: public images or a
    /// mapped registry without login); the CVM's id, without waiting for
    /// its boot.
    pub fn deploy_public_as(&self, key: &str, name: &str, compose: &str) -> String {
        let (code, p) = self.json_as(
            key,
            "POST",
            "/cvms/provision",
            Some(&serde_json::json!({"name": name, "compose_file": {"docker_compose_file": compose, "allowed_envs": []}})),
        );
        assert_eq!(code, 200, "provision {name}: {p}");
        let (code, c) = self.json_as(
            key,
            "POST",
            "/cvms",
            Some(&serde_json::json!({"app_id": p["app_id"], "compose_hash": p["compose_hash"], "name": name})),
        );
        assert_eq!(code, 200, "commit {name}: {c}");
        self.cvm_as(key, name)["id"].as_str().unwrap().to_owned()
    }

    /// `GET /cvms/{id}` as `key`; fails the test unless it answers 200.
    pub fn cvm_as(&self, key: &str, id: &str) -> Value {
        let (code, v) = self.json_as(key, "GET", &format!("/cvms/{id}"), None);
        assert_eq!(code, 200, "{v}");
        v
    }

    /// Waits (at most 120 s) until the CVM's boot has ended; its view then.
    pub fn wait_booted_as(&self, key: &str, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = self.cvm_as(key, id);
            if !v["in_progress"].as_bool().unwrap_or(false) {
                return v;
            }
            assert!(Instant::now() < deadline, "CVM {id} still booting: {v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// [`Cloud::request`] in the legacy shape the official CLI's deploy
    /// reads: (status, JSON body or `Null`).
    pub fn call(&self, key: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (code, text) = self.request(key, Some(LEGACY_SHAPE), method, path, body);
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The OFFICIAL `phala` CLI (npm, pinned in interop/) against this
    /// cloud with `key`, hermetic (its own HOME under `cwd`, no update
    /// check); fails the test if its output holds `secret`.
    pub fn phala(&self, key: &str, cwd: &Path, args: &[&str], secret: &str) -> super::Run {
        let home = cwd.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let out = super::run(
            Command::new(testkit::interop_path("node_modules/.bin/phala"))
                .args(args)
                .current_dir(cwd)
                .env("HOME", &home)
                .env("PHALA_CLOUD_DIR", home.join(".phala-cloud"))
                .env("PHALA_DISABLE_UPDATE_CHECK", "1")
                .env("PHALA_CLOUD_API_PREFIX", &self.api)
                .env("PHALA_CLOUD_API_KEY", key)
                .env("NO_COLOR", "1"),
            b"",
        );
        assert!(
            !out.stdout.contains(secret) && !out.stderr.contains(secret),
            "a secret in phala's output"
        );
        out
    }

    /// `GET {path}` in the legacy shape: (status, JSON or `Null`); fails the
    /// test if the answer holds `secret`.
    pub fn get_without(&self, key: &str, path: &str, secret: &str) -> (u16, Value) {
        let (code, text) = self.request(key, Some(LEGACY_SHAPE), "GET", path, None);
        assert!(!text.contains(secret), "a secret in an API answer");
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Waits (at most 120 s) until the CVM `id` has finished booting, and
    /// returns it; every answer is checked for `secret`.
    pub fn settled(&self, key: &str, id: &str, secret: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (code, v) = self.get_without(key, &format!("/cvms/{id}"), secret);
            assert_eq!(code, 200, "{v}");
            if !v["in_progress"].as_bool().unwrap_or(false) {
                return v;
            }
            assert!(Instant::now() < deadline, "CVM {id} still booting: {v}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The CVM's serial log, through the log URL the API hands out.
    pub fn serial_log(&self, key: &str, id: &str, secret: &str) -> String {
        let (_, v) = self.get_without(key, &format!("/cvms/{id}"), secret);
        let url = format!("{}&ch=serial", v["syslog_endpoint"].as_str().unwrap());
        let out = Command::new("curl").args(["-sf", &url]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGTERM, then waits (at most 30 s) for it to exit; its whole output.
    pub fn stop(mut self) -> String {
        assert!(self.terminate(), "berth up did not stop within 30 s");
        // Let the readers drain what it said last.
        std::thread::sleep(Duration::from_millis(100));
        self.output()
    }

    /// SIGTERM and up to 30 s for the exit; whether it exited.
    fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }
}

/// With `BERTH_TEST_DATABASE=postgres`, the PostgreSQL database of the
/// state folder `state`: a fresh one ([`testkit::pg::fresh_database`]) the
/// first time, the same one whenever this test starts `berth up` on that
/// state again (a restart keeps its data, as with SQLite in the folder).
/// `None`: SQLite, `STATE/berth.db`.
pub fn database_url(state: &Path) -> Option<String> {
    static DATABASES: Mutex<BTreeMap<PathBuf, String>> = Mutex::new(BTreeMap::new());
    if testkit::pg::TestDatabase::from_env() != testkit::pg::TestDatabase::Postgres {
        return None;
    }
    let mut databases = DATABASES.lock().unwrap_or_else(|e| e.into_inner());
    let url = databases
        .entry(state.to_path_buf())
        .or_insert_with(testkit::pg::fresh_database);
    Some(url.clone())
}

/// What the control plane stored for `state`, as bytes to search (e.g. for
/// a secret that must not be there): the SQLite files `STATE/berth.db*`,
/// or a dump of its PostgreSQL database.
pub fn stored_data(state: &Path) -> Vec<u8> {
    if let Some(url) = database_url(state) {
        return testkit::pg::dump(&url).into_bytes();
    }
    let mut stored = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        stored.extend(std::fs::read(state.join(format!("berth.db{suffix}"))).unwrap_or_default());
    }
    stored
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("berth up's output:\n{}", self.output());
        }
    }
}
