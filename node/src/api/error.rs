//! The API's errors and request bodies: every refusal is JSON with a message that says what
//! to do, and a body is read within a size and time bound before it is parsed.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::FromRequest;
use axum::extract::Request;
use axum::http::header;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Json;
use mysocket_api::types::*;
use mysocket_raft_store::Rejection;
use serde::de::DeserializeOwned;

use crate::control::ClusterError;

/// Largest request body accepted (413 beyond it).
pub const MAX_BODY: usize = 64 * 1024;

/// Time a request body gets to arrive whole once its head has (408 beyond it).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// An error answer: status and `{"message"}`, with `Retry-After` when the caller should come
/// back later.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds after which the same call may succeed (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: String) -> ApiError {
        ApiError { status, message, retry_after: None }
    }
    /// 429: the caller went past a rate limit; it may try again after `retry_after` seconds.
    pub fn too_many(message: impl Into<String>, retry_after: u64) -> ApiError {
        ApiError {
            retry_after: Some(retry_after.max(1)),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, message.into())
        }
    }
    /// 503: the node is busy; try again shortly.
    pub fn busy(message: impl Into<String>) -> ApiError {
        ApiError { retry_after: Some(1), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message.into()) }
    }
    pub fn bad(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, msg.into())
    }
    pub fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "missing, invalid or expired token; log in again".into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(ErrorBody { message: self.message })).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        r
    }
}

impl From<crate::control::limits::Refused> for ApiError {
    fn from(r: crate::control::limits::Refused) -> ApiError {
        match r {
            crate::control::limits::Refused::TooMany { message, retry_after } => {
                ApiError::too_many(message, retry_after)
            }
            crate::control::limits::Refused::Busy(message) => ApiError::busy(message),
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> ApiError {
        match e {
            ClusterError::Membership(m) => ApiError::new(StatusCode::CONFLICT, m),
            e => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> ApiError {
        let status = match &r {
            Rejection::Conflict(_) => StatusCode::CONFLICT,
            Rejection::NotFound(_) => StatusCode::NOT_FOUND,
            Rejection::Limit(_) => StatusCode::FORBIDDEN,
            Rejection::Invalid(_) => StatusCode::BAD_REQUEST,
            Rejection::Stale(_) => StatusCode::CONFLICT,
        };
        ApiError::new(status, r.to_string())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body, decoded with clear errors: 413 when too large, 408 when it does not arrive
/// within [`BODY_TIMEOUT`], 400 when malformed or of the wrong shape. The content type is not
/// required (the original client is lax about it); unknown fields are ignored.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let read = tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(req, state)).await.map_err(|_| {
            crate::metrics::get().refused(crate::metrics::Refusal::SlowBody);
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
            )
        })?;
        let bytes = read.map_err(|e: BytesRejection| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is larger than {MAX_BODY} bytes"))
            } else {
                ApiError::bad(format!("cannot read request body: {e}"))
            }
        })?;
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) { Bytes::from_static(b"{}") } else { bytes };
        serde_json::from_slice(&bytes).map(Body).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
    }
}
