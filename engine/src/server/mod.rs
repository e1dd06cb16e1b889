//! The OpenAI-compatible HTTP API (axum): `/v1/models`, `/v1/chat/completions`,
//! `/v1/completions` (both with SSE streaming), `/health`, `/metrics`.
//!
//! The server never touches the model: it validates and tokenizes requests, submits them to
//! the engine thread ([`crate::runtime::Scheduler`]) and turns the engine's events into
//! OpenAI responses. Dropping a response (client disconnect) drops the event receiver, which
//! cancels the sequence in the engine.

pub mod error;
mod handlers;
pub mod metrics;
pub mod openai;
#[cfg(test)]
mod tests;

use crate::runtime::SchedulerHandle;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
pub use error::ApiError;
use metrics::HttpMetrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Settings of the HTTP layer.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The id clients must name in `model` (and that `/v1/models` lists).
    pub model_id: String,
    /// When set, `/v1/*` requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
}

impl ServerConfig {
    pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;
}

/// Shared state of all handlers.
#[derive(Clone)]
pub struct App(Arc<AppInner>);

pub struct AppInner {
    pub cfg: ServerConfig,
    pub engine: SchedulerHandle,
    pub http: HttpMetrics,
    pub created: u64,
    ids: AtomicU64,
}

impl std::ops::Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl App {
    pub fn new(cfg: ServerConfig, engine: SchedulerHandle) -> App {
        App(Arc::new(AppInner {
            cfg,
            engine,
            http: HttpMetrics::default(),
            created: unix_now(),
            ids: AtomicU64::new(0),
        }))
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.cfg.api_key else { return Ok(()) };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), key.as_bytes()) => Ok(()),
            _ => Err(ApiError::unauthorized()),
        }
    }

    fn check_model(&self, asked: &str) -> Result<(), ApiError> {
        if asked == self.cfg.model_id {
            Ok(())
        } else {
            Err(ApiError::unknown_model(asked, &self.cfg.model_id))
        }
    }

    /// Unique per server run: start time + counter.
    fn next_id(&self) -> String {
        format!("{:x}{:06x}", self.created, self.ids.fetch_add(1, Ordering::Relaxed))
    }
}

/// Compares without an early exit so the key cannot be guessed byte by byte from timings.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The router with every endpoint.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/health", get(handlers::health))
        .route("/metrics", get(handlers::metrics))
        .route("/v1/models", get(handlers::models))
        .route("/v1/models/{id}", get(handlers::model))
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .fallback(handlers::fallback)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(app.clone(), count_requests))
        .with_state(app)
}

/// Counts every response by endpoint and status for `/metrics`.
async fn count_requests(State(app): State<App>, req: Request, next: Next) -> Response {
    let endpoint = match req.uri().path() {
        "/health" => "health",
        "/metrics" => "metrics",
        p if p == "/v1/models" || p.starts_with("/v1/models/") => "models",
        "/v1/chat/completions" => "chat_completions",
        "/v1/completions" => "completions",
        _ => "other",
    };
    let resp = next.run(req).await;
    app.http.record(endpoint, resp.status().as_u16());
    resp
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(app)).with_graceful_shutdown(shutdown).await
}
