//! Tokenizers and chat templates.
//!
//! One [`Tokenizer`] type covers the families the engine serves:
//! - byte-level BPE: GGUF `tokenizer.ggml.model = gpt2` (pre-tokenizer regexes chosen by
//!   `tokenizer.ggml.pre`), HF `tokenizer.json` with a `ByteLevel` pre-tokenizer, and
//!   `tiktoken.model` (Kimi-K2): DeepSeek, Qwen, Llama 3, Kimi vocabularies;
//! - SentencePiece-style score merging with byte fallback (GGUF `llama`): Gemma;
//! - BPE over characters with byte fallback (SentencePiece-derived `tokenizer.json`).
//!
//! Loaders: [`Tokenizer::from_gguf`], [`Tokenizer::from_tokenizer_json`],
//! [`Tokenizer::from_tiktoken`], [`Tokenizer::from_hf_dir`] (picks one of the last two).
//!
//! Encoding never adds BOS/EOS; callers add BOS when [`Tokenizer::add_bos`] says so (or
//! use [`Tokenizer::encode_prompt`]). Decoding is lossless at the byte level
//! ([`Tokenizer::token_bytes`]); [`StreamDecoder`] turns a token stream into text without
//! ever emitting half a UTF-8 character. Chat templates: [`render_chat`].

mod bpe;
mod bytelevel;
mod chat;
mod gguf_vocab;
mod hf;
mod normalize;
mod pretok;
mod special;
mod spm;
mod stream;
mod tiktoken;

pub use chat::{builtin_template_names, render_chat, render_chat_with, ChatMessage};
pub use stream::StreamDecoder;

use normalize::Normalizer;
use pretok::PreTokenizer;
use special::{Fragment, SpecialMatcher};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why a tokenizer could not be built or a template not rendered.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("tokenizer metadata is missing {0}")]
    Missing(String),
    #[error("unsupported tokenizer feature: {0}")]
    Unsupported(String),
    #[error("invalid tokenizer data: {0}")]
    Invalid(String),
    #[error("chat template: {0}")]
    Template(String),
}

/// What a vocabulary entry is (GGUF `tokenizer.ggml.token_type` numbering 1..=6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Normal,
    Unknown,
    /// BOS, EOS, turn markers: matched in text only when asked, skipped by
    /// [`Tokenizer::decode_skip_special`].
    Control,
    /// Added tokens that are always matched as whole tokens and decode to their text.
    UserDefined,
    Unused,
    /// `<0xXX>` byte-fallback tokens.
    Byte,
}

impl TokenKind {
    fn from_gguf(t: i64) -> TokenKind {
        match t {
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => TokenKind::Normal,
        }
    }
}

#[derive(Debug, Clone)]
struct TokenInfo {
    text: String,
    /// What the token stands for in the output text.
    bytes: Vec<u8>,
    kind: TokenKind,
    score: f32,
}

#[derive(Debug)]
enum Model {
    /// Byte-level BPE: each input byte starts as the token of its alphabet char.
    ByteBpe { merges: bpe::Merges, ignore_merges: bool },
    /// SentencePiece-style score merging over characters, with byte fallback.
    Spm { add_space_prefix: bool },
    /// BPE over characters with `<0xXX>` byte fallback (SentencePiece-derived
    /// tokenizer.json files: Llama 2, Mistral, Gemma HF folders).
    CharBpe(CharBpe),
}

/// Where the Metaspace step puts its `▁` in front of a text fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prepend {
    Always,
    /// Only in front of the fragment that starts the input.
    First,
    Never,
}

/// HF `Metaspace`: spaces become `▁`, one `▁` is prepended, optionally split per word.
#[derive(Debug, Clone)]
struct Metaspace {
    replacement: char,
    prepend: Prepend,
    split: bool,
}

#[derive(Debug)]
struct CharBpe {
    merges: bpe::Merges,
    ignore_merges: bool,
    byte_fallback: bool,
    /// Consecutive unknown characters become one unknown token.
    fuse_unk: bool,
    metaspace: Option<Metaspace>,
}

/// Words cached per tokenizer; beyond this many the cache starts over (bounded memory).
const CACHE_LIMIT: usize = 200_000;
/// Words longer than this (bytes) are not cached.
const CACHE_MAX_WORD: usize = 128;

/// A tokenizer loaded from GGUF metadata or from `tokenizer.json`.
pub struct Tokenizer {
    tokens: Vec<TokenInfo>,
    token_to_id: HashMap<String, u32>,
    scores: Vec<f32>,
    model: Model,
    normalizer: Normalizer,
    pretok: PreTokenizer,
    specials: SpecialMatcher,
    /// Byte-level BPE: the token of each byte's alphabet char; SPM: the `<0xXX>` token.
    byte_ids: [Option<u32>; 256],
    bos: Option<u32>,
    eos: Option<u32>,
    eos_ids: Vec<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    /// Decoding drops one leading space (the SentencePiece dummy prefix).
    strip_leading_space: bool,
    chat_template: Option<String>,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

/// Texts of end-of-turn / end-of-generation tokens across model families (generation
/// stops on any of them, as reference runtimes do).
const END_OF_TURN_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<end_of_utterance>",
    "<|return|>",
    "<|call|>",
    "<｜end▁of▁sentence｜>",
    "</s>",
];

/// Everything a loader collects; [`Tokenizer::build`] checks it and derives the rest.
struct Parts {
    tokens: Vec<TokenInfo>,
    model: Model,
    normalizer: Normalizer,
    pretok: PreTokenizer,
    specials: Vec<special::SpecialToken>,
    bos: Option<u32>,
    eos: Option<u32>,
    extra_eos: Vec<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
    /// Decoding drops one leading space (a SentencePiece dummy prefix).
    strip_leading_space: bool,
}

impl Tokenizer {
    /// Loads `tokenizer.json`, plus `tokenizer_config.json` (BOS/EOS, `add_bos_token`,
    /// chat template) and `generation_config.json` (extra EOS ids) from the same folder
    /// when present.
    pub fn from_tokenizer_json(path: &Path) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::build(hf::load(path)?)
    }

    /// Loads a tiktoken-format vocabulary (`tiktoken.model`, as Kimi-K2 ships it) with
    /// `tokenizer_config.json` next to it. `pattern` is the pre-tokenizer regex; `None`
    /// means Kimi-K2's.
    pub fn from_tiktoken(path: &Path, pattern: Option<&str>) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::build(tiktoken::load(path, pattern)?)
    }

    /// The tokenizer of a Hugging Face model folder: `tokenizer.json`, or else
    /// `tiktoken.model` (Kimi-K2).
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let json = dir.join("tokenizer.json");
        let tiktoken = dir.join("tiktoken.model");
        if !json.is_file() && tiktoken.is_file() {
            return Tokenizer::from_tiktoken(&tiktoken, None);
        }
        Tokenizer::from_tokenizer_json(&json)
    }

    /// Builds the tokenizer described by a GGUF file's `tokenizer.*` metadata.
    pub fn from_gguf(file: &crate::formats::gguf::GgufFile) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::build(gguf_vocab::load(file)?)
    }

    fn build(mut p: Parts) -> Result<Tokenizer, TokenizerError> {
        let n = p.tokens.len();
        let check = |what: &str, id: Option<u32>| match id {
            Some(i) if i as usize >= n => {
                Err(TokenizerError::Invalid(format!("{what} id {i} is outside the vocabulary of {n} tokens")))
            }
            _ => Ok(()),
        };
        check("BOS", p.bos)?;
        check("EOS", p.eos)?;
        check("unknown-token", p.unk)?;
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, t) in p.tokens.iter().enumerate() {
            // The first id of a duplicated text wins, like the reference loaders.
            token_to_id.entry(t.text.clone()).or_insert(i as u32);
        }
        let byte_ids = byte_token_ids(&p.model, &token_to_id);
        let eos_ids = collect_eos(&p, &token_to_id);
        // End-of-generation tokens are control tokens whatever the file says (Gemma's
        // `</s>` is user-defined there): not matched in plain text, skipped in output.
        for &id in &eos_ids {
            p.tokens[id as usize].kind = TokenKind::Control;
        }
        for s in p.specials.iter_mut().filter(|s| eos_ids.contains(&s.id)) {
            s.always = false;
        }
        let strip_leading_space = p.strip_leading_space;
        let scores = p.tokens.iter().map(|t| t.score).collect();
        Ok(Tokenizer {
            scores,
            token_to_id,
            byte_ids,
            eos_ids,
            strip_leading_space,
            specials: SpecialMatcher::new(p.specials),
            tokens: p.tokens,
            model: p.model,
            normalizer: p.normalizer,
            pretok: p.pretok,
            bos: p.bos,
            eos: p.eos,
            unk: p.unk,
            add_bos: p.add_bos,
            add_eos: p.add_eos,
            chat_template: p.chat_template,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Token ids for `text`. With `parse_special`, control tokens written in the text
    /// (e.g. `<start_of_turn>`) become their ids; user-defined / non-special added tokens
    /// are always matched. Never adds BOS or EOS.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut prev_was_token = true;
        for frag in self.specials.split(text, parse_special) {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_was_token = true;
                }
                Fragment::Text(r) => {
                    let at_start = r.start == 0;
                    self.encode_text(&text[r], at_start, prev_was_token, &mut out);
                    prev_was_token = false;
                }
            }
        }
        out
    }

    /// A prompt ready for the model: BOS first when the model wants it (and the text
    /// did not already start with it), specials parsed, EOS appended when configured.
    pub fn encode_prompt(&self, text: &str) -> Vec<u32> {
        let ids = self.encode(text, true);
        let mut out = Vec::with_capacity(ids.len() + 2);
        if let (true, Some(bos)) = (self.add_bos, self.bos) {
            if ids.first() != Some(&bos) {
                out.push(bos);
            }
        }
        out.extend(ids);
        if let (true, Some(eos)) = (self.add_eos, self.eos) {
            out.push(eos);
        }
        out
    }

    fn encode_text(&self, text: &str, at_start: bool, after_token: bool, out: &mut Vec<u32>) {
        let text = self.normalizer.apply(text);
        match &self.model {
            Model::ByteBpe { merges, ignore_merges } => {
                for r in self.pretok.split(&text) {
                    self.encode_word(&text[r], merges, *ignore_merges, out);
                }
            }
            Model::Spm { add_space_prefix } => self.encode_spm(&text, *add_space_prefix && after_token, out),
            Model::CharBpe(m) => self.encode_char_bpe(&text, m, at_start, out),
        }
    }

    /// SentencePiece-style GGUF: spaces become `▁`; the dummy space goes in front of the
    /// text and after every control token when the vocabulary asks for it.
    fn encode_spm(&self, text: &str, dummy_prefix: bool, out: &mut Vec<u32>) {
        let prefix = if dummy_prefix { " " } else { "" };
        let escaped = format!("{prefix}{text}").replace(' ', "\u{2581}");
        let vocab = spm::SpmVocab {
            token_to_id: &self.token_to_id,
            scores: &self.scores,
            byte_ids: &self.byte_ids,
            unk: self.unk,
        };
        vocab.encode(&escaped, out);
    }

    /// SentencePiece-derived tokenizer.json: Metaspace (if any), split rules, then BPE per word.
    fn encode_char_bpe(&self, text: &str, m: &CharBpe, at_start: bool, out: &mut Vec<u32>) {
        let text = match &m.metaspace {
            Some(ms) => std::borrow::Cow::Owned(ms.apply(text, at_start)),
            None => std::borrow::Cow::Borrowed(text),
        };
        let words = match &m.metaspace {
            Some(ms) if ms.split => ms.split_words(&text),
            _ => std::iter::once(0..text.len()).collect(),
        };
        for w in words {
            for r in self.pretok.split(&text[w.clone()]) {
                let word = &text[w.start + r.start..w.start + r.end];
                self.cached(word, out, |t| t.char_bpe_word(word, m));
            }
        }
    }

    /// HF BPE over characters: known chars are symbols, unknown ones become their
    /// `<0xXX>` byte tokens (or the unknown token), then the merges run.
    fn char_bpe_word(&self, word: &str, m: &CharBpe) -> Vec<u32> {
        if m.ignore_merges {
            if let Some(&id) = self.token_to_id.get(word) {
                return vec![id];
            }
        }
        let mut start = Vec::with_capacity(word.len());
        let mut buf = [0u8; 4];
        let mut prev_unk = false;
        for c in word.chars() {
            if let Some(&id) = self.token_to_id.get(c.encode_utf8(&mut buf) as &str) {
                start.push(id);
                prev_unk = false;
                continue;
            }
            let bytes: Option<Vec<u32>> = c.encode_utf8(&mut buf).bytes().map(|b| self.byte_ids[b as usize]).collect();
            match (m.byte_fallback, bytes) {
                (true, Some(ids)) => {
                    start.extend(ids);
                    prev_unk = false;
                }
                _ => {
                    if let Some(unk) = self.unk {
                        if !(m.fuse_unk && prev_unk) {
                            start.push(unk);
                        }
                        prev_unk = true;
                    }
                }
            }
        }
        m.merges.apply(&start)
    }

    fn encode_word(&self, word: &str, merges: &bpe::Merges, ignore_merges: bool, out: &mut Vec<u32>) {
        self.cached(word, out, |t| t.bpe_word(word, merges, ignore_merges));
    }

    /// Appends the ids of `word`, computing them with `f` only when not cached.
    fn cached(&self, word: &str, out: &mut Vec<u32>, f: impl FnOnce(&Self) -> Vec<u32>) {
        // Long words are rare and would make the cache's memory unbounded in practice.
        if word.len() > CACHE_MAX_WORD {
            out.extend(f(self));
            return;
        }
        if let Some(ids) = self.cache.lock().ok().and_then(|c| c.get(word).cloned()) {
            out.extend(ids);
            return;
        }
        let ids = f(self);
        out.extend_from_slice(&ids);
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_LIMIT {
                c.clear();
            }
            c.insert(word.to_owned(), ids);
        }
    }

    fn bpe_word(&self, word: &str, merges: &bpe::Merges, ignore_merges: bool) -> Vec<u32> {
        if ignore_merges {
            // Llama 3: a whole word that is itself a token maps directly, even when the
            // merges would not build it.
            if let Some(&id) = self.token_to_id.get(&bytelevel::encode(word.as_bytes())) {
                return vec![id];
            }
        }
        // A byte without a token (never in real byte-level vocabularies) is dropped, as
        // the reference does when there is no unknown token.
        let start: Vec<u32> = word.bytes().filter_map(|b| self.byte_ids[b as usize]).collect();
        merges.apply(&start)
    }

    /// Text for `ids`, special tokens included (so `decode(encode(t, true)) == t`).
    /// Invalid UTF-8 (a sequence cut short) becomes U+FFFD; unknown ids are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_impl(ids, false)
    }

    /// Text for `ids` without control tokens (BOS, EOS, turn markers).
    pub fn decode_skip_special(&self, ids: &[u32]) -> String {
        self.decode_impl(ids, true)
    }

    fn decode_impl(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if !(skip_special && self.is_control(id)) {
                bytes.extend_from_slice(self.token_bytes(id));
            }
        }
        let s = String::from_utf8_lossy(&bytes).into_owned();
        match (self.strip_leading_space, s.strip_prefix(' ')) {
            (true, Some(rest)) => rest.to_owned(),
            _ => s,
        }
    }

    /// The bytes token `id` stands for (empty for an unknown id).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.tokens.get(id as usize).map_or(&[], |t| t.bytes.as_slice())
    }

    /// The token's vocabulary string (byte-level or `▁` form), if `id` exists.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|t| t.text.as_str())
    }

    pub fn token_kind(&self, id: u32) -> Option<TokenKind> {
        self.tokens.get(id as usize).map(|t| t.kind)
    }

    /// True for control tokens (BOS, EOS, turn markers).
    pub fn is_control(&self, id: u32) -> bool {
        self.token_kind(id) == Some(TokenKind::Control)
    }

    /// The id of a vocabulary string (byte-level/`▁` form, or a special token's text).
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The main EOS id (what a template's `eos_token` is).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Every id that ends generation: EOS, end-of-turn and end-of-message tokens.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    pub fn add_eos(&self) -> bool {
        self.add_eos && self.eos.is_some()
    }

    /// The model's own Jinja chat template, if it ships one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The name of the built-in template whose markers this vocabulary has, for models
    /// that ship no template (e.g. Gemma 3 270M GGUF → `"gemma"`).
    pub fn builtin_template_name(&self) -> Option<&'static str> {
        let has = |t: &str| self.token_to_id.contains_key(t);
        if has("<start_of_turn>") && has("<end_of_turn>") {
            Some("gemma")
        } else if has("<|start_header_id|>") && has("<|eot_id|>") {
            Some("llama3")
        } else if has("<｜User｜>") && has("<｜Assistant｜>") {
            Some("deepseek3")
        } else if has("<|im_start|>") && has("<|im_end|>") {
            Some("chatml")
        } else {
            None
        }
    }

    /// The template to render with: the model's own, else a matching built-in by name
    /// (pass the result to [`render_chat`]).
    pub fn chat_template_or_builtin(&self) -> Option<&str> {
        self.chat_template().or_else(|| self.builtin_template_name())
    }

    /// Text of the BOS / EOS tokens, as chat templates expect them.
    pub fn bos_text(&self) -> &str {
        self.bos.and_then(|i| self.token_text(i)).unwrap_or("")
    }

    pub fn eos_text(&self) -> &str {
        self.eos.and_then(|i| self.token_text(i)).unwrap_or("")
    }

    /// Renders `messages` with this model's template (or the matching built-in).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let tmpl = self.chat_template_or_builtin().ok_or_else(|| {
            TokenizerError::Template(
                "the model has no chat template and no built-in one matches its vocabulary; \
                 pass a template by name (gemma, chatml, llama3, deepseek3)"
                    .into(),
            )
        })?;
        render_chat(tmpl, messages, add_generation_prompt, self.bos_text(), self.eos_text())
    }
}

/// A summary: the full vocabulary would flood any log it is printed to.
impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.model {
            Model::ByteBpe { .. } => "byte-level BPE",
            Model::Spm { .. } => "SentencePiece-style",
            Model::CharBpe(_) => "BPE with byte fallback",
        };
        f.debug_struct("Tokenizer")
            .field("kind", &kind)
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// `<0xE4>` → 0xE4 (SentencePiece byte-fallback token text).
fn byte_token_value(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Per byte, the token that stands for it alone.
fn byte_token_ids(model: &Model, token_to_id: &HashMap<String, u32>) -> [Option<u32>; 256] {
    let mut ids = [None; 256];
    for (b, slot) in ids.iter_mut().enumerate() {
        let key = match model {
            Model::ByteBpe { .. } => bytelevel::byte_to_char(b as u8).to_string(),
            Model::Spm { .. } | Model::CharBpe(_) => format!("<0x{b:02X}>"),
        };
        *slot = token_to_id.get(&key).copied();
    }
    ids
}

fn collect_eos(p: &Parts, token_to_id: &HashMap<String, u32>) -> Vec<u32> {
    let mut ids: Vec<u32> = p.eos.into_iter().chain(p.extra_eos.iter().copied()).collect();
    for text in END_OF_TURN_TEXTS {
        if let Some(&id) = token_to_id.get(*text) {
            // Only real special tokens: a plain word that happens to look alike is text.
            let kind = p.tokens[id as usize].kind;
            if matches!(kind, TokenKind::Control | TokenKind::UserDefined) {
                ids.push(id);
            }
        }
    }
    let n = p.tokens.len() as u32;
    ids.retain(|&i| i < n);
    ids.sort_unstable();
    ids.dedup();
    ids
}

impl Metaspace {
    /// Spaces to the replacement char, plus the prepended one where the scheme wants it.
    fn apply(&self, text: &str, at_start: bool) -> String {
        let replaced: String = text.chars().map(|c| if c == ' ' { self.replacement } else { c }).collect();
        let prepend = match self.prepend {
            Prepend::Always => true,
            Prepend::First => at_start,
            Prepend::Never => false,
        };
        if prepend && !replaced.starts_with(self.replacement) {
            format!("{}{replaced}", self.replacement)
        } else {
            replaced
        }
    }

    /// Word ranges: each starts at a replacement char (HF splits with MergedWithNext).
    fn split_words(&self, text: &str) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, c) in text.char_indices() {
            if c == self.replacement && i > start {
                out.push(start..i);
                start = i;
            }
        }
        if start < text.len() {
            out.push(start..text.len());
        }
        out
    }
}
