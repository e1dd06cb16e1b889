//! Chat templates against independent references: Python jinja2 (set up as the Hugging Face
//! renderer sets it up: trim_blocks, lstrip_blocks, loopcontrols, its `tojson` and
//! `raise_exception`) for Jinja templates, and llama.cpp's built-in `gemma` template output
//! recorded in the Gemma 3 fixture.

use hy_engine::tokenizer::{render_chat, render_chat_with, ChatMessage, Tokenizer};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Rendered by jinja2 3.1.6 (`ImmutableSandboxedEnvironment(trim_blocks=True,
/// lstrip_blocks=True, extensions=[loopcontrols])`, HF's `tojson`/`raise_exception`).
/// The templates follow the structure of DeepSeek-V3's and Qwen's official ones and
/// exercise namespaces, `split`/`strip`/`startswith`/`lower`/`rstrip`, `tojson`, `break`,
/// whitespace control and `loop.last`.
const JINJA_CASES: &str = r####"[
 {
  "name": "deepseek",
  "template": "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% set ns = namespace(system_prompt='') %}{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}{%- for message in messages %}{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}{%- elif message['role'] == 'assistant' %}{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{%- endif %}{%- endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}",
  "messages": [
   {
    "role": "system",
    "content": "You are helpful."
   },
   {
    "role": "user",
    "content": "Hi"
   },
   {
    "role": "assistant",
    "content": "<think>hmm</think>Hello!"
   },
   {
    "role": "user",
    "content": "阿莫西林是什么？"
   }
  ],
  "add_generation_prompt": true,
  "extra": {},
  "expected": "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Hi<｜Assistant｜>Hello!<｜end▁of▁sentence｜><｜User｜>阿莫西林是什么？<｜Assistant｜>"
 },
 {
  "name": "deepseek_no_gen",
  "template": "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% set ns = namespace(system_prompt='') %}{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}{%- for message in messages %}{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}{%- elif message['role'] == 'assistant' %}{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{%- endif %}{%- endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}",
  "messages": [
   {
    "role": "user",
    "content": "2+2?"
   }
  ],
  "add_generation_prompt": false,
  "extra": {},
  "expected": "<｜begin▁of▁sentence｜><｜User｜>2+2?"
 },
 {
  "name": "qwen_tools",
  "template": "{%- if tools %}\n<|im_start|>system\n{%- if messages[0].role == 'system' %}\n{{ messages[0].content }}\n{%- endif %}\n\n# Tools\n{% for tool in tools %}\n{{ tool | tojson }}\n{% endfor %}\n<|im_end|>\n{% elif messages[0].role == 'system' %}\n<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{% endif %}\n{% for message in messages %}\n    {% if message.role not in ['system', 'user', 'assistant'] %}\n        {{ raise_exception('unknown role: ' + message.role) }}\n    {% endif %}\n    {% if message.role != 'system' %}\n<|im_start|>{{ message.role }}\n{{ message.content.strip() }}{% if message.content.startswith('!') %} (loud){% endif %}<|im_end|>\n    {% endif %}\n    {% if loop.last and message.role == 'assistant' %}{% break %}{% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\n<|im_start|>assistant\n{{ eos_token|length }} {{ messages|length }} {{ 'a,b,,c'.split(',')|join('|') }} {{ 'Title Me'.lower() }} {{ '  x '.rstrip() }}|\n{% endif %}",
  "messages": [
   {
    "role": "system",
    "content": "Be brief."
   },
   {
    "role": "user",
    "content": "  Weather in Paris?  "
   }
  ],
  "add_generation_prompt": true,
  "extra": {
   "tools": [
    {
     "function": {
      "description": "Weather for a city, in °C",
      "name": "get_weather",
      "parameters": {
       "properties": {
        "city": {
         "type": "string"
        }
       },
       "required": [
        "city"
       ],
       "type": "object"
      }
     },
     "type": "function"
    }
   ]
  },
  "expected": "<|im_start|>systemBe brief.\n# Tools\n{\"function\": {\"description\": \"Weather for a city, in °C\", \"name\": \"get_weather\", \"parameters\": {\"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"], \"type\": \"object\"}}, \"type\": \"function\"}\n<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n19 2 a|b||c title me   x|\n"
 },
 {
  "name": "qwen_plain",
  "template": "{%- if tools %}\n<|im_start|>system\n{%- if messages[0].role == 'system' %}\n{{ messages[0].content }}\n{%- endif %}\n\n# Tools\n{% for tool in tools %}\n{{ tool | tojson }}\n{% endfor %}\n<|im_end|>\n{% elif messages[0].role == 'system' %}\n<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{% endif %}\n{% for message in messages %}\n    {% if message.role not in ['system', 'user', 'assistant'] %}\n        {{ raise_exception('unknown role: ' + message.role) }}\n    {% endif %}\n    {% if message.role != 'system' %}\n<|im_start|>{{ message.role }}\n{{ message.content.strip() }}{% if message.content.startswith('!') %} (loud){% endif %}<|im_end|>\n    {% endif %}\n    {% if loop.last and message.role == 'assistant' %}{% break %}{% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\n<|im_start|>assistant\n{{ eos_token|length }} {{ messages|length }} {{ 'a,b,,c'.split(',')|join('|') }} {{ 'Title Me'.lower() }} {{ '  x '.rstrip() }}|\n{% endif %}",
  "messages": [
   {
    "role": "system",
    "content": "Sys"
   },
   {
    "role": "user",
    "content": "!hey"
   },
   {
    "role": "assistant",
    "content": "yo"
   }
  ],
  "add_generation_prompt": false,
  "extra": {},
  "expected": "<|im_start|>system\nSys<|im_end|>\n<|im_start|>user\n!hey (loud)<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
 }
]
"####;

fn messages(v: &Value) -> Vec<ChatMessage> {
    v.as_array()
        .expect("messages")
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().expect("role"), m["content"].as_str().expect("content")))
        .collect()
}

const BOS: &str = "<｜begin▁of▁sentence｜>";
const EOS: &str = "<｜end▁of▁sentence｜>";

#[test]
fn jinja_templates_render_like_python_jinja2() {
    let cases: Value = serde_json::from_str(JINJA_CASES).expect("cases");
    for c in cases.as_array().expect("array") {
        let extra = c["extra"].as_object().expect("extra").clone();
        let got = render_chat_with(
            c["template"].as_str().expect("template"),
            &messages(&c["messages"]),
            c["add_generation_prompt"].as_bool().expect("flag"),
            BOS,
            EOS,
            &extra,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", c["name"]));
        assert_eq!(got, c["expected"].as_str().expect("expected"), "{}", c["name"]);
    }
}

#[test]
fn raise_exception_becomes_an_error_with_its_message() {
    let cases: Value = serde_json::from_str(JINJA_CASES).expect("cases");
    let qwen = cases[2]["template"].as_str().expect("template");
    let err = render_chat(qwen, &[ChatMessage::new("tool", "x")], true, "", "").expect_err("unknown role must fail");
    assert!(err.to_string().contains("unknown role: tool"), "{err}");
    let err = render_chat("{% for %}", &[], true, "", "").expect_err("syntax error");
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[test]
fn strftime_now_renders_the_current_year() {
    let got =
        render_chat("{{ strftime_now('%Y') }}|{{ strftime_now('%d %b %Y')|length }}", &[], false, "", "").unwrap();
    let (year, len) = got.split_once('|').expect("two parts");
    let year: i32 = year.parse().expect("a year");
    assert!((2024..2200).contains(&year), "{got}");
    assert_eq!(len, "11");
}

#[test]
fn builtin_deepseek3_agrees_with_the_jinja_template() {
    let cases: Value = serde_json::from_str(JINJA_CASES).expect("cases");
    // The builtin leaves BOS to the tokenizer and does not strip reasoning, so compare on
    // the messages where those do not matter.
    let c = &cases[1];
    let msgs = messages(&c["messages"]);
    let builtin = render_chat("deepseek3", &msgs, false, BOS, EOS).unwrap();
    assert_eq!(format!("{BOS}{builtin}"), c["expected"].as_str().unwrap());
    let msgs = [ChatMessage::new("system", "S"), ChatMessage::new("user", "Q"), ChatMessage::new("assistant", "A")];
    let jinja = render_chat(cases[0]["template"].as_str().unwrap(), &msgs, true, BOS, EOS).unwrap();
    assert_eq!(jinja, format!("{BOS}{}", render_chat("deepseek3", &msgs, true, BOS, EOS).unwrap()));
}

#[test]
fn gemma_builtin_matches_llama_cpp_rendered_prompts() {
    let path = fixtures().join("gemma3-270m/generations.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    let mut n = 0;
    for g in v["generations"].as_array().expect("generations").iter().filter(|g| g["kind"] == "chat") {
        let user = g["user_text_or_raw_text"].as_str().expect("text");
        let got = render_chat("gemma", &[ChatMessage::new("user", user)], true, "<bos>", "<eos>").unwrap();
        assert_eq!(got, g["rendered_prompt"].as_str().expect("rendered"));
        n += 1;
    }
    assert_eq!(n, 2);
    // System text folds into the first user turn; assistant turns are "model" turns.
    let msgs = [
        ChatMessage::new("system", " Be terse. "),
        ChatMessage::new("user", "Hi "),
        ChatMessage::new("assistant", "Hello"),
        ChatMessage::new("user", "Bye"),
    ];
    assert_eq!(
        render_chat("gemma", &msgs, false, "<bos>", "<eos>").unwrap(),
        "<start_of_turn>user\nBe terse.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n\
         <start_of_turn>user\nBye<end_of_turn>\n"
    );
}

#[test]
fn chatml_and_llama3_builtins() {
    let msgs = [ChatMessage::new("system", "S"), ChatMessage::new("user", " Q ")];
    assert_eq!(
        render_chat("chatml", &msgs, true, "", "").unwrap(),
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n Q <|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        render_chat("llama3", &msgs, true, "", "").unwrap(),
        "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn tokenizers_pick_their_template() {
    // The tiny fixtures and the DeepSeek tokenizer ship no template; DeepSeek's vocabulary
    // has the V3 turn markers, so the deepseek3 built-in is chosen.
    let dir = fixtures();
    let ds = Tokenizer::from_tokenizer_json(&dir.join("tokenizers/deepseek/tokenizer.json")).unwrap();
    assert_eq!(ds.chat_template(), None);
    assert_eq!(ds.chat_template_or_builtin(), Some("deepseek3"));
    let text = ds.apply_chat_template(&[ChatMessage::new("user", "Hi")], true).unwrap();
    assert_eq!(text, "<｜User｜>Hi<｜Assistant｜>");
    // Turn markers are single tokens when specials are parsed.
    let ids = ds.encode(&text, true);
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(ds.decode(&ids), text);
    let tiny = Tokenizer::from_tokenizer_json(&dir.join("tiny-llama/hf/tokenizer.json")).unwrap();
    assert_eq!(tiny.chat_template_or_builtin(), None);
    assert!(tiny.apply_chat_template(&[ChatMessage::new("user", "Hi")], true).is_err());
}
