//! Errors on the request path and how each maps to an HTTP status and JSON body.
//!
//! Every error response has the same shape: `{"code": "...", "message": "..."}` with a
//! stable machine-readable `code`, so clients can tell a limit from a malformed request.

use http::StatusCode;
use serde::Serialize;

use crate::http::{ChunkedError, HeadError, Response};

/// A request the connection could not accept. Each closes the connection after the response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The head was refused.
    #[error(transparent)]
    Head(#[from] HeadError),
    /// A chunked body was refused.
    #[error(transparent)]
    Chunked(#[from] ChunkedError),
    /// `Content-Length` over the body limit.
    #[error("request body of {length} bytes exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The declared length.
        length: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The head did not arrive within the header read timeout.
    #[error("request head not received in time")]
    HeaderTimeout,
    /// The body stalled for longer than the body read timeout.
    #[error("request body stalled")]
    BodyTimeout,
    /// The client closed the connection before the body was complete.
    #[error("connection closed before the request body was complete")]
    BodyIncomplete,
}

impl RequestError {
    /// The status sent for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::Head(HeadError::TooLarge { .. }) => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            RequestError::Head(HeadError::UnsupportedCoding(_)) => StatusCode::NOT_IMPLEMENTED,
            RequestError::Head(_) => StatusCode::BAD_REQUEST,
            RequestError::Chunked(ChunkedError::TooLarge { .. })
            | RequestError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::Chunked(ChunkedError::Malformed(_)) | RequestError::BodyIncomplete => {
                StatusCode::BAD_REQUEST
            }
            RequestError::HeaderTimeout | RequestError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The stable error code in the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::Head(HeadError::TooLarge { .. }) => "header_too_large",
            RequestError::Head(HeadError::Malformed(_)) => "malformed_request",
            RequestError::Head(HeadError::Framing(_)) => "ambiguous_framing",
            RequestError::Head(HeadError::UnsupportedCoding(_)) => "unsupported_transfer_coding",
            RequestError::Chunked(ChunkedError::TooLarge { .. })
            | RequestError::BodyTooLarge { .. } => "body_too_large",
            RequestError::Chunked(ChunkedError::Malformed(_)) => "malformed_body",
            RequestError::HeaderTimeout => "header_timeout",
            RequestError::BodyTimeout => "body_timeout",
            RequestError::BodyIncomplete => "body_incomplete",
        }
    }

    /// The response for this error.
    pub fn to_response(&self) -> Response {
        error_response(self.status(), self.code(), &self.to_string())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

/// A JSON error response: `{"code": code, "message": message}`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    Response::json(status, &ErrorBody { code, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        let cases = [
            (
                RequestError::Head(HeadError::TooLarge { limit: 1 }),
                431,
                "header_too_large",
            ),
            (
                RequestError::Head(HeadError::Malformed("x".into())),
                400,
                "malformed_request",
            ),
            (
                RequestError::Head(HeadError::Framing("x")),
                400,
                "ambiguous_framing",
            ),
            (
                RequestError::Head(HeadError::UnsupportedCoding("gzip".into())),
                501,
                "unsupported_transfer_coding",
            ),
            (
                RequestError::BodyTooLarge {
                    length: 2,
                    limit: 1,
                },
                413,
                "body_too_large",
            ),
            (
                RequestError::Chunked(ChunkedError::TooLarge { limit: 1 }),
                413,
                "body_too_large",
            ),
            (RequestError::HeaderTimeout, 408, "header_timeout"),
            (RequestError::BodyTimeout, 408, "body_timeout"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            assert_eq!(err.code(), code);
            let r = err.to_response();
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["code"], code);
            assert!(!v["message"].as_str().unwrap().is_empty());
        }
    }
}
