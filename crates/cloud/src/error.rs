//! [`ApiError`]: an HTTP status and one sentence, as JSON.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

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
    /// The error another Berth process answered with (its JSON body), kept
    /// as it was; a body that is not one becomes a 502.
    pub fn from_body(status: StatusCode, body: &str) -> Self {
        #[derive(serde::Deserialize)]
        struct Body {
            detail: String,
            #[serde(default)]
            error_code: Option<String>,
        }
        const CODES: &[&str] = &[
            "invalid_request",
            "validation_error",
            "unauthorized",
            "forbidden",
            "not_found",
            "conflict",
            "quota_exceeded",
            "too_many_requests",
            "unsupported",
            "upstream_error",
            "unavailable",
            "internal_error",
        ];
        match serde_json::from_str::<Body>(body) {
            Ok(b) => {
                let code = b
                    .error_code
                    .and_then(|c| CODES.iter().find(|k| **k == c).copied())
                    .unwrap_or("upstream_error");
                Self::new(status, code, b.detail)
            }
            Err(_) => Self::upstream(format!("the node answered {status}")),
        }
    }
    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "detail": self.message, "error_code": self.code });
        (self.status, axum::Json(body)).into_response()
    }
}
