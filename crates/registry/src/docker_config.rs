//! [`DockerConfig`]: registry logins from the Docker client's `config.json`,
//! for developers' machines (the CVM uses [`crate::credentials`] instead).
//!
//! Lookup for a registry follows the Docker CLI: a `credHelpers` entry for
//! that registry wins; otherwise a `credsStore` (the default helper) is
//! asked; otherwise the `auths` entry is used (`auth`, base64 of
//! `user:password`, or separate `username`/`password` fields). Keys may be
//! written with a scheme and path (`https://index.docker.io/v1/`); they are
//! normalised like registry names, so every Docker Hub alias means
//! `docker.io`.
//!
//! Credential helpers speak the docker-credential-helpers protocol:
//! `docker-credential-NAME get`, the server URL on stdin, JSON
//! `{"ServerURL","Username","Secret"}` on stdout. The URL is the only thing
//! we send, and it goes on stdin, never on the command line. The helper's
//! output is held in zeroizing buffers and never copied into an error: a
//! failing helper is reported by name and exit status only. The helper's
//! "credentials not found in native keychain" answer means "no login".
//!
//! Not supported, on purpose: `identitytoken` entries and helper answers
//! with the `<token>` username (OAuth refresh tokens that Docker Desktop
//! stores after a browser login). Using one needs an OAuth token exchange
//! with the registry, which is the pull engine's business; for now such an
//! entry yields no login, and a user can run `docker login` with a password
//! or access token instead.
//!
//! A helper runs as a child process of the async runtime (`tokio::process`,
//! killed when dropped) with [`HELPER_TIMEOUT`]: one that hangs (waiting for
//! a user prompt or an unlocked keychain) fails by name instead of blocking
//! the pull. No lock is held while it runs.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use base64::Engine;
use contract::SecretValue;
use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

use crate::credentials::DockerLogin;
use crate::reference::{DOCKER_HUB, normalize_registry, same_registry};

/// The server URL under which `docker login` stores Docker Hub logins.
const DOCKER_HUB_SERVER_URL: &str = "https://index.docker.io/v1/";

/// Longest a credential helper may take to answer.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// What a credential helper prints when it has no login for the URL.
const HELPER_NOT_FOUND: &str = "credentials not found in native keychain";

/// A parsed Docker client configuration: the parts that say how to log in.
#[derive(Clone)]
pub struct DockerConfig {
    path: PathBuf,
    auths: BTreeMap<String, AuthEntry>,
    cred_helpers: BTreeMap<String, String>,
    creds_store: Option<String>,
    helper_search_path: Option<OsString>,
}

/// The on-disk shape of `config.json` (only the fields we use).
#[derive(Deserialize, Default)]
#[serde(default)]
struct ConfigFile {
    auths: BTreeMap<String, AuthEntry>,
    #[serde(rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(rename = "credsStore")]
    creds_store: Option<String>,
}

/// One `auths` entry. `identitytoken` is deliberately not read (see the
/// module documentation).
#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct AuthEntry {
    #[serde(deserialize_with = "optional_secret")]
    auth: Option<SecretValue>,
    username: Option<String>,
    #[serde(deserialize_with = "optional_secret")]
    password: Option<SecretValue>,
}

/// A credential helper's answer to `get`.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default, deserialize_with = "secret")]
    secret: SecretValue,
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<SecretValue, D::Error> {
    String::deserialize(d).map(SecretValue::new)
}

fn optional_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretValue>, D::Error> {
    Option::<String>::deserialize(d).map(|s| s.map(SecretValue::new))
}

impl DockerConfig {
    /// The directory the Docker CLI reads its configuration from:
    /// `$DOCKER_CONFIG`, else `$HOME/.docker`.
    pub fn default_dir() -> Option<PathBuf> {
        std::env::var_os("DOCKER_CONFIG")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|home| !home.is_empty())
                    .map(|home| Path::new(&home).join(".docker"))
            })
    }

    /// Reads `dir/config.json`. A missing file is an empty configuration
    /// (no logins), as it is for the Docker CLI.
    pub fn load(dir: &Path) -> Result<Self, DockerConfigError> {
        let path = dir.join("config.json");
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => Zeroizing::new(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Self::from_file(path, ConfigFile::default()));
            }
            Err(source) => return Err(DockerConfigError::Read { path, source }),
        };
        Self::from_json(&bytes, path)
    }

    /// Parses the contents of a `config.json`; `path` is used in errors.
    pub fn from_json(bytes: &[u8], path: PathBuf) -> Result<Self, DockerConfigError> {
        // serde_json's messages can quote the offending value, which may be
        // a secret: keep only the position.
        let file: ConfigFile =
            serde_json::from_slice(bytes).map_err(|e| DockerConfigError::Parse {
                path: path.clone(),
                line: e.line(),
                column: e.column(),
            })?;
        Ok(Self::from_file(path, file))
    }

    fn from_file(path: PathBuf, file: ConfigFile) -> Self {
        Self {
            path,
            auths: file.auths,
            cred_helpers: file.cred_helpers,
            creds_store: file.creds_store.filter(|s| !s.is_empty()),
            helper_search_path: None,
        }
    }

    /// Looks for `docker-credential-*` helpers on `path` (a `PATH`-style
    /// list of directories) instead of the process's `PATH`.
    pub fn with_helper_search_path(mut self, path: impl Into<OsString>) -> Self {
        self.helper_search_path = Some(path.into());
        self
    }

    /// The path of the `config.json` this configuration came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The login for `registry` (a normalised registry name such as
    /// `docker.io` or `ghcr.io`), or `None` if the configuration has none.
    /// May run a credential helper (at most [`HELPER_TIMEOUT`]).
    pub async fn login_for(
        &self,
        registry: &str,
    ) -> Result<Option<DockerLogin>, DockerConfigError> {
        let registry = normalize_registry(registry).unwrap_or_else(|| registry.to_owned());
        let helper = self
            .cred_helpers
            .iter()
            .find(|(key, _)| key_matches(key, &registry))
            .map(|(_, helper)| helper)
            .or(self.creds_store.as_ref());
        if let Some(helper) = helper {
            return self.login_from_helper(helper, &registry).await;
        }
        // An exact key (as `docker login` writes it) wins over other
        // spellings of the same registry.
        let exact = if registry == DOCKER_HUB {
            DOCKER_HUB_SERVER_URL
        } else {
            &registry
        };
        let entry = self.auths.get_key_value(exact).or_else(|| {
            self.auths
                .iter()
                .find(|(key, _)| key_matches(key, &registry))
        });
        match entry {
            Some((key, entry)) => self.login_from_entry(key, entry, &registry),
            None => Ok(None),
        }
    }

    fn login_from_entry(
        &self,
        key: &str,
        entry: &AuthEntry,
        registry: &str,
    ) -> Result<Option<DockerLogin>, DockerConfigError> {
        let invalid = || DockerConfigError::InvalidAuth {
            path: self.path.clone(),
            key: key.to_owned(),
        };
        if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
            let decoded = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(auth.expose().trim())
                    .map_err(|_| invalid())?,
            );
            let decoded = std::str::from_utf8(&decoded).map_err(|_| invalid())?;
            let (username, password) = decoded.split_once(':').ok_or_else(invalid)?;
            if username.is_empty() {
                return Err(invalid());
            }
            return Ok(Some(DockerLogin {
                registry: registry.to_owned(),
                username: username.to_owned(),
                password: SecretValue::from(password),
            }));
        }
        match (&entry.username, &entry.password) {
            (Some(username), Some(password)) if !username.is_empty() => Ok(Some(DockerLogin {
                registry: registry.to_owned(),
                username: username.clone(),
                password: password.clone(),
            })),
            // Empty entries (`{}`, left behind when a credsStore is used)
            // and identity-token-only entries: no login.
            _ => Ok(None),
        }
    }

    async fn login_from_helper(
        &self,
        helper: &str,
        registry: &str,
    ) -> Result<Option<DockerLogin>, DockerConfigError> {
        let server_url = if registry == DOCKER_HUB {
            DOCKER_HUB_SERVER_URL
        } else {
            registry
        };
        let Some(answer) = run_helper(
            helper,
            server_url,
            self.helper_search_path.as_deref(),
            HELPER_TIMEOUT,
        )
        .await?
        else {
            return Ok(None);
        };
        // `<token>` means the secret is an identity token (not supported).
        if answer.username.is_empty() || answer.username == "<token>" || answer.secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(DockerLogin {
            registry: registry.to_owned(),
            username: answer.username,
            password: answer.secret,
        }))
    }
}

impl std::fmt::Debug for DockerConfig {
    /// Shows which registries have entries and which helpers are
    /// configured, never an entry's contents.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerConfig")
            .field("path", &self.path)
            .field("auths", &self.auths.keys().collect::<Vec<_>>())
            .field("cred_helpers", &self.cred_helpers)
            .field("creds_store", &self.creds_store)
            .finish_non_exhaustive()
    }
}

/// Whether a `config.json` key (`ghcr.io`, `https://index.docker.io/v1/`)
/// names `registry`.
fn key_matches(key: &str, registry: &str) -> bool {
    normalize_registry(key).is_some_and(|key| same_registry(&key, registry))
}

/// Runs `docker-credential-<helper> get` with `server_url` on stdin, for at
/// most `timeout`. `Ok(None)` when the helper has no login for the URL.
async fn run_helper(
    helper: &str,
    server_url: &str,
    search_path: Option<&std::ffi::OsStr>,
    timeout: Duration,
) -> Result<Option<HelperAnswer>, DockerConfigError> {
    let program = format!("docker-credential-{helper}");
    // The name comes from a file: do not let it become a path.
    if helper.is_empty() || helper.contains(['/', '\\']) || helper.starts_with('.') {
        return Err(DockerConfigError::InvalidHelperName { program });
    }
    let mut command = Command::new(&program);
    command
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(path) = search_path {
        // std resolves the program with the child's PATH when it is set.
        command.env("PATH", path);
    }
    let io_error = |source| DockerConfigError::HelperIo {
        program: program.clone(),
        source,
    };
    let mut child = command.spawn().map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            DockerConfigError::HelperNotFound {
                program: program.clone(),
            }
        } else {
            io_error(source)
        }
    })?;
    let talk = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that exits without reading closes the pipe; its exit
            // status then tells what happened.
            match stdin.write_all(server_url.as_bytes()).await {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(e),
                _ => {}
            }
        }
        child.wait_with_output().await
    };
    // On a timeout the child is dropped, and so killed (kill_on_drop).
    let output = match tokio::time::timeout(timeout, talk).await {
        Ok(output) => output.map_err(io_error)?,
        Err(_) => {
            return Err(DockerConfigError::HelperTimedOut {
                program,
                after_secs: timeout.as_secs(),
            });
        }
    };
    let stdout = Zeroizing::new(output.stdout);
    let stderr = Zeroizing::new(output.stderr);
    if !output.status.success() {
        let says_not_found = |bytes: &[u8]| {
            std::str::from_utf8(bytes).is_ok_and(|text| text.trim() == HELPER_NOT_FOUND)
        };
        if says_not_found(&stdout) || says_not_found(&stderr) {
            return Ok(None);
        }
        return Err(DockerConfigError::HelperFailed {
            program,
            status: output.status.to_string(),
        });
    }
    serde_json::from_slice(&stdout)
        .map(Some)
        .map_err(|_| DockerConfigError::HelperBadAnswer { program })
}

/// Why no login could be read from the Docker client configuration. No
/// message contains a secret or a helper's output.
#[derive(Debug, thiserror::Error)]
pub enum DockerConfigError {
    /// `config.json` exists but cannot be read.
    #[error("could not read Docker config {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// `config.json` is not valid JSON of the expected shape.
    #[error("Docker config {} is not valid JSON with the expected fields (line {line}, column {column})", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where the problem is.
        line: usize,
        /// Where the problem is.
        column: usize,
    },
    /// An `auths` entry's `auth` field is not base64 of `user:password`.
    #[error("the `auth` field for `{key}` in {} is not base64 of `username:password`; run `docker login` again", .path.display())]
    InvalidAuth {
        /// The file.
        path: PathBuf,
        /// The `auths` key, e.g. `https://index.docker.io/v1/`.
        key: String,
    },
    /// A helper name that would not be a plain program name.
    #[error(
        "credential helper `{program}` is not a plain program name; fix credHelpers or credsStore in the Docker config"
    )]
    InvalidHelperName {
        /// `docker-credential-NAME`.
        program: String,
    },
    /// The helper program is not on `PATH`.
    #[error("credential helper `{program}` is named in the Docker config but is not on PATH")]
    HelperNotFound {
        /// `docker-credential-NAME`.
        program: String,
    },
    /// The helper could not be started or talked to.
    #[error("could not run credential helper `{program}`: {source}")]
    HelperIo {
        /// `docker-credential-NAME`.
        program: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The helper failed for a reason other than "not found".
    #[error(
        "credential helper `{program}` failed ({status}); run `{program} get` by hand to see why"
    )]
    HelperFailed {
        /// `docker-credential-NAME`.
        program: String,
        /// Its exit status, e.g. `exit status: 1`.
        status: String,
    },
    /// The helper did not answer in time (it was killed).
    #[error(
        "credential helper `{program}` did not answer within {after_secs} s (waiting for a prompt or a locked keychain?); run `{program} get` by hand to see why"
    )]
    HelperTimedOut {
        /// `docker-credential-NAME`.
        program: String,
        /// The timeout, in seconds.
        after_secs: u64,
    },
    /// The helper succeeded but did not print the expected JSON.
    #[error("credential helper `{program}` answered with something other than the credential JSON")]
    HelperBadAnswer {
        /// `docker-credential-NAME`.
        program: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const CANARY: &str = "canary-pw-7Hq!x";

    /// The fake helper: a real process speaking the real protocol. It
    /// refuses any argument list other than `get`, so a secret on the
    /// command line would fail the tests.
    const HELPER: &str = r#"#!/bin/sh
[ "$#" -eq 1 ] && [ "$1" = get ] || { echo "bad arguments" >&2; exit 3; }
read -r url || [ -n "$url" ] || exit 4
case "$url" in
  ghcr.io) printf '{"ServerURL":"ghcr.io","Username":"helper-user","Secret":"canary-pw-7Hq!x"}\n' ;;
  https://index.docker.io/v1/) printf '{"ServerURL":"%s","Username":"hub-user","Secret":"canary-pw-7Hq!x"}\n' "$url" ;;
  token.example) printf '{"ServerURL":"token.example","Username":"<token>","Secret":"canary-pw-7Hq!x"}\n' ;;
  broken.example) echo "failure mentioning canary-pw-7Hq!x"; echo "canary-pw-7Hq!x" >&2; exit 2 ;;
  garbage.example) echo "not json canary-pw-7Hq!x" ;;
  hang.example) exec /bin/sleep 60 ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"#;

    /// Directory holding `docker-credential-testhelper`, written once per
    /// test process before any test can spawn it (so no concurrently
    /// forked child holds the file open for writing: ETXTBSY).
    fn helper_dir() -> &'static Path {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            const PREFIX: &str = "berth-registry-helpers-";
            // Remove directories left by earlier test processes that are gone.
            for entry in std::fs::read_dir(std::env::temp_dir())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name();
                let pid = name.to_str().and_then(|n| n.strip_prefix(PREFIX));
                if let Some(pid) = pid
                    && !Path::new("/proc").join(pid).exists()
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
            let dir = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("docker-credential-testhelper");
            std::fs::write(&path, HELPER).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            dir
        })
    }

    /// A config directory removed on drop.
    struct ConfigDir(PathBuf);

    impl ConfigDir {
        fn with(config: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "berth-registry-config-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("config.json"), config).unwrap();
            Self(dir)
        }

        fn load(&self) -> DockerConfig {
            DockerConfig::load(&self.0)
                .unwrap()
                .with_helper_search_path(helper_dir())
        }
    }

    impl Drop for ConfigDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    /// `login_for`, run to completion.
    fn lookup(
        config: &DockerConfig,
        registry: &str,
    ) -> Result<Option<DockerLogin>, DockerConfigError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(config.login_for(registry))
    }

    fn login(config: &DockerConfig, registry: &str) -> Option<(String, String, String)> {
        lookup(config, registry)
            .unwrap()
            .map(|l| (l.registry, l.username, l.password.expose().to_owned()))
    }

    #[test]
    fn missing_config_means_no_logins() {
        let dir = ConfigDir::with("{}");
        std::fs::remove_file(dir.0.join("config.json")).unwrap();
        let config = dir.load();
        assert_eq!(login(&config, "docker.io"), None);
    }

    #[test]
    fn auths_with_base64_auth() {
        let dir = ConfigDir::with(&format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "https://ghcr.io": {{"auth": "{}"}},
                "localhost:5000": {{"auth": "{}"}}
            }}}}"#,
            b64(&format!("alice:{CANARY}")),
            b64("bob:pass:with:colons"),
            b64("carol:"),
        ));
        let config = dir.load();
        let hub = Some(("docker.io".into(), "alice".into(), CANARY.into()));
        assert_eq!(login(&config, "docker.io"), hub);
        assert_eq!(login(&config, "index.docker.io"), hub);
        assert_eq!(login(&config, "registry-1.docker.io"), hub);
        assert_eq!(
            login(&config, "ghcr.io"),
            Some(("ghcr.io".into(), "bob".into(), "pass:with:colons".into()))
        );
        assert_eq!(
            login(&config, "localhost:5000"),
            Some(("localhost:5000".into(), "carol".into(), String::new()))
        );
        assert_eq!(login(&config, "quay.io"), None);
    }

    #[test]
    fn auths_with_username_and_password_fields() {
        let dir = ConfigDir::with(&format!(
            r#"{{"auths": {{
                "registry-1.docker.io": {{"username": "alice", "password": "{CANARY}"}},
                "http://registry.example.com:5000/v2/": {{"username": "dave", "password": "pw"}},
                "quay.io": {{}},
                "token.example": {{"identitytoken": "refresh-token"}}
            }}}}"#
        ));
        let config = dir.load();
        assert_eq!(
            login(&config, "docker.io"),
            Some(("docker.io".into(), "alice".into(), CANARY.into()))
        );
        assert_eq!(
            login(&config, "registry.example.com:5000"),
            Some((
                "registry.example.com:5000".into(),
                "dave".into(),
                "pw".into()
            ))
        );
        assert_eq!(login(&config, "quay.io"), None);
        assert_eq!(login(&config, "token.example"), None);
    }

    #[test]
    fn exact_docker_hub_key_wins() {
        let dir = ConfigDir::with(&format!(
            r#"{{"auths": {{
                "docker.io": {{"auth": "{}"}},
                "https://index.docker.io/v1/": {{"auth": "{}"}}
            }}}}"#,
            b64("other:x"),
            b64("alice:y"),
        ));
        assert_eq!(login(&dir.load(), "docker.io").unwrap().1, "alice");
    }

    #[test]
    fn invalid_auth_names_the_entry_not_the_value() {
        for bad in ["%%%not-base64", &b64("no-colon-here"), &b64(":nouser")] {
            let dir = ConfigDir::with(&format!(
                r#"{{"auths": {{"ghcr.io": {{"auth": "{bad}"}}}}}}"#
            ));
            let err = lookup(&dir.load(), "ghcr.io").unwrap_err();
            assert!(matches!(&err, DockerConfigError::InvalidAuth { key, .. } if key == "ghcr.io"));
            let msg = err.to_string();
            assert!(!msg.contains(bad) && msg.contains("`ghcr.io`"), "{msg}");
        }
    }

    #[test]
    fn malformed_config_does_not_echo_values() {
        let dir = ConfigDir::with(&format!(
            r#"{{"auths": {{"ghcr.io": {{"auth": 12345, "password": "{CANARY}"}}}}}}"#
        ));
        let err = DockerConfig::load(&dir.0).unwrap_err();
        assert!(matches!(err, DockerConfigError::Parse { line: 1, .. }));
        let msg = err.to_string();
        assert!(!msg.contains("12345") && !msg.contains(CANARY), "{msg}");
        let dir = ConfigDir::with(&format!(
            r#"{{"auths": {{"ghcr.io": {{"password": {CANARY}}}}}}}"#
        ));
        let msg = DockerConfig::load(&dir.0).unwrap_err().to_string();
        assert!(!msg.contains(CANARY), "{msg}");
    }

    #[test]
    fn cred_helper_for_one_registry() {
        let dir = ConfigDir::with(&format!(
            r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}, "quay.io": {{"auth": "{}"}}}},
                "credHelpers": {{"ghcr.io": "testhelper", "missing.example": "testhelper"}}}}"#,
            b64("file-user:file-pw"),
            b64("quay-user:quay-pw"),
        ));
        let config = dir.load();
        // The helper wins over auths for its registry.
        assert_eq!(
            login(&config, "ghcr.io"),
            Some(("ghcr.io".into(), "helper-user".into(), CANARY.into()))
        );
        // Other registries still use auths.
        assert_eq!(login(&config, "quay.io").unwrap().1, "quay-user");
        // "credentials not found" is no login, not an error.
        assert_eq!(login(&config, "missing.example"), None);
    }

    #[test]
    fn creds_store_for_every_registry() {
        let dir = ConfigDir::with(
            r#"{"auths": {"https://index.docker.io/v1/": {}}, "credsStore": "testhelper"}"#,
        );
        let config = dir.load();
        assert_eq!(
            login(&config, "docker.io"),
            Some(("docker.io".into(), "hub-user".into(), CANARY.into()))
        );
        assert_eq!(login(&config, "ghcr.io").unwrap().1, "helper-user");
        assert_eq!(login(&config, "elsewhere.example"), None);
        // Identity tokens are not supported: no login.
        assert_eq!(login(&config, "token.example"), None);
    }

    #[test]
    fn helper_failures_name_the_helper_never_its_output() {
        let dir = ConfigDir::with(r#"{"credsStore": "testhelper"}"#);
        let config = dir.load();
        let err = lookup(&config, "broken.example").unwrap_err();
        assert!(
            matches!(&err, DockerConfigError::HelperFailed { program, .. } if program == "docker-credential-testhelper")
        );
        let msg = err.to_string();
        assert!(
            msg.contains("docker-credential-testhelper") && !msg.contains(CANARY),
            "{msg}"
        );
        assert!(!format!("{err:?}").contains(CANARY));

        let err = lookup(&config, "garbage.example").unwrap_err();
        assert!(matches!(err, DockerConfigError::HelperBadAnswer { .. }));
        assert!(!err.to_string().contains(CANARY));
    }

    #[test]
    fn missing_and_invalid_helpers() {
        let dir = ConfigDir::with(r#"{"credsStore": "nosuchhelper"}"#);
        let err = lookup(&dir.load(), "ghcr.io").unwrap_err();
        assert!(
            matches!(&err, DockerConfigError::HelperNotFound { program } if program == "docker-credential-nosuchhelper")
        );

        let dir = ConfigDir::with(r#"{"credHelpers": {"ghcr.io": "../../bin/sh"}}"#);
        let err = lookup(&dir.load(), "ghcr.io").unwrap_err();
        assert!(matches!(err, DockerConfigError::InvalidHelperName { .. }));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let dir = ConfigDir::with(&format!(
            r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}, "quay.io": {{"username": "u", "password": "{CANARY}"}}}}, "credsStore": "testhelper"}}"#,
            b64(&format!("u:{CANARY}"))
        ));
        let config = dir.load();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains(CANARY) && !shown.contains(&b64(&format!("u:{CANARY}"))),
            "{shown}"
        );
        let login = lookup(&config, "ghcr.io").unwrap().unwrap();
        assert!(!format!("{login:?}").contains(CANARY));
    }

    #[test]
    fn default_dir_is_some_when_home_is_set() {
        // Only checks the shape: tests must not change the process env.
        if std::env::var_os("DOCKER_CONFIG").is_none()
            && let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty())
        {
            assert_eq!(
                DockerConfig::default_dir(),
                Some(Path::new(&home).join(".docker"))
            );
        }
    }

    #[test]
    fn a_helper_that_hangs_is_killed_at_the_timeout_and_named() {
        let started = std::time::Instant::now();
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run_helper(
                "testhelper",
                "hang.example",
                Some(helper_dir().as_os_str()),
                Duration::from_millis(500),
            ));
        let Err(err) = result else {
            panic!("a hanging helper answered");
        };
        assert!(
            matches!(&err, DockerConfigError::HelperTimedOut { program, .. } if program == "docker-credential-testhelper"),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
