//! The narrow interface between the API process and the node process.
//!
//! The node runs as its own process (`berth node serve`) and listens on a
//! Unix socket in a folder only its owner can enter. The API can ask it to
//! start, stop, restart or delete a CVM (by id; the node reads the CVM and
//! its app from the database itself) and to list a CVM's containers and
//! read their output. Nothing else: in particular no call mints a KMS boot
//! ticket or returns anything secret, so the API process has no path to an
//! env key. Errors cross the socket as the API's own JSON error bodies
//! (a [`NodeError`] rendered by [`ApiError`]), and come back to the API
//! process as [`NodeError::Refused`].
//!
//! This is also the seam for many nodes per control plane: the same calls
//! over TLS to a node on another machine.

use crate::db::Db;
use crate::error::ApiError;
use crate::node::{Node, NodeError};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use std::collections::HashMap;
use std::sync::Arc;

pub use crate::node::ContainerView;

#[derive(Clone)]
struct NodeState {
    node: Arc<Node>,
    db: Arc<Db>,
}

/// The node's routes.
pub fn router(node: Arc<Node>, db: Arc<Db>) -> Router {
    Router::new()
        .route("/node/v1/cvms/{id}/start", post(start))
        .route("/node/v1/cvms/{id}/stop", post(stop))
        .route("/node/v1/cvms/{id}/restart", post(restart))
        .route("/node/v1/cvms/{id}/delete", post(delete))
        .route("/node/v1/cvms/{id}/containers", get(containers))
        .route("/node/v1/cvms/{id}/containers/{cid}/logs", get(logs))
        .route("/node/v1/cvms/{id}/output", get(output))
        .with_state(NodeState { node, db })
}

/// The CVM `id` and its app, when the CVM exists and is not being deleted
/// (a `deleting` CVM only takes a delete again: [`delete`]).
async fn cvm_and_app(
    s: &NodeState,
    id: &str,
) -> Result<(crate::db::Cvm, crate::db::App), NodeError> {
    let (cvm, app) = any_cvm_and_app(s, id).await?;
    if cvm.status == contract::CvmStatus::Deleting {
        return Err(NodeError::NoSuchCvm);
    }
    Ok((cvm, app))
}

/// The CVM `id` (also while it is being deleted) and its app.
async fn any_cvm_and_app(
    s: &NodeState,
    id: &str,
) -> Result<(crate::db::Cvm, crate::db::App), NodeError> {
    let cvm =
        s.db.cvm(id)
            .await?
            .filter(|c| c.status.is_live())
            .ok_or(NodeError::NoSuchCvm)?;
    let app = s.db.app(&cvm.app_id).await?.ok_or(NodeError::AppGone)?;
    Ok((cvm, app))
}

async fn start(State(s): State<NodeState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let (cvm, app) = cvm_and_app(&s, &id).await?;
    s.node.start(&cvm, &app).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn stop(State(s): State<NodeState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let (cvm, _) = cvm_and_app(&s, &id).await?;
    s.node.stop(&cvm).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn restart(
    State(s): State<NodeState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (cvm, app) = cvm_and_app(&s, &id).await?;
    s.node.restart(&cvm, &app).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete(
    State(s): State<NodeState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (cvm, _) = any_cvm_and_app(&s, &id).await?;
    s.node.delete(&cvm).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn containers(
    State(s): State<NodeState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<ContainerView>>, ApiError> {
    let (cvm, _) = cvm_and_app(&s, &id).await?;
    Ok(Json(s.node.container_states(&cvm.id).await?))
}

async fn logs(
    State(s): State<NodeState>,
    Path((id, cid)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<String, ApiError> {
    let (cvm, _) = cvm_and_app(&s, &id).await?;
    let tail = q.get("tail").and_then(|t| t.parse().ok());
    Ok(s.node.one_container_logs(&cvm.id, &cid, tail).await?)
}

async fn output(
    State(s): State<NodeState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<String, ApiError> {
    let (cvm, _) = cvm_and_app(&s, &id).await?;
    let tail = q.get("tail").and_then(|t| t.parse().ok());
    let stderr = q.get("stderr").is_some_and(|v| v == "true");
    Ok(s.node.container_logs(&cvm.id, stderr, tail).await?)
}

/// Serves the node on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::UnixListener,
    node: Arc<Node>,
    db: Arc<Db>,
) -> std::io::Result<()> {
    axum::serve(listener, router(node, db)).await
}

/// The API's side of the interface.
#[derive(Clone, Debug)]
pub struct NodeClient {
    http: reqwest::Client,
}

/// The longest answer read from the node (container logs are capped here).
const MAX_NODE_ANSWER: usize = 8 << 20;

impl NodeClient {
    /// A client of the node listening on `socket`.
    pub fn new(socket: &std::path::Path) -> Self {
        let http = reqwest::Client::builder()
            .unix_socket(socket.to_path_buf())
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .expect("a client without TLS options builds");
        Self { http }
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<String, NodeError> {
        let mut resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                NodeError::NotRunning
            } else {
                NodeError::Timeout
            }
        })?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|_| NodeError::BrokeOff)? {
            if body.len() + chunk.len() > MAX_NODE_ANSWER {
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        if status.is_success() {
            Ok(text)
        } else {
            Err(refused(status.as_u16(), &text))
        }
    }

    /// `http://node/node/v1/cvms/{id}/{what…}`, each segment percent-encoded
    /// by the `url` crate.
    fn url(id: &str, what: &[&str]) -> reqwest::Url {
        let mut url = reqwest::Url::parse("http://node/node/v1/cvms").expect("a valid base");
        url.path_segments_mut()
            .expect("an http URL has a path")
            .push(id)
            .extend(what);
        url
    }

    /// Boots the CVM (writes its shared folder, starts its boot agent).
    pub async fn start(&self, id: &str) -> Result<(), NodeError> {
        self.call(self.http.post(Self::url(id, &["start"])))
            .await
            .map(drop)
    }

    /// Stops the CVM's boot and containers.
    pub async fn stop(&self, id: &str) -> Result<(), NodeError> {
        self.call(self.http.post(Self::url(id, &["stop"])))
            .await
            .map(drop)
    }

    /// Stops and boots again.
    pub async fn restart(&self, id: &str) -> Result<(), NodeError> {
        self.call(self.http.post(Self::url(id, &["restart"])))
            .await
            .map(drop)
    }

    /// Removes the CVM's containers and folders.
    pub async fn delete(&self, id: &str) -> Result<(), NodeError> {
        self.call(self.http.post(Self::url(id, &["delete"])))
            .await
            .map(drop)
    }

    /// The CVM's containers: (id, service).
    pub async fn containers(&self, id: &str) -> Result<Vec<ContainerView>, NodeError> {
        let text = self
            .call(self.http.get(Self::url(id, &["containers"])))
            .await?;
        serde_json::from_str(&text).map_err(|_| NodeError::Nonsense)
    }

    /// The app's output (`stderr` or stdout), all services.
    pub async fn container_logs(
        &self,
        id: &str,
        stderr: bool,
        tail: Option<usize>,
    ) -> Result<String, NodeError> {
        let mut req = self
            .http
            .get(Self::url(id, &["output"]))
            .query(&[("stderr", stderr)]);
        if let Some(t) = tail {
            req = req.query(&[("tail", t)]);
        }
        self.call(req).await
    }

    /// One container's output.
    pub async fn one_container_logs(
        &self,
        id: &str,
        container: &str,
        tail: Option<usize>,
    ) -> Result<String, NodeError> {
        let mut req = self
            .http
            .get(Self::url(id, &["containers", container, "logs"]));
        if let Some(t) = tail {
            req = req.query(&[("tail", t)]);
        }
        self.call(req).await
    }
}

/// The node's error answer (`{"detail": …, "error_code": …}`), as it was.
fn refused(status: u16, body: &str) -> NodeError {
    #[derive(serde::Deserialize)]
    struct Body {
        detail: String,
        #[serde(default)]
        error_code: Option<String>,
    }
    match serde_json::from_str::<Body>(body) {
        Ok(b) => NodeError::Refused {
            status,
            code: b.error_code,
            detail: b.detail,
        },
        Err(_) => NodeError::Unexplained { status },
    }
}
