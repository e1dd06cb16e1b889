//! Streaming detokenization never emits part of a UTF-8 character and always agrees with
//! decoding the whole sequence; SentencePiece-style byte fallback (`<0xE5>` tokens) and
//! byte-level BPE pieces of emoji / CJK are both covered.

use hy_engine::formats::gguf::{GgufFile, MetaValue};
use hy_engine::formats::gguf_writer::GgufWriter;
use hy_engine::tokenizer::{StreamDecoder, TokenKind, Tokenizer};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn deepseek() -> Tokenizer {
    Tokenizer::from_tokenizer_json(&fixtures().join("tokenizers/deepseek/tokenizer.json")).expect("DeepSeek tokenizer")
}

/// Pushes `ids` one at a time; returns the chunks (the last one from `flush`).
fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Vec<String> {
    let mut d = StreamDecoder::new(tok, skip_special);
    let mut chunks: Vec<String> = ids.iter().map(|&id| d.push(id)).collect();
    chunks.push(d.flush());
    chunks
}

#[test]
fn byte_level_emoji_and_cjk_never_split_a_character() {
    let tok = deepseek();
    for text in ["🙂🚀🦙✅", "I ❤️ emoji 👍🏽 and families 👨‍👩‍👧‍👦", "阿莫西林是一种常用的抗生素。", "😶‍🌫️ (multiple)"]
    {
        let ids = tok.encode(text, true);
        let chunks = stream(&tok, &ids, false);
        assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "{text:?}: {chunks:?}");
        assert_eq!(chunks.concat(), text);
        assert_eq!(chunks.concat(), tok.decode(&ids));
        // Each chunk ends where a character of the text ends.
        let mut at = 0;
        for c in &chunks {
            at += c.len();
            assert!(text.is_char_boundary(at), "{text:?}: chunk ends inside a character");
        }
    }
    // The emoji line really has tokens that are not whole characters, so the test above
    // exercises holding bytes back.
    let ids = tok.encode("🙂🚀🦙✅", true);
    assert!(ids.iter().any(|&id| std::str::from_utf8(tok.token_bytes(id)).is_err()), "{ids:?}");
    assert!(stream(&tok, &ids, false).iter().any(String::is_empty));
}

#[test]
fn random_token_sequences_stream_like_full_decode() {
    let tok = deepseek();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let n = tok.vocab_size() as u32;
    for _ in 0..300 {
        let len = rng.gen_range(1..24);
        let ids: Vec<u32> = (0..len).map(|_| rng.gen_range(0..n)).collect();
        assert_eq!(stream(&tok, &ids, false).concat(), tok.decode(&ids), "{ids:?}");
        assert_eq!(stream(&tok, &ids, true).concat(), tok.decode_skip_special(&ids), "{ids:?}");
    }
}

/// A small SentencePiece-style vocabulary written as a GGUF file.
fn spm_gguf(dir: &Path) -> PathBuf {
    let mut tokens: Vec<(String, f32, i32)> =
        vec![("<unk>".into(), 0.0, 2), ("<s>".into(), 0.0, 3), ("</s>".into(), 0.0, 3)];
    tokens.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 0.0, 6)));
    for (t, score) in [("▁", -1.0), ("h", -2.0), ("i", -2.0), ("▁h", -5.0), ("hi", -3.0), ("▁hi", -4.0)] {
        tokens.push((t.into(), score, 1));
    }
    tokens.push(("<|turn|>".into(), 0.0, 3));
    tokens.push(("<user>".into(), 0.0, 4));
    let mut w = GgufWriter::new();
    let arr = |f: &dyn Fn(&(String, f32, i32)) -> MetaValue| MetaValue::Array(tokens.iter().map(f).collect());
    w.add_meta("general.architecture", MetaValue::String("llama".into()));
    w.add_meta("tokenizer.ggml.model", MetaValue::String("llama".into()));
    w.add_meta("tokenizer.ggml.tokens", arr(&|t| MetaValue::String(t.0.clone())));
    w.add_meta("tokenizer.ggml.scores", arr(&|t| MetaValue::F32(t.1)));
    w.add_meta("tokenizer.ggml.token_type", arr(&|t| MetaValue::I32(t.2)));
    w.add_meta("tokenizer.ggml.unknown_token_id", MetaValue::U32(0));
    w.add_meta("tokenizer.ggml.bos_token_id", MetaValue::U32(1));
    w.add_meta("tokenizer.ggml.eos_token_id", MetaValue::U32(2));
    let path = dir.join("spm.gguf");
    std::fs::write(&path, w.to_bytes()).expect("write GGUF");
    path
}

const HI: u32 = 264; // "▁hi"
const SPACE: u32 = 259; // "▁"
const TURN: u32 = 265;
const USER: u32 = 266;
fn byte(b: u8) -> u32 {
    3 + u32::from(b)
}

#[test]
fn spm_byte_fallback_streams_whole_characters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = GgufFile::open(&spm_gguf(dir.path())).expect("open");
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
    assert!(tok.add_bos(), "SentencePiece-style vocabularies add BOS by default");
    assert_eq!(tok.token_kind(byte(0xE5)), Some(TokenKind::Byte));

    // Dummy prefix space, score-ordered merges, then 好 = E5 A5 BD as byte tokens.
    let ids = tok.encode("hi 好", false);
    assert_eq!(ids, [HI, SPACE, byte(0xE5), byte(0xA5), byte(0xBD)]);
    assert_eq!(tok.decode(&ids), "hi 好");
    let chunks = stream(&tok, &ids, false);
    assert_eq!(chunks, ["hi", " ", "", "", "好", ""]);

    // A control token is matched only when asked; user-defined ones always.
    assert_eq!(tok.encode("<|turn|>hi", true), [TURN, HI]);
    let plain = tok.encode("<|turn|>hi", false);
    assert!(!plain.contains(&TURN));
    assert_eq!(tok.decode(&plain), "<|turn|>hi");
    assert_eq!(tok.encode("hi<user>", false), [HI, USER]);
    assert_eq!(tok.decode_skip_special(&[TURN, HI, 2]), "hi");
    assert_eq!(tok.eos_ids(), [2]);
}

#[test]
fn broken_utf8_becomes_replacement_characters_like_full_decode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = GgufFile::open(&spm_gguf(dir.path())).expect("open");
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
    // A lead byte followed by ASCII can never complete: U+FFFD, then the text.
    let ids = [HI, byte(0xE5), SPACE, HI];
    assert_eq!(stream(&tok, &ids, false), ["hi", "", "\u{FFFD} ", " hi", ""]);
    assert_eq!(tok.decode(&ids), "hi\u{FFFD}  hi");
    // A character cut off at the end of the stream is flushed as U+FFFD by flush().
    let ids = [HI, byte(0xF0), byte(0x9F)];
    assert_eq!(stream(&tok, &ids, false), ["hi", "", "", "\u{FFFD}"]);
    assert_eq!(stream(&tok, &ids, false).concat(), tok.decode(&ids));
}
