//! Malformed tokenizer files give typed errors that name the problem, never a panic.

use hy_engine::formats::gguf::{GgufFile, MetaValue};
use hy_engine::formats::gguf_writer::GgufWriter;
use hy_engine::tokenizer::{ChatMessage, Tokenizer, TokenizerError};
use std::path::Path;

fn strings(v: &[&str]) -> MetaValue {
    MetaValue::Array(v.iter().map(|s| MetaValue::String(s.to_string())).collect())
}

/// A GGUF with the given metadata on top of a minimal valid byte-level vocabulary.
fn gguf_with(dir: &Path, edit: impl FnOnce(&mut Vec<(&'static str, MetaValue)>)) -> Result<Tokenizer, TokenizerError> {
    let mut meta: Vec<(&'static str, MetaValue)> = vec![
        ("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(&["a", "b", "ab", "<|eos|>"])),
        (
            "tokenizer.ggml.token_type",
            MetaValue::Array(vec![MetaValue::I32(1); 3].into_iter().chain([MetaValue::I32(3)]).collect()),
        ),
        ("tokenizer.ggml.merges", strings(&["a b"])),
        ("tokenizer.ggml.eos_token_id", MetaValue::U32(3)),
    ];
    edit(&mut meta);
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.add_meta(k, v);
    }
    let path = dir.join("t.gguf");
    std::fs::write(&path, w.to_bytes()).expect("write");
    let file = GgufFile::open(&path).expect("open");
    Tokenizer::from_gguf(&file)
}

fn remove(meta: &mut Vec<(&'static str, MetaValue)>, key: &str) {
    meta.retain(|(k, _)| *k != key);
}

fn set(meta: &mut Vec<(&'static str, MetaValue)>, key: &'static str, v: MetaValue) {
    remove(meta, key);
    meta.push((key, v));
}

#[test]
fn minimal_gguf_vocabulary_works() {
    let dir = tempfile::tempdir().unwrap();
    let tok = gguf_with(dir.path(), |_| {}).expect("valid");
    assert_eq!(tok.encode("abab<|eos|>", true), [2, 2, 3]);
    // Control text stays text; its bytes have no tokens in this vocabulary, so they drop.
    assert_eq!(tok.encode("abab<|eos|>", false), [2, 2]);
    assert_eq!(tok.decode(&[2, 0, 3, 99]), "aba<|eos|>", "unknown ids are skipped");
    assert!(!tok.add_bos(), "byte-level BPE adds no BOS unless told");
}

#[test]
fn malformed_gguf_vocabularies_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = |e: Result<Tokenizer, TokenizerError>| e.expect_err("must fail").to_string();
    let e = err(gguf_with(dir.path(), |m| remove(m, "tokenizer.ggml.tokens")));
    assert!(e.contains("tokenizer.ggml.tokens"), "{e}");
    let e = err(gguf_with(dir.path(), |m| remove(m, "tokenizer.ggml.model")));
    assert!(e.contains("tokenizer.ggml.model"), "{e}");
    let e = err(gguf_with(dir.path(), |m| set(m, "tokenizer.ggml.model", MetaValue::String("bert".into()))));
    assert!(e.contains("bert"), "{e}");
    let e = err(gguf_with(dir.path(), |m| remove(m, "tokenizer.ggml.merges")));
    assert!(e.contains("merges"), "{e}");
    let e =
        err(gguf_with(dir.path(), |m| set(m, "tokenizer.ggml.token_type", MetaValue::Array(vec![MetaValue::I32(1)]))));
    assert!(e.contains("token_type has 1 entries for 4 tokens"), "{e}");
    let e = err(gguf_with(dir.path(), |m| set(m, "tokenizer.ggml.eos_token_id", MetaValue::U32(4))));
    assert!(e.contains("EOS id 4"), "{e}");
    let e = err(gguf_with(dir.path(), |m| set(m, "tokenizer.ggml.merges", strings(&["ab"]))));
    assert!(e.contains("\"ab\""), "{e}");
    let e = err(gguf_with(dir.path(), |m| set(m, "tokenizer.ggml.tokens", MetaValue::Array(vec![MetaValue::U8(1)]))));
    assert!(e.contains("array of strings"), "{e}");
}

#[test]
fn malformed_tokenizer_json_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let load = |text: &str| {
        std::fs::write(&path, text).unwrap();
        Tokenizer::from_tokenizer_json(&path).expect_err("must fail").to_string()
    };
    assert!(load("{not json").contains("not valid JSON"));
    assert!(load("{}").contains("\"model\""));
    assert!(load(r#"{"model": {"type": "Unigram", "vocab": []}}"#).contains("Unigram"));
    let no_bytelevel = r#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": null}"#;
    assert!(load(no_bytelevel).contains("ByteLevel"));
    let bad_vocab = r#"{"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}}"#;
    assert!(load(bad_vocab).contains("\"a\""));
    let bad_regex = r#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]}}"#;
    assert!(load(bad_regex).contains("(unclosed"));
    let missing = dir.path().join("nope/tokenizer.json");
    let e = Tokenizer::from_tokenizer_json(&missing).expect_err("missing file").to_string();
    assert!(e.contains("nope/tokenizer.json"), "{e}");
}

#[test]
fn template_and_config_come_from_sibling_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-qwen3-moe/hf/tokenizer.json");
    std::fs::copy(&src, dir.path().join("tokenizer.json")).unwrap();
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{{ eos_token }}",
    )
    .unwrap();
    std::fs::write(dir.path().join("generation_config.json"), r#"{"eos_token_id": [1, 2]}"#).unwrap();
    let tok = Tokenizer::from_tokenizer_json(&dir.path().join("tokenizer.json")).unwrap();
    assert_eq!(tok.eos_ids(), [1, 2], "generation_config.json adds EOS ids");
    assert!(!tok.add_bos(), "no tokenizer_config.json and no BOS post-processor");
    assert_eq!(tok.eos_id(), None);
    let text = tok.apply_chat_template(&[ChatMessage::new("user", "hi")], true).unwrap();
    assert_eq!(text, "[user]hi");
}

/// Byte-level BPE is lossless: any text at all (random code points from the whole
/// Unicode range, control characters, special-token look-alikes) decodes back to itself,
/// with and without special-token parsing, and nothing panics.
#[test]
fn byte_level_round_trips_arbitrary_text() {
    use rand::{Rng, SeedableRng};
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let paths =
        ["tokenizers/deepseek/tokenizer.json", "tiny-llama/hf/tokenizer.json", "tiny-qwen3-moe/hf/tokenizer.json"];
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    for p in paths {
        let tok = Tokenizer::from_tokenizer_json(&fx.join(p)).expect("load");
        for _ in 0..300 {
            let len = rng.gen_range(0..30);
            let text: String = (0..len)
                .map(|_| match rng.gen_range(0..4) {
                    0 => char::from(rng.gen_range(0u8..128)),
                    1 => char::from_u32(rng.gen_range(0..0x11_0000)).unwrap_or('\u{FFFD}'),
                    2 => [' ', '\n', '\r', '\t', '\u{3000}'][rng.gen_range(0..5)],
                    _ => ['<', '|', '｜', '▁', '>', 'é', '阿', '🦙'][rng.gen_range(0..8)],
                })
                .collect();
            for special in [false, true] {
                let ids = tok.encode(&text, special);
                assert_eq!(tok.decode(&ids), text, "{p}: {text:?}");
            }
        }
    }
}
