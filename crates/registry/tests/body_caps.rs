//! Every body the pull engine reads into memory is capped: a hostile
//! registry, token service or ECR API answering with a 600 MB body (streamed
//! by a small server here, never allocated) makes the pull fail with a clear
//! error while the process stays small (peak RSS, `VmHWM`, under 64 MiB).
//!
//! One test in its own binary, so the peak RSS is this test's alone.

use contract::SecretValue;
use registry::credentials::EcrLogin;
use registry::{
    Category, CredentialSet, Endpoints, ImageReference, PrivateTargets, PullError, PullOptions,
    Puller, RetryPolicy, no_events,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HUGE: u64 = 600 * 1000 * 1000;
const ECR_HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

/// How the test server answers one request.
enum Answer {
    /// A small body with these extra header lines.
    Small(u16, String, String),
    /// `HUGE` zero bytes, chunked (no length announced) unless `declared`.
    Huge { status: u16, declared: bool },
}

/// Which misbehaviour the server shows.
#[derive(Clone, Copy, Debug)]
enum Scenario {
    /// Manifest GET: 200 with a 600 MB chunked body.
    ManifestChunked,
    /// Manifest GET: 200 announcing 600 MB.
    ManifestDeclared,
    /// Manifest GET: 400 with a 600 MB chunked error body.
    ManifestErrorBody,
    /// Every registry request: 401 with a 600 MB chunked error body.
    UnauthorizedErrorBody,
    /// Bearer challenge; the token service answers 200 with 600 MB.
    Token,
    /// Basic challenge on an ECR registry; `GetAuthorizationToken` answers
    /// 200 with 600 MB.
    Ecr,
}

fn route(s: Scenario, addr: SocketAddr, method: &str, path: &str, authorized: bool) -> Answer {
    let small = |status, headers: &str, body: &str| {
        Answer::Small(status, headers.to_owned(), body.to_owned())
    };
    match s {
        Scenario::UnauthorizedErrorBody => Answer::Huge {
            status: 401,
            declared: false,
        },
        Scenario::Token if path.starts_with("/token") => Answer::Huge {
            status: 200,
            declared: false,
        },
        Scenario::Token if !authorized => small(
            401,
            &format!("www-authenticate: Bearer realm=\"http://{addr}/token\",service=\"test\"\r\n"),
            "",
        ),
        Scenario::Ecr if method == "POST" => Answer::Huge {
            status: 200,
            declared: false,
        },
        Scenario::Ecr if !authorized => small(401, "www-authenticate: Basic realm=\"ecr\"\r\n", ""),
        _ if path.contains("/manifests/") && method == "HEAD" => small(
            200,
            "content-type: application/vnd.oci.image.manifest.v1+json\r\n",
            "",
        ),
        Scenario::ManifestChunked if path.contains("/manifests/") => Answer::Huge {
            status: 200,
            declared: false,
        },
        Scenario::ManifestDeclared if path.contains("/manifests/") => Answer::Huge {
            status: 200,
            declared: true,
        },
        Scenario::ManifestErrorBody if path.contains("/manifests/") => Answer::Huge {
            status: 400,
            declared: false,
        },
        _ => small(404, "", "{}"),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        _ => "Not Found",
    }
}

/// Serves one connection: requests in a loop, each answered per `route`.
async fn serve(mut sock: TcpStream, s: Scenario, addr: SocketAddr, sent: Arc<AtomicU64>) {
    let zeros = vec![0u8; 64 << 10];
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match sock.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
            if head.len() > 64 << 10 {
                return;
            }
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let mut lines = text.lines();
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_owned();
        let path = first.next().unwrap_or("").to_owned();
        let mut body_len = 0usize;
        let mut authorized = false;
        for l in lines {
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                body_len = v.trim().parse().unwrap_or(0);
            }
            authorized |= lower.starts_with("authorization:");
        }
        let mut body = vec![0u8; body_len];
        if sock.read_exact(&mut body).await.is_err() {
            return;
        }
        match route(s, addr, &method, &path, authorized) {
            Answer::Small(status, headers, body) => {
                let resp = format!(
                    "HTTP/1.1 {status} {}\r\ncontent-length: {}\r\n{headers}\r\n{}",
                    reason(status),
                    if method == "HEAD" { 0 } else { body.len() },
                    if method == "HEAD" { "" } else { &body },
                );
                if sock.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
            Answer::Huge { status, declared } => {
                let framing = if declared {
                    format!("content-length: {HUGE}\r\n")
                } else {
                    "transfer-encoding: chunked\r\n".to_owned()
                };
                let head = format!(
                    "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\n{framing}\r\n",
                    reason(status)
                );
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let mut left = HUGE;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    let ok = if declared {
                        sock.write_all(&zeros[..n]).await
                    } else {
                        let mut chunk = format!("{n:x}\r\n").into_bytes();
                        chunk.extend_from_slice(&zeros[..n]);
                        chunk.extend_from_slice(b"\r\n");
                        sock.write_all(&chunk).await
                    };
                    if ok.is_err() {
                        return; // the client hung up: what the cap is for
                    }
                    sent.fetch_add(n as u64, Ordering::Relaxed);
                    left -= n as u64;
                }
                if !declared {
                    let _ = sock.write_all(b"0\r\n\r\n").await;
                }
            }
        }
    }
}

/// Starts the server for `s`; returns its address and the body bytes it
/// managed to send.
async fn start(s: Scenario) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(serve(sock, s, addr, counter.clone()));
        }
    });
    (addr, sent)
}

/// Peak resident set size of this process, in KiB.
fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

async fn run(s: Scenario, store: &std::path::Path) -> (PullError, u64, Duration) {
    let (addr, sent) = start(s).await;
    let base = format!("http://{addr}/");
    let mut opts = PullOptions::new(store);
    // The boot agent's setting; the server is mapped as the operator would.
    opts.private_targets = PrivateTargets::OnlyMapped;
    opts.retry = RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        budget: Duration::from_secs(5),
    };
    let mut endpoints = Endpoints::new();
    let reference = match s {
        Scenario::Ecr => {
            endpoints.insert(ECR_HOST, &base).unwrap();
            opts.credentials = CredentialSet {
                docker: None,
                ecr: Some(EcrLogin {
                    registry: ECR_HOST.into(),
                    account: "123456789012".into(),
                    region: "us-east-1".into(),
                    access_key_id: "AKIDEXAMPLE".into(),
                    secret_access_key: SecretValue::from("secret"),
                    session_token: None,
                }),
            };
            opts.ecr_endpoint = Some(format!("http://{addr}/ecr/").parse().unwrap());
            opts.ecr_endpoint_mapped = true;
            format!("{ECR_HOST}/lib/app:1")
        }
        _ => {
            endpoints.insert(&addr.to_string(), &base).unwrap();
            format!("{addr}/lib/app:1")
        }
    };
    opts.endpoints = endpoints;
    let reference: ImageReference = reference.parse().unwrap();
    let puller = Puller::new(opts, no_events()).unwrap();
    let started = Instant::now();
    let err = puller.pull(&reference).await.unwrap_err();
    let took = started.elapsed();
    // Let the server notice the hang-up before reading its counter.
    tokio::time::sleep(Duration::from_millis(100)).await;
    (err, sent.load(Ordering::Relaxed), took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_bodies_fail_clearly_and_the_process_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let before = vm_hwm_kib();
    let cases: [(Scenario, Category, &str); 6] = [
        (
            Scenario::ManifestChunked,
            Category::RegistryError,
            "larger than the 4 MiB Berth accepts",
        ),
        (
            Scenario::ManifestDeclared,
            Category::RegistryError,
            "larger than the 4 MiB Berth accepts (at least 600000000 bytes)",
        ),
        (
            Scenario::ManifestErrorBody,
            Category::RegistryError,
            "answered 400",
        ),
        (
            Scenario::UnauthorizedErrorBody,
            Category::AccessDenied,
            "requires credentials",
        ),
        (
            Scenario::Token,
            Category::RegistryError,
            "answered with more than 1 MiB; Berth stopped reading it",
        ),
        (
            Scenario::Ecr,
            Category::RegistryError,
            "answered GetAuthorizationToken with more than 1 MiB; Berth stopped reading it",
        ),
    ];
    for (i, (s, category, text)) in cases.into_iter().enumerate() {
        let (err, sent, took) = run(s, &dir.path().join(i.to_string())).await;
        eprintln!(
            "{s:?}: {took:?}, server sent {} KiB before the hang-up, VmHWM {} KiB: {}: {}",
            sent >> 10,
            vm_hwm_kib(),
            err.category,
            err.message
        );
        assert_eq!(err.category, category, "{s:?}: {err:?}");
        assert!(err.message.contains(text), "{s:?}: {}", err.message);
        // Reading stopped early: the server could not push more than a few
        // socket buffers' worth past the cap.
        assert!(sent < 64 << 20, "{s:?}: the server sent {sent} bytes");
        assert!(took < Duration::from_secs(20), "{s:?}: took {took:?}");
    }
    let after = vm_hwm_kib();
    eprintln!("VmHWM: {before} KiB before, {after} KiB after");
    assert!(after < 64 << 10, "peak RSS {after} KiB");
}
