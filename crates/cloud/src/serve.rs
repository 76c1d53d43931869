//! Serving the API on a TCP listener: HTTP/1.1, optionally over TLS, with
//! a header read timeout, a body read timeout, a cap on open connections
//! and a cap per client address.
//!
//! `axum::serve` has none of these: a client that sends half a request line
//! (or a `Content-Length` and then a byte now and then) holds a connection
//! (and a task) for as long as it likes. Here every connection has
//! [`ServeOptions::header_timeout`] to send its request headers (the TLS
//! handshake included), also between keep-alive requests, and every request
//! [`ServeOptions::body_timeout`] from its headers to the last byte of its
//! body (then it is answered 408 and the connection closed). At most
//! [`ServeOptions::max_connections`] are served at once; the others wait in
//! the kernel's accept queue.
//!
//! **One client cannot take every slot.** A client address other than
//! loopback may hold at most [`ServeOptions::max_connections_per_client`]
//! connections; more are closed as soon as they are accepted. Loopback
//! peers are exempt: every local user, and a reverse proxy on this machine,
//! come from the same 127.0.0.1, so a bound per address there would only be
//! a smaller global cap that one local tenant fills for everyone. What keeps
//! one tenant from holding every slot there is the bound per API key on
//! requests in progress (`Limits::max_requests_per_user`, checked in
//! `api::auth` once the headers are in, before the body is read), with the
//! body timeout. A client that never finishes its *headers* has no key yet:
//! it holds a slot for the header timeout at most.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::rustls;

/// A TLS server configuration (rustls, `ring` provider).
pub type TlsConfig = rustls::ServerConfig;

/// How the API is served.
#[derive(Clone)]
pub struct ServeOptions {
    /// How long a client has to send a request's headers.
    pub header_timeout: Duration,
    /// How long a client has, from a request's headers, to send its whole
    /// body (then 408 and the connection is closed).
    pub body_timeout: Duration,
    /// The most connections served at once.
    pub max_connections: usize,
    /// The most connections served at once for one client address (not
    /// loopback: see the module's documentation).
    pub max_connections_per_client: usize,
    /// HTTPS with this configuration; plain HTTP when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(20),
            max_connections: 256,
            max_connections_per_client: 64,
            tls: None,
        }
    }
}

/// Why a certificate or key could not be used (one sentence, no key bytes).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// A TLS server configuration from a PEM certificate chain and a PEM private
/// key (PKCS#8, PKCS#1 or SEC1), with the `ring` provider reqwest already
/// uses; HTTP/1.1 only.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            TlsError(format!(
                "cannot read the certificate {}: {e}",
                cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{} holds no PEM certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        TlsError(format!(
            "cannot read a PEM private key from {}: {e}",
            key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError(format!("the certificate and key do not go together: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app` on `listener` until `shutdown` completes; then stops
/// accepting, asks open connections to finish their request, and returns
/// after at most 5 more seconds.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let clients = Arc::new(ClientSlots::default());
    let app = app.layer(axum::middleware::from_fn_with_state(
        opts.body_timeout,
        body_deadline,
    ));
    let acceptor = opts.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    eprintln!("api: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Over its bound, the connection is closed (and its slot freed).
        let Some(client) = clients.enter(peer.ip(), opts.max_connections_per_client) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let stop = stop_rx.clone();
        let timeout = opts.header_timeout;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _client = client;
            match acceptor {
                None => connection(stream, app, timeout, stop).await,
                Some(acceptor) => {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(timeout, acceptor.accept(stream)).await
                    {
                        connection(tls, app, timeout, stop).await;
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(opts.max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(5), slots.acquire_many(all)).await;
    Ok(())
}

/// The connections each client address holds.
#[derive(Default)]
struct ClientSlots {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection of a client address; counted until dropped (`None` inside:
/// a loopback peer, not counted).
struct ClientSlot(Option<(Arc<ClientSlots>, IpAddr)>);

impl ClientSlots {
    /// One more connection of `ip`, unless it holds `max` already.
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let ip = ip.to_canonical();
        if ip.is_loopback() {
            return Some(ClientSlot(None));
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(ClientSlot(Some((self.clone(), ip))))
    }

    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&ip.to_canonical()).copied().unwrap_or(0)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some((slots, ip)) = self.0.take() {
            let mut counts = slots.counts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = counts.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&ip);
                }
            }
        }
    }
}

/// Gives the request's body `limit` from now to arrive whole: a body still
/// coming after that ends in an error for whoever reads it, and the
/// answer is replaced by a 408 (hyper then closes the connection, whose
/// body was not read to its end).
async fn body_deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    use axum::body::HttpBody as _;
    use futures_util::StreamExt as _;
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let deadline = tokio::time::Instant::now() + limit;
    let late = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let stream = futures_util::stream::unfold(
        (body.into_data_stream(), late.clone(), false),
        move |(mut stream, late, over)| async move {
            if over {
                return None;
            }
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(chunk)) => Some((chunk, (stream, late, false))),
                Ok(None) => None,
                Err(_) => {
                    late.store(true, Ordering::SeqCst);
                    let e = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request body did not arrive in time",
                    );
                    Some((Err(axum::Error::new(e)), (stream, late, true)))
                }
            }
        },
    );
    let resp = next
        .run(Request::from_parts(parts, Body::from_stream(stream)))
        .await;
    if !late.load(Ordering::SeqCst) {
        return resp;
    }
    let mut resp = crate::error::ApiError::timeout(format!(
        "the request body did not arrive within {} s of its headers",
        limit.as_secs_f64()
    ))
    .into_response();
    resp.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    resp
}

/// One connection: HTTP/1.1 with the header timeout, until it closes or the
/// server stops (then the request in flight gets 5 seconds to finish).
async fn connection<I>(
    io: I,
    app: Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_address_holds_at_most_its_bound_and_loopback_is_exempt() {
        let slots = Arc::new(ClientSlots::default());
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| slots.enter(a, 3).unwrap()).collect();
        assert!(slots.enter(a, 3).is_none());
        // The same address as IPv4-mapped IPv6 is the same client.
        assert!(slots.enter(mapped, 3).is_none());
        let other = slots.enter(b, 3).unwrap();
        assert_eq!(slots.held(a), 3);
        drop(held);
        assert_eq!(slots.held(a), 0);
        assert!(slots.enter(a, 3).is_some());
        drop(other);
        // Loopback: every local client is 127.0.0.1, never refused here.
        let local: Vec<_> = (0..10)
            .map(|_| slots.enter("127.0.0.1".parse().unwrap(), 3).unwrap())
            .collect();
        assert_eq!(slots.held("127.0.0.1".parse().unwrap()), 0);
        drop(local);
    }
}
