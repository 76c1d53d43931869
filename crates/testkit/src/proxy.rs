//! A fault-injecting, request-recording reverse proxy in front of a registry.
//!
//! It also plays a real network: [`FaultProxy::throttled`] caps the
//! bandwidth of each connection and adds round-trip latency (see [`Link`]),
//! so benchmarks and tests see what a CDN-served registry looks like from a
//! CVM, on loopback.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::util::{self, BgRuntime, BoxError, RespBody};

/// Which requests a fault applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Blob fetches: `GET`/`HEAD /v2/<name>/blobs/<digest>` (not uploads).
    Blobs,
    /// Manifest requests: `/v2/<name>/manifests/<reference>` (any method).
    Manifests,
    /// Blobs and manifests.
    BlobsAndManifests,
    /// Every request.
    Any,
    /// Requests whose path contains this string.
    PathContains(String),
    /// Blob fetches whose `Range` header starts at this byte
    /// (`Range: bytes=N-…`): one part of a ranged download.
    RangeFrom(u64),
}

/// What a request was, from its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// `/v2/` (the API version check).
    Base,
    /// A manifest request.
    Manifest,
    /// A blob fetch (`/blobs/<digest>`), including those served by the
    /// redirect listener.
    Blob,
    /// A blob upload (`/blobs/uploads/...`).
    Upload,
    /// Anything else.
    Other,
}

/// Which listener received a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The proxy itself.
    Proxy,
    /// The blob-storage stand-in that redirected blob GETs go to.
    Redirect,
}

/// One request seen by the proxy or its redirect listener.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// Which listener got it.
    pub listener: Listener,
    /// HTTP method.
    pub method: String,
    /// Path (no query).
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Classification of the path.
    pub kind: RequestKind,
    /// Whether the request carried an `Authorization` header.
    pub authorization: bool,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The status returned to the client (0 while still pending).
    pub status: u16,
    /// Response body bytes handed to the client.
    pub body_bytes: u64,
    /// The client's address: requests with the same one came on the same
    /// connection.
    pub peer: SocketAddr,
    /// When the request arrived.
    pub started: std::time::Instant,
    /// When the proxy finished sending (or cut) the response body; `None`
    /// while it is in flight, and for answers the proxy made itself.
    pub ended: Option<std::time::Instant>,
    /// The fault applied, if any (`"drop"`, `"corrupt"`, `"429"`, `"503"`,
    /// `"redirect"`, `"rate-limit"`, `"reject-auth"`, `"stall"`,
    /// `"throttle"`, `"aws-throttling"`).
    pub fault: Option<&'static str>,
}

/// Cut the connection after `after_bytes` body bytes, for the next
/// `remaining` matching GET responses whose body is longer than that.
#[derive(Clone, Debug)]
pub struct DropAfter {
    /// Matching requests.
    pub target: Target,
    /// Body bytes sent before the connection is dropped.
    pub after_bytes: u64,
    /// How many more responses to cut.
    pub remaining: usize,
}

/// Flip (XOR 0xFF) the body byte at `offset`, for the next `remaining`
/// matching GET responses that reach that offset.
#[derive(Clone, Debug)]
pub struct Corrupt {
    /// Matching requests.
    pub target: Target,
    /// Offset in the response body.
    pub offset: u64,
    /// How many more responses to corrupt.
    pub remaining: usize,
}

/// Answer 429 `TOOMANYREQUESTS` with `Retry-After` and Docker Hub's
/// rate-limit headers to the next `remaining` matching requests.
#[derive(Clone, Debug)]
pub struct TooManyRequests {
    /// Matching requests.
    pub target: Target,
    /// `Retry-After` seconds.
    pub retry_after_secs: u64,
    /// How many more requests to refuse.
    pub remaining: usize,
}

/// A fault applied to the next `remaining` matching requests.
#[derive(Clone, Debug)]
pub struct TimesFault {
    /// Matching requests.
    pub target: Target,
    /// How many more requests to affect.
    pub remaining: usize,
}

impl TimesFault {
    /// Whether this request is affected; counts it if so.
    fn take(&mut self, kind: RequestKind, path: &str, range: Option<&str>) -> bool {
        let hit = self.remaining > 0 && self.target.matches(kind, path, range);
        if hit {
            self.remaining -= 1;
        }
        hit
    }
}

/// Send nothing: hold the request without answering (`after_bytes: None`,
/// a registry that accepts the connection and then goes silent), or send
/// the headers and the first `after_bytes` body bytes of a GET response,
/// then nothing more, keeping the connection open, for the next
/// `remaining` matching requests. The connection is held until the client
/// gives up (or the proxy is dropped).
#[derive(Clone, Debug)]
pub struct Stall {
    /// Matching requests.
    pub target: Target,
    /// `None`: no status line at all; `Some(n)`: stall after `n` body bytes.
    pub after_bytes: Option<u64>,
    /// How many more requests to stall.
    pub remaining: usize,
}

/// Limit matching GET response bodies to `bytes_per_sec` (a slow link), so
/// a test can act while a download is in progress.
#[derive(Clone, Debug)]
pub struct Throttle {
    /// Matching requests.
    pub target: Target,
    /// Body bytes per second, per response.
    pub bytes_per_sec: u64,
}

/// A network link between the client and the registry: every connection
/// carries at most `bytes_per_sec` of response body, and every request waits
/// one round trip (`rtt`) before its answer starts; the first request of a
/// connection waits one more (the TCP handshake). HTTP/1.1 serves one
/// response at a time per connection, so pacing each response body is
/// pacing its connection. Applies to every request of both listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// Body bytes per second, per connection.
    pub bytes_per_sec: u64,
    /// Round-trip time added to each request.
    pub rtt: Duration,
}

/// Redirect blob GETs (307) to the redirect listener, on another loopback
/// host, as registries do to S3/CDN storage.
#[derive(Clone, Debug)]
pub struct Redirect {
    /// How many more blob GETs to redirect (`usize::MAX`: all).
    pub remaining: usize,
    /// If true, the storage listener answers 400 (like S3's "Only one auth
    /// mechanism allowed") when a request carries `Authorization`.
    pub reject_authorization: bool,
}

/// Docker Hub-style pull accounting on manifest requests: every response
/// gets `ratelimit-limit: L;w=W` and `ratelimit-remaining: R;w=W`; each
/// manifest GET (not HEAD) uses one pull.
#[derive(Clone, Debug)]
pub struct RateLimit {
    /// The limit shown.
    pub limit: u64,
    /// Pulls left (decremented by each manifest GET).
    pub remaining: u64,
    /// Window in seconds (`w=`), 21600 on Docker Hub.
    pub window_secs: u64,
    /// Answer 429 (`Retry-After`: the window, capped at 60 s) to manifest
    /// GETs once `remaining` is 0.
    pub enforce: bool,
}

/// The set of active faults (all off by default).
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// See [`DropAfter`].
    pub drop_after: Option<DropAfter>,
    /// See [`Corrupt`].
    pub corrupt: Option<Corrupt>,
    /// See [`TooManyRequests`].
    pub too_many_requests: Option<TooManyRequests>,
    /// 503 `UNAVAILABLE` for the next matching requests.
    pub unavailable: Option<TimesFault>,
    /// 403 `DENIED` "authorization token has expired" (what ECR answers to an
    /// expired token) for the next matching requests that carry credentials.
    pub forbidden: Option<TimesFault>,
    /// See [`Redirect`].
    pub redirect: Option<Redirect>,
    /// See [`RateLimit`].
    pub rate_limit: Option<RateLimit>,
    /// See [`Stall`].
    pub stall: Option<Stall>,
    /// See [`Throttle`].
    pub throttle: Option<Throttle>,
    /// See [`Link`].
    pub link: Option<Link>,
    /// Remove the `Range` header from matching requests before they reach
    /// the registry, which then answers `200` with the whole blob (a
    /// registry or CDN that ignores `Range`).
    pub ignore_range: Option<Target>,
    /// A mock of AWS API throttling: `400` with the JSON body
    /// `{"__type":"ThrottlingException","message":"Rate exceeded"}` (what
    /// ECR's `GetAuthorizationToken` answers past its per-account rate), for
    /// the next matching requests. For a proxy in front of [`crate::Moto`],
    /// which never throttles.
    pub aws_throttling: Option<TimesFault>,
}

impl Target {
    fn matches(&self, kind: RequestKind, path: &str, range: Option<&str>) -> bool {
        match self {
            Target::RangeFrom(from) => {
                kind == RequestKind::Blob && range.and_then(range_start) == Some(*from)
            }
            Target::Blobs => kind == RequestKind::Blob,
            Target::Manifests => kind == RequestKind::Manifest,
            Target::BlobsAndManifests => matches!(kind, RequestKind::Blob | RequestKind::Manifest),
            Target::Any => true,
            Target::PathContains(s) => path.contains(s.as_str()),
        }
    }
}

/// `N` of `bytes=N-…`.
fn range_start(range: &str) -> Option<u64> {
    range
        .trim()
        .strip_prefix("bytes=")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

fn classify(path: &str) -> RequestKind {
    if path == "/v2/" || path == "/v2" {
        return RequestKind::Base;
    }
    if !path.starts_with("/v2/") {
        return RequestKind::Other;
    }
    if path.contains("/blobs/uploads") {
        return RequestKind::Upload;
    }
    if let Some(i) = path.rfind("/blobs/")
        && path[i + 7..].contains(':')
    {
        return RequestKind::Blob;
    }
    if path.contains("/manifests/") {
        return RequestKind::Manifest;
    }
    RequestKind::Other
}

struct Ticket {
    upstream_path: String,
    authorization: Option<HeaderValue>,
}

struct State {
    upstream: SocketAddr,
    proxy_authority: String,
    redirect_base: String,
    faults: Mutex<Faults>,
    log: Mutex<Vec<RequestRecord>>,
    tickets: Mutex<HashMap<String, Ticket>>,
    /// Connections (by the client's address) that already had a request.
    peers: Mutex<std::collections::HashSet<SocketAddr>>,
    client: Client<HttpConnector, RespBody>,
}

impl State {
    fn record(&self, r: RequestRecord) -> usize {
        let mut log = self.log.lock().unwrap();
        log.push(r);
        log.len() - 1
    }

    fn set_status(&self, idx: usize, status: u16, fault: Option<&'static str>) {
        let mut log = self.log.lock().unwrap();
        if let Some(r) = log.get_mut(idx) {
            r.status = status;
            if fault.is_some() {
                r.fault = fault;
            }
        }
    }

    /// Waits what the [`Link`] adds before an answer: one round trip, two
    /// on a connection's first request. Returns the link's per-connection
    /// rate, if any.
    async fn link_delay(&self, peer: SocketAddr) -> Option<u64> {
        let link = self.faults.lock().unwrap().link?;
        let new = self.peers.lock().unwrap().insert(peer);
        let trips = if new { 2 } else { 1 };
        tokio::time::sleep(link.rtt * trips).await;
        Some(link.bytes_per_sec)
    }

    fn set_ended(&self, idx: usize) {
        if let Some(r) = self.log.lock().unwrap().get_mut(idx) {
            r.ended = Some(std::time::Instant::now());
        }
    }

    fn add_bytes(&self, idx: usize, n: u64) {
        let mut log = self.log.lock().unwrap();
        if let Some(r) = log.get_mut(idx) {
            r.body_bytes += n;
        }
    }
}

/// A reverse proxy (plain HTTP) in front of a [`crate::Registry`], with a
/// second "blob storage" listener on another loopback host for redirects.
/// Stopped on drop.
///
/// Redirect host: the storage listener binds `127.0.0.2` (all of 127/8 is
/// loopback on Linux), so redirected URLs have a different host than the
/// proxy's `127.0.0.1`; if that bind fails it falls back to `localhost`.
pub struct FaultProxy {
    addr: SocketAddr,
    redirect_addr: SocketAddr,
    redirect_host: String,
    state: Arc<State>,
    _rt: BgRuntime,
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            to.append(k.clone(), v.clone());
        }
    }
}

fn registry_error(status: StatusCode, code: &str, message: &str) -> Response<RespBody> {
    let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .header("docker-distribution-api-version", "registry/2.0")
        .body(util::full(body.to_string()))
        .unwrap()
}

/// AWS's JSON-protocol throttling answer (as ECR's API sends it).
fn aws_throttling() -> Response<RespBody> {
    Response::builder()
        .status(StatusCode::BAD_REQUEST)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amzn-requestid", util::random_hex16())
        .body(util::full(
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
        ))
        .unwrap()
}

fn too_many(retry_after: u64, limit: u64, window: u64) -> Response<RespBody> {
    let mut r = registry_error(
        StatusCode::TOO_MANY_REQUESTS,
        "TOOMANYREQUESTS",
        "You have reached your pull rate limit. You may increase the limit by authenticating and upgrading.",
    );
    let h = r.headers_mut();
    h.insert("retry-after", HeaderValue::from(retry_after));
    h.insert(
        "ratelimit-limit",
        format!("{limit};w={window}").parse().unwrap(),
    );
    h.insert(
        "ratelimit-remaining",
        format!("0;w={window}").parse().unwrap(),
    );
    r
}

/// A response body fed by a channel (so the proxy can count, corrupt and cut).
struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx)
    }
}

/// What [`pump`] does to one response body.
#[derive(Clone, Copy, Default)]
struct BodyFaults {
    drop_at: Option<u64>,
    corrupt_at: Option<u64>,
    stall_at: Option<u64>,
    bytes_per_sec: Option<u64>,
}

/// Sends `data` in pieces no faster than `rate` bytes per second since
/// `started` (counting `sent` bytes already sent). Returns false if the
/// client went away.
async fn send_throttled(
    st: &State,
    idx: usize,
    tx: &tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
    data: Bytes,
    sent: &mut u64,
    rate: u64,
    started: tokio::time::Instant,
) -> bool {
    // About 500 wake-ups a second at most, whatever the rate.
    let piece_len = ((rate / 500) as usize).clamp(16 << 10, 256 << 10);
    let mut rest = data;
    while !rest.is_empty() {
        let piece = rest.split_to(rest.len().min(piece_len));
        let due = started + Duration::from_secs_f64(*sent as f64 / rate.max(1) as f64);
        tokio::time::sleep_until(due).await;
        *sent += piece.len() as u64;
        st.add_bytes(idx, piece.len() as u64);
        if tx.send(Ok(Frame::data(piece))).await.is_err() {
            return false;
        }
    }
    true
}

async fn pump(
    st: Arc<State>,
    idx: usize,
    mut body: Incoming,
    tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
    faults: BodyFaults,
) {
    let BodyFaults {
        drop_at,
        corrupt_at,
        stall_at,
        bytes_per_sec,
    } = faults;
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                // The upstream broke mid-body (e.g. the registry was killed):
                // let hyper flush what was sent, then break the client's
                // connection too.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = tx.send(Err(Box::new(e))).await;
                return;
            }
        };
        let mut data = match frame.into_data() {
            Ok(d) => d,
            Err(other) => {
                if tx.send(Ok(other)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let len = data.len() as u64;
        if let Some(off) = corrupt_at
            && off >= sent
            && off < sent + len
        {
            let mut v = data.to_vec();
            v[(off - sent) as usize] ^= 0xFF;
            data = Bytes::from(v);
        }
        if let Some(limit) = stall_at
            && sent + len > limit
        {
            let take = (limit - sent) as usize;
            if take > 0 {
                st.add_bytes(idx, take as u64);
                let _ = tx.send(Ok(Frame::data(data.slice(..take)))).await;
            }
            // Hold the connection open, sending nothing, until the client
            // goes away.
            tx.closed().await;
            return;
        }
        if let Some(limit) = drop_at
            && sent + len > limit
        {
            let take = (limit - sent) as usize;
            if take > 0 {
                st.add_bytes(idx, take as u64);
                let _ = tx.send(Ok(Frame::data(data.slice(..take)))).await;
            }
            // Let hyper flush what was sent, then abort the connection.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = tx
                .send(Err("testkit fault: connection dropped".into()))
                .await;
            return;
        }
        if let Some(rate) = bytes_per_sec {
            if !send_throttled(&st, idx, &tx, data, &mut sent, rate, started).await {
                return;
            }
            continue;
        }
        sent += len;
        st.add_bytes(idx, len);
        if tx.send(Ok(Frame::data(data))).await.is_err() {
            return;
        }
    }
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get("content-length")?.to_str().ok()?.parse().ok()
}

fn rewrite(value: &HeaderValue, from: &str, to: &str) -> HeaderValue {
    match value.to_str() {
        Ok(s) if s.contains(from) => {
            HeaderValue::from_str(&s.replace(from, to)).unwrap_or(value.clone())
        }
        _ => value.clone(),
    }
}

#[allow(clippy::too_many_arguments)]
/// Turns the upstream response into the client's: header rewriting, extra
/// headers, body faults and byte counting.
fn finish(
    st: &Arc<State>,
    idx: usize,
    kind: RequestKind,
    method: &Method,
    path: &str,
    upstream: Response<Incoming>,
    extra: Vec<(HeaderName, HeaderValue)>,
    mut fault: Option<&'static str>,
    range: Option<&str>,
    link_rate: Option<u64>,
) -> Response<RespBody> {
    let (parts, body) = upstream.into_parts();
    let status = parts.status;
    let mut out = Response::builder()
        .status(status)
        .body(util::empty())
        .unwrap();
    copy_headers(&parts.headers, out.headers_mut());
    let up = st.upstream.to_string();
    for name in ["location", "www-authenticate", "content-location"] {
        if let Some(v) = out.headers().get(name).cloned() {
            out.headers_mut()
                .insert(name, rewrite(&v, &up, &st.proxy_authority));
        }
    }
    for (k, v) in extra {
        out.headers_mut().insert(k, v);
    }

    let (mut drop_at, mut corrupt_at, mut stall_at, mut bytes_per_sec) = (None, None, None, None);
    if *method == Method::GET && (status == StatusCode::OK || status == StatusCode::PARTIAL_CONTENT)
    {
        let len = content_length(&parts.headers);
        let mut f = st.faults.lock().unwrap();
        if let Some(s) = f.stall.as_mut()
            && let Some(after) = s.after_bytes
            && s.remaining > 0
            && s.target.matches(kind, path, range)
            && len.is_none_or(|l| l > after)
        {
            s.remaining -= 1;
            stall_at = Some(after);
            fault = Some("stall");
        }
        if let Some(t) = f.throttle.as_ref()
            && t.target.matches(kind, path, range)
        {
            bytes_per_sec = Some(t.bytes_per_sec);
            fault = fault.or(Some("throttle"));
        }
        if let Some(rate) = link_rate {
            bytes_per_sec = Some(bytes_per_sec.map_or(rate, |r: u64| r.min(rate)));
        }
        if let Some(d) = f.drop_after.as_mut()
            && d.remaining > 0
            && d.target.matches(kind, path, range)
            && len.is_none_or(|l| l > d.after_bytes)
        {
            d.remaining -= 1;
            drop_at = Some(d.after_bytes);
            fault = Some("drop");
        }
        if let Some(c) = f.corrupt.as_mut()
            && c.remaining > 0
            && c.target.matches(kind, path, range)
            && len.is_none_or(|l| l > c.offset)
        {
            c.remaining -= 1;
            corrupt_at = Some(c.offset);
            fault = Some("corrupt");
        }
    }
    st.set_status(idx, status.as_u16(), fault);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let faults = BodyFaults {
        drop_at,
        corrupt_at,
        stall_at,
        bytes_per_sec,
    };
    let st = st.clone();
    tokio::spawn(async move {
        pump(st.clone(), idx, body, tx, faults).await;
        st.set_ended(idx);
    });
    *out.body_mut() = ChannelBody { rx }.boxed();
    out
}

async fn forward(
    st: &Arc<State>,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: RespBody,
) -> Result<Response<Incoming>, BoxError> {
    let uri: hyper::Uri = format!("http://{}{}", st.upstream, path_and_query).parse()?;
    let mut req = Request::builder().method(method).uri(uri).body(body)?;
    copy_headers(headers, req.headers_mut());
    Ok(st.client.request(req).await?)
}

fn bad_gateway(e: BoxError) -> Response<RespBody> {
    registry_error(
        StatusCode::BAD_GATEWAY,
        "UNKNOWN",
        &format!("testkit proxy: upstream error: {e}"),
    )
}

async fn handle_proxy(
    st: Arc<State>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<RespBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let kind = classify(&path);
    let mut headers = req.headers().clone();
    let range_header = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let range = range_header.as_deref();
    let idx = st.record(RequestRecord {
        listener: Listener::Proxy,
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        kind,
        authorization: headers.contains_key("authorization"),
        range: headers
            .get("range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        status: 0,
        body_bytes: 0,
        peer,
        started: std::time::Instant::now(),
        ended: None,
        fault: None,
    });
    let link_rate = st.link_delay(peer).await;

    let stall_headers = st.faults.lock().unwrap().stall.as_mut().is_some_and(|s| {
        let hit =
            s.after_bytes.is_none() && s.remaining > 0 && s.target.matches(kind, &path, range);
        if hit {
            s.remaining -= 1;
        }
        hit
    });
    if stall_headers {
        st.set_status(idx, 0, Some("stall"));
        // Accepted, request read, and then nothing: no status line. The
        // task ends when the proxy stops.
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        return registry_error(StatusCode::GATEWAY_TIMEOUT, "UNKNOWN", "stalled");
    }

    let mut extra = Vec::new();
    let mut redirect_to = None;
    {
        let mut f = st.faults.lock().unwrap();
        // Plain error answers. ECR's expired-token 403 only hits requests
        // that carry credentials.
        let authorized = headers.contains_key("authorization");
        if f.aws_throttling
            .as_mut()
            .is_some_and(|t| t.take(kind, &path, range))
        {
            drop(f);
            st.set_status(idx, 400, Some("aws-throttling"));
            return aws_throttling();
        }
        let hit = if authorized
            && f.forbidden
                .as_mut()
                .is_some_and(|u| u.take(kind, &path, range))
        {
            Some((
                StatusCode::FORBIDDEN,
                "403",
                "DENIED",
                "Your authorization token has expired. Reauthenticate and try again.",
            ))
        } else if f
            .unavailable
            .as_mut()
            .is_some_and(|u| u.take(kind, &path, range))
        {
            Some((
                StatusCode::SERVICE_UNAVAILABLE,
                "503",
                "UNAVAILABLE",
                "service unavailable",
            ))
        } else {
            None
        };
        if let Some((status, label, code, message)) = hit {
            drop(f);
            st.set_status(idx, status.as_u16(), Some(label));
            return registry_error(status, code, message);
        }
        if let Some(t) = f.too_many_requests.as_mut()
            && t.remaining > 0
            && t.target.matches(kind, &path, range)
        {
            t.remaining -= 1;
            let retry = t.retry_after_secs;
            drop(f);
            st.set_status(idx, 429, Some("429"));
            return too_many(retry, 100, 21600);
        }
        if kind == RequestKind::Manifest
            && let Some(rl) = f.rate_limit.as_mut()
        {
            if method == Method::GET {
                if rl.remaining == 0 && rl.enforce {
                    let (limit, w) = (rl.limit, rl.window_secs);
                    drop(f);
                    st.set_status(idx, 429, Some("rate-limit"));
                    return too_many(w.min(60), limit, w);
                }
                rl.remaining = rl.remaining.saturating_sub(1);
            }
            extra.push((
                HeaderName::from_static("ratelimit-limit"),
                format!("{};w={}", rl.limit, rl.window_secs)
                    .parse()
                    .unwrap(),
            ));
            extra.push((
                HeaderName::from_static("ratelimit-remaining"),
                format!("{};w={}", rl.remaining, rl.window_secs)
                    .parse()
                    .unwrap(),
            ));
        }
        if kind == RequestKind::Blob
            && method == Method::GET
            && let Some(r) = f.redirect.as_mut()
            && r.remaining > 0
        {
            if r.remaining != usize::MAX {
                r.remaining -= 1;
            }
            redirect_to = Some(());
        }
        if f.ignore_range
            .as_ref()
            .is_some_and(|t| t.matches(kind, &path, range))
        {
            headers.remove("range");
        }
    }

    if redirect_to.is_some() {
        let ticket = util::random_hex16();
        let digest = path.rsplit('/').next().unwrap_or("blob").to_string();
        st.tickets.lock().unwrap().insert(
            ticket.clone(),
            Ticket {
                upstream_path: path.clone(),
                authorization: headers.get("authorization").cloned(),
            },
        );
        let location = format!(
            "{}/storage/{ticket}/{digest}?X-Testkit-Signature={ticket}",
            st.redirect_base
        );
        st.set_status(idx, 307, Some("redirect"));
        return Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header("location", location)
            .header("docker-distribution-api-version", "registry/2.0")
            .header("content-length", "0")
            .body(util::empty())
            .unwrap();
    }

    let pq = match &query {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let body = req.into_body().map_err(|e| Box::new(e) as BoxError).boxed();
    match forward(&st, method.clone(), &pq, &headers, body).await {
        Ok(resp) => finish(
            &st, idx, kind, &method, &path, resp, extra, None, range, link_rate,
        ),
        Err(e) => {
            st.set_status(idx, 502, None);
            bad_gateway(e)
        }
    }
}

async fn handle_storage(
    st: Arc<State>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<RespBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let has_auth = headers.contains_key("authorization");
    let idx = st.record(RequestRecord {
        listener: Listener::Redirect,
        method: method.to_string(),
        path: path.clone(),
        query: req.uri().query().map(str::to_string),
        kind: RequestKind::Blob,
        authorization: has_auth,
        range: headers
            .get("range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        status: 0,
        body_bytes: 0,
        peer,
        started: std::time::Instant::now(),
        ended: None,
        fault: None,
    });
    let link_rate = st.link_delay(peer).await;
    let range_header = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let range = range_header.as_deref();
    let xml = |status: StatusCode, code: &str, msg: &str| {
        Response::builder()
            .status(status)
            .header("content-type", "application/xml")
            .body(util::full(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{msg}</Message></Error>"
            )))
            .unwrap()
    };
    let ticket_id = path
        .strip_prefix("/storage/")
        .and_then(|r| r.split('/').next())
        .unwrap_or("");
    let ticket = st
        .tickets
        .lock()
        .unwrap()
        .get(ticket_id)
        .map(|t| (t.upstream_path.clone(), t.authorization.clone()));
    let Some((upstream_path, authorization)) = ticket else {
        st.set_status(idx, 403, None);
        return xml(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired");
    };
    let reject = st
        .faults
        .lock()
        .unwrap()
        .redirect
        .as_ref()
        .is_some_and(|r| r.reject_authorization);
    if has_auth && reject {
        st.set_status(idx, 400, Some("reject-auth"));
        return xml(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        st.set_status(idx, 405, None);
        return xml(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "method not allowed",
        );
    }
    let mut up_headers = HeaderMap::new();
    let ignore_range = st
        .faults
        .lock()
        .unwrap()
        .ignore_range
        .as_ref()
        .is_some_and(|t| t.matches(RequestKind::Blob, &upstream_path, range));
    if let Some(r) = headers.get("range")
        && !ignore_range
    {
        up_headers.insert("range", r.clone());
    }
    if let Some(a) = authorization {
        up_headers.insert("authorization", a);
    }
    match forward(
        &st,
        method.clone(),
        &upstream_path,
        &up_headers,
        util::empty(),
    )
    .await
    {
        Ok(resp) => {
            let mut out = finish(
                &st,
                idx,
                RequestKind::Blob,
                &method,
                &upstream_path,
                resp,
                Vec::new(),
                None,
                range,
                link_rate,
            );
            // Storage does not speak the registry API.
            out.headers_mut().remove("docker-distribution-api-version");
            out.headers_mut().remove("docker-content-digest");
            out
        }
        Err(e) => {
            st.set_status(idx, 502, None);
            bad_gateway(e)
        }
    }
}

impl FaultProxy {
    /// Starts a proxy in front of `registry` (which must be plain HTTP).
    pub fn start(registry: &crate::Registry) -> FaultProxy {
        assert!(
            !registry.is_tls(),
            "FaultProxy needs a plain-HTTP upstream registry"
        );
        Self::start_for(registry.addr())
    }

    /// Starts a proxy in front of any plain-HTTP server at `upstream`.
    pub fn start_for(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (storage, redirect_host) = match TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), 0)) {
            Ok(l) => (l, "127.0.0.2".to_string()),
            Err(_) => (
                TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind storage listener"),
                "localhost".to_string(),
            ),
        };
        let redirect_addr = storage.local_addr().expect("storage addr");
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build_http::<RespBody>();
        let state = Arc::new(State {
            upstream,
            proxy_authority: addr.to_string(),
            redirect_base: format!("http://{redirect_host}:{}", redirect_addr.port()),
            faults: Mutex::new(Faults::default()),
            log: Mutex::new(Vec::new()),
            tickets: Mutex::new(HashMap::new()),
            peers: Mutex::new(Default::default()),
            client,
        });
        let rt = BgRuntime::start("fault-proxy");
        let st = state.clone();
        util::serve_http(rt.handle(), listener, move |req, peer| {
            handle_proxy(st.clone(), req, peer)
        });
        let st = state.clone();
        util::serve_http(rt.handle(), storage, move |req, peer| {
            handle_storage(st.clone(), req, peer)
        });
        FaultProxy {
            addr,
            redirect_addr,
            redirect_host,
            state,
            _rt: rt,
        }
    }

    /// A proxy in front of the plain-HTTP server at `upstream` that plays a
    /// real network link: each connection carries at most `bytes_per_sec`
    /// of response body, and each request waits `rtt` before its answer
    /// starts (a connection's first request `2 × rtt`, for the handshake).
    /// What a CDN that caps every connection looks like, e.g.
    /// `FaultProxy::throttled(reg.addr(), 50_000_000, Duration::from_millis(20))`.
    /// Point Berth and its peers at [`FaultProxy::host_port`] in the same
    /// run; other faults can be added as usual. See [`Link`].
    pub fn throttled(upstream: SocketAddr, bytes_per_sec: u64, rtt: Duration) -> FaultProxy {
        let proxy = Self::start_for(upstream);
        proxy.set_link(bytes_per_sec, rtt);
        proxy
    }

    /// Caps every connection at `bytes_per_sec` and adds `rtt` to every
    /// request, from the next request on (see [`Link`]).
    pub fn set_link(&self, bytes_per_sec: u64, rtt: Duration) {
        self.update_faults(|f| f.link = Some(Link { bytes_per_sec, rtt }));
    }

    /// Removes the [`Link`]: loopback speed again.
    pub fn clear_link(&self) {
        self.update_faults(|f| f.link = None);
    }

    /// Strips `Range` from blob GETs, so the registry answers `200` with
    /// the whole blob: a registry that ignores `Range` (until cleared).
    pub fn ignore_range(&self) {
        self.update_faults(|f| f.ignore_range = Some(Target::Blobs));
    }

    /// Drops the connection after `after_bytes` body bytes of the next
    /// `times` blob GETs whose `Range` starts at byte `from` (one part of a
    /// ranged download).
    pub fn drop_part_after(&self, from: u64, after_bytes: u64, times: usize) {
        self.update_faults(|f| {
            f.drop_after = Some(DropAfter {
                target: Target::RangeFrom(from),
                after_bytes,
                remaining: times,
            })
        });
    }

    /// Flips the body byte at `offset` (counted from the start of the
    /// answer) of the next `times` blob GETs whose `Range` starts at byte
    /// `from`.
    pub fn corrupt_part(&self, from: u64, offset: u64, times: usize) {
        self.update_faults(|f| {
            f.corrupt = Some(Corrupt {
                target: Target::RangeFrom(from),
                offset,
                remaining: times,
            })
        });
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`: use it as the registry host in image references.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream registry address.
    pub fn upstream(&self) -> SocketAddr {
        self.state.upstream
    }

    /// The host name redirected blob GETs go to (`127.0.0.2`, or `localhost`).
    pub fn redirect_host(&self) -> &str {
        &self.redirect_host
    }

    /// `http://<redirect host>:PORT` of the storage listener.
    pub fn redirect_base_url(&self) -> String {
        self.state.redirect_base.clone()
    }

    /// The storage listener's socket address.
    pub fn redirect_addr(&self) -> SocketAddr {
        self.redirect_addr
    }

    /// A copy of the current faults.
    pub fn faults(&self) -> Faults {
        self.state.faults.lock().unwrap().clone()
    }

    /// Replaces all faults.
    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.lock().unwrap() = faults;
    }

    /// Edits the faults in place.
    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.state.faults.lock().unwrap());
    }

    /// Turns every fault off.
    pub fn clear_faults(&self) {
        self.set_faults(Faults::default());
    }

    /// Drops the connection after `after_bytes` body bytes of the next
    /// `times` blob GET responses (clients may resume with `Range`, which
    /// is forwarded; distribution answers 206).
    pub fn drop_blob_after(&self, after_bytes: u64, times: usize) {
        self.update_faults(|f| {
            f.drop_after = Some(DropAfter {
                target: Target::Blobs,
                after_bytes,
                remaining: times,
            })
        });
    }

    /// Flips the byte at `offset` of the next `times` blob GET bodies.
    pub fn corrupt_blob(&self, offset: u64, times: usize) {
        self.update_faults(|f| {
            f.corrupt = Some(Corrupt {
                target: Target::Blobs,
                offset,
                remaining: times,
            })
        });
    }

    /// Answers 429 (`Retry-After: retry_after_secs`) to the next `times`
    /// requests matching `target`.
    pub fn too_many_requests(&self, target: Target, retry_after_secs: u64, times: usize) {
        self.update_faults(|f| {
            f.too_many_requests = Some(TooManyRequests {
                target,
                retry_after_secs,
                remaining: times,
            })
        });
    }

    /// Answers 403 DENIED (ECR's "token has expired") to the next `times`
    /// requests matching `target`.
    pub fn forbidden(&self, target: Target, times: usize) {
        self.update_faults(|f| {
            f.forbidden = Some(TimesFault {
                target,
                remaining: times,
            })
        });
    }

    /// Answers 503 to the next `times` requests matching `target`.
    pub fn unavailable(&self, target: Target, times: usize) {
        self.update_faults(|f| {
            f.unavailable = Some(TimesFault {
                target,
                remaining: times,
            })
        });
    }

    /// Redirects the next `times` blob GETs (`usize::MAX`: all) to the
    /// storage listener; with `reject_authorization`, storage answers 400 to
    /// requests carrying `Authorization`.
    pub fn redirect_blobs(&self, times: usize, reject_authorization: bool) {
        self.update_faults(|f| {
            f.redirect = Some(Redirect {
                remaining: times,
                reject_authorization,
            })
        });
    }

    /// Adds Docker Hub rate-limit headers to manifest responses, starting
    /// with `remaining` pulls of `limit` (window 21600 s); with `enforce`,
    /// manifest GETs get 429 once none remain.
    pub fn rate_limit(&self, limit: u64, remaining: u64, enforce: bool) {
        self.update_faults(|f| {
            f.rate_limit = Some(RateLimit {
                limit,
                remaining,
                window_secs: 21600,
                enforce,
            })
        });
    }

    /// Holds the next `times` requests matching `target` without answering
    /// (no status line; the connection stays open).
    pub fn stall_headers(&self, target: Target, times: usize) {
        self.update_faults(|f| {
            f.stall = Some(Stall {
                target,
                after_bytes: None,
                remaining: times,
            })
        });
    }

    /// Sends the headers and the first `after_bytes` body bytes of the next
    /// `times` GET responses matching `target`, then nothing more (the
    /// connection stays open).
    pub fn stall_body_after(&self, target: Target, after_bytes: u64, times: usize) {
        self.update_faults(|f| {
            f.stall = Some(Stall {
                target,
                after_bytes: Some(after_bytes),
                remaining: times,
            })
        });
    }

    /// Limits GET response bodies matching `target` to `bytes_per_sec`
    /// each, until cleared (`clear_throttle` or `clear_faults`). Applies to
    /// responses that start after the call.
    pub fn throttle(&self, target: Target, bytes_per_sec: u64) {
        self.update_faults(|f| {
            f.throttle = Some(Throttle {
                target,
                bytes_per_sec,
            })
        });
    }

    /// Removes the [`Throttle`] (responses already throttled stay so).
    pub fn clear_throttle(&self) {
        self.update_faults(|f| f.throttle = None);
    }

    /// A mock of AWS API throttling: answers the next `times` requests
    /// matching `target` with `400` `ThrottlingException` (see
    /// [`Faults::aws_throttling`]).
    pub fn aws_throttling(&self, target: Target, times: usize) {
        self.update_faults(|f| {
            f.aws_throttling = Some(TimesFault {
                target,
                remaining: times,
            })
        });
    }

    /// Every request seen so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.log.lock().unwrap().clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// Number of requests of `kind` with `method` (both listeners).
    pub fn count(&self, kind: RequestKind, method: &str) -> usize {
        self.state
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.kind == kind && r.method == method)
            .count()
    }

    /// Manifest GETs received.
    pub fn manifest_gets(&self) -> usize {
        self.count(RequestKind::Manifest, "GET")
    }

    /// Manifest HEADs received.
    pub fn manifest_heads(&self) -> usize {
        self.count(RequestKind::Manifest, "HEAD")
    }

    /// Blob GETs received (proxy and storage listener).
    pub fn blob_gets(&self) -> usize {
        self.count(RequestKind::Blob, "GET")
    }

    /// Blob body bytes handed to clients (proxy and storage listener).
    pub fn blob_bytes_served(&self) -> u64 {
        self.state
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.kind == RequestKind::Blob)
            .map(|r| r.body_bytes)
            .sum()
    }

    /// The most blob GETs whose bodies were in flight at the same time
    /// (both listeners), from the request log.
    pub fn max_concurrent_blob_gets(&self) -> usize {
        let log = self.state.log.lock().unwrap();
        let gets: Vec<_> = log
            .iter()
            .filter(|r| r.kind == RequestKind::Blob && r.method == "GET")
            .collect();
        gets.iter()
            .map(|a| {
                gets.iter()
                    .filter(|b| b.started <= a.started && b.ended.is_none_or(|e| e > a.started))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Requests received by the storage (redirect) listener.
    pub fn storage_requests(&self) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|r| r.listener == Listener::Redirect)
            .collect()
    }
}
