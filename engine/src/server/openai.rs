//! OpenAI request bodies, their validation, and the response objects.

use super::error::ApiError;
use crate::runtime::{ChatMessage, SamplingParams, TextCodec, TokenLogprobs};
use serde::Deserialize;
use serde_json::{json, Value};

/// Sampling fields shared by both endpoints (extensions: top_k, min_p, repetition_penalty).
#[derive(Deserialize, Default, Debug)]
pub struct CommonParams {
    pub model: String,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<StopSpec>,
}

#[derive(Deserialize, Default, Debug)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug)]
pub struct ChatRequest {
    #[serde(flatten)]
    pub common: CommonParams,
    pub messages: Vec<InMessage>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<i64>,
}

#[derive(Deserialize, Debug)]
pub struct InMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize, Debug)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Deserialize, Debug)]
pub struct CompletionRequest {
    #[serde(flatten)]
    pub common: CommonParams,
    pub prompt: PromptSpec,
    #[serde(default)]
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub best_of: Option<i64>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum PromptSpec {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

/// What a request asks for, validated, before tokenization.
#[derive(Debug)]
pub struct Validated {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub sampling: SamplingParams,
}

/// Parses a body: invalid JSON and wrong field types both give 400 with serde's message.
pub fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_json(format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_json("the request body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| {
        let msg = e.to_string();
        // serde names the missing field in backticks: report it as the param.
        let param = msg.split('`').nth(1).unwrap_or("body").to_string();
        ApiError::invalid(&param, format!("invalid request: {msg}"))
    })
}

fn check_range(name: &str, v: Option<f32>, lo: f32, hi: f32) -> Result<(), ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => {
            Err(ApiError::invalid(name, format!("`{name}` must be between {lo} and {hi}, got {x}")))
        }
        _ => Ok(()),
    }
}

impl CommonParams {
    /// Checks values and builds sampling settings; `max_tokens` may be overridden by the
    /// endpoint (`max_completion_tokens`).
    pub fn validate(self, max_tokens: Option<i64>, logprobs: Option<usize>) -> Result<Validated, ApiError> {
        check_range("temperature", self.temperature, 0.0, 2.0)?;
        check_range("top_p", self.top_p, 0.0, 1.0)?;
        check_range("min_p", self.min_p, 0.0, 1.0)?;
        check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        check_range("repetition_penalty", self.repetition_penalty, 0.01, 10.0)?;
        if self.top_p == Some(0.0) {
            return Err(ApiError::invalid("top_p", "`top_p` must be greater than 0"));
        }
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid("n", format!("only n = 1 is supported, got {n}")));
            }
        }
        let max_tokens = match max_tokens.or(self.max_tokens) {
            Some(m) if m < 1 => {
                return Err(ApiError::invalid("max_tokens", format!("`max_tokens` must be at least 1, got {m}")))
            }
            Some(m) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
            None => None,
        };
        let top_k = match self.top_k {
            Some(k) if k < 0 => return Err(ApiError::invalid("top_k", "`top_k` must be 0 (off) or positive")),
            Some(k) => k as usize,
            None => 0,
        };
        let stop = match self.stop {
            None => Vec::new(),
            Some(StopSpec::One(s)) => vec![s],
            Some(StopSpec::Many(v)) => v,
        };
        if stop.len() > 16 {
            return Err(ApiError::invalid("stop", "at most 16 stop sequences are supported"));
        }
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k,
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            // OpenAI seeds are signed 64-bit; the bit pattern is as good a seed as any.
            seed: self.seed.map(|s| s as u64),
            logprobs,
        };
        Ok(Validated {
            model: self.model,
            stream: self.stream.unwrap_or(false),
            include_usage: self.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
            max_tokens,
            stop,
            sampling,
        })
    }
}

impl ChatRequest {
    pub fn validate(self) -> Result<(Validated, Vec<ChatMessage>), ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "`messages` must contain at least one message"));
        }
        let logprobs = match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (_, Some(n)) if !(0..=20).contains(&n) => {
                return Err(ApiError::invalid("top_logprobs", "`top_logprobs` must be between 0 and 20"))
            }
            (false, Some(_)) => {
                return Err(ApiError::invalid("top_logprobs", "`top_logprobs` requires `logprobs: true`"))
            }
            (true, n) => Some(n.unwrap_or(0) as usize),
            (false, None) => None,
        };
        let messages = self.messages.into_iter().map(to_chat_message).collect::<Result<Vec<_>, _>>()?;
        let v = self.common.validate(self.max_completion_tokens, logprobs)?;
        Ok((v, messages))
    }
}

fn to_chat_message(m: InMessage) -> Result<ChatMessage, ApiError> {
    let content = match m.content {
        None => String::new(),
        Some(Content::Text(t)) => t,
        Some(Content::Parts(parts)) => {
            let mut s = String::new();
            for p in parts {
                if p.kind != "text" {
                    return Err(ApiError::invalid(
                        "messages",
                        format!("content parts of type `{}` are not supported (text only)", p.kind),
                    ));
                }
                s.push_str(p.text.as_deref().unwrap_or(""));
            }
            s
        }
    };
    Ok(ChatMessage { role: m.role, content })
}

/// A completion prompt: text to tokenize, or ids given directly.
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

impl CompletionRequest {
    pub fn validate(self) -> Result<(Validated, Prompt, bool), ApiError> {
        let prompt = match self.prompt {
            PromptSpec::Text(t) => Prompt::Text(t),
            PromptSpec::Ids(ids) => Prompt::Ids(ids),
            PromptSpec::Texts(mut v) if v.len() == 1 => Prompt::Text(v.remove(0)),
            PromptSpec::IdLists(mut v) if v.len() == 1 => Prompt::Ids(v.remove(0)),
            _ => return Err(ApiError::invalid("prompt", "only one prompt per request is supported")),
        };
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid("suffix", "`suffix` (insertion) is not supported"));
        }
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::invalid("best_of", "only best_of = 1 is supported"));
        }
        let logprobs = match self.logprobs {
            Some(n) if !(0..=5).contains(&n) => {
                return Err(ApiError::invalid("logprobs", "`logprobs` must be between 0 and 5"))
            }
            Some(n) => Some(n as usize),
            None => None,
        };
        // The legacy endpoint defaults to 16 tokens.
        let max = self.common.max_tokens.or(Some(16));
        let v = self.common.validate(max, logprobs)?;
        Ok((v, prompt, self.echo.unwrap_or(false)))
    }
}

pub fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// One entry of chat `logprobs.content` for token `id` (with its raw bytes, which may be part
/// of a character).
pub fn chat_logprob_entry(id: u32, lp: &TokenLogprobs, codec: &dyn TextCodec) -> Value {
    let entry = |id: u32, logprob: f32| json!({"token": codec.token_text(id), "logprob": logprob, "bytes": codec.token_bytes(id)});
    let mut v = entry(id, lp.logprob);
    v["top_logprobs"] = lp.top.iter().map(|&(t, l)| entry(t, l)).collect();
    v
}

/// Legacy completions `logprobs` object for a run of tokens.
#[derive(Default)]
pub struct LegacyLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<Value>,
    pub text_offset: Vec<usize>,
}

impl LegacyLogprobs {
    pub fn push(&mut self, text: String, offset: usize, lp: &TokenLogprobs, token_text: impl Fn(u32) -> String) {
        let mut top = serde_json::Map::new();
        for &(id, l) in &lp.top {
            top.insert(token_text(id), json!(l));
        }
        self.tokens.push(text);
        self.token_logprobs.push(lp.logprob);
        self.top_logprobs.push(Value::Object(top));
        self.text_offset.push(offset);
    }

    pub fn to_json(&self) -> Value {
        json!({
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        })
    }
}
