//! Malformed MoE model files are load errors that name the problem, never panics: the tiny
//! fixtures rewritten with one metadata value or tensor changed.

use std::path::Path;

use hy_engine::formats::gguf::MetaValue;
use hy_engine::formats::gguf_writer::{GgufWriter, WriterTensor};
use hy_engine::formats::GgufFile;
use hy_engine::models::loader::{load, LoadOptions};

fn fixture(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(rel)
}

/// Rewrites `src` with metadata `key` set to `value` (`None`: removed) and tensor `drop`
/// left out, then loads it; returns the error text.
fn load_mutated(src: &str, key: &str, value: Option<MetaValue>, drop: Option<&str>) -> String {
    let g = GgufFile::open(&fixture(src)).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        if k == key {
            continue;
        }
        w.add_meta(k, v.clone());
    }
    if let Some(v) = value {
        w.add_meta(key, v);
    }
    for t in g.tensors() {
        if Some(t.name.as_str()) == drop {
            continue;
        }
        w.add_tensor(WriterTensor::new(&t.name, t.dims.clone(), t.ggml_type, g.tensor_bytes(t).to_vec()));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, w.to_bytes()).unwrap();
    match load(&path, &LoadOptions::default()) {
        Ok(_) => panic!("{src} with {key} = {:?} / without {drop:?} loaded", g.get(key)),
        Err(e) => format!("{e:#}"),
    }
}

const DS: &str = "tiny-deepseek-v3/gguf/tiny-deepseek-v3-Q8_0.gguf";
const QW: &str = "tiny-qwen3-moe/gguf/tiny-qwen3-moe-Q8_0.gguf";

#[test]
fn deepseek2_bad_metadata_is_an_error() {
    let cases: [(&str, Option<MetaValue>, &str); 8] = [
        ("deepseek2.attention.kv_lora_rank", Some(MetaValue::U32(128)), "attn_kv_a_mqa"),
        ("deepseek2.expert_group_count", Some(MetaValue::U32(3)), "groups"),
        ("deepseek2.expert_used_count", Some(MetaValue::U32(0)), "top_k"),
        ("deepseek2.expert_used_count", Some(MetaValue::U32(17)), "top_k"),
        ("deepseek2.attention.head_count", Some(MetaValue::U32(0)), "head"),
        ("deepseek2.rope.dimension_count", Some(MetaValue::U32(65)), "rope"),
        ("deepseek2.attention.key_length_mla", Some(MetaValue::U32(32)), "rope"),
        ("deepseek2.expert_count", Some(MetaValue::U32(32)), "ffn_gate_inp"),
    ];
    for (key, value, want) in cases {
        let e = load_mutated(DS, key, value, None);
        assert!(e.contains(want), "{key}: {e}");
    }
    let e = load_mutated(DS, "deepseek2.attention.kv_lora_rank", None, None);
    assert!(e.contains("kv_lora_rank"), "{e}");
}

#[test]
fn missing_tensors_are_named() {
    let e = load_mutated(DS, "", None, Some("blk.1.ffn_gate_exps.weight"));
    assert!(e.contains("blk.1.ffn_gate.0.weight"), "{e}");
    let e = load_mutated(DS, "", None, Some("blk.2.attn_v_b.weight"));
    assert!(e.contains("blk.2.attn_v_b.weight"), "{e}");
    let e = load_mutated(QW, "", None, Some("blk.0.attn_k_norm.weight"));
    assert!(e.contains("blk.0.attn_k_norm.weight"), "{e}");
}

#[test]
fn qwen3moe_bad_metadata_is_an_error() {
    let cases: [(&str, Option<MetaValue>, &str); 3] = [
        ("qwen3moe.attention.head_count_kv", Some(MetaValue::U32(3)), "KV heads"),
        ("qwen3moe.attention.key_length", Some(MetaValue::U32(32)), "attn_q"),
        ("qwen3moe.expert_feed_forward_length", Some(MetaValue::U32(65)), "ffn_gate_exps"),
    ];
    for (key, value, want) in cases {
        let e = load_mutated(QW, key, value, None);
        assert!(e.contains(want), "{key}: {e}");
    }
}
