//! API errors and their HTTP statuses: the one place where the lookup service turns what
//! went wrong into a status code and a JSON body `{"error": {"code", "message"}}`, and a
//! query's failure into a PostgreSQL SQLSTATE ([`sqlstate`]) for the wire protocol.
//!
//! Owns: the mapping of every failure a request can meet to a status.
//! Must not: decide anything else; handlers return these errors and never build error
//! responses by hand.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::publish::PublishError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed: a bad id, body, parameter, cursor or query.
    #[error("{0}")]
    BadRequest(String),
    /// The request was refused by an extractor (body too large, wrong content type, ...).
    #[error("{message}")]
    Rejected { status: StatusCode, message: String },
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    /// A pinned version or a cursor's snapshot is no longer readable.
    #[error("{0}")]
    Gone(String),
    #[error("the query ran longer than its {0:?} limit")]
    QueryTimeout(std::time::Duration),
    #[error("{0}")]
    QueryTooLarge(String),
    /// No snapshot has been loaded yet.
    #[error("no published snapshot is loaded yet")]
    NotReady,
    /// The warehouse could not be read.
    #[error("{0}")]
    Unavailable(String),
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `bad_request`, `unauthorized`, `not_found`, `gone`,
    /// `query_timeout`, `query_too_large`, `payload_too_large`, `not_ready`, `unavailable`.
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Rejected { status, .. } => *status,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::QueryTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::QueryTooLarge(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotReady | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Rejected { status, .. } if *status == StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            ApiError::Rejected { status, .. } if *status == StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                "unsupported_media_type"
            }
            ApiError::Rejected { .. } => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::Gone(_) => "gone",
            ApiError::QueryTimeout(_) => "query_timeout",
            ApiError::QueryTooLarge(_) => "query_too_large",
            ApiError::NotReady => "not_ready",
            ApiError::Unavailable(_) => "unavailable",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if matches!(self, ApiError::Unavailable(_)) {
            tracing::warn!(status = status.as_u16(), "{self}");
        } else {
            tracing::debug!(status = status.as_u16(), "{self}");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Extractor rejections keep their status (400, 413, 415, 422) and get a JSON body.
macro_rules! from_rejection {
    ($($rejection:ty),*) => {$(
        impl From<$rejection> for ApiError {
            fn from(rejection: $rejection) -> Self {
                let status = match rejection.status() {
                    // A body that is JSON but not of the expected shape is still a bad request.
                    StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
                    status => status,
                };
                ApiError::Rejected { status, message: rejection.body_text() }
            }
        }
    )*};
}
from_rejection!(JsonRejection, PathRejection, QueryRejection);

impl From<PublishError> for ApiError {
    fn from(error: PublishError) -> Self {
        match error {
            PublishError::NotFound { .. } => ApiError::NotReady,
            PublishError::NoVersionAt { .. } => ApiError::NotFound(error.to_string()),
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}

/// The SQLSTATE of a query that failed in DataFusion (PostgreSQL's error codes appendix).
pub fn sqlstate(error: &datafusion::error::DataFusionError) -> &'static str {
    use datafusion::error::DataFusionError as E;
    match error.find_root() {
        E::SQL(..) => "42601",               // syntax_error
        E::ResourcesExhausted(_) => "53200", // out_of_memory
        E::NotImplemented(_) => "0A000",     // feature_not_supported
        E::SchemaError(error, _) => match **error {
            datafusion::common::SchemaError::FieldNotFound { .. } => "42703", // undefined_column
            datafusion::common::SchemaError::AmbiguousReference { .. } => "42702", // ambiguous_column
            _ => "42P10",
        },
        E::Plan(message) if message.contains("table") && message.contains("not found") => "42P01", // undefined_table
        E::Plan(message) if message.contains("function") => "42883",                               // undefined_function
        E::Plan(_) => "42000",                          // syntax_error_or_access_rule_violation
        E::ArrowError(..) | E::Execution(_) => "22000", // data_exception
        E::ObjectStore(_) | E::IoError(_) => "58030",   // io_error
        _ => "XX000",                                   // internal_error
    }
}
