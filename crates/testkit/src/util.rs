//! Internal helpers shared by the fixtures: a background tokio runtime, a tiny
//! HTTP/1 server loop, hashing/encoding helpers and child-process management.

use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Boxed error used in response bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every in-process server answers with.
pub(crate) type RespBody = BoxBody<Bytes, BoxError>;

pub(crate) fn full(data: impl Into<Bytes>) -> RespBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub(crate) fn empty() -> RespBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A current-thread tokio runtime living on its own OS thread, so fixtures work
/// from sync tests, from `#[tokio::test]` of any flavour, and for subprocesses
/// (skopeo, the CLI under test) while the test thread blocks.
pub(crate) struct BgRuntime {
    handle: tokio::runtime::Handle,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BgRuntime {
    pub(crate) fn start(name: &str) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (htx, hrx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("testkit-{name}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build tokio runtime");
                htx.send(rt.handle().clone()).expect("send runtime handle");
                rt.block_on(async {
                    let _ = rx.await;
                });
                // Dropping the runtime cancels every spawned task and closes
                // their sockets.
                rt.shutdown_timeout(Duration::from_millis(200));
            })
            .expect("spawn runtime thread");
        let handle = hrx.recv().expect("runtime handle");
        BgRuntime {
            handle,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for BgRuntime {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves HTTP/1.1 on `listener` (already bound) with `handler`, on `rt`.
pub(crate) fn serve_http<F, Fut>(
    rt: &tokio::runtime::Handle,
    listener: std::net::TcpListener,
    handler: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<RespBody>> + Send + 'static,
{
    listener.set_nonblocking(true).expect("set_nonblocking");
    let handler = Arc::new(handler);
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req, peer).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// `sha256:<hex>` of `data`.
pub(crate) fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", crate::sha256_hex(data))
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .expect("system random");
    buf
}

pub(crate) fn random_hex16() -> String {
    hex::encode(random_bytes::<16>())
}

pub(crate) fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub(crate) fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// RFC 3339 (UTC, seconds) for a unix timestamp: `2026-11-27T07:20:01Z`.
pub(crate) fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Decodes `Authorization: Basic ...` into `(user, password)`.
pub(crate) fn parse_basic(value: &str) -> Option<(String, String)> {
    let rest = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// Splits `a=b&c=d` (a query string or a form body) into decoded pairs;
/// keys may repeat, `+` is a space.
pub(crate) fn parse_query(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// A child process that is killed (and reaped) on drop.
pub(crate) struct ManagedChild {
    pub(crate) child: Child,
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Outcome of waiting for a child to start listening.
pub(crate) enum Startup {
    Ready,
    Exited(String),
    TimedOut,
}

/// Waits until `addr` accepts TCP connections (and, if `http_probe` is set,
/// answers `GET path` with an HTTP status line), watching `child` for an early
/// exit.
pub(crate) fn wait_ready(
    child: &mut Child,
    addr: SocketAddr,
    http_probe: Option<&str>,
    timeout: Duration,
) -> Startup {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Startup::Exited(format!("{status}"));
        }
        if Instant::now() > deadline {
            return Startup::TimedOut;
        }
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            match http_probe {
                None => return Startup::Ready,
                Some(path) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
                    if s.write_all(req.as_bytes()).is_ok() {
                        let mut buf = [0u8; 12];
                        if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                            return Startup::Ready;
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub(crate) fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Path of a tool, overridable by an environment variable; panics with a hint
/// to run `scripts/registry-deps.sh` when missing.
pub(crate) fn tool(env: &str, default: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(default);
    if p.is_absolute() {
        if !p.exists() {
            panic!(
                "testkit: {default} not found; run scripts/registry-deps.sh (as root) or set {env}"
            );
        }
        return p;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let c = dir.join(default);
            if c.is_file() {
                return c;
            }
        }
    }
    panic!(
        "testkit: `{default}` not found in PATH; run scripts/registry-deps.sh (as root) or set {env}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_764_001), "2026-11-27T07:20:01Z");
    }

    #[test]
    fn queries_and_forms_decode_like_a_registry_client_sends_them() {
        assert_eq!(
            parse_query("scope=repository%3Aacme%2Fapp%3Apull&scope=x&service=a+b&&flag"),
            [
                ("scope".to_owned(), "repository:acme/app:pull".to_owned()),
                ("scope".to_owned(), "x".to_owned()),
                ("service".to_owned(), "a b".to_owned()),
                ("flag".to_owned(), String::new()),
            ]
        );
    }

    #[test]
    fn digests_are_lower_hex_sha256() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(random_hex16().len(), 32);
    }
}
