//! Matching special / added tokens written literally in the text, before any other
//! tokenization step. Leftmost match wins; at one position the longest token wins (HF
//! `tokenizers`' added-vocabulary rule; llama.cpp agrees whenever tokens do not overlap).

use std::ops::Range;

#[derive(Debug, Clone)]
pub(crate) struct SpecialToken {
    pub id: u32,
    pub text: String,
    /// Matched even when the caller does not parse specials (HF non-special added tokens,
    /// GGUF user-defined tokens); control tokens are matched only on request.
    pub always: bool,
    /// Absorb whitespace on the left / right of the match (HF `lstrip` / `rstrip`).
    pub lstrip: bool,
    pub rstrip: bool,
    /// Match only as a whole word (HF `single_word`).
    pub single_word: bool,
}

/// A piece of input: plain text (a byte range of the input) or an already-known token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

#[derive(Debug, Default)]
struct Node {
    /// Sorted by byte for binary search.
    children: Vec<(u8, u32)>,
    token: Option<u32>,
}

/// A byte trie over the special tokens' texts.
#[derive(Debug)]
pub(crate) struct SpecialMatcher {
    tokens: Vec<SpecialToken>,
    nodes: Vec<Node>,
}

impl Default for SpecialMatcher {
    fn default() -> Self {
        SpecialMatcher::new(Vec::new())
    }
}

impl SpecialMatcher {
    pub(crate) fn new(tokens: Vec<SpecialToken>) -> SpecialMatcher {
        let mut m = SpecialMatcher { tokens: Vec::new(), nodes: vec![Node::default()] };
        for t in tokens {
            if !t.text.is_empty() {
                m.insert(t);
            }
        }
        m
    }

    fn insert(&mut self, tok: SpecialToken) {
        let mut node = 0usize;
        for &b in tok.text.as_bytes() {
            node = match self.nodes[node].children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => self.nodes[node].children[i].1 as usize,
                Err(i) => {
                    let new = self.nodes.len();
                    self.nodes.push(Node::default());
                    self.nodes[node].children.insert(i, (b, new as u32));
                    new
                }
            };
        }
        // A duplicate text keeps the first (lowest-id) entry.
        if self.nodes[node].token.is_none() {
            self.nodes[node].token = Some(self.tokens.len() as u32);
            self.tokens.push(tok);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The longest allowed token starting at `pos`: (token index, end offset).
    fn longest_at(&self, bytes: &[u8], pos: usize, parse_special: bool) -> Option<(usize, usize)> {
        let mut node = 0usize;
        let mut best = None;
        for (i, &b) in bytes[pos..].iter().enumerate() {
            let children = &self.nodes[node].children;
            match children.binary_search_by_key(&b, |c| c.0) {
                Ok(k) => node = children[k].1 as usize,
                Err(_) => break,
            }
            if let Some(t) = self.nodes[node].token {
                let tok = &self.tokens[t as usize];
                if parse_special || tok.always {
                    best = Some((t as usize, pos + i + 1));
                }
            }
        }
        best
    }

    /// Cuts `text` into plain-text ranges and special tokens.
    pub(crate) fn split(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut text_start = 0usize;
        let mut pos = 0usize;
        while pos < bytes.len() && !self.is_empty() {
            let Some((t, end)) = self.longest_at(bytes, pos, parse_special) else {
                pos += 1;
                continue;
            };
            let tok = &self.tokens[t];
            if tok.single_word && !is_whole_word(text, pos, end) {
                pos += 1;
                continue;
            }
            let mut left = pos;
            if tok.lstrip {
                while left > text_start && bytes[left - 1].is_ascii_whitespace() {
                    left -= 1;
                }
            }
            let mut right = end;
            if tok.rstrip {
                while right < bytes.len() && bytes[right].is_ascii_whitespace() {
                    right += 1;
                }
            }
            if left > text_start {
                out.push(Fragment::Text(text_start..left));
            }
            out.push(Fragment::Token(tok.id));
            pos = right;
            text_start = right;
        }
        if text_start < bytes.len() {
            out.push(Fragment::Text(text_start..bytes.len()));
        }
        out
    }
}

/// True when the chars around `text[start..end]` are not word characters.
fn is_whole_word(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    !word(before) && !word(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(id: u32, text: &str, always: bool) -> SpecialToken {
        SpecialToken { id, text: text.into(), always, lstrip: false, rstrip: false, single_word: false }
    }

    #[test]
    fn longest_match_wins_and_control_tokens_need_parse_special() {
        let m = SpecialMatcher::new(vec![tok(7, "<a>", false), tok(8, "<a><b>", false), tok(9, "<u>", true)]);
        let f = m.split("x<a><b>y<a>z<u>", true);
        assert_eq!(
            f,
            [
                Fragment::Text(0..1),
                Fragment::Token(8),
                Fragment::Text(7..8),
                Fragment::Token(7),
                Fragment::Text(11..12),
                Fragment::Token(9),
            ]
        );
        let f = m.split("x<a><u>", false);
        assert_eq!(f, [Fragment::Text(0..4), Fragment::Token(9)]);
    }

    #[test]
    fn lstrip_and_rstrip_absorb_whitespace() {
        let mut t = tok(5, "<m>", true);
        t.lstrip = true;
        t.rstrip = true;
        let m = SpecialMatcher::new(vec![t]);
        assert_eq!(m.split("a  <m>  b", false), [Fragment::Text(0..1), Fragment::Token(5), Fragment::Text(8..9)]);
    }
}
