//! Building a tokenizer from GGUF `tokenizer.*` metadata.

use super::pretok::PreTokenizer;
use super::special::SpecialToken;
use super::{bpe, bytelevel, Model, Normalizer, Parts, TokenInfo, TokenKind, TokenizerError};
use crate::formats::gguf::GgufFile;

fn missing(key: &str) -> TokenizerError {
    TokenizerError::Missing(format!("GGUF key {key}"))
}

fn id(file: &GgufFile, key: &str) -> Option<u32> {
    file.get_u64(key).and_then(|v| u32::try_from(v).ok())
}

pub(super) fn load(file: &GgufFile) -> Result<Parts, TokenizerError> {
    let model_name = file.get_str("tokenizer.ggml.model").ok_or_else(|| missing("tokenizer.ggml.model"))?;
    let texts = file
        .get_str_array("tokenizer.ggml.tokens")
        .ok_or_else(|| missing("tokenizer.ggml.tokens (an array of strings)"))?;
    let n = texts.len();
    let kinds = per_token(file.get_i64_array("tokenizer.ggml.token_type"), n, "token_type")?;
    let scores = per_token(file.get_f32_array("tokenizer.ggml.scores"), n, "scores")?;
    let byte_level = match model_name {
        "gpt2" => true,
        "llama" => false,
        other => {
            return Err(TokenizerError::Unsupported(format!(
                "GGUF tokenizer model {other:?} (supported: gpt2 byte-level BPE, llama SentencePiece-style)"
            )))
        }
    };
    let tokens: Vec<TokenInfo> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let kind = kinds.as_ref().map_or(TokenKind::Normal, |k| TokenKind::from_gguf(k[i]));
            let score = scores.as_ref().map_or(0.0, |s| s[i]);
            token_info(t, kind, score, byte_level)
        })
        .collect();
    let specials = specials(&tokens);
    let model = if byte_level {
        Model::ByteBpe { merges: merges(file, &texts)?, ignore_merges: false }
    } else {
        Model::Spm { add_space_prefix: file.get_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true) }
    };
    let pre = file.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let (pretok, model) = match model {
        Model::ByteBpe { merges, .. } => {
            // tiktoken-derived vocabularies (Llama 3, Kimi-K2, o200k) map a whole word that
            // is itself a token directly, as tiktoken does.
            let ignore_merges = matches!(
                pre,
                "llama3"
                    | "llama-v3"
                    | "llama-bpe"
                    | "falcon3"
                    | "falcon-h1"
                    | "pixtral"
                    | "kimi-k2"
                    | "gpt-4o"
                    | "llama4"
            );
            (PreTokenizer::for_gguf_pre(pre)?, Model::ByteBpe { merges, ignore_merges })
        }
        spm => (PreTokenizer::default(), spm),
    };
    let strip_leading_space = matches!(model, Model::Spm { add_space_prefix: true });
    let eos = id(file, "tokenizer.ggml.eos_token_id");
    let extra_eos =
        ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"].iter().filter_map(|k| id(file, k)).collect();
    Ok(Parts {
        tokens,
        model,
        normalizer: Normalizer::default(),
        pretok,
        specials,
        bos: id(file, "tokenizer.ggml.bos_token_id"),
        eos,
        extra_eos,
        unk: id(file, "tokenizer.ggml.unknown_token_id"),
        // SentencePiece-style models add BOS unless told otherwise; BPE ones only when told.
        add_bos: file.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(!byte_level),
        add_eos: file.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false),
        chat_template: file.get_str("tokenizer.chat_template").map(str::to_owned),
        strip_leading_space,
    })
}

/// A per-token array that, when present, must have one entry per token.
fn per_token<T>(v: Option<Vec<T>>, n: usize, what: &str) -> Result<Option<Vec<T>>, TokenizerError> {
    match v {
        Some(v) if v.len() != n => {
            Err(TokenizerError::Invalid(format!("tokenizer.ggml.{what} has {} entries for {n} tokens", v.len())))
        }
        v => Ok(v),
    }
}

fn token_info(text: &str, kind: TokenKind, score: f32, byte_level: bool) -> TokenInfo {
    let bytes = match kind {
        TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown => text.as_bytes().to_vec(),
        TokenKind::Byte => super::byte_token_value(text).map_or_else(|| text.as_bytes().to_vec(), |b| vec![b]),
        _ if byte_level => bytelevel::decode(text).unwrap_or_else(|| text.as_bytes().to_vec()),
        _ => text.replace('\u{2581}', " ").into_bytes(),
    };
    TokenInfo { text: text.to_owned(), bytes, kind, score }
}

/// Control, user-defined and unknown tokens are matched as whole tokens in text; only
/// user-defined ones when the caller does not parse specials.
fn specials(tokens: &[TokenInfo]) -> Vec<SpecialToken> {
    tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| matches!(t.kind, TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown))
        .map(|(i, t)| SpecialToken {
            id: i as u32,
            text: t.text.clone(),
            always: t.kind == TokenKind::UserDefined,
            lstrip: false,
            rstrip: false,
            single_word: false,
        })
        .collect()
}

fn merges(file: &GgufFile, texts: &[&str]) -> Result<bpe::Merges, TokenizerError> {
    let list = file
        .get_str_array("tokenizer.ggml.merges")
        .ok_or_else(|| missing("tokenizer.ggml.merges (byte-level BPE needs its merges)"))?;
    let index: std::collections::HashMap<&str, u32> =
        texts.iter().enumerate().rev().map(|(i, t)| (*t, i as u32)).collect();
    let mut merges = bpe::Merges::default();
    for (rank, m) in list.iter().enumerate() {
        let Some((a, b)) = m.split_once(' ') else {
            return Err(TokenizerError::Invalid(format!("GGUF merge {m:?} has no space")));
        };
        let joined = format!("{a}{b}");
        if let (Some(&l), Some(&r), Some(&j)) = (index.get(a), index.get(b), index.get(joined.as_str())) {
            merges.insert(l, r, rank as u32, j);
        }
    }
    Ok(merges)
}
