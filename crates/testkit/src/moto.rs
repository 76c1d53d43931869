//! moto's standalone server (an AWS API mock), for ECR `GetAuthorizationToken`.
//!
//! What moto 5.x answers (read in moto's `moto/ecr/responses.py`,
//! `get_authorization_token`): the token is **deterministic**, not random:
//! for each registry id (default: the caller's account) the password is
//! `"<registry_id>-auth-token"`, `authorizationToken` is
//! `base64("AWS:<registry_id>-auth-token")`, `proxyEndpoint` is
//! `https://<registry_id>.dkr.ecr.<region>.amazonaws.com`, and `expiresAt` is
//! fixed at 2015-01-01T00:00:00Z (in the past!). The region does not enter
//! the password. moto does not verify SigV4; the account is
//! `MOTO_ACCOUNT_ID` (env), else the `x-moto-account-id` header, else the
//! one mapped to the access key, by default `123456789012`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{self, ManagedChild, Startup};

/// A running `.deps/venv/bin/python -m moto.server`, killed on drop.
pub struct Moto {
    _child: ManagedChild,
    addr: SocketAddr,
    workdir: tempfile::TempDir,
    log_path: PathBuf,
    account_id: String,
}

impl Moto {
    /// moto's default account id.
    pub const DEFAULT_ACCOUNT_ID: &'static str = "123456789012";

    /// Starts moto with its default account.
    pub fn start() -> Moto {
        Self::start_inner(None)
    }

    /// Starts moto with `MOTO_ACCOUNT_ID=account_id`.
    pub fn start_with_account(account_id: &str) -> Moto {
        Self::start_inner(Some(account_id))
    }

    fn start_inner(account: Option<&str>) -> Moto {
        // moto lives in the project's venv (scripts/registry-deps.sh).
        let venv_python = crate::repo_root().join(".deps/venv/bin/python");
        let python = util::tool("BERTH_PYTHON", &venv_python.to_string_lossy());
        let workdir = crate::workdir("moto");
        let log_path = workdir.path().join("moto.log");
        let mut last = String::new();
        for _ in 0..3 {
            let port = crate::free_port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .expect("moto log");
            let mut cmd = Command::new(&python);
            cmd.args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("MOTO_ACCOUNT_ID")
            .current_dir(workdir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
            if let Some(a) = account {
                cmd.env("MOTO_ACCOUNT_ID", a);
            }
            let mut child = cmd.spawn().expect("spawn moto");
            match util::wait_ready(
                &mut child,
                addr,
                Some("/moto-api/data.json"),
                Duration::from_secs(30),
            ) {
                Startup::Ready => {
                    return Moto {
                        _child: ManagedChild { child },
                        addr,
                        workdir,
                        log_path,
                        account_id: account.unwrap_or(Self::DEFAULT_ACCOUNT_ID).to_string(),
                    };
                }
                Startup::Exited(s) => {
                    let log = util::read_lossy(&log_path);
                    last = format!("moto exited ({s}):\n{log}");
                    if log.contains("Address already in use") {
                        continue;
                    }
                    break;
                }
                Startup::TimedOut => {
                    drop(ManagedChild { child });
                    last = format!(
                        "moto did not start in 30 s:\n{}",
                        util::read_lossy(&log_path)
                    );
                    break;
                }
            }
        }
        panic!("testkit: {last}");
    }

    /// `http://127.0.0.1:PORT` (use as the ECR API endpoint).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// The account id moto uses by default for callers.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// Path of moto's log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// moto's log so far.
    pub fn log_contents(&self) -> String {
        util::read_lossy(&self.log_path)
    }

    /// The fixture's working directory.
    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// The ECR password moto hands out for `registry_id` (the account id):
    /// `"<registry_id>-auth-token"`.
    pub fn ecr_password(registry_id: &str) -> String {
        format!("{registry_id}-auth-token")
    }

    /// `(user, password)` that moto's `GetAuthorizationToken` encodes for
    /// `account_id` in `region`: `("AWS", "<account_id>-auth-token")` (the
    /// region does not matter). Configure a [`crate::Registry`] with
    /// htpasswd accepting these to stand in for ECR.
    pub fn ecr_credentials(account_id: &str, _region: &str) -> (String, String) {
        ("AWS".to_string(), Self::ecr_password(account_id))
    }

    /// `<account>.dkr.ecr.<region>.amazonaws.com`, the `proxyEndpoint` host.
    pub fn ecr_registry_host(account_id: &str, region: &str) -> String {
        format!("{account_id}.dkr.ecr.{region}.amazonaws.com")
    }
}
