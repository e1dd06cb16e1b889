//! `hy run` as a process on the tiny Llama fixture, driven over HTTP, plus `hy chat` against
//! it and in process. The fixture has random weights, so tests compare the server with itself
//! (streamed vs. not, local chat vs. server) rather than with fixed text.

use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

mod hy_server;
use hy_server::HyServer;

const MODEL_ID: &str = "tiny-llama-Q8_0";

fn fixture() -> String {
    format!("{}/tests/fixtures/tiny-llama/gguf/tiny-llama-Q8_0.gguf", env!("CARGO_MANIFEST_DIR"))
}

/// `hy run` on the fixture (tiny context, one thread) with `extra` arguments.
struct Server(HyServer);

impl Server {
    fn start(extra: &[&str]) -> Server {
        let model = fixture();
        let args: Vec<&str> =
            [model.as_str(), "--context", "256", "--threads", "1"].into_iter().chain(extra.iter().copied()).collect();
        let s = HyServer::start(&args);
        assert!(
            s.ready_line.contains(MODEL_ID) && s.ready_line.contains("context 256"),
            "ready line: {}",
            s.ready_line
        );
        Server(s)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.0.base)
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(120)).build().expect("client")
}

fn post(s: &Server, path: &str, body: &Value) -> (u16, String) {
    let r = client().post(s.url(path)).json(body).send().expect("POST");
    let status = r.status().as_u16();
    (status, r.text().expect("body"))
}

fn chat_body(content: &str, max_tokens: u32, stream: bool) -> Value {
    json!({"model": MODEL_ID, "messages": [{"role": "user", "content": content}],
           "max_tokens": max_tokens, "temperature": 0, "stream": stream})
}

/// Concatenated content of an SSE chat stream, and its finish reason.
fn stream_text(body: &str) -> (String, String) {
    let mut text = String::new();
    let mut finish = String::new();
    let data: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{body}");
    for d in &data[..data.len() - 1] {
        let v: Value = serde_json::from_str(d).expect("chunk JSON");
        let c = &v["choices"][0];
        text.push_str(c["delta"]["content"].as_str().or(c["text"].as_str()).unwrap_or(""));
        if let Some(f) = c["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (text, finish)
}

fn assert_openai_error(status: u16, body: &str, want: u16) {
    assert_eq!(status, want, "{body}");
    let v: Value = serde_json::from_str(body).expect("error JSON");
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()) && e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
}

#[test]
fn serves_chat_completions_and_models() {
    let s = Server::start(&[]);
    let models: Value = client().get(s.url("/models")).send().expect("GET").json().expect("JSON");
    assert_eq!(models["data"][0]["id"], MODEL_ID);

    let (status, body) = post(&s, "/chat/completions", &chat_body("Hello there", 12, false));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let plain = v["choices"][0]["message"]["content"].as_str().expect("content").to_string();
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(v["choices"][0]["finish_reason"], "length");

    // Greedy: the streamed text must equal the non-streamed one, piece by piece.
    let (status, body) = post(&s, "/chat/completions", &chat_body("Hello there", 12, true));
    assert_eq!(status, 200);
    assert_eq!(stream_text(&body), (plain, "length".to_string()));

    let body = json!({"model": MODEL_ID, "prompt": "Once upon", "max_tokens": 5, "temperature": 0});
    let (status, text) = post(&s, "/completions", &body);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["completion_tokens"], 5);

    let metrics = client().get(s.url("/../metrics")).send().expect("GET").text().expect("text");
    assert!(metrics.contains("hy_requests_total{endpoint=\"chat_completions\",status=\"200\"} 2"), "{metrics}");
}

#[test]
fn bad_requests_get_openai_errors() {
    let s = Server::start(&[]);
    let raw = client().post(s.url("/chat/completions")).body("{oops").send().expect("POST");
    let status = raw.status().as_u16();
    assert_openai_error(status, &raw.text().expect("body"), 400);
    let (st, b) = post(&s, "/chat/completions", &json!({"model": MODEL_ID}));
    assert_openai_error(st, &b, 400);
    let (st, b) =
        post(&s, "/chat/completions", &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}));
    assert_openai_error(st, &b, 404);
    let (st, b) = post(&s, "/chat/completions", &chat_body("x", 100_000, false));
    assert_openai_error(st, &b, 413);
}

#[test]
fn api_key_guards_v1() {
    let s = Server::start(&["--api-key", "k3y"]);
    let r = client().get(s.url("/models")).send().expect("GET");
    let status = r.status().as_u16();
    assert_openai_error(status, &r.text().expect("body"), 401);
    let r = client().get(s.url("/models")).bearer_auth("k3y").send().expect("GET");
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn sixteen_concurrent_streams_complete() {
    let s = Server::start(&["--max-concurrency", "8"]);
    let base = s.0.base.clone();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let url = format!("{base}/chat/completions");
            std::thread::spawn(move || {
                let body = chat_body(&format!("request number {i}"), 10, true);
                let r = client().post(url).json(&body).send().expect("POST");
                assert_eq!(r.status().as_u16(), 200);
                stream_text(&r.text().expect("body"))
            })
        })
        .collect();
    for t in threads {
        let (_, finish) = t.join().expect("request thread");
        assert_eq!(finish, "length");
    }
}

fn run_chat(target: &str, input: &str, extra: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hy"))
        .args(["chat", target, "--temperature", "0", "--max-tokens", "8"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn hy chat");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("hy chat output");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn chat_against_server_and_in_process_agree() {
    let s = Server::start(&[]);
    let (status, body) = post(&s, "/chat/completions", &chat_body("hi", 8, false));
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let want = v["choices"][0]["message"]["content"].as_str().expect("content").to_string();
    assert!(!want.is_empty(), "the fixture's greedy reply to `hi` is not empty");

    let (code, remote) = run_chat(&s.0.base, "hi\n/exit\n", &[]);
    assert_eq!(code, 0);
    assert!(remote.starts_with(&want), "remote chat printed {remote:?}, server said {want:?}");

    let (code, local) = run_chat(&fixture(), "hi\n/reset\nhi\n", &["--context", "256", "--threads", "1"]);
    assert_eq!(code, 0);
    // After /reset the same question gets the same greedy answer again.
    assert_eq!(local, format!("{want}\n{want}\n"));
}
