//! Chat templates: the model's Jinja template rendered with minijinja (set up like the
//! Hugging Face renderer: `trim_blocks`, `lstrip_blocks`, Python string methods,
//! `raise_exception`, `strftime_now`), or a built-in template chosen by name for models
//! that ship none.

use super::TokenizerError;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;

/// One chat turn. `extra` carries optional fields templates may read (`tool_calls`,
/// `reasoning_content`, `name`, ...).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into(), extra: serde_json::Map::new() }
    }
}

const BUILTINS: [&str; 4] = ["gemma", "chatml", "llama3", "deepseek3"];

/// Names accepted by [`render_chat`] in place of a Jinja template.
pub fn builtin_template_names() -> &'static [&'static str] {
    &BUILTINS
}

/// Renders `messages`. `template` is Jinja source, or the name of a built-in template
/// (`gemma`, `chatml`, `llama3`, `deepseek3`). Built-ins emit no BOS; Jinja templates
/// emit whatever they contain (often `{{ bos_token }}`).
pub fn render_chat(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, TokenizerError> {
    render_chat_with(template, messages, add_generation_prompt, bos_token, eos_token, &serde_json::Map::new())
}

/// [`render_chat`] with extra template variables (e.g. `tools`, `enable_thinking`).
pub fn render_chat_with(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
    extra: &serde_json::Map<String, serde_json::Value>,
) -> Result<String, TokenizerError> {
    if let Some(s) = render_builtin(template, messages, add_generation_prompt) {
        return Ok(s);
    }
    let mut ctx = extra.clone();
    let msgs = serde_json::to_value(messages).map_err(|e| TokenizerError::Template(format!("messages: {e}")))?;
    ctx.insert("messages".into(), msgs);
    ctx.insert("add_generation_prompt".into(), add_generation_prompt.into());
    ctx.insert("bos_token".into(), bos_token.into());
    ctx.insert("eos_token".into(), eos_token.into());
    let env = environment();
    let tmpl = env.template_from_str(template).map_err(template_error)?;
    tmpl.render(Value::from_serialize(&ctx)).map_err(template_error)
}

fn template_error(e: Error) -> TokenizerError {
    // Include the template line so a broken template is easy to find.
    let mut msg = e.to_string();
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (template line {line})"));
    }
    TokenizerError::Template(msg)
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    minijinja_contrib::add_to_environment(&mut env);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| strftime_utc(&fmt, unix_now()));
    env.add_filter("tojson", py_tojson);
    env
}

/// `tojson` as the Hugging Face renderer defines it: Python `json.dumps` with
/// `ensure_ascii=False`, separators `", "` / `": "`, and an optional `indent`.
fn py_tojson(value: Value, kwargs: minijinja::value::Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // Accepted for compatibility; keys are always in the map's order.
    let _: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let json =
        serde_json::to_value(&value).map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    write_py_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_py_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    // With an indent Python drops the space after commas (they end the line instead).
    let comma = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(comma);
                }
                newline(out, depth + 1);
                write_py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(comma);
                }
                newline(out, depth + 1);
                out.push_str(&J::String(k.clone()).to_string());
                out.push_str(": ");
                write_py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Renders the built-in template `name`, or `None` if `name` is not one.
fn render_builtin(name: &str, messages: &[ChatMessage], add_gen: bool) -> Option<String> {
    let mut s = String::new();
    match name {
        "gemma" => {
            // No system role: the system text goes in front of the first user turn.
            let mut system = String::new();
            for m in messages {
                if m.role == "system" {
                    system.push_str(m.content.trim());
                    continue;
                }
                let role = if m.role == "assistant" { "model" } else { m.role.as_str() };
                s.push_str(&format!("<start_of_turn>{role}\n"));
                if !system.is_empty() && role != "model" {
                    s.push_str(&format!("{system}\n\n"));
                    system.clear();
                }
                s.push_str(&format!("{}<end_of_turn>\n", m.content.trim()));
            }
            if add_gen {
                s.push_str("<start_of_turn>model\n");
            }
        }
        "chatml" => {
            for m in messages {
                s.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
            }
            if add_gen {
                s.push_str("<|im_start|>assistant\n");
            }
        }
        "llama3" => {
            for m in messages {
                s.push_str(&format!(
                    "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                    m.role,
                    m.content.trim()
                ));
            }
            if add_gen {
                s.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
            }
        }
        "deepseek3" => {
            for m in messages {
                match m.role.as_str() {
                    "user" => s.push_str(&format!("<｜User｜>{}", m.content)),
                    "assistant" => s.push_str(&format!("<｜Assistant｜>{}<｜end▁of▁sentence｜>", m.content)),
                    _ => s.push_str(&m.content),
                }
            }
            if add_gen {
                s.push_str("<｜Assistant｜>");
            }
        }
        _ => return None,
    }
    Some(s)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Python-style `strftime` on a UTC timestamp, for the directives chat templates use.
/// Unknown directives are kept literally.
pub(crate) fn strftime_utc(fmt: &str, unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[mo as usize - 1] + d + u32::from(mo > 2 && is_leap(y));
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(k) = chars.next() else {
            out.push('%');
            break;
        };
        let month = MONTHS[mo as usize - 1];
        let day = DAYS[weekday];
        let piece = match k {
            'Y' => y.to_string(),
            'y' => format!("{:02}", y.rem_euclid(100)),
            'm' => format!("{mo:02}"),
            'd' => format!("{d:02}"),
            'e' => format!("{d:>2}"),
            'j' => format!("{yday:03}"),
            'H' => format!("{h:02}"),
            'I' => format!("{:02}", (h + 11) % 12 + 1),
            'p' => (if h < 12 { "AM" } else { "PM" }).to_string(),
            'M' => format!("{mi:02}"),
            'S' => format!("{s:02}"),
            'B' => month.to_string(),
            'b' | 'h' => month[..3].to_string(),
            'A' => day.to_string(),
            'a' => day[..3].to_string(),
            'F' => format!("{y}-{mo:02}-{d:02}"),
            'T' => format!("{h:02}:{mi:02}:{s:02}"),
            '%' => "%".to_string(),
            other => format!("%{other}"),
        };
        out.push_str(&piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_matches_known_dates() {
        // 2024-02-29 13:05:09 UTC (a Thursday, day 60 of a leap year).
        assert_eq!(
            strftime_utc("%Y-%m-%d %H:%M:%S %a %A %b %B %j %y %I%p %%", 1_709_211_909),
            "2024-02-29 13:05:09 Thu Thursday Feb February 060 24 01PM %"
        );
        assert_eq!(strftime_utc("%d %b %Y", 0), "01 Jan 1970");
        assert_eq!(strftime_utc("%d %B %Y", 1_735_603_200), "31 December 2024");
    }
}
