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
    AppItem, AppsPage, BatchStatus, Composition, ContainerItem, CvmCurrent, CvmLegacy, CvmView,
    PhalaVersion,
};
use super::{AppState, Shared};
use crate::db::{App, Cvm, User};
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use std::collections::BTreeMap;

fn uuid_compact(id: &str) -> String {
    id.replace('-', "")
}

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

/// `GET /cvms`: the user's CVMs, in the `2025-10-28` shape (what the
/// official CLI's list reads).
pub async fn list_cvms(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
) -> Result<Json<Vec<CvmLegacy>>, ApiError> {
    let pairs = state.db.cvms_with_apps_of(user.id).await?;
    Ok(Json(
        pairs
            .iter()
            .map(|(cvm, app)| legacy_view(&state, cvm, app))
            .collect(),
    ))
}

/// `?page=&page_size=` of `GET /apps`.
#[derive(serde::Deserialize)]
pub struct Page {
    page: Option<usize>,
    page_size: Option<usize>,
}

/// `GET /apps`: one app per CVM, paged.
pub async fn list_apps(
    State(state): State<Shared>,
    axum::Extension(user): axum::Extension<User>,
    Query(page): Query<Page>,
) -> Result<Json<AppsPage>, ApiError> {
    let page_no = page.page.unwrap_or(1).max(1);
    let size = page.page_size.unwrap_or(50).clamp(1, 100);
    let mut items = Vec::new();
    for (cvm, app) in state.db.cvms_with_apps_of(user.id).await? {
        items.push(AppItem {
            current_cvm: current_view(&state, &cvm, &app),
            id: cvm.id,
            name: cvm.name,
            app_id: cvm.app_id,
            created_at: cvm.created_at,
            kms_type: "phala",
            cvm_count: 1,
        });
    }
    let total = items.len();
    let total_pages = total.div_ceil(size).max(1);
    let dstack_apps = items
        .into_iter()
        .skip((page_no - 1) * size)
        .take(size)
        .collect();
    Ok(Json(AppsPage {
        dstack_apps,
        page: page_no,
        page_size: size,
        total,
        total_pages,
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
    for cvm in state.db.cvms_of(user.id).await? {
        if batch
            .vm_uuids
            .iter()
            .any(|u| uuid_compact(u) == uuid_compact(&cvm.id))
        {
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
