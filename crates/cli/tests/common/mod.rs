//! What the `berth` binary's tests share: running the binary, a test's
//! folder (testkit's), a running `berth up` ([`Cloud`]), curl, waiting.
#![allow(dead_code, unused_imports)] // each test binary uses a part of it

mod cloud;

pub use cloud::{Cloud, LEGACY_SHAPE, database_url, stored_data};
pub use testkit::{TestDir, repo_root, tempdir};

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use testkit::images::{ImageSpec, PushTarget, PushedImage, push_image};
use testkit::{Moto, Registry};

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn berth(args: &[&str], stdin: &[u8]) -> Run {
    run(Command::new(env!("CARGO_BIN_EXE_berth")).args(args), stdin)
}

pub fn run(cmd: &mut Command, stdin: &[u8]) -> Run {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    // A child that exits early closes its stdin: that is its answer, not ours.
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

/// `berth keygen --out DIR/app.key`: the key file and the printed public key.
pub fn keygen(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("app.key");
    let out = berth(&["keygen", "--out", key.to_str().unwrap()], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    (key, out.stdout.trim().to_owned())
}

/// Seals the `.env` text `dotenv` again (through the file `DIR/NAME`) and
/// opens it as JSON: what a variable list looks like after one more round
/// trip through `berth seal` / `berth unseal --json`.
pub fn reseal_to_json(
    dir: &Path,
    name: &str,
    key: &Path,
    pubkey: &str,
    dotenv: &str,
) -> serde_json::Value {
    let file = dir.join(name);
    std::fs::write(&file, dotenv).unwrap();
    let resealed = berth(
        &["seal", "--pubkey", pubkey, "-e", file.to_str().unwrap()],
        b"",
    );
    assert_eq!(resealed.code, 0, "{}", resealed.stderr);
    let back = berth(
        &["unseal", "--key-file", key.to_str().unwrap(), "--json", "-"],
        resealed.stdout.as_bytes(),
    );
    assert_eq!(back.code, 0, "{}", back.stderr);
    serde_json::from_str(&back.stdout).unwrap()
}

/// Every regular file under `dir`, recursively (symlinks are not followed).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}

/// Retries `f` every 100 ms until it returns true; fails the test after
/// `secs` seconds, naming `what`.
pub fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks `f` every 100 ms for `secs` seconds and fails the test, naming
/// `what`, the first time it is false: for what must stay true while
/// something that could change it (a background cleanup, a late status
/// write) has no signal of its own to wait on.
pub fn holds(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        assert!(f(), "{what}: no longer true");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// curl (at most 20 s): (status, body); status 0 when no answer came.
/// `extra` goes before the URL.
pub fn curl(extra: &[&str], url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Watches every process's command line (`/proc/*/cmdline`) for a secret
/// in the background, until [`ArgvWatch::finish`].
pub struct ArgvWatch {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<ArgvScan>,
}

/// What an [`ArgvWatch`] saw.
#[derive(Debug, Default)]
pub struct ArgvScan {
    /// (pid, argv[0]) of every process but `skip` whose arguments held it.
    pub found: BTreeSet<(u32, String)>,
    /// Whether `skip`'s own arguments held it (proof that the scan reads
    /// what it must, when `skip` was given its secret on purpose).
    pub seen_skip: bool,
    /// How many times /proc was read.
    pub passes: u32,
}

impl ArgvWatch {
    /// Scans for `needle` every `pause` (zero: as often as it can), leaving
    /// out the process `skip`.
    pub fn start(needle: &str, skip: Option<u32>, pause: Duration) -> ArgvWatch {
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let needle = needle.as_bytes().to_vec();
        let thread = std::thread::spawn(move || {
            let mut scan = ArgvScan::default();
            while !stop.load(Ordering::SeqCst) {
                scan_proc(&needle, skip, &mut scan);
                scan.passes += 1;
                std::thread::sleep(pause);
            }
            scan
        });
        ArgvWatch { done, thread }
    }

    /// Stops watching; what it saw.
    pub fn finish(self) -> ArgvScan {
        self.done.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

fn scan_proc(needle: &[u8], skip: Option<u32>, scan: &mut ArgvScan) {
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if !cmdline.windows(needle.len()).any(|w| w == needle) {
            continue;
        }
        if Some(pid) == skip {
            scan.seen_skip = true;
        } else {
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            scan.found
                .insert((pid, String::from_utf8_lossy(argv0).into_owned()));
        }
    }
}

/// A registry holding a runnable busybox image at `<host>/<repo>:1`, with
/// Basic auth for `creds` when given; its `host:port`, and the
/// `--registry-endpoint` argument of `berth up` that maps it for CVMs.
pub fn busybox_registry(creds: Option<(&str, &str)>, repo: &str) -> (Registry, String, String) {
    let reg = match creds {
        Some(c) => Registry::with_htpasswd(&[c]),
        None => Registry::start(),
    };
    let host = reg.host_port();
    let mut target = PushTarget::new(&host);
    if let Some((user, pw)) = creds {
        target = target.with_creds(user, pw);
    }
    push_image(&target, repo, "1", &ImageSpec::new().busybox());
    let mapped = format!("--registry-endpoint={host}={}", reg.base_url());
    (reg, host, mapped)
}

/// A private ECR in us-east-1: moto answers `GetAuthorizationToken`, a
/// registry with the credentials moto hands out holds the images, and
/// `host` (the ECR name) is mapped to it (`registry.base_url()`).
pub struct Ecr {
    pub moto: Moto,
    pub registry: Registry,
    pub host: String,
}

impl Ecr {
    pub fn start() -> Ecr {
        let moto = Moto::start();
        let (user, pw) = Moto::ecr_credentials(moto.account_id(), "us-east-1");
        let registry = Registry::with_htpasswd(&[(&user, &pw)]);
        let host = Moto::ecr_registry_host(moto.account_id(), "us-east-1");
        Ecr {
            moto,
            registry,
            host,
        }
    }

    /// Pushes `spec` as `repo:tag`.
    pub fn push(&self, repo: &str, tag: &str, spec: &ImageSpec) -> PushedImage {
        let (user, pw) = Moto::ecr_credentials(self.moto.account_id(), "us-east-1");
        let target = PushTarget::new(&self.registry.host_port()).with_creds(&user, &pw);
        push_image(&target, repo, tag, spec)
    }
}
