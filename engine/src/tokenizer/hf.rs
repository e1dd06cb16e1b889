//! Loading a Hugging Face `tokenizer.json` (byte-level BPE models) plus the
//! `tokenizer_config.json` / `generation_config.json` next to it.

use super::pretok::{Behavior, PreTokenizer, Rule, GPT2};
use super::special::SpecialToken;
use super::{
    bpe, bytelevel, CharBpe, Metaspace, Model, Normalizer, Parts, Prepend, TokenInfo, TokenKind, TokenizerError,
};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

pub(super) fn read_json(path: &Path) -> Result<Value, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io { path: path.to_owned(), source })?;
    serde_json::from_str(&text).map_err(|source| TokenizerError::Json { path: path.to_owned(), source })
}

/// A JSON file next to `path`, if it exists and parses.
fn sibling_json(path: &Path, name: &str) -> Result<Option<Value>, TokenizerError> {
    let p = path.with_file_name(name);
    if p.is_file() {
        read_json(&p).map(Some)
    } else {
        Ok(None)
    }
}

/// A text file next to `path` (newer HF folders keep the template in chat_template.jinja).
pub(super) fn sibling_text(path: &Path, name: &str) -> Result<Option<String>, TokenizerError> {
    let p = path.with_file_name(name);
    if !p.is_file() {
        return Ok(None);
    }
    std::fs::read_to_string(&p).map(Some).map_err(|source| TokenizerError::Io { path: p, source })
}

pub(super) fn load(path: &Path) -> Result<Parts, TokenizerError> {
    let root = read_json(path)?;
    let model = bpe_model(&root, path)?;
    let mut metaspace = None;
    let (pretok, byte_level) = parse_pretok(root.get("pre_tokenizer").unwrap_or(&Value::Null), &mut metaspace)?;
    let flag = |k: &str| model.get(k).and_then(Value::as_bool).unwrap_or(false);
    let byte_fallback = flag("byte_fallback");
    if !byte_level && !byte_fallback && metaspace.is_none() {
        return Err(TokenizerError::Unsupported(format!(
            "{}: BPE that is neither byte-level nor SentencePiece-style (no ByteLevel, \
             Metaspace or byte_fallback); use the model's GGUF file instead",
            path.display()
        )));
    }
    let vocab = parse_vocab(model)?;
    let added = parse_added(&root)?;
    let space_char = (!byte_level).then(|| metaspace.as_ref().map_or('\u{2581}', |m: &Metaspace| m.replacement));
    let mut tokens = build_tokens(&vocab, &added, space_char)?;
    mark_kinds(&mut tokens, &added);
    let merges = parse_merges(model, &vocab)?;
    let ignore_merges = flag("ignore_merges");
    let model_kind = if byte_level {
        Model::ByteBpe { merges, ignore_merges }
    } else {
        Model::CharBpe(CharBpe { merges, ignore_merges, byte_fallback, fuse_unk: flag("fuse_unk"), metaspace })
    };
    let unk = model.get("unk_token").and_then(Value::as_str).and_then(|u| vocab.get(u).copied());
    let cfg = folder_config(path, &root, &added, &vocab)?;
    Ok(Parts {
        tokens,
        model: model_kind,
        normalizer: Normalizer::from_json(root.get("normalizer").unwrap_or(&Value::Null))?,
        pretok,
        specials: added,
        bos: cfg.bos,
        eos: cfg.eos,
        extra_eos: cfg.extra_eos,
        unk,
        add_bos: cfg.add_bos,
        add_eos: cfg.add_eos,
        chat_template: cfg.chat_template,
        strip_leading_space: !byte_level && decoder_strips_space(root.get("decoder")),
    })
}

/// The `model` object, checked to be a BPE this loader handles.
fn bpe_model<'a>(root: &'a Value, path: &Path) -> Result<&'a Value, TokenizerError> {
    let model = root.get("model").ok_or_else(|| TokenizerError::Missing(format!("\"model\" in {}", path.display())))?;
    let kind = model.get("type").and_then(Value::as_str).unwrap_or("BPE");
    if kind != "BPE" {
        return Err(TokenizerError::Unsupported(format!(
            "{}: model type {kind:?} (only BPE tokenizer.json files are supported)",
            path.display()
        )));
    }
    for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if model.get(key).is_some_and(|v| !v.is_null()) {
            return Err(TokenizerError::Unsupported(format!("{}: BPE with {key}", path.display())));
        }
    }
    Ok(model)
}

/// What the files next to tokenizer.json say about BOS/EOS and the chat template.
struct FolderConfig {
    bos: Option<u32>,
    eos: Option<u32>,
    extra_eos: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
}

fn folder_config(
    path: &Path,
    root: &Value,
    added: &[SpecialToken],
    vocab: &HashMap<String, u32>,
) -> Result<FolderConfig, TokenizerError> {
    let cfg = sibling_json(path, "tokenizer_config.json")?.unwrap_or(Value::Null);
    let gen = sibling_json(path, "generation_config.json")?.unwrap_or(Value::Null);
    let lookup = |name: &str| -> Option<u32> {
        let text = special_text(cfg.get(name)?)?;
        added.iter().find(|a| a.text == text).map(|a| a.id).or_else(|| vocab.get(text).copied())
    };
    // Without tokenizer_config.json, the post-processor tells whether BOS/EOS are added.
    let (post_bos, post_eos) = post_processor_specials(root.get("post_processor"), added, vocab);
    let chat_template = match chat_template(&cfg) {
        Some(t) => Some(t),
        None => sibling_text(path, "chat_template.jinja")?,
    };
    Ok(FolderConfig {
        bos: lookup("bos_token").or(post_bos),
        eos: lookup("eos_token"),
        extra_eos: id_list(gen.get("eos_token_id")),
        add_bos: cfg.get("add_bos_token").and_then(Value::as_bool).unwrap_or(post_bos.is_some()),
        add_eos: cfg.get("add_eos_token").and_then(Value::as_bool).unwrap_or(post_eos.is_some()),
        chat_template,
    })
}

/// Split rules, and whether a ByteLevel step is present; a Metaspace step is stored in
/// `metaspace` (it runs before the split rules).
fn parse_pretok(v: &Value, metaspace: &mut Option<Metaspace>) -> Result<(PreTokenizer, bool), TokenizerError> {
    let mut p = PreTokenizer::default();
    let mut byte_level = false;
    push_pretok(v, &mut p, &mut byte_level, metaspace)?;
    Ok((p, byte_level))
}

fn push_pretok(
    v: &Value,
    p: &mut PreTokenizer,
    byte_level: &mut bool,
    metaspace: &mut Option<Metaspace>,
) -> Result<(), TokenizerError> {
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "" if v.is_null() => {}
        "Sequence" => {
            for s in v.get("pretokenizers").and_then(Value::as_array).into_iter().flatten() {
                push_pretok(s, p, byte_level, metaspace)?;
            }
        }
        "Split" => {
            let pattern = if let Some(re) = v.pointer("/pattern/Regex").and_then(Value::as_str) {
                re.to_owned()
            } else if let Some(s) = v.pointer("/pattern/String").and_then(Value::as_str) {
                fancy_regex::escape(s).into_owned()
            } else {
                return Err(TokenizerError::Invalid("Split pre-tokenizer without a pattern".into()));
            };
            let behavior = Behavior::parse(v.get("behavior").and_then(Value::as_str).unwrap_or("Isolated"))?;
            let invert = v.get("invert").and_then(Value::as_bool).unwrap_or(false);
            p.push(Rule::new(&pattern, behavior, invert)?);
        }
        "ByteLevel" => {
            if v.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(false) {
                return Err(TokenizerError::Unsupported("ByteLevel pre-tokenizer with add_prefix_space".into()));
            }
            if v.get("use_regex").and_then(Value::as_bool).unwrap_or(true) {
                p.push(Rule::isolated(GPT2)?);
            }
            *byte_level = true;
        }
        "Metaspace" => *metaspace = Some(parse_metaspace(v)?),
        "Digits" => {
            let single = v.get("individual_digits").and_then(Value::as_bool).unwrap_or(false);
            p.push(Rule::isolated(if single { r"\p{N}" } else { r"\p{N}+" })?);
        }
        other => return Err(TokenizerError::Unsupported(format!("pre-tokenizer {other:?} in tokenizer.json"))),
    }
    Ok(())
}

fn parse_metaspace(v: &Value) -> Result<Metaspace, TokenizerError> {
    let replacement = v.get("replacement").and_then(Value::as_str).and_then(|s| s.chars().next()).unwrap_or('\u{2581}');
    let prepend = match v.get("prepend_scheme").and_then(Value::as_str) {
        Some("always") => Prepend::Always,
        Some("first") => Prepend::First,
        Some("never") => Prepend::Never,
        Some(other) => return Err(TokenizerError::Unsupported(format!("Metaspace prepend_scheme {other:?}"))),
        // Older files: add_prefix_space (default true) means "always".
        None if v.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(true) => Prepend::Always,
        None => Prepend::Never,
    };
    let split = v.get("split").and_then(Value::as_bool).unwrap_or(true);
    Ok(Metaspace { replacement, prepend, split })
}

/// True when the decoder drops the dummy leading space (`Strip` of a leading " ", or a
/// `Metaspace` decoder that prepends one).
fn decoder_strips_space(v: Option<&Value>) -> bool {
    let Some(v) = v else { return false };
    match v.get("type").and_then(Value::as_str) {
        Some("Sequence") => {
            v.get("decoders").and_then(Value::as_array).into_iter().flatten().any(|d| decoder_strips_space(Some(d)))
        }
        Some("Strip") => {
            v.get("content").and_then(Value::as_str) == Some(" ")
                && v.get("start").and_then(Value::as_u64).unwrap_or(0) > 0
        }
        Some("Metaspace") => match v.get("prepend_scheme").and_then(Value::as_str) {
            Some(scheme) => scheme != "never",
            None => v.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(true),
        },
        _ => false,
    }
}

fn parse_vocab(model: &Value) -> Result<HashMap<String, u32>, TokenizerError> {
    let obj = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| TokenizerError::Missing("model.vocab in tokenizer.json".into()))?;
    obj.iter()
        .map(|(k, v)| {
            let id = v
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| TokenizerError::Invalid(format!("vocab entry {k:?} has id {v}, not a small integer")))?;
            Ok((k.clone(), id))
        })
        .collect()
}

fn parse_added(root: &Value) -> Result<Vec<SpecialToken>, TokenizerError> {
    let mut out = Vec::new();
    for a in root.get("added_tokens").and_then(Value::as_array).into_iter().flatten() {
        let id = a.get("id").and_then(Value::as_u64).and_then(|i| u32::try_from(i).ok());
        let text = a.get("content").and_then(Value::as_str);
        let (Some(id), Some(text)) = (id, text) else {
            return Err(TokenizerError::Invalid(format!("added token without id/content: {a}")));
        };
        let flag = |k: &str| a.get(k).and_then(Value::as_bool).unwrap_or(false);
        out.push(SpecialToken {
            id,
            text: text.to_owned(),
            always: !flag("special"),
            lstrip: flag("lstrip"),
            rstrip: flag("rstrip"),
            single_word: flag("single_word"),
        });
    }
    Ok(out)
}

/// The id-indexed token table; ids no entry names become empty unused slots.
/// `space_char`: `None` for byte-level vocabularies, else the char that stands for a space
/// (SentencePiece-style vocabularies, with `<0xXX>` byte tokens).
fn build_tokens(
    vocab: &HashMap<String, u32>,
    added: &[SpecialToken],
    space_char: Option<char>,
) -> Result<Vec<TokenInfo>, TokenizerError> {
    let max = vocab.values().chain(added.iter().map(|a| &a.id)).copied().max().unwrap_or(0);
    if max >= 16_000_000 {
        return Err(TokenizerError::Invalid(format!("token id {max} is implausibly large")));
    }
    let empty = TokenInfo { text: String::new(), bytes: Vec::new(), kind: TokenKind::Unused, score: 0.0 };
    let mut tokens = vec![empty; max as usize + 1];
    for (text, &id) in vocab {
        tokens[id as usize] = vocab_token(text, space_char);
    }
    for a in added {
        // Added tokens decode to their text (for byte-level files, through the same
        // alphabet mapping the HF ByteLevel decoder applies to every token).
        let bytes = match space_char {
            None => bytelevel::decode(&a.text).unwrap_or_else(|| a.text.as_bytes().to_vec()),
            Some(_) => a.text.as_bytes().to_vec(),
        };
        tokens[a.id as usize] = TokenInfo { text: a.text.clone(), bytes, kind: TokenKind::Normal, score: 0.0 };
    }
    Ok(tokens)
}

fn vocab_token(text: &str, space_char: Option<char>) -> TokenInfo {
    let (bytes, kind) = match space_char {
        // Like the HF ByteLevel decoder: text outside the byte alphabet is taken as is.
        None => (bytelevel::decode(text).unwrap_or_else(|| text.as_bytes().to_vec()), TokenKind::Normal),
        Some(sp) => match super::byte_token_value(text) {
            Some(b) => (vec![b], TokenKind::Byte),
            None => (text.replace(sp, " ").into_bytes(), TokenKind::Normal),
        },
    };
    TokenInfo { text: text.to_owned(), bytes, kind, score: 0.0 }
}

fn mark_kinds(tokens: &mut [TokenInfo], added: &[SpecialToken]) {
    for a in added {
        if let Some(t) = tokens.get_mut(a.id as usize) {
            t.kind = if a.always { TokenKind::UserDefined } else { TokenKind::Control };
        }
    }
}

fn parse_merges(model: &Value, vocab: &HashMap<String, u32>) -> Result<bpe::Merges, TokenizerError> {
    let mut merges = bpe::Merges::default();
    let list = model.get("merges").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
    for (rank, m) in list.iter().enumerate() {
        let (a, b) = match m {
            Value::String(s) => s.split_once(' ').ok_or_else(|| bad_merge(m))?,
            Value::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                (Some(a), Some(b)) => (a, b),
                _ => return Err(bad_merge(m)),
            },
            _ => return Err(bad_merge(m)),
        };
        let (Some(&l), Some(&r), Some(&merged)) = (vocab.get(a), vocab.get(b), vocab.get(&format!("{a}{b}"))) else {
            // A merge naming tokens outside the vocabulary can never fire; skip it.
            continue;
        };
        merges.insert(l, r, rank as u32, merged);
    }
    Ok(merges)
}

fn bad_merge(m: &Value) -> TokenizerError {
    TokenizerError::Invalid(format!("merge {m} is neither \"a b\" nor [\"a\", \"b\"]"))
}

/// `"<s>"` or `{"content": "<s>", ...}`.
fn special_text(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| v.get("content").and_then(Value::as_str))
}

/// BOS / EOS that a `TemplateProcessing` post-processor wraps single sequences in.
fn post_processor_specials(
    v: Option<&Value>,
    added: &[SpecialToken],
    vocab: &HashMap<String, u32>,
) -> (Option<u32>, Option<u32>) {
    let Some(v) = v else { return (None, None) };
    if v.get("type").and_then(Value::as_str) == Some("Sequence") {
        let mut found = (None, None);
        for p in v.get("processors").and_then(Value::as_array).into_iter().flatten() {
            let (b, e) = post_processor_specials(Some(p), added, vocab);
            found = (found.0.or(b), found.1.or(e));
        }
        return found;
    }
    let Some(single) = v.get("single").and_then(Value::as_array) else { return (None, None) };
    let id_of = |item: &Value| -> Option<u32> {
        let name = item.pointer("/SpecialToken/id").and_then(Value::as_str)?;
        added.iter().find(|a| a.text == name).map(|a| a.id).or_else(|| vocab.get(name).copied())
    };
    let bos = single.first().and_then(id_of);
    let eos = if single.len() > 1 { single.last().and_then(id_of) } else { None };
    (bos, eos)
}

/// `chat_template` as a string, or the "default" entry of a named list.
fn chat_template(cfg: &Value) -> Option<String> {
    match cfg.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => {
            let named = |n: &str| {
                list.iter()
                    .find(|e| e.get("name").and_then(Value::as_str) == Some(n))
                    .and_then(|e| e.get("template").and_then(Value::as_str))
            };
            named("default").or_else(|| list.first().and_then(|e| e.get("template")?.as_str())).map(str::to_owned)
        }
        _ => None,
    }
}

/// `5` or `[5, 7]`.
fn id_list(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).filter_map(|x| u32::try_from(x).ok()).collect(),
        Some(x) => x.as_u64().and_then(|x| u32::try_from(x).ok()).into_iter().collect(),
        None => Vec::new(),
    }
}
