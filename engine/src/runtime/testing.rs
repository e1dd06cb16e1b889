//! A small deterministic model and byte-level codec for tests of the scheduler and server.
//!
//! The model "counts up": after token `t` (a byte) the most likely next token is `t + 1`, and
//! after `z` it is EOS. So prompt "a" greedily continues "bcd…z" then stops, which lets tests
//! predict every output exactly without real weights.

use super::generate::{ChatMessage, TextCodec, TextDecoder, Utf8Decoder};
use crate::models::{Logits, Model, ModelInfo, SeqState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const EOS: u32 = 256;
pub const VOCAB: usize = 257;

pub struct CountingModel {
    info: ModelInfo,
    /// Batch sizes seen by `forward_batch`, in order.
    pub batches: Arc<Mutex<Vec<usize>>>,
    /// Sleep per decode step so concurrent requests overlap in tests (never asserted on).
    pub step_delay: Duration,
}

impl CountingModel {
    pub fn new(step_delay: Duration) -> CountingModel {
        let info = ModelInfo {
            arch: "counting".into(),
            name: "counting".into(),
            vocab_size: VOCAB,
            context_length: 512,
            n_layers: 1,
            hidden_size: 1,
        };
        CountingModel { info, batches: Arc::default(), step_delay }
    }

    fn next_logits(last: u32) -> Vec<f32> {
        let mut l = vec![0.0; VOCAB];
        let next = if last == u32::from(b'z') || last >= EOS { EOS } else { last + 1 };
        l[next as usize] = 10.0;
        l
    }
}

impl Model for CountingModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn new_state(&self, max_tokens: usize) -> SeqState {
        SeqState { pos: 0, max_tokens, cache: Box::new(()) }
    }

    fn forward(&self, state: &mut SeqState, tokens: &[u32], which: Logits) -> anyhow::Result<Vec<f32>> {
        anyhow::ensure!(state.pos + tokens.len() <= state.max_tokens, "context overflow");
        anyhow::ensure!(tokens.iter().all(|&t| (t as usize) < VOCAB), "token out of range");
        state.pos += tokens.len();
        Ok(match which {
            Logits::Last => Self::next_logits(*tokens.last().unwrap_or(&0)),
            Logits::All => tokens.iter().flat_map(|&t| Self::next_logits(t)).collect(),
        })
    }

    fn forward_batch(&self, states: &mut [&mut SeqState], tokens: &[u32]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.batches.lock().unwrap_or_else(|e| e.into_inner()).push(tokens.len());
        std::thread::sleep(self.step_delay);
        states.iter_mut().zip(tokens).map(|(s, &t)| self.forward(s, &[t], Logits::Last)).collect()
    }
}

/// One token per byte; id 256 is EOS; no BOS.
pub struct ByteCodec;

impl TextCodec for ByteCodec {
    fn encode(&self, text: &str, _parse_special: bool) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }
    fn bos_id(&self) -> Option<u32> {
        None
    }
    fn add_bos(&self) -> bool {
        false
    }
    fn eos_ids(&self) -> Vec<u32> {
        vec![EOS]
    }
    fn decoder(&self) -> Box<dyn TextDecoder> {
        Box::new(Utf8Decoder::new(|id| if id < 256 { vec![id as u8] } else { Vec::new() }))
    }
    fn token_text(&self, id: u32) -> String {
        if id < 256 {
            String::from_utf8_lossy(&[id as u8]).into_owned()
        } else {
            "<eos>".into()
        }
    }
    fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, String> {
        let mut s: String = messages.iter().map(|m| format!("{}:{}\n", m.role, m.content)).collect();
        s.push_str("assistant:");
        Ok(s)
    }
}
