//! Errors in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}`.

use crate::runtime::SubmitError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: Option<&'static str>, message: String) -> Self {
        ApiError { status, message, kind, param: None, code }
    }

    /// 400 for a bad parameter value.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", None, message.into());
        e.param = Some(param.to_string());
        e
    }

    /// 400 for a body that is not the JSON the endpoint expects.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", Some("invalid_json"), message.into())
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("invalid_api_key"),
            "missing or incorrect API key: send `Authorization: Bearer <key>` with the key given to `hy run --api-key`"
                .into(),
        )
    }

    pub fn unknown_model(asked: &str, served: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            format!("the model `{asked}` does not exist on this server; it serves `{served}` (see GET /v1/models)"),
        );
        e.param = Some("model".into());
        e
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", Some("unknown_url"), format!("unknown URL: {path}"))
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            Some("method_not_allowed"),
            format!("{method} is not allowed on {path}"),
        )
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("request_too_large"),
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, message.into())
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let msg = e.to_string();
        match e {
            SubmitError::QueueFull(_) => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", Some("queue_full"), msg)
            }
            SubmitError::ShutDown => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", Some("engine_unavailable"), msg)
            }
            SubmitError::TooLong { .. } => {
                let mut e = Self::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    Some("context_length_exceeded"),
                    format!("{msg}; shorten the prompt or lower max_tokens"),
                );
                e.param = Some("max_tokens".into());
                e
            }
            SubmitError::EmptyPrompt => Self::invalid("prompt", msg),
        }
    }
}

impl ApiError {
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
