//! `berth pull` and `berth guest boot` against a hostile registry that answers with 600 MB bodies
//! (streamed by a small server here, never allocated): the pull fails with a
//! clear error and the `berth` process stays small (its peak RSS, from
//! `getrusage(RUSAGE_CHILDREN)`, under 64 MiB). One test in its own binary,
//! so the only children are these `berth` runs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HUGE: u64 = 600 * 1000 * 1000;

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        _ => "Not Found",
    }
}

/// Answers requests on one connection: manifest HEADs succeed; a manifest
/// GET of repository `big` gets 200, of `err` 400, and anything under
/// `unauth` 401, each with a 600 MB chunked body.
fn serve(mut sock: TcpStream) {
    let zeros = vec![0u8; 64 << 10];
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match sock.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
            if head.len() > 64 << 10 {
                return;
            }
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let mut first = text.lines().next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_owned();
        let path = first.next().unwrap_or("").to_owned();
        let huge = if path.starts_with("/v2/unauth/") {
            Some(401)
        } else if method == "GET" && path.starts_with("/v2/big/manifests/") {
            Some(200)
        } else if method == "GET" && path.starts_with("/v2/err/manifests/") {
            Some(400)
        } else {
            None
        };
        let Some(status) = huge else {
            let status = if path.contains("/manifests/") {
                200
            } else {
                404
            };
            let resp = format!(
                "HTTP/1.1 {status} {}\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\ncontent-length: 0\r\n\r\n",
                reason(status)
            );
            if sock.write_all(resp.as_bytes()).is_err() {
                return;
            }
            continue;
        };
        let head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
            reason(status)
        );
        if sock.write_all(head.as_bytes()).is_err() {
            return;
        }
        let mut left = HUGE;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            let mut chunk = format!("{n:x}\r\n").into_bytes();
            chunk.extend_from_slice(&zeros[..n]);
            chunk.extend_from_slice(b"\r\n");
            if sock.write_all(&chunk).is_err() {
                return; // berth hung up
            }
            left -= n as u64;
        }
        let _ = sock.write_all(b"0\r\n\r\n");
    }
}

/// Peak RSS of the largest waited-for child, in KiB.
fn children_max_rss_kib() -> i64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct we pass.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0);
    usage.ru_maxrss
}

#[test]
fn huge_registry_bodies_leave_berth_pull_and_the_boot_agent_small() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            std::thread::spawn(move || serve(sock));
        }
    });
    let dir = std::env::temp_dir().join(format!("berth-test-ssrf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("docker-config")).unwrap();
    let store = dir.join("store");
    let endpoint = format!("{host}=http://{host}/");
    for (repo, category, text) in [
        (
            "big",
            "registry_error",
            "larger than the 4 MiB Berth accepts",
        ),
        ("err", "registry_error", "answered 400"),
        ("unauth", "access_denied", "requires credentials"),
    ] {
        let image = format!("{host}/{repo}:1");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args(["pull", "--json", "--store"])
            .arg(&store)
            .args(["--registry-endpoint", &endpoint, &image])
            .env("DOCKER_CONFIG", dir.join("docker-config"))
            .stdin(Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("DSTACK_") || k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        let started = Instant::now();
        let out = cmd.output().unwrap();
        let took = started.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let json: serde_json::Value =
            serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
        let error = &json["error"];
        eprintln!(
            "{repo}: exit {:?} in {took:?}, children's peak RSS {} KiB: {} {}",
            out.status.code(),
            children_max_rss_kib(),
            error["category"],
            error["message"]
        );
        assert_ne!(out.status.code(), Some(0), "{stdout}{stderr}");
        assert_eq!(error["category"], category, "{stdout}{stderr}");
        assert!(
            error["message"].as_str().unwrap_or("").contains(text),
            "{stdout}{stderr}"
        );
        assert!(took < Duration::from_secs(30), "{repo}: took {took:?}");
    }
    let peak = children_max_rss_kib();
    eprintln!("berth pull peak RSS: {peak} KiB");
    assert!(peak < 64 << 10, "berth pull peaked at {peak} KiB");

    // The boot agent, as a CVM runs it: the same hostile registry (mapped by
    // the operator, so it is reached), a manifest GET answered with 600 MB.
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let app = serde_json::json!({
        "manifest_version": 2,
        "name": "huge-bodies",
        "runner": "docker-compose",
        "docker_compose_file": format!("services:\n  web:\n    image: {host}/big:1\n"),
        "allowed_envs": [],
        "kms_enabled": true,
    });
    std::fs::write(shared.join("app-compose.json"), app.to_string()).unwrap();
    let sys = serde_json::json!({"registry_endpoints": {host.clone(): format!("http://{host}/")}});
    std::fs::write(shared.join("sys-config.json"), sys.to_string()).unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["guest", "boot", "--max-retry-time", "5", "--shared"])
        .arg(&shared)
        .arg("--state")
        .arg(dir.join("cvm-state"))
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = started.elapsed();
    let serial = String::from_utf8_lossy(&out.stdout);
    let last = serial.lines().last().unwrap_or_default();
    assert_eq!(out.status.code(), Some(8), "{serial}");
    assert!(
        last.contains("BOOT FAILED: registry_error: ") && last.contains("larger than the 4 MiB"),
        "{serial}"
    );
    assert!(took < Duration::from_secs(30), "boot took {took:?}");
    let peak = children_max_rss_kib();
    eprintln!("berth guest boot (and the pulls before it) peak RSS: {peak} KiB");
    assert!(peak < 64 << 10, "the boot agent peaked at {peak} KiB");
    let _ = std::fs::remove_dir_all(&dir);
}
