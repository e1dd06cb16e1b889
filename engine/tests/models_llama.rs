//! The llama architecture against the tiny-llama references (tests/fixtures/tiny-llama):
//! transformers logits for the float sources, and transformers on the weights dequantized from
//! each quantized GGUF (`hf-dequant-gguf-*`), with the rule of `shared/tools/check-logits`:
//! normalised RMS error ≤ 1e-2 for float sources, ≤ max(1e-2, 1.5 × llama.cpp's own error
//! against the same reference) for quantized ones.

use hy_engine::runtime::sampling::argmax;
use std::path::{Path, PathBuf};

use hy_engine::kernels::{set_precision, Precision};
use hy_engine::models::loader::{load, LoadOptions};
use hy_engine::models::{Logits, Model};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llama")
}

fn f32_file(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn nrmse(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got.iter().zip(want).map(|(&a, &b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn prompts() -> Vec<Vec<u32>> {
    let p = json(&root().join("ref/prompts.json"));
    p["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ids| ids.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect())
        .collect()
}

/// The reference logits file of `source` for prompt `p`.
fn ref_logits(index: &Value, source: &str, p: usize) -> Option<Vec<f32>> {
    let files = index["sources"].get(source)?["logits_files"].as_array()?;
    let f = files.iter().find(|f| f["prompt"].as_u64() == Some(p as u64))?;
    Some(f32_file(&root().join("ref").join(f["file"].as_str()?)))
}

fn all_logits(model: &dyn Model, ids: &[u32]) -> Vec<f32> {
    let mut st = model.new_state(ids.len());
    model.forward(&mut st, ids, Logits::All).unwrap()
}

/// Worst error of `model` over all prompts against `source`'s rule; returns (error, limit).
fn check_source(model: &dyn Model, source: &str) -> (f64, f64) {
    let index = json(&root().join("ref/index.json"));
    let (mut worst, mut limit) = (0.0f64, 1e-2f64);
    for (p, ids) in prompts().iter().enumerate() {
        let mut want = ref_logits(&index, source, p).expect("reference logits");
        if let Some(dq) = ref_logits(&index, &format!("hf-dequant-{source}"), p) {
            limit = limit.max(1.5 * nrmse(&want, &dq));
            want = dq;
        }
        let got = all_logits(model, ids);
        worst = worst.max(nrmse(&got, &want));
    }
    (worst, limit)
}

fn gguf(q: &str) -> PathBuf {
    root().join(format!("gguf/tiny-llama-{q}.gguf"))
}

fn load_exact(path: &Path) -> Box<dyn Model> {
    set_precision(Precision::Exact);
    load(path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

#[test]
fn gguf_sources_match_references() {
    for q in ["F16", "Q8_0", "Q4_K_M"] {
        let model = load_exact(&gguf(q));
        assert_eq!(model.info().arch, "llama");
        assert_eq!(model.info().vocab_size, 512);
        let (err, limit) = check_source(model.as_ref(), &format!("gguf-{q}"));
        eprintln!("gguf-{q}: nrmse {err:.2e} (limit {limit:.1e})");
        assert!(err <= limit, "gguf-{q}: nrmse {err:.3e} > {limit:.1e}");
    }
}

#[test]
fn hf_folder_matches_transformers_when_present() {
    let dir = root().join("hf");
    if !dir.join("model.safetensors").exists() {
        eprintln!("skipped: tiny-llama/hf/model.safetensors is not in this checkout (see tests/fixtures/README.md)");
        return;
    }
    let model = load_exact(&dir);
    let (err, limit) = check_source(model.as_ref(), "hf");
    assert!(err <= limit, "hf: nrmse {err:.3e} > {limit:.1e}");
}

/// Greedy decoding one token at a time through the KV cache reproduces transformers' greedy
/// continuations (F16 GGUF: the weights are the bf16 ones, exactly representable).
#[test]
fn incremental_greedy_decode_matches_reference() {
    let model = load_exact(&gguf("F16"));
    let index = json(&root().join("ref/index.json"));
    let greedy = index["sources"]["hf"]["greedy"].as_array().unwrap();
    for (p, ids) in prompts().iter().enumerate() {
        let want: Vec<u32> = greedy[p].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let mut st = model.new_state(ids.len() + want.len());
        let mut logits = model.forward(&mut st, ids, Logits::Last).unwrap();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let next = argmax(&logits);
            got.push(next);
            logits = model.forward(&mut st, &[next], Logits::Last).unwrap();
        }
        assert_eq!(got, want, "prompt {p}");
    }
}

/// Prefill in one call, prefill in pieces, and batched decode of several sequences all give
/// the same logits (the KV cache and the batch path are consistent with the reference path).
#[test]
fn chunked_prefill_and_batched_decode_agree() {
    let model = load_exact(&gguf("Q8_0"));
    let ids = &prompts()[2];
    let full = all_logits(model.as_ref(), ids);
    let v = model.info().vocab_size;

    let mut st = model.new_state(ids.len());
    let mut pieces = model.forward(&mut st, &ids[..5], Logits::All).unwrap();
    pieces.extend(model.forward(&mut st, &ids[5..6], Logits::All).unwrap());
    pieces.extend(model.forward(&mut st, &ids[6..], Logits::All).unwrap());
    assert_eq!(st.pos, ids.len());
    assert!(nrmse(&pieces, &full) < 1e-5);

    // Three sequences at different positions, one token each, in one forward_batch.
    let lens = [3usize, 10, 20];
    let mut states: Vec<_> = lens
        .iter()
        .map(|&n| {
            let mut s = model.new_state(64);
            model.forward(&mut s, &ids[..n], Logits::Last).unwrap();
            s
        })
        .collect();
    let next: Vec<u32> = lens.iter().map(|&n| ids[n]).collect();
    let mut refs: Vec<_> = states.iter_mut().collect();
    let batch = model.forward_batch(&mut refs, &next).unwrap();
    for (i, &n) in lens.iter().enumerate() {
        let want = &full[n * v..(n + 1) * v];
        assert!(nrmse(&batch[i], want) < 1e-5, "sequence {i}");
        assert_eq!(states[i].pos, n + 1);
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let model = load_exact(&gguf("Q4_K_M"));
    let mut st = model.new_state(4);
    let err = model.forward(&mut st, &[1, 512], Logits::Last).unwrap_err().to_string();
    assert!(err.contains("512") && err.contains("out of range"), "{err}");
    assert_eq!(st.pos, 0);
    let err = model.forward(&mut st, &[1, 2, 3, 4, 5], Logits::Last).unwrap_err().to_string();
    assert!(err.contains("context"), "{err}");
    assert!(model.forward(&mut st, &[1, 2, 3, 4], Logits::Last).is_ok());
    assert!(model.forward(&mut st, &[1], Logits::Last).is_err());

    let other = model.new_state(4);
    let mut foreign = hy_engine::models::SeqState { pos: 0, max_tokens: 4, cache: Box::new(()) };
    assert!(model.forward(&mut foreign, &[1], Logits::Last).is_err());
    drop(other);

    let missing = load(Path::new("/nonexistent/model.gguf"), &LoadOptions::default());
    assert!(missing.is_err());
    let not_gguf = load(&root().join("ref/prompts.json"), &LoadOptions::default());
    assert!(not_gguf.is_err());
}

/// A qwen2-layout GGUF made from the tiny-llama weights: Q/K rows in HF (NeoX) order — the
/// inverse of llama.cpp's llama permutation — plus (zero) q/k/v biases, under arch `arch`.
fn write_unpermuted(arch: &str, path: &Path) {
    use hy_engine::formats::gguf_writer::{GgufWriter, WriterTensor};
    use hy_engine::formats::{GgufFile, MetaValue};

    let src = GgufFile::open(&gguf("F16")).unwrap();
    let mut w = GgufWriter::new();
    w.add_meta("general.architecture", MetaValue::String(arch.into()));
    for (k, v) in src.metadata() {
        if let Some(rest) = k.strip_prefix("llama.") {
            w.add_meta(&format!("{arch}.{rest}"), v.clone());
        }
    }
    let (n_head, n_kv, hd) = (4usize, 2usize, 64usize);
    for t in src.tensors() {
        let bytes = src.tensor_bytes(t).to_vec();
        let data = if t.name.ends_with("attn_q.weight") {
            unpermute_rows(&bytes, n_head, hd, t.row_len() * 2)
        } else if t.name.ends_with("attn_k.weight") {
            unpermute_rows(&bytes, n_kv, hd, t.row_len() * 2)
        } else {
            bytes
        };
        w.add_tensor(WriterTensor::new(&t.name, t.dims.clone(), t.ggml_type, data));
        if let Some(layer) = t.name.strip_suffix(".attn_q.weight") {
            for (b, n) in [("attn_q.bias", n_head * hd), ("attn_k.bias", n_kv * hd), ("attn_v.bias", n_kv * hd)] {
                let zeros = vec![0u8; n * 4];
                w.add_tensor(WriterTensor::new(
                    &format!("{layer}.{b}"),
                    vec![n as u64],
                    hy_engine::GgmlType::F32,
                    zeros,
                ));
            }
        }
    }
    std::fs::write(path, w.to_bytes()).unwrap();
}

/// llama.cpp stores row (h, i, s) of a head at h·hd + 2i + s; HF at h·hd + s·hd/2 + i.
fn unpermute_rows(bytes: &[u8], n_heads: usize, hd: usize, row_bytes: usize) -> Vec<u8> {
    let mut out = vec![0u8; bytes.len()];
    for h in 0..n_heads {
        for i in 0..hd / 2 {
            for s in 0..2 {
                let from = h * hd + 2 * i + s;
                let to = h * hd + s * hd / 2 + i;
                out[to * row_bytes..(to + 1) * row_bytes]
                    .copy_from_slice(&bytes[from * row_bytes..(from + 1) * row_bytes]);
            }
        }
    }
    out
}

/// The qwen2 path (NeoX rope on a GGUF, bias tensors) against the same independent reference;
/// the same rows under arch `llama` (adjacent-pair rope) must not match, so the rope layout
/// really is what is being checked.
#[test]
fn qwen2_layout_gives_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let qwen2 = dir.path().join("tiny-qwen2.gguf");
    write_unpermuted("qwen2", &qwen2);
    let model = load_exact(&qwen2);
    assert_eq!(model.info().arch, "qwen2");
    let (err, limit) = check_source(model.as_ref(), "hf");
    assert!(err <= limit, "qwen2 layout: nrmse {err:.3e} > {limit:.1e}");

    let wrong = dir.path().join("tiny-llama-unpermuted.gguf");
    write_unpermuted("llama", &wrong);
    let (err, limit) = check_source(load_exact(&wrong).as_ref(), "hf");
    assert!(err > 10.0 * limit, "adjacent-pair rope on NeoX rows should not match (nrmse {err:.3e})");
}

/// Malformed metadata in an otherwise valid file gives an error naming the key, not a panic.
#[test]
fn malformed_metadata_is_an_error() {
    use hy_engine::formats::gguf_writer::{GgufWriter, WriterTensor};
    use hy_engine::formats::{GgufFile, MetaValue};

    let src = GgufFile::open(&gguf("Q8_0")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (key, value, says) in [
        ("llama.attention.head_count_kv", MetaValue::U32(3), "3 KV heads for 4 query heads"),
        ("llama.rope.dimension_count", MetaValue::U32(128), "128 rotated dimensions"),
        ("llama.attention.head_count", MetaValue::U32(0), "for 0 query heads"),
        ("llama.embedding_length", MetaValue::U32(128), "token_embd.weight"),
    ] {
        let mut w = GgufWriter::new();
        for (k, v) in src.metadata() {
            w.add_meta(k, if k == key { value.clone() } else { v.clone() });
        }
        for t in src.tensors() {
            w.add_tensor(WriterTensor::new(&t.name, t.dims.clone(), t.ggml_type, src.tensor_bytes(t).to_vec()));
        }
        let path = dir.path().join("bad.gguf");
        std::fs::write(&path, w.to_bytes()).unwrap();
        let err = match load(&path, &LoadOptions::default()) {
            Ok(_) => panic!("{key} = {value:?} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(says), "{key}: {err}");
    }
}

/// Prompts longer than one prefill chunk (512 tokens): one call, calls of other sizes, and
/// `Logits::Last` agree.
#[test]
fn long_prompts_are_chunked_consistently() {
    let model = load_exact(&gguf("Q4_K_M"));
    let v = model.info().vocab_size;
    let ids: Vec<u32> = prompts()[2].iter().cycle().take(1100).copied().collect();
    let full = all_logits(model.as_ref(), &ids);
    assert_eq!(full.len(), ids.len() * v);
    let mut st = model.new_state(ids.len());
    let mut pieces = Vec::new();
    for piece in ids.chunks(300) {
        pieces.extend(model.forward(&mut st, piece, Logits::All).unwrap());
    }
    assert!(nrmse(&pieces, &full) < 1e-5);
    let mut st = model.new_state(ids.len());
    let last = model.forward(&mut st, &ids, Logits::Last).unwrap();
    assert!(nrmse(&last, &full[(ids.len() - 1) * v..]) < 1e-5);
}

/// Weights copied into anonymous memory (huge pages) give the same logits, bit for bit, as
/// the file mapping.
#[test]
fn weights_in_memory_match_the_mapping() {
    use hy_engine::models::loader::WeightMemory;
    set_precision(Precision::Exact);
    let path = gguf("Q4_K_M");
    let ids = &prompts()[0];
    let with = |weights| {
        let m = load(&path, &LoadOptions { weights, ..Default::default() }).unwrap();
        all_logits(m.as_ref(), ids)
    };
    assert_eq!(with(WeightMemory::Memory), with(WeightMemory::Mapped));
}
