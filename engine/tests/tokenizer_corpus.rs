//! Tokenizers against independent references: HF `tokenizers` ids for the real DeepSeek
//! tokenizer and the three tiny models (from tokenizer.json and from their GGUF files),
//! and llama.cpp ids for Gemma 3 270M (GGUF, when `HY_GEMMA_GGUF` points at it).

use hy_engine::formats::gguf::GgufFile;
use hy_engine::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// (text, expected ids) for every case of a corpus file.
fn corpus(path: &Path) -> Vec<(String, Vec<u32>)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).expect("corpus is JSON");
    let cases = v["cases"].as_array().expect("cases array");
    cases
        .iter()
        .map(|c| {
            let ids = c["ids"].as_array().expect("ids").iter().map(|i| i.as_u64().expect("id") as u32).collect();
            (c["text"].as_str().expect("text").to_owned(), ids)
        })
        .collect()
}

/// Encodes every line; returns a description of each mismatch (empty when all agree).
/// With `roundtrip`, also decodes the reference ids: SentencePiece-style vocabularies
/// store spaces as U+2581, so a literal U+2581 in the text decodes as a space there.
fn mismatches(tok: &Tokenizer, cases: &[(String, Vec<u32>)], parse_special: bool, roundtrip: bool) -> Vec<String> {
    let spm = tok.token_to_id("\u{2581}").is_some();
    let mut bad = Vec::new();
    for (text, want) in cases {
        let got = tok.encode(text, parse_special);
        if &got != want {
            bad.push(format!("{text:?}\n   want {want:?}\n   got  {got:?}"));
        }
        let expect = if spm { text.replace('\u{2581}', " ") } else { text.clone() };
        if roundtrip && tok.decode(want) != expect {
            bad.push(format!("decode({want:?}) = {:?}, want {expect:?}", tok.decode(want)));
        }
    }
    bad
}

fn assert_all_match(what: &str, tok: &Tokenizer, cases: &[(String, Vec<u32>)], parse_special: bool, roundtrip: bool) {
    let bad = mismatches(tok, cases, parse_special, roundtrip);
    assert!(bad.is_empty(), "{what}: {} of {} lines differ:\n{}", bad.len(), cases.len(), bad.join("\n"));
}

#[test]
fn deepseek_tokenizer_json_matches_reference_for_all_48_lines() {
    let dir = fixtures().join("tokenizers/deepseek");
    let tok = Tokenizer::from_tokenizer_json(&dir.join("tokenizer.json")).expect("load DeepSeek tokenizer.json");
    let cases = corpus(&dir.join("corpus_expected.json"));
    assert_eq!(cases.len(), 48);
    assert_all_match("deepseek tokenizer.json", &tok, &cases, true, true);
    assert_eq!(tok.vocab_size(), 129_280);
    assert_eq!(tok.bos_id(), Some(0));
    assert!(tok.eos_ids().contains(&1));
    assert!(!tok.add_bos(), "tokenizer_config.json says add_bos_token false");
    assert_eq!(tok.token_to_id("<think>"), Some(128_821));
}

const TINY: [&str; 3] = ["tiny-llama", "tiny-deepseek-v3", "tiny-qwen3-moe"];

#[test]
fn tiny_models_tokenizer_json_match_reference() {
    for model in TINY {
        let dir = fixtures().join(model);
        let tok = Tokenizer::from_tokenizer_json(&dir.join("hf/tokenizer.json")).expect("load tokenizer.json");
        let cases = corpus(&dir.join("ref/tokenizer_corpus.json"));
        assert_eq!(cases.len(), 48);
        assert_all_match(model, &tok, &cases, true, true);
        assert_eq!(tok.vocab_size(), 512);
        assert_eq!(tok.eos_ids(), [1]);
        let with_bos = model != "tiny-qwen3-moe";
        assert_eq!(tok.add_bos(), with_bos, "{model}: add_bos");
        assert_eq!(tok.bos_id(), if with_bos { Some(0) } else { None }, "{model}: bos");
    }
}

#[test]
fn tiny_models_gguf_vocabularies_match_reference() {
    for model in TINY {
        let dir = fixtures().join(model);
        let cases = corpus(&dir.join("ref/tokenizer_corpus.json"));
        for quant in ["Q8_0", "Q4_K_M"] {
            let path = dir.join(format!("gguf/{model}-{quant}.gguf"));
            let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let tok = Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let what = format!("{model} {quant}");
            assert_all_match(&what, &tok, &cases, false, true);
            assert_all_match(&what, &tok, &cases, true, false);
            assert_eq!(tok.vocab_size(), 512, "{what}");
            assert!(tok.eos_ids().contains(&1), "{what}: eos");
            assert_eq!(tok.add_bos(), model != "tiny-qwen3-moe", "{what}: add_bos");
        }
    }
}

#[test]
fn gemma3_270m_gguf_matches_llama_cpp_ids() {
    let Some(path) = std::env::var_os("HY_GEMMA_GGUF") else {
        eprintln!("skipped: set HY_GEMMA_GGUF (scripts/get-gemma.sh)");
        return;
    };
    let file = GgufFile::open(Path::new(&path)).expect("open the Gemma GGUF named by HY_GEMMA_GGUF");
    let tok = Tokenizer::from_gguf(&file).expect("Gemma tokenizer");
    let cases = corpus(&fixtures().join("gemma3-270m/tokenize_corpus.json"));
    assert_eq!(cases.len(), 48);
    // llama.cpp tokenized with special=False; decoding must give the text back too.
    assert_all_match("gemma3-270m", &tok, &cases, false, true);
    assert_eq!(tok.vocab_size(), 262_144);
    assert_eq!(tok.bos_id(), Some(2));
    assert!(tok.add_bos());
    assert_eq!(tok.eos_ids(), [1, 106, 212]);
    assert_eq!(tok.chat_template(), None);
    assert_eq!(tok.builtin_template_name(), Some("gemma"));
    gemma_prompts_tokenize_like_llama_cpp(&tok);
}

/// The reference generations' prompt ids: raw prompts with special=False, chat prompts
/// rendered by the built-in template with special=True, both with BOS.
fn gemma_prompts_tokenize_like_llama_cpp(tok: &Tokenizer) {
    let path = fixtures().join("gemma3-270m/generations.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("read generations")).expect("json");
    for g in v["generations"].as_array().expect("generations") {
        let rendered = g["rendered_prompt"].as_str().expect("rendered_prompt");
        let want: Vec<u32> =
            g["prompt_ids"].as_array().expect("ids").iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let chat = g["kind"] == "chat";
        let mut got = vec![tok.bos_id().expect("bos")];
        got.extend(tok.encode(rendered, chat));
        assert_eq!(got, want, "{rendered:?}");
        if chat {
            assert_eq!(tok.encode_prompt(rendered), want, "encode_prompt {rendered:?}");
        }
        let cont: Vec<u32> =
            g["continuation_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.decode(&cont), g["continuation_text"].as_str().unwrap());
    }
}

/// Random text from a pool that stresses the pre-tokenizers: contractions, digit runs,
/// whitespace runs with CR/LF, CJK, kana, emoji with ZWJ, punctuation, accents.
fn random_text(rng: &mut impl rand::Rng) -> String {
    const POOL: &[&str] = &[
        "a",
        "Z",
        "é",
        "ß",
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "'s",
        "'LL",
        "'t",
        "1",
        "23",
        "4567",
        "阿",
        "莫西林",
        "ひら",
        "カタ",
        "한",
        "🙂",
        "👨\u{200d}👩",
        "\u{fe0f}",
        ".",
        "!!",
        "?",
        "\"",
        "(",
        ")",
        "{",
        "}",
        "-",
        "_",
        "/",
        "#",
        "€",
        "¥",
        "∑",
        "Ω",
        "ق",
        "ж",
        "the",
        "The",
        " world",
        "don't",
        "x86_64",
        "<|bos|>",
        "<s>",
        "\u{a0}",
        "\u{3000}",
    ];
    let n = rng.gen_range(0..40);
    (0..n).map(|_| POOL[rng.gen_range(0..POOL.len())]).collect()
}

/// The GGUF path (regexes built in for the `tokenizer.ggml.pre` name, merges from GGUF
/// strings) and the tokenizer.json path (regexes and merges from the JSON) must agree on
/// any text, not just the corpus.
#[test]
fn gguf_and_tokenizer_json_agree_on_random_text() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for model in TINY {
        let dir = fixtures().join(model);
        let hf = Tokenizer::from_tokenizer_json(&dir.join("hf/tokenizer.json")).expect("tokenizer.json");
        let file = GgufFile::open(&dir.join(format!("gguf/{model}-Q8_0.gguf"))).expect("gguf");
        let gg = Tokenizer::from_gguf(&file).expect("gguf tokenizer");
        for _ in 0..400 {
            let text = random_text(&mut rng);
            let ids = hf.encode(&text, true);
            assert_eq!(gg.encode(&text, true), ids, "{model}: {text:?}");
            assert_eq!(hf.decode(&ids), text, "{model}: {text:?}");
        }
    }
}
