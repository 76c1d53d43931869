//! The HTTP/1.1 framing on Unix sockets: one listener per socket path,
//! bodies capped at 1 MiB, every answer with `Content-Length`, connections
//! bounded so that a flooding CVM slows only its own agent.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;

use crate::api::{AgentState, Answer};
use crate::decode::{RequestParts, ascii_json};

/// The largest request body read.
pub(crate) const MAX_BODY: usize = 1 << 20;
/// Connections served at once per agent; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;

/// Binds `path`, removing a stale socket there first (never another kind
/// of file), and makes it `0660`.
pub(crate) fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; not replacing it",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot bind {}: {e}", path.display()))
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Accepts connections on `listener` until the task is dropped.
pub(crate) async fn accept_loop(
    listener: UnixListener,
    state: Arc<AgentState>,
    slots: Arc<Semaphore>,
) {
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors or similar: back off briefly.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

async fn respond(state: &AgentState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return error(StatusCode::BAD_REQUEST, "the request body is over 1 MiB");
    }
    let is_get = req.method() == Method::GET || req.method() == Method::HEAD;
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(StatusCode::BAD_REQUEST, "the request body is over 1 MiB");
        }
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            );
        }
    };
    let parts = RequestParts {
        is_get,
        query: &query,
        content_type: &content_type,
        body: &body,
    };
    match state.handle(&path, &parts) {
        Answer::Ok(value) => json_response(StatusCode::OK, ascii_json(&value)),
        Answer::BadRequest(msg) => error(StatusCode::BAD_REQUEST, &msg),
        Answer::NotFound(msg) => error(StatusCode::NOT_FOUND, &msg),
    }
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, ascii_json(&serde_json::json!({ "error": message })))
}

fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let len = body.len();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    headers.insert(CONTENT_LENGTH, hyper::header::HeaderValue::from(len));
    resp
}

/// Serves every path until `shutdown`, then removes the sockets.
pub(crate) async fn run(
    state: AgentState,
    paths: Vec<PathBuf>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let mut listeners = Vec::with_capacity(paths.len());
    for path in &paths {
        listeners.push(bind(path)?);
    }
    serve_listeners(state, listeners, shutdown).await;
    for path in &paths {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Serves on `listeners` (bound here or by someone else) until `shutdown`.
pub(crate) async fn serve_listeners(
    state: AgentState,
    listeners: Vec<UnixListener>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let state = Arc::new(state);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tasks.spawn(accept_loop(listener, state.clone(), slots.clone()));
    }
    shutdown.await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}
