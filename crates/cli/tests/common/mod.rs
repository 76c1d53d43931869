//! What the `berth` binary's tests share: running the binary, a test's
//! folder (testkit's), a running `berth up` ([`Cloud`]), curl, waiting.
#![allow(dead_code, unused_imports)] // each test binary uses a part of it

mod cloud;

pub use cloud::{Cloud, LEGACY_SHAPE};
pub use testkit::{TestDir, repo_root, tempdir};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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
