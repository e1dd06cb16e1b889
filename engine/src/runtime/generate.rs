//! Generation pieces that do not depend on the model: what the runtime needs from a
//! tokenizer ([`TextCodec`]), incremental detokenization, stop strings, finish reasons and
//! the request/event types the scheduler exchanges with its callers.

use super::sampling::{SamplingParams, TokenLogprobs};

/// One chat message (role + plain text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// What the server and the scheduler need from a tokenizer. The real tokenizer implements it
/// in `runtime::codec`; tests implement it with a byte-level fake.
pub trait TextCodec: Send + Sync {
    /// Text → ids, without BOS (see [`TextCodec::add_bos`]).
    fn encode(&self, text: &str, parse_special: bool) -> Vec<u32>;
    fn bos_id(&self) -> Option<u32>;
    /// Whether prompts start with BOS.
    fn add_bos(&self) -> bool;
    /// Ids that end a generation (EOS, end-of-turn, ...).
    fn eos_ids(&self) -> Vec<u32>;
    /// A fresh incremental decoder for one sequence.
    fn decoder(&self) -> Box<dyn TextDecoder>;
    /// The text of one token on its own (for logprobs); may be lossy for partial UTF-8.
    fn token_text(&self, id: u32) -> String;
    /// The bytes one token stands for (for logprobs' `bytes`).
    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.token_text(id).into_bytes()
    }
    /// Renders a conversation into a prompt with the model's chat template (or the fallback
    /// chosen at load time), ending with the assistant turn's opening.
    fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, String>;

    /// Prompt text → ids, with BOS when the model wants it. Special-token text is parsed
    /// (chat templates produce it).
    fn encode_prompt(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        if self.add_bos() {
            ids.extend(self.bos_id());
        }
        ids.extend(self.encode(text, true));
        ids
    }
}

/// Incremental detokenizer: emits only complete UTF-8 text.
pub trait TextDecoder: Send {
    /// Adds one token; returns the text that became complete (possibly empty).
    fn push(&mut self, id: u32) -> String;
    /// Returns whatever is still buffered (incomplete bytes become U+FFFD).
    fn finish(&mut self) -> String;
}

/// A [`TextDecoder`] over raw token bytes: buffers bytes until they form complete UTF-8.
pub struct Utf8Decoder<F: Fn(u32) -> Vec<u8> + Send> {
    bytes_of: F,
    pending: Vec<u8>,
}

impl<F: Fn(u32) -> Vec<u8> + Send> Utf8Decoder<F> {
    pub fn new(bytes_of: F) -> Self {
        Utf8Decoder { bytes_of, pending: Vec::new() }
    }
}

impl<F: Fn(u32) -> Vec<u8> + Send> TextDecoder for Utf8Decoder<F> {
    fn push(&mut self, id: u32) -> String {
        self.pending.extend((self.bytes_of)(id));
        take_complete_utf8(&mut self.pending)
    }

    fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

/// Removes and returns the longest prefix of `buf` that is valid UTF-8, leaving at most an
/// incomplete trailing character; bytes that can never become valid turn into U+FFFD.
pub fn take_complete_utf8(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    loop {
        match std::str::from_utf8(buf) {
            Ok(s) => {
                out.push_str(s);
                buf.clear();
                return out;
            }
            Err(e) => {
                let good = e.valid_up_to();
                out.push_str(&String::from_utf8_lossy(&buf[..good]));
                match e.error_len() {
                    // Incomplete character at the end: wait for more bytes.
                    None => {
                        buf.drain(..good);
                        return out;
                    }
                    // Invalid bytes: replace and continue after them.
                    Some(bad) => {
                        out.push('\u{FFFD}');
                        buf.drain(..good + bad);
                    }
                }
            }
        }
    }
}

/// Watches generated text for stop strings. Text that might be the beginning of a stop
/// string is held back until it is known not to be one, so a stop string never reaches the
/// client even when it arrives split over several tokens.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopMatcher { stops, held: String::new() }
    }

    /// Adds text; returns `(text safe to emit, whether a stop string was hit)`. After a hit
    /// the returned text is everything before the stop string.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if let Some(at) = self.earliest_stop() {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        let keep = self.partial_suffix_len();
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// The held-back text, released when generation ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    fn earliest_stop(&self) -> Option<usize> {
        self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min()
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop string
    /// (always on a char boundary).
    fn partial_suffix_len(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            for (i, _) in self.held.char_indices() {
                let suffix = &self.held[i..];
                if suffix.len() < stop.len() && stop.starts_with(suffix) {
                    best = best.max(suffix.len());
                    break;
                }
            }
        }
        best
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// A generation request as the scheduler takes it.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// Prompt ids, BOS included when wanted.
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub sampling: SamplingParams,
}

/// What a sequence reports, in order: zero or more `Token`, then exactly one `Done` or `Error`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Token(TokenEvent),
    Done(Finished),
    Error(String),
}

/// One generated token and the text it completed (may be empty while UTF-8 or a possible
/// stop string is incomplete).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEvent {
    pub token: u32,
    pub text: String,
    pub logprobs: Option<TokenLogprobs>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub reason: FinishReason,
    /// Text released at the end (held-back partial stop prefix, buffered bytes).
    pub tail: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(m: &mut StopMatcher, parts: &[&str]) -> (String, bool) {
        let mut out = String::new();
        for p in parts {
            let (t, hit) = m.push(p);
            out.push_str(&t);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_string_split_over_tokens_is_removed() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(feed(&mut m, &["Hello E", "N", "D more"]), ("Hello ".into(), true));
    }

    #[test]
    fn false_prefix_is_released() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        let (t, hit) = m.push("Hello EN");
        assert_eq!((t.as_str(), hit), ("Hello ", false));
        let (t, hit) = m.push("x");
        assert_eq!((t.as_str(), hit), ("ENx", false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut m = StopMatcher::new(vec!["cd".into(), "b".into()]);
        assert_eq!(feed(&mut m, &["abcd"]), ("a".into(), true));
    }

    #[test]
    fn no_stops_passes_everything() {
        let mut m = StopMatcher::new(vec![]);
        assert_eq!(m.push("abc"), ("abc".into(), false));
    }

    #[test]
    fn held_text_is_released_at_the_end() {
        let mut m = StopMatcher::new(vec!["xyz".into()]);
        assert_eq!(feed(&mut m, &["ab", "xy"]), ("abxy".into(), false));
    }

    #[test]
    fn multibyte_text_near_stop_prefix_keeps_char_boundaries() {
        let mut m = StopMatcher::new(vec!["é!".into()]);
        assert_eq!(feed(&mut m, &["café", "?"]), ("café?".into(), false));
        let mut m = StopMatcher::new(vec!["é!".into()]);
        assert_eq!(feed(&mut m, &["café", "!"]), ("caf".into(), true));
    }

    #[test]
    fn utf8_decoder_never_emits_half_a_character() {
        // "é" = C3 A9, "😀" = F0 9F 98 80, fed one byte per token.
        let bytes = "é😀a".as_bytes().to_vec();
        let mut d = Utf8Decoder::new(move |i| vec![bytes[i as usize]]);
        let outs: Vec<String> = (0..7).map(|i| d.push(i)).collect();
        assert_eq!(outs, vec!["", "é", "", "", "", "😀", "a"]);
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn utf8_decoder_replaces_invalid_bytes() {
        let mut d = Utf8Decoder::new(|i| vec![i as u8]);
        assert_eq!(d.push(0xFF), "\u{FFFD}");
        assert_eq!(d.push(0xE4), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }
}
