//! SentencePiece-style tokenization as llama.cpp does it for `tokenizer.ggml.model =
//! llama` vocabularies: start from single UTF-8 characters, repeatedly merge the adjacent
//! pair whose concatenation is a token with the highest score (leftmost among equal
//! scores), and emit `<0xXX>` byte tokens for characters that never formed a token.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}

const NONE: usize = usize::MAX;

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the lower left index.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

/// What the SPM merge needs from the vocabulary.
pub(crate) struct SpmVocab<'a> {
    pub token_to_id: &'a HashMap<String, u32>,
    pub scores: &'a [f32],
    /// `<0xXX>` token per byte, for byte fallback.
    pub byte_ids: &'a [Option<u32>; 256],
    pub unk: Option<u32>,
}

impl SpmVocab<'_> {
    fn lookup(&self, s: &str) -> Option<u32> {
        self.token_to_id.get(s).copied()
    }

    fn try_add(&self, text: &str, syms: &[Sym], left: usize, right: usize, heap: &mut BinaryHeap<Bigram>) {
        if left == NONE || right == NONE {
            return;
        }
        let (a, b) = (syms[left], syms[right]);
        let piece = &text[a.start..b.start + b.len];
        if let Some(id) = self.lookup(piece) {
            let score = self.scores.get(id as usize).copied().unwrap_or(0.0);
            heap.push(Bigram { score, left, right, size: piece.len() });
        }
    }

    /// Tokenizes already-escaped text (spaces replaced by U+2581), appending ids to `out`.
    pub(crate) fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let mut syms: Vec<Sym> = Vec::new();
        for (i, (start, c)) in text.char_indices().enumerate() {
            let next = if start + c.len_utf8() == text.len() { NONE } else { i + 1 };
            let prev = if i == 0 { NONE } else { i - 1 };
            syms.push(Sym { start, len: c.len_utf8(), prev, next });
        }
        let mut heap = BinaryHeap::new();
        for i in 1..syms.len() {
            self.try_add(text, &syms, i - 1, i, &mut heap);
        }
        while let Some(bg) = heap.pop() {
            let (l, r) = (syms[bg.left], syms[bg.right]);
            // One side already merged elsewhere: the recorded size no longer adds up.
            if l.len == 0 || r.len == 0 || l.len + r.len != bg.size {
                continue;
            }
            syms[bg.left].len += r.len;
            syms[bg.right].len = 0;
            syms[bg.left].next = r.next;
            if r.next != NONE {
                syms[r.next].prev = bg.left;
            }
            self.try_add(text, &syms, l.prev, bg.left, &mut heap);
            self.try_add(text, &syms, bg.left, syms[bg.left].next, &mut heap);
        }
        let mut i = if syms.is_empty() { NONE } else { 0 };
        while i != NONE {
            let s = syms[i];
            self.emit(&text[s.start..s.start + s.len], out);
            i = s.next;
        }
    }

    fn emit(&self, piece: &str, out: &mut Vec<u32>) {
        if let Some(id) = self.lookup(piece) {
            out.push(id);
            return;
        }
        for &b in piece.as_bytes() {
            if let Some(id) = self.byte_ids[b as usize].or(self.unk) {
                out.push(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_score_merges_first_and_bytes_fall_back() {
        let vocab = ["a", "b", "c", "ab", "bc", "abc", "<0xC3>", "<0xA9>"];
        let scores = [0.0, 0.0, 0.0, -1.0, -0.5, -2.0, 0.0, 0.0];
        let map: HashMap<String, u32> = vocab.iter().enumerate().map(|(i, s)| (s.to_string(), i as u32)).collect();
        let mut byte_ids = [None; 256];
        byte_ids[0xC3] = Some(6);
        byte_ids[0xA9] = Some(7);
        let v = SpmVocab { token_to_id: &map, scores: &scores, byte_ids: &byte_ids, unk: None };
        let mut out = Vec::new();
        // "bc" (-0.5) beats "ab" (-1.0); "a"+"bc" = "abc" exists, so one token.
        v.encode("abc", &mut out);
        assert_eq!(out, [5]);
        out.clear();
        v.encode("abé", &mut out);
        assert_eq!(out, [3, 6, 7]);
    }
}
