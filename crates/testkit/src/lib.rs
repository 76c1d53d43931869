//! # testkit: real servers for Berth's pull-engine tests
//!
//! Every fixture starts a **real** server on a free loopback port and stops it
//! on `Drop`:
//!
//! - [`Registry`]: Debian's `docker-registry` (distribution 2.8) with no auth,
//!   htpasswd (Basic) auth, or token auth, optionally over TLS with a test CA.
//! - [`TokenIssuer`]: an in-process Docker token server (Docker Hub / GHCR
//!   style) issuing ES256 JWTs that distribution verifies.
//! - [`FaultProxy`]: a reverse proxy in front of a registry that records
//!   requests and injects faults (dropped connections, corrupted bytes, 429,
//!   503, cross-host blob redirects, rate-limit headers, stalls, slow links,
//!   AWS `ThrottlingException`, a registry that ignores `Range`), and plays
//!   a real network ([`FaultProxy::throttled`]: a bandwidth cap per
//!   connection and round-trip latency). [`Registry::stop`]/[`Registry::start_again`]
//!   kill and restart the registry on the same port and storage.
//! - [`HostileRegistry`]: a registry that lies in ways a proxy in front of a
//!   real one cannot (a manifest announcing a layer of another size than
//!   its blob, 25,000 layers, a body that trickles), served from memory.
//! - [`Moto`]: moto's server (AWS mock) for ECR `GetAuthorizationToken`.
//! - [`Dockerd`]: a private Docker engine (own socket, data and exec root).
//! - [`Haproxy`]: Debian's HAProxy balancing HTTP over servers on loopback
//!   (round-robin, health checks), for tests of API replicas.
//! - [`images`]: builds random OCI images in Rust and pushes them with
//!   `skopeo`, single-arch or multi-arch.
//! - [`cosign`]: cosign signatures made in Rust (ECDSA P-256, simple-signing
//!   payloads) pushed where cosign puts them, and checked with Python.
//! - [`pg`]: PostgreSQL, a fresh database per test on the server that
//!   `scripts/with-pg.sh` started, or a private [`pg::PgServer`] a test
//!   stops and starts again.
//!
//! The external tools come from `scripts/registry-deps.sh` (Debian packages
//! plus moto in the venv `<repo>/.deps/venv`). In-process servers run on their own
//! background thread, so fixtures work from sync tests and from
//! `#[tokio::test]` of any flavour. Set `BERTH_TESTKIT_KEEP=1` to keep the
//! fixtures' working directories (logs, configs) after the test.
#![deny(missing_docs)]

use std::collections::HashSet;
use std::ffi::OsStr;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub mod bench;
pub mod cosign;
mod dockerd;
pub mod dstack_guest;
pub mod haproxy;
pub mod hostile;
pub mod images;
mod moto;
pub mod pg;
mod pki;
mod proxy;
mod registry;
mod token;
mod util;

pub use dockerd::Dockerd;
pub use haproxy::Haproxy;
pub use hostile::{BlobAnswer, BlobRequest, HostileRegistry};
pub use moto::Moto;
pub use pki::{IssuedCert, TestCa};
pub use proxy::{
    Corrupt, DropAfter, FaultProxy, Faults, Link, Listener, RateLimit, Redirect, RequestKind,
    RequestRecord, Stall, Target, Throttle, TimesFault, TooManyRequests,
};
pub use registry::{Registry, RegistryBuilder};
pub use token::{Grant, TokenField, TokenIssuer, TokenIssuerBuilder, TokenRequest};

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free TCP port on 127.0.0.1 (never the same one twice in a process).
///
/// The port is free when returned; a server should bind it soon after.
/// Another process (nextest runs each test in its own) may take it first:
/// a server that can bind port 0 and report its address should do that
/// instead (`berth up --listen 127.0.0.1:0` prints its URL).
pub fn free_port() -> u16 {
    free_port_on(Ipv4Addr::LOCALHOST)
}

/// A free TCP port on the given loopback address (e.g. `127.0.0.2`).
pub fn free_port_on(ip: Ipv4Addr) -> u16 {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let seen = guard.get_or_insert_with(HashSet::new);
    for _ in 0..64 {
        let l = TcpListener::bind((ip, 0)).expect("bind an ephemeral port");
        let port = l.local_addr().expect("local_addr").port();
        if seen.insert(port) {
            return port;
        }
    }
    panic!("testkit: could not find a fresh free port");
}

/// `interop/<path>` of the repository (the pinned official clients),
/// asserted present: without it a test fails, naming what installs it.
pub fn interop_path(path: &str) -> PathBuf {
    let p = repo_root().join("interop").join(path);
    assert!(
        p.exists(),
        "{} is missing: run `make test` (scripts/deps.sh installs the pinned official clients)",
        p.display()
    );
    p
}

/// The repository root (the Cargo workspace root).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or(here)
}

/// A fresh temporary working directory named `berth-testkit-<prefix>-*`.
/// With `BERTH_TESTKIT_KEEP=1` it is not deleted on drop (its path is
/// printed).
pub fn workdir(prefix: &str) -> tempfile::TempDir {
    fresh_dir(&format!("berth-testkit-{prefix}-"))
}

/// A new folder `<prefix>*` in the temporary folder, kept on drop with
/// `BERTH_TESTKIT_KEEP=1`.
fn fresh_dir(prefix: &str) -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temp dir");
    if std::env::var_os("BERTH_TESTKIT_KEEP").is_some_and(|v| v == "1") {
        eprintln!("testkit: keeping {}", dir.path().display());
        dir.disable_cleanup(true);
    }
    dir
}

/// A fresh folder for one test, `berth-test-<name>-*` in the system's
/// temporary folder, removed on drop (kept, and its path printed, with
/// `BERTH_TESTKIT_KEEP=1`). It is mode 0755, like a folder a user makes, so
/// that what a test checks about modes and other users inside it is what
/// the code under test set, not the folder's own protection.
///
/// Derefs to [`Path`]: `dir.join("state")`, `&dir` where a `&Path` goes.
pub fn tempdir(name: &str) -> TestDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = fresh_dir(&format!("berth-test-{name}-"));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod temp dir");
    TestDir(dir)
}

/// A test's folder from [`tempdir`]; removed on drop.
#[derive(Debug)]
pub struct TestDir(tempfile::TempDir);

impl TestDir {
    /// The folder's path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<OsStr> for TestDir {
    fn as_ref(&self) -> &OsStr {
        self.0.path().as_os_str()
    }
}

/// Lower-case hex sha256 of `data` (what `sha256sum` prints).
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}
