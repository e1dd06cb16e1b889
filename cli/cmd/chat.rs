//! `hy chat MODEL|URL`: an interactive chat in the terminal.
//!
//! Against a running server (an `http(s)://` URL, e.g. the one `hy run` prints) it streams
//! from `/v1/chat/completions`; given a model path it loads the model in process. The reply
//! streams to stdout; prompts and notices go to stderr. Lines are read from stdin, so it works
//! in a pipe too (`printf 'hi\n/exit\n' | hy chat URL`).

use super::run::{resolve_model, Engine, EngineArgs};
use anyhow::{bail, Context};
use hy_engine::runtime::{ChatMessage, Event, GenerateRequest, SamplingParams, SchedulerHandle};
use serde_json::{json, Value};
use std::io::{BufRead, IsTerminal, Write};

#[derive(clap::Args)]
pub struct Args {
    /// A server URL (http://127.0.0.1:8000 or …/v1) or a local model path.
    pub target: String,
    /// System prompt for the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Longest reply in tokens.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Server only: the model to ask for (default: the first one the server lists).
    #[arg(long)]
    pub model: Option<String>,
    /// Server only: API key (`hy run --api-key`).
    #[arg(long, env = "HY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Something that answers a conversation, streaming text pieces to `out`.
trait Backend {
    fn reply(&mut self, messages: &[ChatMessage], out: &mut dyn FnMut(&str)) -> anyhow::Result<String>;
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let mut backend: Box<dyn Backend> = if is_url(&args.target) {
        Box::new(Remote::connect(&args)?)
    } else {
        let path = resolve_model(&args.target, &args.engine)?;
        let engine = Engine::load(&path, &args.engine, 1, 1)?;
        Box::new(Local { handle: engine.handle.clone(), _engine: engine, args: Settings::from(&args) })
    };
    chat_loop(backend.as_mut(), args.system.as_deref())?;
    Ok(0)
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

fn chat_loop(backend: &mut dyn Backend, system: Option<&str>) -> anyhow::Result<()> {
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("hy chat: type a message; /reset starts over, /exit quits");
    }
    let mut messages = Vec::new();
    let reset = |m: &mut Vec<ChatMessage>| {
        m.clear();
        if let Some(s) = system {
            m.push(ChatMessage { role: "system".into(), content: s.into() });
        }
    };
    reset(&mut messages);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                reset(&mut messages);
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage { role: "user".into(), content: line });
        let mut stdout = std::io::stdout();
        let reply = backend.reply(&messages, &mut |piece| {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        });
        println!();
        match reply {
            Ok(text) => messages.push(ChatMessage { role: "assistant".into(), content: text }),
            Err(e) => {
                // Keep the session alive: the user can retry or /reset.
                messages.pop();
                eprintln!("error: {e:#}");
            }
        }
    }
    Ok(())
}

#[derive(Clone)]
struct Settings {
    max_tokens: usize,
    temperature: f32,
}

impl From<&Args> for Settings {
    fn from(a: &Args) -> Self {
        Settings { max_tokens: a.max_tokens, temperature: a.temperature }
    }
}

/// The model loaded in this process.
struct Local {
    handle: SchedulerHandle,
    _engine: Engine,
    args: Settings,
}

impl Backend for Local {
    fn reply(&mut self, messages: &[ChatMessage], out: &mut dyn FnMut(&str)) -> anyhow::Result<String> {
        let codec = self.handle.codec().clone();
        let text = codec.render_chat(messages).map_err(|e| anyhow::anyhow!("chat template: {e}"))?;
        let prompt = codec.encode_prompt(&text);
        let room = self.handle.config().context.saturating_sub(prompt.len());
        if room == 0 {
            bail!("the conversation fills the whole context; /reset to start over");
        }
        let sampling = SamplingParams { temperature: self.args.temperature, ..SamplingParams::default() };
        let req = GenerateRequest { prompt, max_tokens: self.args.max_tokens.min(room), stop: Vec::new(), sampling };
        let mut rx = self.handle.submit(req)?;
        let mut reply = String::new();
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                Event::Token(t) => {
                    out(&t.text);
                    reply.push_str(&t.text);
                }
                Event::Done(d) => {
                    out(&d.tail);
                    reply.push_str(&d.tail);
                    return Ok(reply);
                }
                Event::Error(e) => bail!("generation failed: {e}"),
            }
        }
        bail!("the engine stopped")
    }
}

/// A server speaking the OpenAI API.
struct Remote {
    client: reqwest::blocking::Client,
    base: String,
    model: String,
    api_key: Option<String>,
    args: Settings,
}

impl Remote {
    fn connect(args: &Args) -> anyhow::Result<Remote> {
        let trimmed = args.target.trim_end_matches('/');
        let base = if trimmed.ends_with("/v1") { trimmed.to_string() } else { format!("{trimmed}/v1") };
        // No overall timeout: a long reply streams for as long as it takes.
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(None)
            .build()
            .context("creating the HTTP client")?;
        let mut remote =
            Remote { client, base, model: String::new(), api_key: args.api_key.clone(), args: Settings::from(args) };
        remote.model = match &args.model {
            Some(m) => m.clone(),
            None => remote.first_model()?,
        };
        eprintln!("hy chat: talking to {} at {}", remote.model, remote.base);
        Ok(remote)
    }

    fn authed(&self, rb: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
        match &self.api_key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    fn first_model(&self) -> anyhow::Result<String> {
        let url = format!("{}/models", self.base);
        let resp = self
            .authed(self.client.get(&url))
            .send()
            .with_context(|| format!("cannot reach {url}; is `hy run` up?"))?;
        let v: Value = checked(resp, &url)?.json().with_context(|| format!("{url} did not return JSON"))?;
        v["data"][0]["id"].as_str().map(String::from).with_context(|| format!("{url} lists no models; pass --model"))
    }
}

/// Turns an HTTP error status into an error carrying the server's message.
fn checked(resp: reqwest::blocking::Response, url: &str) -> anyhow::Result<reqwest::blocking::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().unwrap_or_default();
    let msg = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(String::from))
        .unwrap_or(body);
    bail!("{url} answered {status}: {msg}")
}

impl Backend for Remote {
    fn reply(&mut self, messages: &[ChatMessage], out: &mut dyn FnMut(&str)) -> anyhow::Result<String> {
        let msgs: Vec<Value> = messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect();
        let body = json!({
            "model": self.model, "messages": msgs, "stream": true,
            "max_tokens": self.args.max_tokens, "temperature": self.args.temperature,
        });
        let url = format!("{}/chat/completions", self.base);
        let resp =
            self.authed(self.client.post(&url).json(&body)).send().with_context(|| format!("cannot reach {url}"))?;
        let reader = std::io::BufReader::new(checked(resp, &url)?);
        let mut reply = String::new();
        for line in reader.lines() {
            let line = line.with_context(|| format!("reading the stream from {url}"))?;
            let Some(data) = line.strip_prefix("data:").map(str::trim) else { continue };
            if data == "[DONE]" {
                break;
            }
            let v: Value = serde_json::from_str(data).with_context(|| format!("bad stream chunk: {data}"))?;
            if let Some(msg) = v["error"]["message"].as_str() {
                bail!("server error: {msg}");
            }
            if let Some(piece) = v["choices"][0]["delta"]["content"].as_str() {
                out(piece);
                reply.push_str(piece);
            }
        }
        Ok(reply)
    }
}
