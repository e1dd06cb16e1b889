//! HTTP tests of the server against the counting model (runtime/testing.rs), through a real
//! TCP socket and a minimal HTTP/1.1 client, so routing, status codes, SSE framing and
//! disconnects are exercised as a client sees them.

use super::{serve, App, ServerConfig};
use crate::runtime::testing::{ByteCodec, CountingModel};
use crate::runtime::{Scheduler, SchedulerConfig};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct TestServer {
    addr: SocketAddr,
    app: App,
    _scheduler: Scheduler,
}

async fn start(step_ms: u64, max_concurrency: usize, queue: usize, api_key: Option<&str>) -> TestServer {
    let model = CountingModel::new(Duration::from_millis(step_ms));
    let cfg = SchedulerConfig { max_concurrency, queue_capacity: queue, context: 64 };
    let scheduler = Scheduler::start(Box::new(model), Arc::new(ByteCodec), cfg).expect("engine thread");
    let server_cfg =
        ServerConfig { model_id: "counting".into(), api_key: api_key.map(String::from), max_body_bytes: 2048 };
    let app = App::new(server_cfg, scheduler.handle());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve(listener, app.clone(), std::future::pending()));
    TestServer { addr, app, _scheduler: scheduler }
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `data:` payloads of an SSE body, in order.
    fn sse_data(&self) -> Vec<String> {
        self.body.lines().filter_map(|l| l.strip_prefix("data: ")).map(String::from).collect()
    }

    fn assert_error(&self, status: u16, param: Option<&str>) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string(), "{v}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{v}");
        }
        v
    }
}

fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&request_bytes(method, path, headers, body)).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.into() };
    Reply { status, head: head.to_string(), body }
}

/// Decodes a chunked body (sizes in hex, each chunk followed by CRLF).
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> Reply {
    send(addr, "POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes()).await
}

#[tokio::test]
async fn models_and_health() {
    let t = start(0, 4, 4, None).await;
    let r = send(t.addr, "GET", "/v1/models", &[], b"").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "counting");
    let r = send(t.addr, "GET", "/v1/models/counting", &[], b"").await;
    assert_eq!((r.status, r.json()["id"].clone()), (200, json!("counting")));
    send(t.addr, "GET", "/v1/models/other", &[], b"").await.assert_error(404, Some("model"));
    let r = send(t.addr, "GET", "/health", &[], b"").await;
    assert_eq!((r.status, r.json()["status"].clone()), (200, json!("ok")));
}

#[tokio::test]
async fn chat_completion_counts_up_from_the_prompt() {
    let t = start(0, 4, 4, None).await;
    let body =
        json!({"model": "counting", "messages": [{"role": "user", "content": "a"}], "max_tokens": 5, "temperature": 0});
    let v = post(t.addr, "/v1/chat/completions", body).await.json();
    // Prompt "user:a\nassistant:" ends in ':' (0x3A); the model continues ";<=>?".
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], ";<=>?");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"], json!({"prompt_tokens": 17, "completion_tokens": 5, "total_tokens": 22}));
}

#[tokio::test]
async fn completion_stops_at_eos_and_at_stop_strings() {
    let t = start(0, 4, 4, None).await;
    let v = post(t.addr, "/v1/completions", json!({"model": "counting", "prompt": "u", "temperature": 0})).await.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(
        (v["choices"][0]["text"].clone(), v["choices"][0]["finish_reason"].clone()),
        (json!("vwxyz"), json!("stop"))
    );
    let body = json!({"model": "counting", "prompt": "a", "stop": ["ef", "zz"], "temperature": 0});
    let v = post(t.addr, "/v1/completions", body).await.json();
    assert_eq!(
        (v["choices"][0]["text"].clone(), v["choices"][0]["finish_reason"].clone()),
        (json!("bcd"), json!("stop"))
    );
    // Legacy default of 16 tokens.
    let v = post(t.addr, "/v1/completions", json!({"model": "counting", "prompt": "a", "temperature": 0})).await.json();
    assert_eq!(v["choices"][0]["text"], "bcdefghijklmnopq");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn streamed_chat_sends_role_content_finish_usage_and_done() {
    let t = start(0, 4, 4, None).await;
    let body = json!({"model": "counting", "messages": [{"role": "user", "content": "a"}], "max_tokens": 4,
                      "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
    let r = post(t.addr, "/v1/chat/completions", body).await;
    assert_eq!(r.status, 200);
    assert!(r.head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{}", r.head);
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).expect("chunk JSON")).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, ";<=>");
    let finish: Vec<&Value> =
        chunks.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
    assert_eq!(finish, vec![&json!("length")]);
    let last = chunks.last().expect("usage chunk");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 4);
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
}

#[tokio::test]
async fn streamed_completion_text_matches_non_streamed() {
    let t = start(0, 4, 4, None).await;
    let body = json!({"model": "counting", "prompt": "k", "max_tokens": 6, "temperature": 0, "stream": true});
    let data = post(t.addr, "/v1/completions", body).await.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let text: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).expect("chunk"))
        .filter_map(|c| c["choices"][0]["text"].as_str().map(String::from))
        .collect();
    assert_eq!(text, "lmnopq");
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let t = start(0, 4, 4, None).await;
    let chat = "/v1/chat/completions";
    let r = send(t.addr, "POST", chat, &[], b"{not json").await;
    r.assert_error(400, None);
    post(t.addr, chat, json!({"model": "counting"})).await.assert_error(400, Some("messages"));
    post(t.addr, chat, json!({"model": "gpt-9", "messages": [{"role": "user", "content": "a"}]}))
        .await
        .assert_error(404, Some("model"));
    let msgs = json!([{"role": "user", "content": "a"}]);
    post(t.addr, chat, json!({"model": "counting", "messages": msgs, "n": 2})).await.assert_error(400, Some("n"));
    post(t.addr, chat, json!({"model": "counting", "messages": msgs, "temperature": 3}))
        .await
        .assert_error(400, Some("temperature"));
    post(t.addr, chat, json!({"model": "counting", "messages": msgs, "max_tokens": 0}))
        .await
        .assert_error(400, Some("max_tokens"));
    post(t.addr, chat, json!({"model": "counting", "messages": msgs, "max_tokens": 100})).await.assert_error(413, None);
    let huge = json!({"model": "counting", "messages": msgs, "max_tokens": i64::MAX});
    post(t.addr, chat, huge).await.assert_error(413, None);
    post(t.addr, chat, json!({"model": "counting", "messages": msgs, "max_completion_tokens": 100}))
        .await
        .assert_error(413, None);
    post(t.addr, chat, json!({"model": "counting", "messages": []})).await.assert_error(400, Some("messages"));
    let big = json!({"model": "counting", "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    post(t.addr, chat, big).await.assert_error(413, None);
    post(t.addr, "/v1/completions", json!({"model": "counting", "prompt": ["a", "b"]}))
        .await
        .assert_error(400, Some("prompt"));
    send(t.addr, "GET", "/v1/nothing", &[], b"").await.assert_error(404, None);
    send(t.addr, "GET", "/v1/chat/completions", &[], b"").await.assert_error(405, None);
}

#[tokio::test]
async fn api_key_is_required_when_set() {
    let t = start(0, 4, 4, Some("sekret")).await;
    send(t.addr, "GET", "/v1/models", &[], b"").await.assert_error(401, None);
    send(t.addr, "GET", "/v1/models", &[("Authorization", "Bearer nope")], b"").await.assert_error(401, None);
    let ok = send(t.addr, "GET", "/v1/models", &[("Authorization", "Bearer sekret")], b"").await;
    assert_eq!(ok.status, 200);
    // Health stays open for load balancers.
    assert_eq!(send(t.addr, "GET", "/health", &[], b"").await.status, 200);
}

#[tokio::test]
async fn logprobs_are_returned_in_both_shapes() {
    let t = start(0, 4, 4, None).await;
    let body = json!({"model": "counting", "messages": [{"role": "user", "content": "a"}], "max_tokens": 2,
                      "temperature": 0, "logprobs": true, "top_logprobs": 3});
    let v = post(t.addr, "/v1/chat/completions", body).await.json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().expect("logprobs.content").clone();
    assert_eq!(content.len(), 2);
    assert_eq!(content[0]["token"], ";");
    assert_eq!(content[0]["top_logprobs"].as_array().map(Vec::len), Some(3));
    // Chosen logit 10 against 256 zeros: log(e^10 / (e^10 + 256)).
    let expect = 10.0 - (10f64.exp() + 256.0).ln();
    assert!((content[0]["logprob"].as_f64().unwrap_or(0.0) - expect).abs() < 1e-4);
    let body = json!({"model": "counting", "prompt": "a", "max_tokens": 2, "temperature": 0, "logprobs": 1});
    let v = post(t.addr, "/v1/completions", body).await.json();
    assert_eq!(v["choices"][0]["logprobs"]["tokens"], json!(["b", "c"]));
    assert_eq!(v["choices"][0]["logprobs"]["text_offset"], json!([0, 1]));
}

#[tokio::test]
async fn seeded_sampling_is_reproducible_over_http() {
    let t = start(0, 4, 4, None).await;
    let body = json!({"model": "counting", "prompt": "a", "max_tokens": 20, "temperature": 2.0, "seed": 11});
    let a = post(t.addr, "/v1/completions", body.clone()).await.json();
    let b = post(t.addr, "/v1/completions", body).await.json();
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
}

#[tokio::test]
async fn full_queue_answers_429() {
    // One slot and one queue place: of three slow requests at least one must be refused.
    let t = start(20, 1, 1, None).await;
    let body = json!({"model": "counting", "prompt": "a", "max_tokens": 30, "temperature": 0});
    let replies = futures_util::future::join_all((0..3).map(|_| post(t.addr, "/v1/completions", body.clone()))).await;
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert!(!refused.is_empty(), "statuses: {:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
    refused[0].assert_error(429, None);
    assert!(replies.iter().all(|r| r.status == 200 || r.status == 429));
}

#[tokio::test]
async fn sixteen_concurrent_streams_complete() {
    let t = start(2, 16, 16, None).await;
    let body = json!({"model": "counting", "prompt": "a", "max_tokens": 10, "temperature": 0, "stream": true});
    let replies = futures_util::future::join_all((0..16).map(|_| post(t.addr, "/v1/completions", body.clone()))).await;
    for r in replies {
        assert_eq!(r.status, 200);
        let data = r.sse_data();
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        let text: String = data[..data.len() - 1]
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|c| c["choices"][0]["text"].as_str().map(String::from))
            .collect();
        assert_eq!(text, "bcdefghijk");
    }
    let m = send(t.addr, "GET", "/metrics", &[], b"").await.body;
    assert!(m.contains("hy_requests_total{endpoint=\"completions\",status=\"200\"} 16"), "{m}");
    assert!(m.contains("hy_completion_tokens_total 160"), "{m}");
    assert!(m.contains("hy_queue_depth 0"), "{m}");
}

/// Waits (bounded) until the engine has counted a cancellation.
async fn wait_for_cancel(app: &App) -> u64 {
    for _ in 0..500 {
        let n = app.engine.stats().cancelled_total.load(Ordering::Relaxed);
        if n > 0 {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    0
}

#[tokio::test]
async fn disconnecting_a_stream_cancels_its_generation() {
    let t = start(10, 2, 2, None).await;
    let body = json!({"model": "counting", "prompt": "a", "max_tokens": 60, "temperature": 0, "stream": true});
    let mut s = TcpStream::connect(t.addr).await.expect("connect");
    let bytes = request_bytes("POST", "/v1/completions", &[], body.to_string().as_bytes());
    s.write_all(&bytes).await.expect("write");
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).await.expect("read first bytes");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    assert_eq!(wait_for_cancel(&t.app).await, 1);
    let generated = t.app.engine.stats().completion_tokens_total.load(Ordering::Relaxed);
    assert!(generated < 60, "generated {generated} tokens after the client left");
}

#[tokio::test]
async fn disconnecting_a_plain_request_cancels_its_generation() {
    let t = start(10, 2, 2, None).await;
    let body = json!({"model": "counting", "prompt": "a", "max_tokens": 60, "temperature": 0});
    let mut s = TcpStream::connect(t.addr).await.expect("connect");
    let bytes = request_bytes("POST", "/v1/completions", &[], body.to_string().as_bytes());
    s.write_all(&bytes).await.expect("write");
    // Wait until the engine is generating, then hang up.
    while t.app.engine.stats().completion_tokens_total.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(s);
    assert_eq!(wait_for_cancel(&t.app).await, 1);
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    let t = start(0, 4, 4, None).await;
    let body = json!({"model": "counting", "prompt": "x".repeat(4096)}).to_string();
    let head = "POST /v1/completions HTTP/1.1\r\nHost: test\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).as_bytes());
    let mut s = TcpStream::connect(t.addr).await.expect("connect");
    s.write_all(&req).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let reply = Reply {
        status: head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0),
        head: head.into(),
        body: body.into(),
    };
    reply.assert_error(413, None);
}
