//! Why a request was not accepted, as the answer the sender gets:
//! `{"error": code, "message": …}`, plus `header` or `field` naming what was
//! wrong when one thing was.

use super::verify::Refused;
use crate::engine::decode::DecodeError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A webhook, or a readiness probe, that was refused; the status, code and
/// message the answer carries.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// No source of that name in the mapping set (404).
    #[error("unknown source `{name}`; sources: {}", known.join(", "))]
    UnknownSource { name: String, known: Vec<String> },
    /// No stored connection of that name (404).
    #[error(
        "unknown connection `{name}`: add it with `mapper connection add {name} --set …` (serve picks it up within 5 s)"
    )]
    UnknownConnection { name: String },
    /// The connection has no usable secret for this source's signatures
    /// (503: the operator sets it, the sender retries).
    #[error("connection `{connection}` cannot verify source `{source_name}`: {reason}")]
    ConnectionNotReady {
        connection: String,
        source_name: String,
        reason: String,
    },
    /// Over the source's `max_bytes` (413). `size` is unknown when the body
    /// was cut off while it was read (chunked, or longer than any source takes).
    #[error(
        "body is {}over the limit of {limit} bytes for source `{name}`",
        size.map(|s| format!("{s} bytes, ")).unwrap_or_default()
    )]
    TooLarge {
        name: String,
        size: Option<u64>,
        limit: u64,
    },
    /// A `Content-Type` the source does not send (415).
    #[error("content type `{media}` is not what source `{name}` sends ({expected})")]
    ContentType {
        name: String,
        media: String,
        expected: &'static str,
    },
    /// A signature or token missing or wrong (401).
    #[error("{0}")]
    Signature(Refused),
    /// The body cannot be decoded as the source says (400; 413 when too large once decoded).
    #[error("{0}")]
    Malformed(DecodeError),
    /// The body has no event type where the source says it is (400).
    #[error("{0}")]
    NoEventType(crate::engine::plan::PlanError),
    /// The event could not be committed: the sender should retry. GHL
    /// retries only on 429, the others on any non-2xx.
    #[error("the event could not be stored; retry later ({reason})")]
    NotStored { reason: String, ghl: bool },
    /// The database does not answer (`/readyz`, 503).
    #[error("the database does not answer")]
    NotReady,
    /// The latest webhook could not be stored (`/readyz`, 503, for
    /// [`super::INBOX_FAILURE_HOLD`] unless one is stored meanwhile).
    #[error(
        "the inbox cannot store webhooks: {reason}; free the disk or fix the database, then the next stored webhook (or 30 s) makes this replica ready again"
    )]
    InboxFailing { reason: String },
}

impl ReceiveError {
    /// The `error` code of the answer, also the `reason` label of
    /// `mapper_webhooks_rejected_total`.
    pub fn code(&self) -> &'static str {
        match self {
            ReceiveError::UnknownSource { .. } => "unknown_source",
            ReceiveError::UnknownConnection { .. } => "unknown_connection",
            ReceiveError::ConnectionNotReady { .. } => "connection_not_ready",
            ReceiveError::TooLarge { .. } => "too_large",
            ReceiveError::Malformed(DecodeError::TooLarge { .. }) => "too_large",
            ReceiveError::ContentType { .. } => "content_type",
            ReceiveError::Signature(_) => "signature",
            ReceiveError::Malformed(_) => "malformed",
            ReceiveError::NoEventType(_) => "no_event_type",
            ReceiveError::NotStored { .. } => "store_failed",
            ReceiveError::NotReady => "not_ready",
            ReceiveError::InboxFailing { .. } => "inbox_failing",
        }
    }

    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        match self {
            ReceiveError::UnknownSource { .. } | ReceiveError::UnknownConnection { .. } => {
                StatusCode::NOT_FOUND
            }
            ReceiveError::ConnectionNotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ReceiveError::TooLarge { .. }
            | ReceiveError::Malformed(DecodeError::TooLarge { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ReceiveError::ContentType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ReceiveError::Signature(_) => StatusCode::UNAUTHORIZED,
            ReceiveError::Malformed(_) | ReceiveError::NoEventType(_) => StatusCode::BAD_REQUEST,
            ReceiveError::NotStored { ghl: true, .. } => StatusCode::TOO_MANY_REQUESTS,
            ReceiveError::NotStored { .. }
            | ReceiveError::NotReady
            | ReceiveError::InboxFailing { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The header (or query parameter) that was missing or wrong, if one was.
    pub fn header(&self) -> Option<&str> {
        match self {
            ReceiveError::ContentType { .. } => Some("content-type"),
            ReceiveError::Signature(refused) => refused.header.as_deref(),
            _ => None,
        }
    }

    /// The part of the request that was wrong when it is not a header:
    /// `source` (the path), `body`, or the body's form field.
    pub fn field(&self) -> Option<String> {
        match self {
            ReceiveError::UnknownSource { .. } => Some("source".into()),
            ReceiveError::UnknownConnection { .. } => Some("connection".into()),
            ReceiveError::NoEventType(crate::engine::plan::PlanError::NoEventType {
                path, ..
            }) => Some(path.clone()),
            ReceiveError::TooLarge { .. } | ReceiveError::NoEventType(_) => Some("body".into()),
            ReceiveError::Malformed(DecodeError::MissingFormField { field }) => Some(field.clone()),
            ReceiveError::Malformed(_) => Some("body".into()),
            _ => None,
        }
    }
}

impl IntoResponse for ReceiveError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.code(), "message": self.to_string() });
        if let Some(h) = self.header() {
            body["header"] = json!(h);
        }
        if let Some(f) = self.field() {
            body["field"] = json!(f);
        }
        let mut response = (self.status(), Json(body)).into_response();
        if matches!(self, ReceiveError::NotStored { .. }) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: ReceiveError) -> (StatusCode, serde_json::Value, Option<String>) {
        let response = e.into_response();
        let status = response.status();
        let retry = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or_default(),
            retry,
        )
    }

    #[tokio::test]
    async fn each_refusal_is_its_status_code_and_what_was_wrong() {
        let (status, json, _) = body(ReceiveError::ContentType {
            name: "stickycards".into(),
            media: "application/xml".into(),
            expected: "JSON",
        })
        .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(json["error"], "content_type");
        assert_eq!(json["header"], "content-type");
        assert!(
            json["message"]
                .as_str()
                .unwrap_or("")
                .contains("application/xml")
        );

        let (status, json, _) = body(ReceiveError::TooLarge {
            name: "stickycards".into(),
            size: None,
            limit: 5,
        })
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            (&json["error"], &json["field"]),
            (&json!("too_large"), &json!("body"))
        );
        assert_eq!(
            json["message"],
            "body is over the limit of 5 bytes for source `stickycards`"
        );

        let (status, json, _) = body(ReceiveError::Malformed(DecodeError::TooLarge {
            size: 10,
            limit: 5,
        }))
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(json["error"], "too_large");

        let (status, json, _) = body(ReceiveError::Malformed(DecodeError::MissingFormField {
            field: "data".into(),
        }))
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            (&json["error"], &json["field"]),
            (&json!("malformed"), &json!("data"))
        );

        let (status, json, _) = body(ReceiveError::NoEventType(
            crate::engine::plan::PlanError::NoEventType {
                source: "stickycards".into(),
                path: "$.event_type".into(),
            },
        ))
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json["field"], "$.event_type");
    }

    #[tokio::test]
    async fn what_could_not_be_stored_is_to_be_retried_ghl_on_429() {
        for (ghl, expected) in [
            (true, StatusCode::TOO_MANY_REQUESTS),
            (false, StatusCode::SERVICE_UNAVAILABLE),
        ] {
            let (status, json, retry) = body(ReceiveError::NotStored {
                reason: "database is locked".into(),
                ghl,
            })
            .await;
            assert_eq!(status, expected);
            assert_eq!(json["error"], "store_failed");
            assert_eq!(retry.as_deref(), Some("30"));
        }
    }
}
