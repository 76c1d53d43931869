//! Logs: the serial log (`GET /cvms/{id}/syslog?ch=serial|stdout|stderr`,
//! with `tail` and `follow`) and one container's output
//! (`GET /cvms/{id}/containers/{cid}/logs`).
//!
//! These URLs are fetched without the API key, as the official clients do:
//! each carries a **log token**, HMAC-SHA256 of the CVM id under
//! `STATE/log-secret` (128 bits kept), checked in constant time. Rotating
//! the secret (`berth up --rotate-log-secret`) revokes every URL handed out.
//! API replicas (`berth up --role api`) read the same file from the state
//! folder they join, so a URL one replica hands out verifies on every
//! other (a replica reads it when it starts: after a rotation, restart
//! the replicas too).

use super::{AppState, Shared};
use crate::db::Cvm;
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;

/// `?token=&ch=&tail=&follow` of a log URL.
#[derive(serde::Deserialize, Default)]
pub struct LogQuery {
    token: Option<String>,
    ch: Option<String>,
    tail: Option<String>,
    follow: Option<String>,
}

type LogMac = hmac::Hmac<sha2::Sha256>;

/// The log token's bytes kept (128 bits of the HMAC).
const LOG_TOKEN_BYTES: usize = 16;

/// HMAC-SHA256 of the CVM id under the installation's log secret.
fn log_mac(state: &AppState, cvm_id: &str) -> LogMac {
    use hmac::Mac as _;
    let mut mac = LogMac::new_from_slice(&state.log_secret).expect("HMAC takes any key length");
    mac.update(b"berth-log-token\0");
    mac.update(cvm_id.as_bytes());
    mac
}

/// A capability for this CVM's logs only. Rotating the log secret
/// (`berth up --rotate-log-secret`) makes every log URL handed out before
/// stop working.
fn log_token(state: &AppState, cvm: &Cvm) -> String {
    use hmac::Mac as _;
    hex::encode(&log_mac(state, &cvm.id).finalize().into_bytes()[..LOG_TOKEN_BYTES])
}

fn base(state: &AppState) -> &str {
    state.public_url.trim_end_matches('/')
}

/// The CVM's serial log URL, with its token.
pub fn syslog_endpoint(state: &AppState, cvm: &Cvm) -> String {
    format!(
        "{}/api/v1/cvms/{}/syslog?token={}",
        base(state),
        cvm.id,
        log_token(state, cvm)
    )
}

/// One container's log URL, with the CVM's token.
pub fn container_log_endpoint(state: &AppState, cvm: &Cvm, container: &str) -> String {
    format!(
        "{}/api/v1/cvms/{}/containers/{container}/logs?token={}",
        base(state),
        cvm.id,
        log_token(state, cvm)
    )
}

/// 401 without a token, 403 with a wrong one (compared in constant time).
fn check_token(state: &AppState, cvm: &Cvm, q: &LogQuery) -> Result<(), ApiError> {
    use hmac::Mac as _;
    let Some(token) = q.token.as_deref() else {
        return Err(ApiError::unauthorized(
            "this log URL has no token: take the URL from GET /cvms/{id}",
        ));
    };
    let ok = hex::decode(token).is_ok_and(|t| {
        t.len() == LOG_TOKEN_BYTES && log_mac(state, &cvm.id).verify_truncated_left(&t).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "this log URL's token is wrong or was revoked: take the URL from GET /cvms/{id} again",
        ))
    }
}

/// The CVM a log URL names, when it is not deleted and the token is right.
async fn log_cvm(state: &AppState, id: &str, q: &LogQuery) -> Result<Cvm, ApiError> {
    let cvm = state
        .db
        .cvm(id)
        .await?
        .filter(|c| c.status.is_live())
        .ok_or_else(|| ApiError::not_found("no such CVM"))?;
    check_token(state, &cvm, q)?;
    Ok(cvm)
}

/// The last lines of a file within the byte cap, read on the blocking pool.
async fn read_tail(
    path: std::path::PathBuf,
    lines: Option<usize>,
) -> Result<crate::logs::Tail, ApiError> {
    tokio::task::spawn_blocking(move || {
        crate::logs::tail(&path, lines, crate::logs::MAX_ANSWER_BYTES)
    })
    .await
    .map_err(|_| ApiError::internal("the log reader stopped"))?
    .map_err(|e| ApiError::internal(format!("cannot read the serial log: {}", e.kind())))
}

/// `GET /cvms/{id}/syslog`: the serial log (`ch=serial`, the default;
/// followed with `follow`), or the app's `stdout`/`stderr` from the node.
pub async fn syslog(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let cvm = log_cvm(&state, &id, &q).await?;
    let channel = q.ch.clone().unwrap_or_else(|| "serial".into());
    let follow = q.follow.is_some();
    let tail = crate::logs::parse_tail(q.tail.as_deref());
    match channel.as_str() {
        "serial" => {
            let path = state.cvms_root.join(&cvm.id).join("serial.log");
            let first = read_tail(path.clone(), tail).await?;
            if !follow {
                return Ok(text(first.bytes));
            }
            // Follow: the tail, then new lines as they are written, until
            // the boot has ended and nothing new came for a while.
            let follower = crate::logs::Follower::after(path, &first);
            let stream = follow_stream(first.bytes, follower, state.clone(), cvm.id.clone());
            Ok(Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Body::from_stream(stream))
                .expect("response"))
        }
        "stdout" | "stderr" => Ok(text(
            state
                .node
                .container_logs(&cvm.id, channel == "stderr", tail)
                .await?,
        )),
        other => Err(ApiError::bad_request(format!(
            "unknown log channel `{other}`: use serial, stdout or stderr"
        ))),
    }
}

fn text(body: impl Into<Body>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

/// A body stream that sends `first`, then whatever is appended to the
/// followed file (read from the follower's offset, on the blocking pool),
/// until the CVM is no longer booting and nothing new arrived for a second
/// (or 30 minutes passed, or [`crate::logs::MAX_FOLLOW_BYTES`] were sent,
/// or the client went away).
fn follow_stream(
    first: Vec<u8>,
    follower: crate::logs::Follower,
    state: Shared,
    cvm_id: String,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        if tx.send(Ok(bytes::Bytes::from(first))).await.is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30 * 60);
        let mut follower = Some(follower);
        let mut sent = 0u64;
        let mut quiet = 0;
        while tokio::time::Instant::now() < deadline && !tx.is_closed() {
            let mut f = follower.take().expect("the follower is put back");
            let (f, chunk) = match tokio::task::spawn_blocking(move || {
                let chunk = f.next(64 << 10);
                (f, chunk)
            })
            .await
            {
                Ok(r) => r,
                Err(_) => return,
            };
            follower = Some(f);
            match chunk {
                Ok(chunk) if !chunk.is_empty() => {
                    sent += chunk.len() as u64;
                    quiet = 0;
                    if tx.send(Ok(bytes::Bytes::from(chunk))).await.is_err()
                        || sent >= crate::logs::MAX_FOLLOW_BYTES
                    {
                        return;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            let booting = state
                .db
                .cvm(&cvm_id)
                .await
                .ok()
                .flatten()
                .is_some_and(|c| c.status.in_progress());
            if !booting {
                quiet += 1;
                if quiet > 4 {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    });
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// `GET /cvms/{id}/containers/{cid}/logs`: one container's output, the
/// last `tail` lines (default [`crate::logs::DEFAULT_TAIL`]), at most
/// [`crate::logs::MAX_ANSWER_BYTES`].
pub async fn container_logs(
    State(state): State<Shared>,
    Path((id, cid)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let lq = LogQuery {
        token: q.get("token").cloned(),
        tail: q.get("tail").cloned(),
        ..Default::default()
    };
    let cvm = log_cvm(&state, &id, &lq).await?;
    let tail = crate::logs::parse_tail(lq.tail.as_deref());
    let mut out = state.node.one_container_logs(&cvm.id, &cid, tail).await?;
    let cap = crate::logs::MAX_ANSWER_BYTES as usize;
    if out.len() > cap {
        // The end is what matters: cut the front, at a character boundary.
        let mut cut = out.len() - cap;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out.drain(..cut);
    }
    Ok(text(out))
}
