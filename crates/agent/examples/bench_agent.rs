//! Benchmark of one guest agent: GetKey and GetQuote latency (p50/p99 over
//! N calls on one keep-alive connection) and the serving process's RSS,
//! idle and after the calls.
//!
//! `cargo run --release -p agent --example bench_agent -- [N]`
//! (goal: p99 < 5 ms, idle RSS <= 16 MiB). The agent runs in a child
//! process of its own (this example with `--serve SOCKET`) on a
//! single-threaded runtime, as the node runs one per CVM.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k256::ecdsa::SigningKey;
use sha2::Digest;

fn identity() -> agent::AgentIdentity {
    let kms = SigningKey::from_slice(&[1u8; 32]).unwrap();
    let app_id = [2u8; 20];
    let mut app_key = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(b"RATLS"), &kms.to_bytes())
        .expand_multi_info(&[&app_id, b"app-key"], &mut app_key)
        .unwrap();
    let app_pub = SigningKey::from_slice(&app_key)
        .unwrap()
        .verifying_key()
        .to_sec1_bytes();
    let msg = [b"dstack-kms-issued:".as_slice(), &app_id, &app_pub].concat();
    let (sig, recid) = kms
        .sign_digest_recoverable(sha3::Keccak256::new_with_prefix(&msg))
        .unwrap();
    let mut kms_sig = [0u8; 65];
    kms_sig[..64].copy_from_slice(&sig.to_bytes());
    kms_sig[64] = recid.to_byte();
    let compose = r#"{"manifest_version":2,"name":"bench","runner":"docker-compose"}"#;
    agent::AgentIdentity {
        app_id: hex::encode(app_id),
        instance_id: "11".repeat(20),
        compose_hash: hex::encode(sha2::Sha256::digest(compose.as_bytes())),
        app_compose: compose.into(),
        app_key: zeroize::Zeroizing::new(app_key),
        app_key_kms_signature: kms_sig,
        kms_root_public_key: kms
            .verifying_key()
            .to_sec1_bytes()
            .as_ref()
            .try_into()
            .unwrap(),
        os_image_hash: String::new(),
    }
}

fn serve(socket: PathBuf) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = agent::AgentConfig {
        identity: identity(),
        sockets: vec![socket],
        attestation_key: agent::AttestationKey::from_seed(&[7u8; 32]),
    };
    // Runs until the parent closes our standard input.
    rt.block_on(agent::serve(config, async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await;
    }))
    .unwrap();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One POST on a keep-alive connection; returns the status.
fn call(reader: &mut BufReader<UnixStream>, path: &str, body: &str) -> u16 {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    reader.get_mut().write_all(req.as_bytes()).unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut len = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).unwrap();
    status
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    (at(0.50).as_secs_f64() * 1e3, at(0.99).as_secs_f64() * 1e3)
}

fn measure(sock: &Path, n: usize, path: &str, body: &str) -> (f64, f64) {
    let mut reader = BufReader::new(UnixStream::connect(sock).unwrap());
    for _ in 0..20 {
        assert_eq!(call(&mut reader, path, body), 200);
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        assert_eq!(call(&mut reader, path, body), 200);
        samples.push(t.elapsed());
    }
    percentiles(samples)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        serve(PathBuf::from(&args[2]));
        return;
    }
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let dir = std::env::temp_dir().join(format!("berth-bench-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("dstack.sock");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--serve")
        .arg(&sock)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the agent did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    let idle = rss_kib(child.id());
    let key = measure(
        &sock,
        n,
        "/GetKey",
        r#"{"path":"wallet/eth","purpose":"signing"}"#,
    );
    let quote = measure(&sock, n, "/GetQuote", r#"{"report_data":"0xdeadbeef"}"#);
    let loaded = rss_kib(child.id());
    drop(child.stdin.take());
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!("calls per route: {n}");
    println!("GetKey   p50 {:.3} ms  p99 {:.3} ms", key.0, key.1);
    println!("GetQuote p50 {:.3} ms  p99 {:.3} ms", quote.0, quote.1);
    println!(
        "agent RSS: idle {:.1} MiB, after the calls {:.1} MiB",
        idle as f64 / 1024.0,
        loaded as f64 / 1024.0
    );
}
