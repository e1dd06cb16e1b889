//! Endpoint handlers: chat completions, completions, models, health, metrics.

use super::error::ApiError;
use super::openai::{
    chat_logprob_entry, parse_body, usage, ChatRequest, CompletionRequest, LegacyLogprobs, Prompt, Validated,
};
use super::App;
use crate::runtime::{Event, GenerateRequest, TextCodec};
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

pub async fn health(State(app): State<App>) -> Response {
    Json(json!({"status": "ok", "model": app.cfg.model_id})).into_response()
}

pub async fn metrics(State(app): State<App>) -> Response {
    let body = app.http.render(app.engine.stats());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

pub async fn models(State(app): State<App>, req: Request) -> Response {
    if let Err(e) = app.authorize(req.headers()) {
        return e.into_response();
    }
    Json(json!({"object": "list", "data": [model_object(&app)]})).into_response()
}

/// `GET /v1/models/{id}`: the served model, or 404.
pub async fn model(State(app): State<App>, Path(id): Path<String>, req: Request) -> Response {
    if let Err(e) = app.authorize(req.headers()).and_then(|_| app.check_model(&id)) {
        return e.into_response();
    }
    Json(model_object(&app)).into_response()
}

fn model_object(app: &App) -> Value {
    json!({
        "id": app.cfg.model_id,
        "object": "model",
        "created": app.created,
        "owned_by": "hy",
        "context_length": app.engine.config().context,
        "architecture": app.engine.model_info().arch,
    })
}

pub async fn chat_completions(State(app): State<App>, req: Request) -> Response {
    chat_inner(app, req).await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn completions(State(app): State<App>, req: Request) -> Response {
    completion_inner(app, req).await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn fallback(req: Request) -> Response {
    ApiError::not_found(req.uri().path()).into_response()
}

pub async fn method_not_allowed(req: Request) -> Response {
    ApiError::method_not_allowed(req.method().as_str(), req.uri().path()).into_response()
}

async fn read_body(app: &App, req: Request) -> Result<Vec<u8>, ApiError> {
    app.authorize(req.headers())?;
    let limit = app.cfg.max_body_bytes;
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::body_too_large(limit));
    }
    match axum::body::to_bytes(req.into_body(), limit).await {
        Ok(b) => Ok(b.to_vec()),
        Err(e) if format!("{e:?}").contains("LengthLimit") => Err(ApiError::body_too_large(limit)),
        Err(e) => Err(ApiError::bad_json(format!("could not read the request body: {e}"))),
    }
}

async fn chat_inner(app: App, req: Request) -> Result<Response, ApiError> {
    let body = read_body(&app, req).await?;
    let (v, messages) = parse_body::<ChatRequest>(&body)?.validate()?;
    app.check_model(&v.model)?;
    let codec = app.engine.codec().clone();
    let text = codec.render_chat(&messages).map_err(|e| {
        ApiError::invalid("messages", format!("the chat template could not render these messages: {e}"))
    })?;
    let prompt = codec.encode_prompt(&text);
    let rx = app.submit(prompt, &v)?;
    let out = Output::new(&app, Kind::Chat, codec, &v);
    if v.stream {
        Ok(out.stream(rx))
    } else {
        out.collect(rx).await
    }
}

async fn completion_inner(app: App, req: Request) -> Result<Response, ApiError> {
    let body = read_body(&app, req).await?;
    let (v, prompt, echo) = parse_body::<CompletionRequest>(&body)?.validate()?;
    app.check_model(&v.model)?;
    let codec = app.engine.codec().clone();
    let (ids, prompt_text) = match prompt {
        Prompt::Text(t) => (codec.encode_prompt(&t), t),
        Prompt::Ids(ids) => {
            let vocab = app.engine.model_info().vocab_size;
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(ApiError::invalid("prompt", format!("token id {bad} is outside the vocabulary ({vocab})")));
            }
            let text = decode_all(codec.as_ref(), &ids);
            (ids, text)
        }
    };
    let rx = app.submit(ids, &v)?;
    let mut out = Output::new(&app, Kind::Completion, codec, &v);
    if echo {
        out.text.push_str(&prompt_text);
        out.echo = Some(prompt_text);
    }
    if v.stream {
        Ok(out.stream(rx))
    } else {
        out.collect(rx).await
    }
}

fn decode_all(codec: &dyn TextCodec, ids: &[u32]) -> String {
    let mut d = codec.decoder();
    let mut s: String = ids.iter().map(|&id| d.push(id)).collect();
    s.push_str(&d.finish());
    s
}

impl App {
    fn submit(&self, prompt: Vec<u32>, v: &Validated) -> Result<UnboundedReceiver<Event>, ApiError> {
        let context = self.engine.config().context;
        // Without max_tokens a request may use the rest of the context.
        let max_tokens = v.max_tokens.unwrap_or_else(|| context.saturating_sub(prompt.len()).max(1));
        let req = GenerateRequest { prompt, max_tokens, stop: v.stop.clone(), sampling: v.sampling.clone() };
        Ok(self.engine.submit(req)?)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

/// Turns engine events into one response object or a stream of SSE chunks.
struct Output {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    codec: Arc<dyn TextCodec>,
    text: String,
    echo: Option<String>,
    chat_logprobs: Vec<Value>,
    legacy: Option<LegacyLogprobs>,
    want_logprobs: bool,
}

impl Output {
    fn new(app: &App, kind: Kind, codec: Arc<dyn TextCodec>, v: &Validated) -> Output {
        let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
        Output {
            kind,
            id: format!("{prefix}-{}", app.next_id()),
            created: super::unix_now(),
            model: app.cfg.model_id.clone(),
            include_usage: v.include_usage,
            codec,
            text: String::new(),
            echo: None,
            chat_logprobs: Vec::new(),
            legacy: v.sampling.logprobs.map(|_| LegacyLogprobs::default()),
            want_logprobs: v.sampling.logprobs.is_some(),
        }
    }

    fn object(&self, streaming: bool) -> &'static str {
        match (self.kind, streaming) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    async fn collect(mut self, mut rx: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Token(t) => {
                    if let Some(lp) = &t.logprobs {
                        self.record_logprobs(t.token, lp);
                    }
                    self.text.push_str(&t.text);
                }
                Event::Done(d) => {
                    self.text.push_str(&d.tail);
                    let choice = self.final_choice(d.reason.as_str());
                    return Ok(Json(json!({
                        "id": self.id, "object": self.object(false), "created": self.created,
                        "model": self.model, "choices": [choice],
                        "usage": usage(d.prompt_tokens, d.completion_tokens),
                    }))
                    .into_response());
                }
                Event::Error(e) => return Err(ApiError::internal(format!("generation failed: {e}"))),
            }
        }
        Err(ApiError::internal("the engine stopped before finishing this request"))
    }

    /// Logprobs name the chosen token by its own text: the event text may be empty or
    /// longer while UTF-8 or a possible stop string is held back.
    fn record_logprobs(&mut self, token: u32, lp: &crate::runtime::TokenLogprobs) {
        let codec = self.codec.clone();
        let token_text = |id| codec.token_text(id);
        let own = token_text(token);
        match self.kind {
            Kind::Chat => self.chat_logprobs.push(chat_logprob_entry(token, lp, codec.as_ref())),
            Kind::Completion => {
                let offset = self.text.len();
                if let Some(l) = self.legacy.as_mut() {
                    l.push(own, offset, lp, token_text);
                }
            }
        }
    }

    fn final_choice(&self, reason: &str) -> Value {
        match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": self.text},
                "logprobs": self.want_logprobs.then(|| json!({"content": self.chat_logprobs})),
                "finish_reason": reason,
            }),
            Kind::Completion => json!({
                "index": 0, "text": self.text,
                "logprobs": self.legacy.as_ref().map(LegacyLogprobs::to_json),
                "finish_reason": reason,
            }),
        }
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> String {
        let mut v = json!({
            "id": self.id, "object": self.object(true), "created": self.created,
            "model": self.model, "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v.to_string()
    }

    /// A content chunk; `logprobs` is the per-token entry when requested.
    fn delta_chunk(&self, text: &str, logprobs: Option<Value>, finish: Option<&str>) -> String {
        let choice = match self.kind {
            Kind::Chat => {
                let delta = if finish.is_some() { json!({}) } else { json!({"content": text}) };
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
            Kind::Completion => json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}),
        };
        self.chunk(json!([choice]), None)
    }

    /// Frames for one engine event; `true` once the stream is complete.
    fn frames(&mut self, ev: Option<Event>, out: &mut VecDeque<String>) -> bool {
        match ev {
            Some(Event::Token(t)) => {
                let lp = t.logprobs.as_ref().map(|lp| self.stream_logprobs(t.token, lp));
                if !t.text.is_empty() || lp.is_some() {
                    out.push_back(self.delta_chunk(&t.text, lp, None));
                }
                self.text.push_str(&t.text);
                false
            }
            Some(Event::Done(d)) => {
                if !d.tail.is_empty() {
                    out.push_back(self.delta_chunk(&d.tail, None, None));
                }
                out.push_back(self.delta_chunk("", None, Some(d.reason.as_str())));
                if self.include_usage {
                    out.push_back(self.chunk(json!([]), Some(usage(d.prompt_tokens, d.completion_tokens))));
                }
                out.push_back("[DONE]".into());
                true
            }
            Some(Event::Error(e)) => {
                out.push_back(ApiError::internal(format!("generation failed: {e}")).body().to_string());
                out.push_back("[DONE]".into());
                true
            }
            None => {
                out.push_back(ApiError::internal("the engine stopped before finishing").body().to_string());
                out.push_back("[DONE]".into());
                true
            }
        }
    }

    fn stream_logprobs(&self, token: u32, lp: &crate::runtime::TokenLogprobs) -> Value {
        let token_text = |id| self.codec.token_text(id);
        let own = token_text(token);
        match self.kind {
            Kind::Chat => json!({"content": [chat_logprob_entry(token, lp, self.codec.as_ref())]}),
            Kind::Completion => {
                let mut l = LegacyLogprobs::default();
                l.push(own, self.text.len(), lp, token_text);
                l.to_json()
            }
        }
    }

    /// The SSE response. Dropping it (client gone) drops `rx`, which cancels the sequence.
    fn stream(mut self, rx: UnboundedReceiver<Event>) -> Response {
        let mut first = VecDeque::new();
        if self.kind == Kind::Chat {
            let choice = json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
            first.push_back(self.chunk(choice, None));
        }
        if let Some(echo) = self.echo.take() {
            first.push_back(self.delta_chunk(&echo, None, None));
        }
        let state = (self, rx, first, false);
        let stream = futures_util::stream::unfold(state, |(mut out, mut rx, mut queue, mut ended)| async move {
            loop {
                if let Some(frame) = queue.pop_front() {
                    let ev = SseEvent::default().data(frame);
                    return Some((Ok::<_, Infallible>(ev), (out, rx, queue, ended)));
                }
                if ended {
                    return None;
                }
                let ev = rx.recv().await;
                ended = out.frames(ev, &mut queue);
            }
        });
        let mut resp = Sse::new(stream).into_response();
        resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
        *resp.status_mut() = StatusCode::OK;
        resp
    }
}
