//! A real distribution registry (Debian's `docker-registry`, distribution
//! 2.8) on a free loopback port.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::pki::TestCa;
use crate::token::TokenIssuer;
use crate::util::{self, ManagedChild, Startup};

/// How the registry authenticates clients.
#[derive(Clone, Debug)]
enum Auth {
    None,
    Htpasswd,
    Token {
        realm: String,
        service: String,
        issuer: String,
        root_pem: String,
    },
}

/// Builder for [`Registry`].
pub struct RegistryBuilder {
    auth: Auth,
    users: Vec<(String, String)>,
    tls: bool,
    log_level: String,
    ip: Ipv4Addr,
}

impl RegistryBuilder {
    /// Listens on `ip` instead of `127.0.0.1` (an address of a network
    /// namespace the test made: it must exist where the test runs).
    pub fn listen_ip(mut self, ip: Ipv4Addr) -> Self {
        self.ip = ip;
        self
    }

    /// Enables htpasswd (HTTP Basic) auth with these users (bcrypt hashes).
    pub fn htpasswd(mut self, users: &[(&str, &str)]) -> Self {
        self.auth = Auth::Htpasswd;
        self.users = users
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        self
    }

    /// Enables token auth: `auth.token` points at `issuer` (realm, service,
    /// issuer name, and its root certificate as `rootcertbundle`).
    pub fn token_auth(mut self, issuer: &TokenIssuer) -> Self {
        self.auth = Auth::Token {
            realm: issuer.realm(),
            service: issuer.service(),
            issuer: issuer.issuer_name(),
            root_pem: issuer.root_cert_pem().to_string(),
        };
        self
    }

    /// Serves HTTPS with a certificate for `127.0.0.1` and `localhost` issued
    /// by a fresh test CA (see [`Registry::ca_cert_path`]).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// distribution's `log.level` (default `info`).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// Starts the registry and waits until `/v2/` answers.
    pub fn start(self) -> Registry {
        Registry::start_with(self)
    }
}

/// A running `docker-registry serve` process, killed on drop.
pub struct Registry {
    /// `None` while stopped (see [`Registry::stop`]).
    child: Option<ManagedChild>,
    /// The binary and config it runs with, for [`Registry::start_again`].
    bin: PathBuf,
    config_path: PathBuf,
    addr: SocketAddr,
    tls: bool,
    workdir: tempfile::TempDir,
    log_path: PathBuf,
    htpasswd_path: Option<PathBuf>,
    ca_path: Option<PathBuf>,
    ca_pem: Option<String>,
    users: Vec<(String, String)>,
    service: Option<String>,
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("yaml string")
}

/// Writes an htpasswd file (bcrypt `$2y$`, cost 4) atomically.
fn write_htpasswd(path: &Path, users: &[(String, String)]) {
    let mut out = String::new();
    for (u, p) in users {
        let h = bcrypt::hash_with_result(p, 4).expect("bcrypt");
        out.push_str(&format!(
            "{u}:{}\n",
            h.format_for_version(bcrypt::Version::TwoY)
        ));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, out).expect("write htpasswd");
    std::fs::rename(&tmp, path).expect("rename htpasswd");
}

/// Spawns `docker-registry serve CONFIG`, logging to `log_path`.
fn spawn(bin: &Path, config_path: &Path, dir: &Path, log_path: &Path) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("open registry log");
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg(config_path)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log);
    // REGISTRY_* variables would override the generated config.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("REGISTRY_") {
            cmd.env_remove(k);
        }
    }
    cmd.spawn().expect("spawn docker-registry")
}

impl Registry {
    /// A builder (no auth, plain HTTP by default).
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder {
            auth: Auth::None,
            users: Vec::new(),
            tls: false,
            log_level: "info".into(),
            ip: Ipv4Addr::LOCALHOST,
        }
    }

    /// Starts a registry without auth, plain HTTP.
    pub fn start() -> Registry {
        Self::builder().start()
    }

    /// Starts a registry with htpasswd auth for `users`.
    pub fn with_htpasswd(users: &[(&str, &str)]) -> Registry {
        Self::builder().htpasswd(users).start()
    }

    /// Starts a registry with token auth delegated to `issuer`.
    pub fn with_token_auth(issuer: &TokenIssuer) -> Registry {
        Self::builder().token_auth(issuer).start()
    }

    fn start_with(b: RegistryBuilder) -> Registry {
        let bin = util::tool("BERTH_DOCKER_REGISTRY", "/usr/bin/docker-registry");
        let workdir = crate::workdir("registry");
        let dir = workdir.path().to_path_buf();
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).expect("storage dir");

        let mut auth_yaml = String::new();
        let mut htpasswd_path = None;
        let mut service = None;
        match &b.auth {
            Auth::None => {}
            Auth::Htpasswd => {
                let p = dir.join("htpasswd");
                write_htpasswd(&p, &b.users);
                auth_yaml = format!(
                    "auth:\n  htpasswd:\n    realm: \"berth-test-registry\"\n    path: {}\n",
                    yaml_str(&p.to_string_lossy())
                );
                htpasswd_path = Some(p);
            }
            Auth::Token {
                realm,
                service: svc,
                issuer,
                root_pem,
            } => {
                let p = dir.join("token-root.pem");
                std::fs::write(&p, root_pem).expect("write rootcertbundle");
                auth_yaml = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    yaml_str(realm),
                    yaml_str(svc),
                    yaml_str(issuer),
                    yaml_str(&p.to_string_lossy())
                );
                service = Some(svc.clone());
            }
        }

        let (mut tls_yaml, mut ca_path, mut ca_pem) = (String::new(), None, None);
        if b.tls {
            let ca = TestCa::new("berth testkit registry CA");
            let leaf = ca.issue_server_cert(&["127.0.0.1", "localhost"]);
            let cert = dir.join("server.crt");
            let key = dir.join("server.key");
            std::fs::write(&cert, &leaf.cert_pem).expect("write cert");
            std::fs::write(&key, &leaf.key_pem).expect("write key");
            tls_yaml = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                yaml_str(&cert.to_string_lossy()),
                yaml_str(&key.to_string_lossy())
            );
            ca_path = Some(ca.write_cert(&dir, "ca.pem"));
            ca_pem = Some(ca.cert_pem().to_string());
        }

        let log_path = dir.join("registry.log");
        let mut last_err = String::new();
        for _attempt in 0..4 {
            let port = crate::free_port_on(b.ip);
            let addr = SocketAddr::from((b.ip, port));
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: {level}\n  formatter: text\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n  cache:\n    blobdescriptor: inmemory\n\
                 http:\n  addr: {addr}\n  secret: {secret}\n{tls_yaml}{auth_yaml}",
                level = yaml_str(&b.log_level),
                storage = yaml_str(&storage.to_string_lossy()),
                secret = yaml_str(&util::random_hex16()),
            );
            let config_path = dir.join("config.yml");
            std::fs::write(&config_path, config).expect("write config.yml");
            let mut child = spawn(&bin, &config_path, &dir, &log_path);
            let probe = if b.tls { None } else { Some("/v2/") };
            match util::wait_ready(&mut child, addr, probe, Duration::from_secs(15)) {
                Startup::Ready => {
                    return Registry {
                        child: Some(ManagedChild { child }),
                        bin,
                        config_path,
                        addr,
                        tls: b.tls,
                        workdir,
                        log_path,
                        htpasswd_path,
                        ca_path,
                        ca_pem,
                        users: b.users,
                        service,
                    };
                }
                Startup::Exited(status) => {
                    let log = util::read_lossy(&log_path);
                    last_err = format!("docker-registry exited ({status}):\n{log}");
                    if log.contains("address already in use") {
                        continue;
                    }
                    break;
                }
                Startup::TimedOut => {
                    let _ = ManagedChild { child };
                    last_err = format!(
                        "docker-registry did not answer within 15 s:\n{}",
                        util::read_lossy(&log_path)
                    );
                    break;
                }
            }
        }
        panic!("testkit: {last_err}");
    }

    /// `http://127.0.0.1:PORT` (or `https://` with TLS).
    pub fn base_url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// `127.0.0.1:PORT`: the registry host as it appears in image references.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the registry serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Path of the test CA certificate (PEM) that signed the TLS certificate,
    /// for `--ca-cert`-style trust. `None` without TLS.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.ca_path.as_deref()
    }

    /// The test CA certificate (PEM). `None` without TLS.
    pub fn ca_cert_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The htpasswd users `(user, password)` (empty unless htpasswd auth).
    pub fn users(&self) -> &[(String, String)] {
        &self.users
    }

    /// Replaces the htpasswd users at runtime (distribution re-reads the
    /// file when its mtime changes), e.g. to rotate an ECR-style password.
    /// Panics unless the registry uses htpasswd auth.
    pub fn set_users(&mut self, users: &[(&str, &str)]) {
        let p = self
            .htpasswd_path
            .as_ref()
            .expect("registry does not use htpasswd auth");
        self.users = users
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        write_htpasswd(p, &self.users);
    }

    /// The token service name, with token auth.
    pub fn token_service(&self) -> Option<&str> {
        self.service.as_deref()
    }

    /// Path of the registry's log (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The registry's log so far.
    pub fn log_contents(&self) -> String {
        util::read_lossy(&self.log_path)
    }

    /// The fixture's working directory (config, certificates, storage, log).
    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// The storage root directory.
    pub fn storage_dir(&self) -> PathBuf {
        self.workdir.path().join("storage")
    }

    /// The process id of `docker-registry`. Panics while stopped.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("the registry is stopped")
            .child
            .id()
    }

    /// Kills the `docker-registry` process (SIGKILL, as a crash or an
    /// abrupt restart would): open connections break mid-response and new
    /// ones are refused until [`Registry::start_again`]. Storage, port,
    /// config and log are kept. Does nothing if already stopped.
    pub fn stop(&mut self) {
        // Dropping the ManagedChild kills and reaps it.
        self.child = None;
    }

    /// Whether the process is running (not [`Registry::stop`]ped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts `docker-registry` again after [`Registry::stop`], on the same
    /// port with the same storage and config, and waits until it answers.
    /// Panics if the port was taken meanwhile or it does not come up in 15 s.
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let log_before = self.log_contents().len();
            let mut child = spawn(
                &self.bin,
                &self.config_path,
                self.workdir.path(),
                &self.log_path,
            );
            let probe = if self.tls { None } else { Some("/v2/") };
            match util::wait_ready(&mut child, self.addr, probe, Duration::from_secs(15)) {
                Startup::Ready => {
                    self.child = Some(ManagedChild { child });
                    return;
                }
                // The killed process's socket may linger for a moment.
                Startup::Exited(_)
                    if std::time::Instant::now() < deadline
                        && self
                            .log_contents()
                            .get(log_before..)
                            .is_some_and(|new| new.contains("address already in use")) =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Startup::Exited(status) => panic!(
                    "testkit: docker-registry did not start again ({status}):\n{}",
                    self.log_contents()
                ),
                Startup::TimedOut => {
                    drop(ManagedChild { child });
                    panic!(
                        "testkit: docker-registry did not answer again within 15 s:\n{}",
                        self.log_contents()
                    );
                }
            }
        }
    }

    /// [`Registry::stop`], wait `down_for`, [`Registry::start_again`].
    pub fn restart(&mut self, down_for: Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.start_again();
    }

    /// A push target for [`crate::images`], using the first htpasswd user if
    /// there is one.
    pub fn push_target(&self) -> crate::images::PushTarget {
        let t = crate::images::PushTarget::new(&self.host_port());
        match self.users.first() {
            Some((u, p)) => t.with_creds(u, p),
            None => t,
        }
    }
}
