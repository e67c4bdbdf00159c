//! The one error type of the HTTP boundary and its single mapping to answers.
//!
//! Every answer that is not a success goes through [`IngressError::into_response`]:
//! `{"success": false, "code": "...", "message": "..."}` with the status below. Segment's
//! clients retry 429 and 5xx and drop other 4xx, so anything worth retrying (a store
//! failure, overload) is a 503 with `Retry-After`, never a 4xx.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use stipple_store::StoreError;

/// Seconds a client should wait when too many requests are in flight.
pub(crate) const RETRY_AFTER_OVERLOAD_SECS: u32 = 1;
/// Seconds a client should wait when the store failed.
pub(crate) const RETRY_AFTER_STORE_SECS: u32 = 5;

/// Why a tracking request was not answered 200.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// 415: a `Content-Type` other than JSON or text.
    #[error(
        "content type {0:?} is not supported: send application/json or text/plain with a JSON body"
    )]
    UnsupportedContentType(String),
    /// 415: a `Content-Encoding` other than gzip.
    #[error("content encoding {0:?} is not supported: send gzip or no content encoding")]
    UnsupportedContentEncoding(String),
    /// 400: the body could not be read (a broken framing) or is not valid gzip. Sending
    /// the same bytes again would fail the same way, so the message does not ask for it.
    #[error(
        "the request body could not be read ({0}): send a complete body, gzip-compressed only with Content-Encoding: gzip"
    )]
    UnreadableBody(String),
    /// 503 with `Retry-After`: the client took longer than the body timeout to send its
    /// body.
    #[error("the request body took longer than {secs}s to arrive: resend it")]
    BodyTimeout {
        /// The timeout in seconds.
        secs: u64,
    },
    /// 400: a single-call body over the message limit (after decompression).
    #[error("the message is over {limit} bytes: send smaller messages")]
    MessageTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// 400: a batch body over the batch limit (after decompression).
    #[error("the batch is over {limit} bytes: split it into smaller batches")]
    BatchTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// 400: a batch with more items than allowed.
    #[error("the batch has {count} items, more than {limit}: split it into smaller batches")]
    TooManyItems {
        /// Items sent.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// 400: the body is not JSON.
    #[error("the body is not valid JSON ({0}): send one JSON object")]
    InvalidJson(String),
    /// 400: JSON of the wrong shape for the endpoint.
    #[error("{0}")]
    WrongShape(&'static str),
    /// 400: a batch envelope that cannot be read (`"batch"` not an array, …).
    #[error("the batch envelope is not valid ({0}): send {{\"batch\": [...]}}")]
    InvalidBatch(String),
    /// 400: the single message was refused; it was kept as rejected input.
    #[error("{message}")]
    InvalidMessage {
        /// The stable code (`no_user_anon_id`, …).
        code: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// 401: no write key at all.
    #[error("no write key: send it as the basic auth username or as \"writeKey\" in the JSON body")]
    MissingWriteKey,
    /// 401: a write key that names no source.
    #[error("unknown write key: check the write key of your source")]
    UnknownWriteKey,
    /// 401: an `Authorization: Basic` header that cannot be decoded.
    #[error(
        "the authorization header is not valid basic auth: send \"Basic \" + base64(\"<writeKey>:\")"
    )]
    BadAuthorization,
    /// 404: a path that is not part of the Tracking API.
    #[error(
        "no such endpoint: post to /v1/batch, /v1/track, /v1/identify, /v1/page, /v1/screen, \
         /v1/group, /v1/alias or /v1/import (or the browser library's /v1/b, /v1/t, /v1/i, \
         /v1/p, /v1/s, /v1/g, /v1/a)"
    )]
    NoSuchEndpoint,
    /// 405: a Tracking API path asked with another method than `POST`.
    #[error("{0} is not allowed here: the Tracking API takes events by POST")]
    MethodNotAllowed(axum::http::Method),
    /// 503: too many requests being stored at once.
    #[error("the ingress is busy: retry after {RETRY_AFTER_OVERLOAD_SECS} second(s)")]
    Overloaded,
    /// 503: the store failed; nothing of the request was accepted.
    #[error("the events could not be stored: retry after {RETRY_AFTER_STORE_SECS} seconds")]
    Store(#[source] StoreError),
}

impl IngressError {
    /// The stable machine-readable code of the answer.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnsupportedContentType(_) => "unsupported_content_type",
            Self::UnsupportedContentEncoding(_) => "unsupported_content_encoding",
            Self::UnreadableBody(_) => "unreadable_body",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::MessageTooLarge { .. } => "message_too_large",
            Self::BatchTooLarge { .. } => "batch_too_large",
            Self::TooManyItems { .. } => "too_many_items",
            Self::InvalidJson(_) => "invalid_json",
            Self::WrongShape(_) => "wrong_shape",
            Self::InvalidBatch(_) => "invalid_batch",
            Self::InvalidMessage { code, .. } => code,
            Self::MissingWriteKey => "missing_write_key",
            Self::UnknownWriteKey => "unknown_write_key",
            Self::BadAuthorization => "bad_authorization",
            Self::NoSuchEndpoint => "no_such_endpoint",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::Overloaded => "overloaded",
            Self::Store(_) => "store_unavailable",
        }
    }

    /// The HTTP status, and the `Retry-After` seconds for retryable errors.
    pub fn status(&self) -> (StatusCode, Option<u32>) {
        match self {
            Self::UnsupportedContentType(_) | Self::UnsupportedContentEncoding(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, None)
            }
            // Segment answers request-level limit errors with 400, not 413.
            Self::UnreadableBody(_)
            | Self::MessageTooLarge { .. }
            | Self::BatchTooLarge { .. }
            | Self::TooManyItems { .. }
            | Self::InvalidJson(_)
            | Self::WrongShape(_)
            | Self::InvalidBatch(_)
            | Self::InvalidMessage { .. } => (StatusCode::BAD_REQUEST, None),
            Self::MissingWriteKey | Self::UnknownWriteKey | Self::BadAuthorization => {
                (StatusCode::UNAUTHORIZED, None)
            }
            Self::NoSuchEndpoint => (StatusCode::NOT_FOUND, None),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, None),
            // The data was never taken. Not 408: analytics-python and the browser library
            // retry only 429 and 5xx, and drop what got any other 4xx.
            Self::BodyTimeout { .. } | Self::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(RETRY_AFTER_OVERLOAD_SECS),
            ),
            Self::Store(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(RETRY_AFTER_STORE_SECS),
            ),
        }
    }

    /// Whether the request's body may have been left partly unread: refused for its
    /// size or its room before or while it was read, cut off by the body timeout, or
    /// unreadable.
    fn leaves_body_unread(&self) -> bool {
        matches!(
            self,
            Self::MessageTooLarge { .. }
                | Self::BatchTooLarge { .. }
                | Self::BodyTimeout { .. }
                | Self::UnreadableBody(_)
                | Self::Overloaded
        )
    }
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        let (status, retry_after) = self.status();
        let body = json!({
            "success": false,
            "code": self.code(),
            "message": self.to_string(),
        });
        let mut response = (status, Json(body)).into_response();
        if self.leaves_body_unread() {
            // The rest of the body would be read as the next request: hyper closes the
            // connection after this answer, and the header tells the client so.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if matches!(self, Self::MethodNotAllowed(_)) {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
