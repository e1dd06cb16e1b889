//! Text normalizers from `tokenizer.json` (applied to plain-text fragments, after special
//! tokens are cut out and before pre-tokenization).

use super::TokenizerError;
use icu_normalizer::ComposingNormalizerBorrowed;
use serde_json::Value;
use std::borrow::Cow;

#[derive(Debug)]
enum Step {
    Replace { from: String, to: String },
    Prepend(String),
    Lowercase,
    Nfc,
    Nfkc,
}

#[derive(Debug, Default)]
pub(crate) struct Normalizer {
    steps: Vec<Step>,
}

impl Normalizer {
    /// Parses a `normalizer` object (`null` means none).
    pub(crate) fn from_json(v: &Value) -> Result<Normalizer, TokenizerError> {
        let mut steps = Vec::new();
        push_steps(v, &mut steps)?;
        Ok(Normalizer { steps })
    }

    pub(crate) fn apply<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut s = Cow::Borrowed(text);
        for step in &self.steps {
            s = match step {
                Step::Replace { from, to } => Cow::Owned(s.replace(from.as_str(), to)),
                Step::Prepend(p) if !s.is_empty() => Cow::Owned(format!("{p}{s}")),
                Step::Prepend(_) => s,
                Step::Lowercase => Cow::Owned(s.to_lowercase()),
                Step::Nfc => changed(ComposingNormalizerBorrowed::new_nfc().normalize(&s)).map_or(s, Cow::Owned),
                Step::Nfkc => changed(ComposingNormalizerBorrowed::new_nfkc().normalize(&s)).map_or(s, Cow::Owned),
            };
        }
        s
    }
}

fn push_steps(v: &Value, steps: &mut Vec<Step>) -> Result<(), TokenizerError> {
    if v.is_null() {
        return Ok(());
    }
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "Sequence" => {
            for n in v.get("normalizers").and_then(Value::as_array).into_iter().flatten() {
                push_steps(n, steps)?;
            }
        }
        "Replace" => {
            let from = v.pointer("/pattern/String").and_then(Value::as_str);
            let to = v.get("content").and_then(Value::as_str);
            match (from, to) {
                (Some(f), Some(t)) => steps.push(Step::Replace { from: f.into(), to: t.into() }),
                _ => return Err(unsupported("Replace with a regex pattern")),
            }
        }
        "Prepend" => {
            let p = v.get("prepend").and_then(Value::as_str).unwrap_or_default();
            steps.push(Step::Prepend(p.into()));
        }
        "Lowercase" => steps.push(Step::Lowercase),
        "NFC" => steps.push(Step::Nfc),
        "NFKC" => steps.push(Step::Nfkc),
        other => return Err(unsupported(other)),
    }
    Ok(())
}

/// The normalized text if normalization changed anything (usually it does not).
fn changed(out: Cow<'_, str>) -> Option<String> {
    match out {
        Cow::Borrowed(_) => None,
        Cow::Owned(s) => Some(s),
    }
}

fn unsupported(what: &str) -> TokenizerError {
    TokenizerError::Unsupported(format!("tokenizer.json normalizer {what:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfc_composes_and_sequence_applies_in_order() {
        let n = Normalizer::from_json(&serde_json::json!({"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
            {"type": "Prepend", "prepend": "\u{2581}"}
        ]}))
        .unwrap();
        assert_eq!(n.apply("cafe\u{301} ok"), "\u{2581}caf\u{e9}\u{2581}ok");
        assert_eq!(n.apply(""), "");
        let k = Normalizer::from_json(&serde_json::json!({"type": "NFKC"})).unwrap();
        assert_eq!(k.apply("\u{FB01}"), "fi");
        assert!(Normalizer::from_json(&serde_json::json!({"type": "BertNormalizer"})).is_err());
    }
}
