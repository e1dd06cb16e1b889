//! Loading a tiktoken-format vocabulary (`tiktoken.model`: one `base64(token bytes) rank`
//! per line), as Kimi-K2's Hugging Face folder ships instead of a tokenizer.json.
//! Special tokens come from `tokenizer_config.json` (`added_tokens_decoder`), and the ids
//! reserved after the base vocabulary are named `<|reserved_token_{id}|>`.

use super::pretok::{PreTokenizer, Rule, KIMI_K2};
use super::special::SpecialToken;
use super::{bpe, bytelevel, Model, Normalizer, Parts, TokenInfo, TokenKind, TokenizerError};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// Special-token ids reserved after the base vocabulary (Kimi-K2 reserves 256).
const RESERVED_SPECIALS: u32 = 256;

/// Decodes standard base64 (with or without `=` padding); `None` on any other byte.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

/// (token bytes, rank) per line.
fn parse_ranks(text: &str, path: &Path) -> Result<Vec<(Vec<u8>, u32)>, TokenizerError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = || TokenizerError::Invalid(format!("{} line {}: expected `base64 rank`", path.display(), n + 1));
        let (b64, rank) = line.trim().split_once(' ').ok_or_else(bad)?;
        let bytes = base64_decode(b64).ok_or_else(bad)?;
        let rank: u32 = rank.trim().parse().map_err(|_| bad())?;
        out.push((bytes, rank));
    }
    Ok(out)
}

/// Loads `tiktoken.model` with pre-tokenizer regex `pattern` (Kimi-K2's when `None`).
pub(super) fn load(path: &Path, pattern: Option<&str>) -> Result<Parts, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io { path: path.to_owned(), source })?;
    let ranks = parse_ranks(&text, path)?;
    let n_base = ranks.iter().map(|r| r.1).max().map_or(0, |m| m + 1);
    if n_base > 16_000_000 {
        return Err(TokenizerError::Invalid(format!("{}: rank {n_base} is implausibly large", path.display())));
    }
    let cfg_path = path.with_file_name("tokenizer_config.json");
    let cfg = if cfg_path.is_file() { super::hf::read_json(&cfg_path)? } else { Value::Null };
    let named = added_tokens(&cfg);
    let max_named = named.keys().map(|&i| i.saturating_add(1)).max().unwrap_or(0);
    let n = n_base.saturating_add(RESERVED_SPECIALS.max(max_named.saturating_sub(n_base)));
    if n > 16_000_000 {
        let p = cfg_path.display();
        return Err(TokenizerError::Invalid(format!("{p}: special token id {max_named} is implausibly large")));
    }
    let mut tokens =
        vec![TokenInfo { text: String::new(), bytes: Vec::new(), kind: TokenKind::Unused, score: 0.0 }; n as usize];
    for (bytes, rank) in &ranks {
        tokens[*rank as usize] =
            TokenInfo { text: bytelevel::encode(bytes), bytes: bytes.clone(), kind: TokenKind::Normal, score: 0.0 };
    }
    // Ids without a rank: named added tokens, else reserved placeholders after the base.
    let mut specials = Vec::new();
    for id in 0..n {
        if tokens[id as usize].kind != TokenKind::Unused {
            continue;
        }
        let (text, special) = match named.get(&id) {
            Some(t) => t.clone(),
            None if id >= n_base => (format!("<|reserved_token_{id}|>"), true),
            None => continue,
        };
        let kind = if special { TokenKind::Control } else { TokenKind::UserDefined };
        tokens[id as usize] = TokenInfo { bytes: text.as_bytes().to_vec(), text: text.clone(), kind, score: 0.0 };
        specials.push(SpecialToken { id, text, always: !special, lstrip: false, rstrip: false, single_word: false });
    }
    let merges = rank_merges(&tokens);
    let lookup = |key: &str| -> Option<u32> {
        let t = cfg.get(key).and_then(|v| v.as_str().or_else(|| v.get("content")?.as_str()))?;
        specials.iter().find(|s| s.text == t).map(|s| s.id)
    };
    let (bos, eos) = (lookup("bos_token"), lookup("eos_token"));
    let chat_template = cfg.get("chat_template").and_then(Value::as_str).map(str::to_owned);
    let chat_template = match chat_template {
        Some(t) => Some(t),
        None => super::hf::sibling_text(path, "chat_template.jinja")?,
    };
    Ok(Parts {
        tokens,
        // tiktoken maps a whole pre-token that is itself a token directly.
        model: Model::ByteBpe { merges, ignore_merges: true },
        normalizer: Normalizer::default(),
        pretok: PreTokenizer::new(vec![Rule::isolated(pattern.unwrap_or(KIMI_K2))?]),
        specials,
        bos,
        eos,
        extra_eos: Vec::new(),
        unk: None,
        add_bos: cfg.get("add_bos_token").and_then(Value::as_bool).unwrap_or(false),
        add_eos: cfg.get("add_eos_token").and_then(Value::as_bool).unwrap_or(false),
        chat_template,
        strip_leading_space: false,
    })
}

/// `added_tokens_decoder`: id → (content, special).
fn added_tokens(cfg: &Value) -> HashMap<u32, (String, bool)> {
    let mut out = HashMap::new();
    for (id, v) in cfg.get("added_tokens_decoder").and_then(Value::as_object).into_iter().flatten() {
        let (Ok(id), Some(content)) = (id.parse::<u32>(), v.get("content").and_then(Value::as_str)) else { continue };
        let special = v.get("special").and_then(Value::as_bool).unwrap_or(true);
        out.insert(id, (content.to_owned(), special));
    }
    out
}

/// tiktoken's rule as a merge table: two adjacent pieces merge when their concatenation
/// is a token, lowest rank (= id) first. Every split of every token into two tokens is
/// such a pair.
fn rank_merges(tokens: &[TokenInfo]) -> bpe::Merges {
    let by_bytes: HashMap<&[u8], u32> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.bytes.is_empty())
        .map(|(i, t)| (t.bytes.as_slice(), i as u32))
        .collect();
    let mut merges = bpe::Merges::default();
    for (id, t) in tokens.iter().enumerate() {
        for k in 1..t.bytes.len() {
            let (a, b) = t.bytes.split_at(k);
            if let (Some(&l), Some(&r)) = (by_bytes.get(a), by_bytes.get(b)) {
                merges.insert(l, r, id as u32, id as u32);
            }
        }
    }
    merges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_values() {
        assert_eq!(base64_decode("IQ==").unwrap(), b"!");
        assert_eq!(base64_decode("IGhl").unwrap(), b" he");
        assert_eq!(base64_decode("5L2g").unwrap(), "你".as_bytes());
        assert_eq!(base64_decode("aGk").unwrap(), b"hi");
        assert!(base64_decode("a$==").is_none());
        assert!(base64_decode("a").is_none());
    }
}
