//! Pre-tokenization: split text into words with a sequence of regex rules before BPE.
//! Rules come from `tokenizer.json` (`Split`, `ByteLevel` with `use_regex`, `Digits`) or
//! from the pre-tokenizer name a GGUF file carries (`tokenizer.ggml.pre`), using the same
//! regexes the reference implementations use for that name.

use super::TokenizerError;
use fancy_regex::Regex;
use std::ops::Range;

/// What happens to the text a rule matches (HF `SplitDelimiterBehavior`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behavior {
    Isolated,
    Removed,
    MergedWithPrevious,
    MergedWithNext,
    Contiguous,
}

impl Behavior {
    pub(crate) fn parse(s: &str) -> Result<Behavior, TokenizerError> {
        Ok(match s {
            "Isolated" => Behavior::Isolated,
            "Removed" => Behavior::Removed,
            "MergedWithPrevious" => Behavior::MergedWithPrevious,
            "MergedWithNext" => Behavior::MergedWithNext,
            "Contiguous" => Behavior::Contiguous,
            other => return Err(TokenizerError::Unsupported(format!("pre-tokenizer split behavior {other:?}"))),
        })
    }
}

#[derive(Debug)]
pub(crate) struct Rule {
    re: Regex,
    behavior: Behavior,
    invert: bool,
}

impl Rule {
    pub(crate) fn new(pattern: &str, behavior: Behavior, invert: bool) -> Result<Rule, TokenizerError> {
        let re = Regex::new(pattern)
            .map_err(|e| TokenizerError::Invalid(format!("pre-tokenizer regex {pattern:?} does not compile: {e}")))?;
        Ok(Rule { re, behavior, invert })
    }

    pub(crate) fn isolated(pattern: &str) -> Result<Rule, TokenizerError> {
        Rule::new(pattern, Behavior::Isolated, false)
    }

    /// Splits `text[piece]` and appends the resulting ranges (absolute offsets) to `out`,
    /// following the HF `Split` behaviors exactly (runs of adjacent delimiters included).
    fn split(&self, text: &str, piece: Range<usize>, out: &mut Vec<Range<usize>>) {
        let segments = self.segments(text, piece);
        match self.behavior {
            Behavior::Isolated => out.extend(segments.into_iter().map(|(r, _)| r)),
            Behavior::Removed => out.extend(segments.into_iter().filter(|s| !s.1).map(|(r, _)| r)),
            Behavior::MergedWithPrevious => out.extend(merge_runs(segments, |prev, d| d && !prev)),
            Behavior::Contiguous => out.extend(merge_runs(segments, |prev, d| prev == d)),
            Behavior::MergedWithNext => {
                // Mirror image of MergedWithPrevious: walk backwards, extend the next piece.
                let mut acc: Vec<Range<usize>> = Vec::new();
                let mut previous = false;
                for (r, is_delim) in segments.into_iter().rev() {
                    match acc.last_mut() {
                        Some(next) if is_delim && !previous => next.start = r.start,
                        _ => acc.push(r),
                    }
                    previous = is_delim;
                }
                out.extend(acc.into_iter().rev());
            }
        }
    }

    /// The piece cut into alternating non-empty (range, is_delimiter) segments.
    fn segments(&self, text: &str, piece: Range<usize>) -> Vec<(Range<usize>, bool)> {
        let base = piece.start;
        let s = &text[piece.clone()];
        let mut segs = Vec::new();
        let mut last = 0;
        for m in self.re.find_iter(s) {
            // A regex that hits the backtracking limit leaves the rest of the piece as one gap.
            let Ok(m) = m else { break };
            if m.start() == m.end() {
                continue;
            }
            if m.start() > last {
                segs.push((base + last..base + m.start(), self.invert));
            }
            segs.push((base + m.start()..base + m.end(), !self.invert));
            last = m.end();
        }
        if last < s.len() {
            segs.push((base + last..piece.end, self.invert));
        }
        segs
    }
}

/// Joins each segment into the previous piece when `join(previous_was_delim, is_delim)`
/// holds (HF's fold over the matches).
fn merge_runs(segments: Vec<(Range<usize>, bool)>, join: impl Fn(bool, bool) -> bool) -> Vec<Range<usize>> {
    let mut acc: Vec<Range<usize>> = Vec::new();
    let mut previous = false;
    for (r, is_delim) in segments {
        match acc.last_mut() {
            Some(prev) if join(previous, is_delim) => prev.end = r.end,
            _ => acc.push(r),
        }
        previous = is_delim;
    }
    acc
}

/// A sequence of split rules; each applies to every piece the previous ones produced.
#[derive(Debug, Default)]
pub(crate) struct PreTokenizer {
    rules: Vec<Rule>,
}

/// Llama 3 (`llama-bpe`) word regex.
pub(crate) const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 word regex: as Llama 3 but single digits.
pub(crate) const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2 word regex (also HF `ByteLevel` with `use_regex: true`).
pub(crate) const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// DeepSeek-V3: digits in groups of three, CJK/kana runs, then the word regex.
pub(crate) const DEEPSEEK3: [&str; 3] = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
];
/// GPT-4o / o200k-style word regex (case-aware letters, contractions attached).
pub(crate) const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Kimi-K2: Han runs first, then the o200k-style regex with Han excluded from letters.
pub(crate) const KIMI_K2: &str = r"[\p{Han}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The reference runtime's `default` set (and Falcon's, with a backtick).
pub(crate) const DEFAULT: [&str; 4] = [
    r"[\p{P}\$\+<=>\^~\|]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];
/// DeepSeek Coder.
pub(crate) const DEEPSEEK_CODER: [&str; 5] = [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"];
/// DeepSeek LLM (v1/v2 `deepseek-llm`).
pub(crate) const DEEPSEEK_LLM: [&str; 6] = [
    r"[\r\n]",
    // Code points that Unicode normalization would rewrite are escaped so the ranges stay
    // exactly as the reference runtime has them.
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u{1F7D}ᾀ-ᾴᾶ-ᾼ\u{1FBE}ῂ-ῄῆ-ῌῐ-\u{1FD3}ῖ-\u{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u{2126}ℨ\u{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    r"[一-龥ࠀ-一가-퟿]+",
    r"\p{N}+",
];

impl PreTokenizer {
    pub(crate) fn new(rules: Vec<Rule>) -> PreTokenizer {
        PreTokenizer { rules }
    }

    pub(crate) fn push(&mut self, rule: Rule) {
        self.rules.push(rule);
    }

    /// The rules for a GGUF `tokenizer.ggml.pre` name; unknown names use GPT-2's regex,
    /// as the reference implementation does for its default.
    pub(crate) fn for_gguf_pre(name: &str) -> Result<PreTokenizer, TokenizerError> {
        let patterns: Vec<&str> = match name {
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "smaug-bpe" | "chatglm-bpe"
            | "glm4" => vec![LLAMA3],
            "qwen2" | "deepseek-r1-qwen" | "qwen35" | "hunyuan" => vec![QWEN2],
            "deepseek-v3" => DEEPSEEK3.to_vec(),
            "deepseek-llm" => DEEPSEEK_LLM.to_vec(),
            "deepseek-coder" => DEEPSEEK_CODER.to_vec(),
            "kimi-k2" => vec![KIMI_K2],
            "gpt-4o" | "llama4" => vec![GPT4O],
            "default" => DEFAULT.to_vec(),
            // gpt-2 and names without a dedicated regex use GPT-2's.
            _ => vec![GPT2],
        };
        let rules = patterns.into_iter().map(Rule::isolated).collect::<Result<_, _>>()?;
        Ok(PreTokenizer { rules })
    }

    /// Splits `text` into word ranges (byte offsets into `text`).
    pub(crate) fn split(&self, text: &str) -> Vec<Range<usize>> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut pieces: Vec<Range<usize>> = std::iter::once(0..text.len()).collect();
        for rule in &self.rules {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for p in pieces {
                rule.split(text, p, &mut next);
            }
            pieces = next;
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words<'a>(p: &PreTokenizer, s: &'a str) -> Vec<&'a str> {
        p.split(s).into_iter().map(|r| &s[r]).collect()
    }

    #[test]
    fn llama3_splits_whitespace_before_words() {
        let p = PreTokenizer::for_gguf_pre("llama-bpe").unwrap();
        assert_eq!(words(&p, "a   b 12345"), ["a", "  ", " b", " ", "123", "45"]);
        assert_eq!(words(&p, "I'VE x\n\n"), ["I", "'VE", " x", "\n\n"]);
    }

    #[test]
    fn deepseek3_isolates_digits_and_cjk() {
        let p = PreTokenizer::for_gguf_pre("deepseek-v3").unwrap();
        assert_eq!(words(&p, "我想在apple工作1314151天"), ["我想在", "apple", "工作", "131", "415", "1", "天"]);
    }

    #[test]
    fn every_named_pre_tokenizer_compiles() {
        for name in [
            "llama-bpe",
            "qwen2",
            "deepseek-v3",
            "deepseek-llm",
            "deepseek-coder",
            "kimi-k2",
            "gpt-4o",
            "default",
            "gpt-2",
        ] {
            let p = PreTokenizer::for_gguf_pre(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(words(&p, "").len(), 0);
            assert_eq!(words(&p, "Hi there").concat(), "Hi there", "{name}");
        }
        let k2 = PreTokenizer::for_gguf_pre("kimi-k2").unwrap();
        assert_eq!(words(&k2, "Hello世界 you're 12345"), ["Hello", "世界", " you're", " ", "123", "45"]);
        let o200k = PreTokenizer::for_gguf_pre("gpt-4o").unwrap();
        assert_eq!(words(&o200k, "HelloWorld can't"), ["Hello", "World", " can't"]);
    }

    #[test]
    fn behaviors_other_than_isolated() {
        let text = "a-b--c";
        let run = |b| {
            let p = PreTokenizer::new(vec![Rule::new("-", b, false).unwrap()]);
            words(&p, text)
        };
        assert_eq!(run(Behavior::Removed), ["a", "b", "c"]);
        assert_eq!(run(Behavior::MergedWithPrevious), ["a-", "b-", "-", "c"]);
        assert_eq!(run(Behavior::MergedWithNext), ["a", "-b", "-", "-c"]);
        assert_eq!(run(Behavior::Contiguous), ["a", "-", "b", "--", "c"]);
    }
}
