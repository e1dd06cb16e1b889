//! [`TextCodec`] for the engine's real [`Tokenizer`], plus the choice of chat template.

use super::generate::{ChatMessage, TextCodec, TextDecoder, Utf8Decoder};
use crate::tokenizer::{self, Tokenizer};
use std::sync::Arc;

/// Where the chat template came from (reported at start-up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateSource {
    /// Given by the user (a built-in name or a Jinja file).
    User(String),
    /// The model's own `chat_template`.
    Model,
    /// A built-in matched to the vocabulary's turn markers.
    Builtin(&'static str),
    /// Nothing matched; the generic ChatML layout is used.
    Fallback,
}

pub struct TokenizerCodec {
    tok: Arc<Tokenizer>,
    /// Jinja source or a built-in template name (see `tokenizer::render_chat`).
    template: String,
    source: TemplateSource,
}

impl TokenizerCodec {
    /// `template`: a built-in name or Jinja source chosen by the user; otherwise the model's
    /// own template, then a built-in matching its vocabulary, then `chatml`.
    pub fn new(tok: Arc<Tokenizer>, template: Option<(String, String)>) -> TokenizerCodec {
        let (template, source) = match template {
            Some((label, source)) => (source, TemplateSource::User(label)),
            None => match (tok.chat_template(), tok.builtin_template_name()) {
                (Some(t), _) => (t.to_string(), TemplateSource::Model),
                (None, Some(name)) => (name.to_string(), TemplateSource::Builtin(name)),
                (None, None) => ("chatml".to_string(), TemplateSource::Fallback),
            },
        };
        TokenizerCodec { tok, template, source }
    }

    pub fn template_source(&self) -> &TemplateSource {
        &self.source
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tok
    }
}

impl TextCodec for TokenizerCodec {
    fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        self.tok.encode(text, parse_special)
    }

    fn bos_id(&self) -> Option<u32> {
        self.tok.bos_id()
    }

    fn add_bos(&self) -> bool {
        self.tok.add_bos()
    }

    fn eos_ids(&self) -> Vec<u32> {
        self.tok.eos_ids().to_vec()
    }

    /// Control tokens (turn markers) are left out of generated text. No leading space is
    /// stripped: a completion continues its prompt, so " world" after "Hello" keeps its space.
    fn decoder(&self) -> Box<dyn TextDecoder> {
        let tok = self.tok.clone();
        Box::new(Utf8Decoder::new(move |id| if tok.is_control(id) { Vec::new() } else { tok.token_bytes(id).to_vec() }))
    }

    fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.tok.token_bytes(id)).into_owned()
    }

    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.tok.token_bytes(id).to_vec()
    }

    fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, String> {
        let msgs: Vec<tokenizer::ChatMessage> =
            messages.iter().map(|m| tokenizer::ChatMessage::new(m.role.clone(), m.content.clone())).collect();
        tokenizer::render_chat(&self.template, &msgs, true, self.tok.bos_text(), self.tok.eos_text())
            .map_err(|e| e.to_string())
    }

    /// Templates that write `{{ bos_token }}` themselves must not get a second BOS.
    fn encode_prompt(&self, text: &str) -> Vec<u32> {
        let bos_text = self.tok.bos_text();
        let mut ids = Vec::new();
        if self.tok.add_bos() && (bos_text.is_empty() || !text.starts_with(bos_text)) {
            ids.extend(self.tok.bos_id());
        }
        ids.extend(self.tok.encode(text, true));
        ids
    }
}
