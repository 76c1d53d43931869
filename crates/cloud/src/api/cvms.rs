//! CVMs: get (in the shape `X-Phala-Version` asks for), list, the apps
//! list, the status batch, start/stop/restart/delete (through the node),
//! and the composition (containers and their log URLs). Env updates are
//! updates ([`super::update`]).
//!
//! A CVM's status is not derived here: the node records it
//! ([`crate::node`], from the boot agent's final line confirmed by its exit
//! code) through [`crate::db::Db::transition`]; the API only reads it.

use super::helpers::find_cvm;
use super::logs::{container_log_endpoint, syslog_endpoint};
use super::views::{
    AppItem, AppsPage, BatchStatus, Composition, ContainerItem, CvmCurrent, CvmLegacy,
    CvmListedLegacy, CvmView, CvmsPage, NodeInfo, PhalaVersion,
};
use super::{AppState, Shared};
use crate::db::pages::{CvmFilter, Page};
use crate::db::{App, Cvm, User};
use crate::error::ApiError;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use contract::CvmStatus;
use std::collections::BTreeMap;

/// The `2025-10-28` shape of a CVM.
pub(super) fn legacy_view(state: &AppState, cvm: &Cvm, app: &App) -> CvmLegacy {
    let mut view = CvmLegacy::of(cvm, app, syslog_endpoint(state, cvm));
    view.isolation = state.limits.isolation;
    view
}

/// The `2026-01-21` shape of a CVM.
pub(super) fn current_view(state: &AppState, cvm: &Cvm, app: &App) -> CvmCurrent {
    let mut view = CvmCurrent::of(cvm, app, syslog_endpoint(state, cvm));
    view.isolation = state.limits.isolation;
    view
}

/// `GET /cvms/{id}`.
pub async fn get_cvm(
    State(state): State<Shared>,
    version: PhalaVersion,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<CvmView>, ApiError> {
    let (cvm, app) = find_cvm(&state, &user, &id).await?;
    Ok(Json(match version {
        PhalaVersion::Legacy => CvmView::Legacy(legacy_view(&state, &cvm, &app)),
        PhalaVersion::Current => CvmView::Current(current_view(&state, &cvm, &app)),
    }))
}

/// How many rows `GET /cvms` reads from the database at a time.
const STREAM_CHUNK: usize = 500;

/// `GET /cvms`: the user's CVMs, in the `2025-10-28` shape (the `berth`
/// CLI's list and the console read it), **streamed**: the rows come from
/// the database `STREAM_CHUNK` at a time (keyset on `instance_id`) and
/// are written as they come, so memory stays flat however many CVMs the
/// user has, and the first bytes leave after one chunk. The first chunk is
/// read before the answer starts, so a database that is down is still a
/// 503 with a sentence; one that fails later cuts the body short (the
/// client sees an incomplete JSON array, never a wrong one) and is logged.
pub async fn list_cvms(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
) -> Result<Response, ApiError> {
    let first = state.db.cvm_chunk_of(user.id, 0, STREAM_CHUNK).await?;
    let chunks = futures_util::stream::unfold(
        (state, user.id, Some(Ok(first)), 0usize),
        |(state, user_id, next, sent)| async move {
            let rows = match next? {
                Ok(rows) => rows,
                Err(after) => match state.db.cvm_chunk_of(user_id, after, STREAM_CHUNK).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        eprintln!("api: GET /cvms stopped after {sent} CVMs: {e}");
                        return Some((Err(std::io::Error::other(e)), (state, user_id, None, sent)));
                    }
                },
            };
            let mut out = Vec::with_capacity(rows.len() * 1536 + 2);
            if sent == 0 {
                out.push(b'[');
            }
            for (i, (cvm, app)) in rows.iter().enumerate() {
                if sent + i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut out, &legacy_view(&state, cvm, app))
                    .map_err(std::io::Error::other)
                    .ok()?;
            }
            let next = match rows.last() {
                Some((last, _)) if rows.len() == STREAM_CHUNK => Some(Err(last.instance_id)),
                _ => {
                    out.push(b']');
                    None
                }
            };
            let sent = sent + rows.len();
            Some((Ok(Bytes::from(out)), (state, user_id, next, sent)))
        },
    );
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// The largest `page_size` of a paged list.
pub const MAX_PAGE_SIZE: usize = 100;

/// The query of a paged list (`GET /cvms/paginated`, `GET /apps`): the
/// page, and the filters the official clients send that mean something
/// here. `search` and `status` (repeatable) narrow the list; the node
/// filters (`node_id`, `teepod_id`: 1; `node`: its name) match the one
/// local node or nothing; the others (`listed`, `region`, `base_image`,
/// `instance_type`, `kms_type`, `kms_slug`, `user_id`) are ignored: every
/// CVM here has the same answer to them, and a user sees only their own.
#[derive(Debug, PartialEq, Eq)]
struct ListQuery {
    page: usize,
    page_size: usize,
    filter: CvmFilter,
    /// A node filter that names another node: the page is empty.
    elsewhere: bool,
}

/// The pairs of a query string, with the sentence a malformed one gets.
fn list_query(pairs: &[(String, String)]) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery {
        page: 1,
        page_size: 50,
        filter: CvmFilter::default(),
        elsewhere: false,
    };
    let whole = |key: &str, v: &str| {
        v.trim().parse::<usize>().map_err(|_| {
            ApiError::invalid(format!(
                "{key} must be a whole number, not `{}`",
                v.chars().take(40).collect::<String>()
            ))
        })
    };
    for (key, value) in pairs {
        match key.as_str() {
            "page" => {
                q.page = whole("page", value)?;
                if q.page == 0 {
                    return Err(ApiError::invalid("page counts from 1"));
                }
            }
            "page_size" => {
                q.page_size = whole("page_size", value)?;
                if !(1..=MAX_PAGE_SIZE).contains(&q.page_size) {
                    return Err(ApiError::invalid(format!(
                        "page_size must be between 1 and {MAX_PAGE_SIZE}, not {}: ask for the next page instead",
                        q.page_size
                    )));
                }
            }
            "search" if !value.trim().is_empty() => {
                q.filter.search = Some(value.chars().take(200).collect());
            }
            "status" => {
                for s in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let status = s.to_ascii_lowercase().parse::<CvmStatus>().map_err(|_| {
                        ApiError::invalid(format!(
                            "status `{}` is none of {}",
                            s.chars().take(40).collect::<String>(),
                            CvmStatus::ALL.map(|s| s.as_str()).join(", ")
                        ))
                    })?;
                    q.filter.statuses.push(status);
                }
            }
            "node_id" | "teepod_id" => q.elsewhere |= whole(key, value)? != 1,
            "node" if !value.is_empty() => q.elsewhere |= value != NodeInfo::LOCAL.name,
            _ => {}
        }
    }
    Ok(q)
}

/// Pages of `size` needed for `total` rows (at least 1, as Phala answers).
fn pages_of(total: usize, size: usize) -> usize {
    total.div_ceil(size).max(1)
}

/// `GET /cvms/paginated`: one page of the user's CVMs with the count of all
/// of them, in the shape `X-Phala-Version` asks for (`items` are the rows
/// of `GET /cvms` at `2025-10-28`, with the keys the official SDK's list
/// schema adds; `GET /cvms/{id}`'s shape at `2026-01-21`). `page_size` is
/// 1 to 100 (50 by default); a page past the end is empty.
pub async fn paginated_cvms(
    State(state): State<Shared>,
    version: PhalaVersion,
    axum::Extension(user): axum::Extension<User>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let q = list_query(&pairs)?;
    let page = if q.elsewhere {
        Page {
            rows: Vec::new(),
            total: 0,
        }
    } else {
        state
            .db
            .cvm_page_of(user.id, &q.filter, q.page, q.page_size)
            .await?
    };
    fn answer<T>(items: Vec<T>, total: usize, q: &ListQuery) -> CvmsPage<T> {
        CvmsPage {
            items,
            total,
            page: q.page,
            page_size: q.page_size,
            pages: pages_of(total, q.page_size),
        }
    }
    Ok(match version {
        PhalaVersion::Legacy => Json(answer(
            page.rows
                .iter()
                .map(|(cvm, app)| CvmListedLegacy::of(legacy_view(&state, cvm, app), &user))
                .collect(),
            page.total,
            &q,
        ))
        .into_response(),
        PhalaVersion::Current => Json(answer(
            page.rows
                .iter()
                .map(|(cvm, app)| current_view(&state, cvm, app))
                .collect(),
            page.total,
            &q,
        ))
        .into_response(),
    })
}

/// `GET /apps`: one app per CVM, paged in the database, in slim rows
/// (`CvmSlim`: no manifest is read). The official CLI's `cvms list`
/// calls this (then `POST /status/batch` for the page's CVMs), with the
/// filters `ListQuery` reads.
pub async fn list_apps(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<AppsPage>, ApiError> {
    let q = list_query(&pairs)?;
    let page = if q.elsewhere {
        Page {
            rows: Vec::new(),
            total: 0,
        }
    } else {
        state
            .db
            .cvm_summaries_of(user.id, &q.filter, q.page, q.page_size)
            .await?
    };
    Ok(Json(AppsPage {
        dstack_apps: page
            .rows
            .iter()
            .map(|row| {
                let mut item = AppItem::of(row);
                item.current_cvm.isolation = state.limits.isolation;
                item
            })
            .collect(),
        page: q.page,
        page_size: q.page_size,
        total: page.total,
        total_pages: pages_of(page.total, q.page_size),
    }))
}

/// The body of `POST /status/batch`.
#[derive(serde::Deserialize)]
pub struct Batch {
    vm_uuids: Vec<String>,
}

/// `POST /status/batch`: the status of each of the user's CVMs asked for.
pub async fn status_batch(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Json(batch): Json<Batch>,
) -> Result<Json<BTreeMap<String, BatchStatus>>, ApiError> {
    let mut out = BTreeMap::new();
    // By primary key: the CLI asks for one page's CVMs at a time.
    for cvm in state.db.statuses_of(user.id, &batch.vm_uuids).await? {
        out.insert(
            cvm.id.clone(),
            BatchStatus {
                in_progress: cvm.status.in_progress(),
                boot_error: super::views::boot_error(&cvm),
                boot_progress: super::views::boot_progress(&cvm),
                vm_uuid: cvm.id,
                status: cvm.status,
            },
        );
    }
    Ok(Json(out))
}

/// The answer of commit and start/stop/restart: the CVM as it is now, in
/// the `2025-10-28` shape.
pub(super) async fn lifecycle_answer(
    state: &AppState,
    cvm: Cvm,
    app: &App,
) -> Result<Json<CvmLegacy>, ApiError> {
    let cvm = state.db.cvm(&cvm.id).await?.unwrap_or(cvm);
    Ok(Json(legacy_view(state, &cvm, app)))
}

/// `POST /cvms/{id}/start`.
pub async fn start_cvm(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<CvmLegacy>, ApiError> {
    let (cvm, app) = find_cvm(&state, &user, &id).await?;
    // A busy node queues the boot (never a 429).
    state.node.start(&cvm.id).await?;
    lifecycle_answer(&state, cvm, &app).await
}

/// `POST /cvms/{id}/stop` and `/shutdown`.
pub async fn stop_cvm(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<CvmLegacy>, ApiError> {
    let (cvm, app) = find_cvm(&state, &user, &id).await?;
    state.node.stop(&cvm.id).await?;
    lifecycle_answer(&state, cvm, &app).await
}

/// `POST /cvms/{id}/restart`.
pub async fn restart_cvm(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<CvmLegacy>, ApiError> {
    let (cvm, app) = find_cvm(&state, &user, &id).await?;
    state.node.restart(&cvm.id).await?;
    lifecycle_answer(&state, cvm, &app).await
}

/// `DELETE /cvms/{id}`: 204.
pub async fn delete_cvm(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (cvm, _) = find_cvm(&state, &user, &id).await?;
    state.node.delete(&cvm.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /cvms/{id}/composition`: the CVM's containers and their log URLs.
pub async fn composition(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<Composition>, ApiError> {
    let (cvm, _) = find_cvm(&state, &user, &id).await?;
    let containers = state
        .node
        .containers(&cvm.id)
        .await?
        .into_iter()
        .map(|c| ContainerItem {
            log_endpoint: container_log_endpoint(&state, &cvm, &c.id),
            id: c.id,
            names: vec![format!("/{}", c.service)],
            state: c.state,
            status: c.status,
        })
        .collect();
    Ok(Json(Composition { containers }))
}
