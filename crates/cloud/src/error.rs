//! [`ApiError`]: an HTTP status and one sentence, as JSON. The HTTP edge
//! of the API (and of the node's socket): the only place where the typed
//! errors of the database ([`DbError`]) and the node ([`NodeError`]) become
//! status codes.

use crate::db::DbError;
use crate::node::NodeError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Every `error_code` an [`ApiError`] may carry.
const CODES: &[&str] = &[
    "invalid_request",
    "validation_error",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "quota_exceeded",
    "too_many_requests",
    "request_timeout",
    "unsupported",
    "upstream_error",
    "unavailable",
    "internal_error",
];

/// An API failure. Rendered as `{"detail": message, "error_code": code}`
/// (the FastAPI-style body the Phala clients print). Never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// One sentence.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    /// 422: a valid request whose content is wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            message,
        )
    }
    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// 403: the user is at one of the operator's caps.
    pub fn quota(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "quota_exceeded", message)
    }
    /// 408: the request did not arrive in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message)
    }
    /// 429: the control plane is at one of its caps for now.
    pub fn too_many(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
    }
    /// 501: a call of the Phala API that Berth does not implement.
    pub fn unsupported(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported",
            format!("{what} is not supported by Berth's Phala-compatible API"),
        )
    }
    /// 502: the KMS or the node failed.
    pub fn upstream(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "upstream_error", message)
    }
    /// 503: a part of the control plane (the node, the KMS) is not there.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }
}

/// The body of an error answer (FastAPI's shape, which the Phala clients
/// print).
#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    detail: &'a str,
    error_code: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            detail: &self.message,
            error_code: self.code,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        let message = e.to_string();
        match e {
            DbError::Busy { .. } | DbError::Unavailable { .. } => Self::unavailable(message),
            DbError::UserExists { .. } | DbError::NameTaken { .. } => Self::conflict(message),
            DbError::TooManyCvms { .. } => Self::quota(message),
            DbError::TooManyUncommittedApps { .. } => Self::too_many(message),
            DbError::AppGone => Self::not_found(message),
            DbError::Sql(_) | DbError::Internal(_) | DbError::BadUrl { .. } => {
                Self::internal(message)
            }
        }
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let message = e.to_string();
        match e {
            NodeError::Db(e) => e.into(),
            NodeError::EngineUnreachable(_)
            | NodeError::Engine { .. }
            | NodeError::Unexplained { .. } => Self::upstream(message),
            NodeError::AlreadyBooting { .. } => Self::conflict(message),
            NodeError::Folder(_) => Self::internal(message),
            NodeError::NoSuchCvm | NodeError::AppGone | NodeError::NoSuchContainer => {
                Self::not_found(message)
            }
            NodeError::NotRunning
            | NodeError::Timeout
            | NodeError::BrokeOff
            | NodeError::Nonsense => Self::unavailable(message),
            // The node's own answer, passed on as it was.
            NodeError::Refused {
                status,
                code,
                detail,
            } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                let code = code
                    .and_then(|c| CODES.iter().find(|k| **k == c).copied())
                    .unwrap_or("upstream_error");
                Self::new(status, code, detail)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_and_node_errors_get_their_status_here() {
        let cases: Vec<(ApiError, StatusCode, &str)> = vec![
            (
                DbError::Busy {
                    waited: std::time::Duration::from_secs(2),
                }
                .into(),
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
            ),
            (
                DbError::NameTaken { name: "x".into() }.into(),
                StatusCode::CONFLICT,
                "conflict",
            ),
            (
                DbError::TooManyCvms { have: 2, max: 2 }.into(),
                StatusCode::FORBIDDEN,
                "quota_exceeded",
            ),
            (
                DbError::TooManyUncommittedApps { have: 20, max: 20 }.into(),
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
            ),
            (
                NodeError::NotRunning.into(),
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
            ),
            (
                NodeError::NoSuchContainer.into(),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                NodeError::Db(DbError::NameTaken { name: "x".into() }).into(),
                StatusCode::CONFLICT,
                "conflict",
            ),
            // The node's own answer passes through as it was; an unknown
            // code does not.
            (
                NodeError::Refused {
                    status: 409,
                    code: Some("conflict".into()),
                    detail: "CVM x is already booting".into(),
                }
                .into(),
                StatusCode::CONFLICT,
                "conflict",
            ),
            (
                NodeError::Refused {
                    status: 500,
                    code: Some("made_up".into()),
                    detail: "boom".into(),
                }
                .into(),
                StatusCode::INTERNAL_SERVER_ERROR,
                "upstream_error",
            ),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status, e.code), (status, code), "{e}");
        }
        let e: ApiError = DbError::TooManyCvms { have: 3, max: 3 }.into();
        assert!(e.message.contains("--max-cvms-per-user 3"), "{e}");
    }
}
