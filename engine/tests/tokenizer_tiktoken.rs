//! The tiktoken-format loader (Kimi-K2 HF folders) against HF `tokenizers` ids: the tiny
//! Llama vocabulary (Llama 3 style, itself tiktoken-like with `ignore_merges`) is written
//! as a `tiktoken.model` file (bytes → rank = id), and must tokenize the corpus exactly
//! as the reference did from tokenizer.json.

use hy_engine::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// GPT-2 byte-level alphabet char → byte (inverse of the standard table).
fn unbyte(c: char) -> u8 {
    let direct = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut next = 256;
    for b in 0..=255u32 {
        let mapped = if direct(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        if mapped == c as u32 {
            return b as u8;
        }
    }
    panic!("{c:?} is not in the byte-level alphabet")
}

#[test]
fn tiktoken_model_of_tiny_llama_matches_reference_ids() {
    let hf_dir = fixtures().join("tiny-llama/hf");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(hf_dir.join("tokenizer.json")).unwrap()).unwrap();
    let pattern = json["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"].as_str().expect("regex").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let mut lines = String::new();
    for (text, id) in json["model"]["vocab"].as_object().unwrap() {
        let id = id.as_u64().unwrap();
        if id >= 3 {
            let bytes: Vec<u8> = text.chars().map(unbyte).collect();
            lines.push_str(&format!("{} {id}\n", base64(&bytes)));
        }
    }
    std::fs::write(dir.path().join("tiktoken.model"), lines).unwrap();
    let cfg = json!({
        "added_tokens_decoder": {
            "0": {"content": "<|bos|>", "special": true},
            "1": {"content": "<|eos|>", "special": true},
            "2": {"content": "<|pad|>", "special": true}
        },
        "bos_token": "<|bos|>",
        "eos_token": "<|eos|>",
        "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();

    let tok = Tokenizer::from_tiktoken(&dir.path().join("tiktoken.model"), Some(&pattern)).expect("load");
    assert_eq!(tok.vocab_size(), 512 + 256, "base vocabulary + 256 reserved special ids");
    assert_eq!(tok.token_text(600), Some("<|reserved_token_600|>"));
    assert_eq!(tok.bos_id(), Some(0));
    assert_eq!(tok.eos_ids(), [1]);
    assert_eq!(tok.encode("<|bos|>hi<|reserved_token_600|>", true)[0], 0);
    assert_eq!(tok.encode("<|bos|>hi<|reserved_token_600|>", true).last(), Some(&600));
    assert!(tok.chat_template().is_some());

    let corpus: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny-llama/ref/tokenizer_corpus.json")).unwrap(),
    )
    .unwrap();
    for c in corpus["cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text, true), want, "{text:?}");
        assert_eq!(tok.decode(&want), text);
    }
    // With no tokenizer.json, an HF folder falls back to tiktoken.model (Kimi-K2's regex).
    let kimi = Tokenizer::from_hf_dir(dir.path()).expect("from_hf_dir");
    assert_eq!(kimi.vocab_size(), 768);
    assert_eq!(kimi.decode(&kimi.encode("Hello 世界 12345!", true)), "Hello 世界 12345!");
}
