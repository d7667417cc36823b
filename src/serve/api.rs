//! The HTTP side of OpenAI's error shape. Request types, parsing and validation live in the
//! library (`quill::openai`), where the fuzz target reaches them; this file turns their
//! errors into responses.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

pub use quill::openai::{ApiError, StopScanner};

/// An [`ApiError`] as an HTTP response: its status, OpenAI's JSON body, and `Retry-After`
/// where it has one.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

impl From<quill::Error> for HttpError {
    fn from(e: quill::Error) -> Self {
        HttpError(e.into())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, axum::Json(self.0.body())).into_response();
        if let Some(s) = self.0.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        r
    }
}
