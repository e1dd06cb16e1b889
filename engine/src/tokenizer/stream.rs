//! Incremental detokenization: tokens arrive one at a time, text leaves only as complete
//! UTF-8 characters. A character split across byte tokens (`<0xE4>` `<0xBD>` `<0xA0>`, or
//! byte-level BPE pieces of an emoji) is held back until its last byte arrives.

use super::Tokenizer;

/// Push token ids, get text; call [`StreamDecoder::flush`] at the end of the stream.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
    skip_special: bool,
    /// Still at the start of the text (the SentencePiece dummy space is dropped there).
    at_start: bool,
}

impl<'a> StreamDecoder<'a> {
    /// `skip_special`: leave control tokens (EOS, turn markers) out of the text, as
    /// [`Tokenizer::decode_skip_special`] does.
    pub fn new(tok: &'a Tokenizer, skip_special: bool) -> StreamDecoder<'a> {
        StreamDecoder { tok, pending: Vec::new(), skip_special, at_start: true }
    }

    /// Adds one token; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        if !(self.skip_special && self.tok.is_control(id)) {
            self.pending.extend_from_slice(self.tok.token_bytes(id));
        }
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix up to `valid` is valid UTF-8, so this copies it unchanged.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // Incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            break;
                        }
                        // Bytes that can never become a character: replace, go on.
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
        self.strip_start(out)
    }

    /// Ends the stream: bytes of a character that never completed become U+FFFD.
    pub fn flush(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        self.strip_start(rest)
    }

    fn strip_start(&mut self, s: String) -> String {
        if !self.at_start || s.is_empty() {
            return s;
        }
        self.at_start = false;
        match (self.tok.strip_leading_space, s.strip_prefix(' ')) {
            (true, Some(rest)) => rest.to_owned(),
            _ => s,
        }
    }
}
