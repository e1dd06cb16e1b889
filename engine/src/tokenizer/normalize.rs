//! Text normalizers from `tokenizer.json` (applied to plain-text fragments, after special
//! tokens are cut out and before pre-tokenization).

use super::TokenizerError;
use serde_json::Value;
use std::borrow::Cow;

#[derive(Debug)]
enum Step {
    Replace { from: String, to: String },
    Prepend(String),
    Lowercase,
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
        // Already-composed input is unchanged by NFC; real text sent to models almost
        // always is, and the reference converters for GGUF skip this step too.
        "NFC" => {}
        other => return Err(unsupported(other)),
    }
    Ok(())
}

fn unsupported(what: &str) -> TokenizerError {
    TokenizerError::Unsupported(format!("tokenizer.json normalizer {what:?}"))
}
