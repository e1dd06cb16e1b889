//! `hy run` serves the tiny MoE fixtures (HF folders: tokenizer.json + safetensors) through the
//! OpenAI API: a greedy completion of the reference prompt returns the reference's greedy
//! continuation (transformers, float32), decoded by the model's own tokenizer.

use std::path::{Path, PathBuf};

use hy_engine::tokenizer::Tokenizer;

mod hy_server;
use hy_server::HyServer;
use serde_json::{json, Value};

fn root(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(model)
}

fn json_file(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn greedy_completion_matches_reference(model: &str) {
    let dir = root(model).join("hf");
    let tok = Tokenizer::from_tokenizer_json(&dir.join("tokenizer.json")).unwrap();
    let prompt = ids(&json_file(&root(model).join("ref/prompts.json"))["prompts"][2]);
    let want = ids(&json_file(&root(model).join("ref/index.json"))["sources"]["hf"]["greedy"][2]);
    // The server adds BOS itself where the tokenizer says so; send the text after it.
    let body_ids: Vec<u32> = prompt.iter().copied().skip_while(|&t| Some(t) == tok.bos_id()).collect();
    let text = tok.decode(&body_ids);
    let server = HyServer::start(&[dir.to_str().expect("UTF-8 path"), "--context", "128", "--threads", "1"]);
    let r: Value = reqwest::blocking::Client::new()
        .post(format!("{}/completions", server.base))
        .json(&json!({"model": "hf", "prompt": text, "max_tokens": want.len(), "temperature": 0}))
        .send()
        .expect("POST /v1/completions")
        .json()
        .expect("JSON response");
    assert_eq!(r["usage"]["prompt_tokens"].as_u64(), Some(prompt.len() as u64), "{model}: prompt tokens: {r}");
    assert_eq!(r["usage"]["completion_tokens"].as_u64(), Some(want.len() as u64), "{r}");
    assert_eq!(r["choices"][0]["text"].as_str(), Some(tok.decode(&want).as_str()), "{model}: {r}");
}

#[test]
fn deepseek_v3_serves_reference_greedy() {
    greedy_completion_matches_reference("tiny-deepseek-v3");
}

#[test]
fn qwen3_moe_serves_reference_greedy() {
    greedy_completion_matches_reference("tiny-qwen3-moe");
}
