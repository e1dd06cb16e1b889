//! Opens a model file or folder and builds the right architecture.
//!
//! - A GGUF file (or the first shard of a split GGUF): dispatch on `general.architecture`.
//! - An HF folder (or a file inside it): dispatch on `config.json`'s `model_type`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde_json::Value;

use super::common::KvDtype;
use super::error::ModelError;
use super::{gemma3, llama, Model};
use crate::formats::{GgufFile, GgufTensor};

/// Options for loading a model.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Element type of the KV cache (f32 by default: exact; f16 halves its memory).
    pub kv_dtype: KvDtype,
    /// Where GGUF weights live while the model runs.
    pub weights: WeightMemory,
}

/// Where a GGUF model's weights live while it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightMemory {
    /// In anonymous memory with huge pages when the machine has the RAM for a copy
    /// (available memory ≥ 1.1 × the file), else mapped; `HY_WEIGHTS=mmap|memory` decides instead.
    #[default]
    Auto,
    /// The file mapping (page cache, 4 KB pages; nothing copied).
    Mapped,
    /// Copied into anonymous memory with transparent huge pages.
    Memory,
}

impl WeightMemory {
    /// Whether to copy a model of `bytes` into memory.
    fn copy(self, bytes: u64) -> bool {
        let choice = match (self, std::env::var("HY_WEIGHTS").as_deref()) {
            (WeightMemory::Auto, Ok("mmap")) => WeightMemory::Mapped,
            (WeightMemory::Auto, Ok("memory")) => WeightMemory::Memory,
            _ => self,
        };
        match choice {
            WeightMemory::Mapped => false,
            WeightMemory::Memory => true,
            WeightMemory::Auto => available_memory().is_some_and(|avail| avail as f64 >= 1.1 * bytes as f64),
        }
    }
}

/// `MemAvailable` from /proc/meminfo, in bytes (None where it cannot be read).
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Loads the model at `path` (GGUF file, HF folder, or a file inside an HF folder).
pub fn load(path: &Path, opts: &LoadOptions) -> anyhow::Result<Box<dyn Model>> {
    if !path.exists() {
        anyhow::bail!("model path {} does not exist; pass a .gguf file or a folder with config.json", path.display());
    }
    match hf_folder(path) {
        Some(dir) => load_hf(&dir, opts),
        None => load_gguf(path, opts),
    }
}

/// The HF folder `path` denotes: the folder itself, or the parent of a non-GGUF file, when it
/// has a config.json.
fn hf_folder(path: &Path) -> Option<PathBuf> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else if path.extension().is_some_and(|e| e == "gguf") {
        return None;
    } else {
        path.parent()?.to_path_buf()
    };
    dir.join("config.json").is_file().then_some(dir)
}

/// Loads a GGUF model.
pub fn load_gguf(path: &Path, opts: &LoadOptions) -> anyhow::Result<Box<dyn Model>> {
    let file = GgufFile::open(path).with_context(|| format!("opening GGUF model {}", path.display()))?;
    load_gguf_file(file, path, opts)
}

/// Loads a GGUF model from the opened `file` (of `path`, named in errors): for callers that
/// read other metadata of the file too, such as its tokenizer, and open it once.
pub fn load_gguf_file(mut file: GgufFile, path: &Path, opts: &LoadOptions) -> anyhow::Result<Box<dyn Model>> {
    if opts.weights.copy(file.file_bytes()) {
        file.load_into_memory_repacking(&repack_for_kernels);
    } else {
        // Map every weight page now, not as page faults in the middle of decode.
        file.prefault();
    }
    let file = Arc::new(file);
    let arch = file
        .architecture()
        .ok_or_else(|| ModelError::config("general.architecture", format!("missing in {}", path.display())))?
        .to_string();
    let model: Box<dyn Model> = match arch.as_str() {
        a if llama::GGUF_ARCHS.contains(&a) => Box::new(llama::load_gguf(file, opts.kv_dtype)?),
        "gemma3" => Box::new(gemma3::load_gguf(file, opts.kv_dtype)?),
        "deepseek2" => super::deepseek2::load_gguf(file, opts.kv_dtype)?,
        "qwen3moe" => super::qwen3moe::load_gguf(file, opts.kv_dtype)?,
        other => return Err(unsupported(other, path)),
    };
    Ok(model)
}

/// Repacks a matrix of Q4_K, Q6_K, Q4_0, Q5_0 or Q8_0 into the 16-row layout of
/// `kernels::x16`, in the copy made at load, when this CPU runs those kernels, the process
/// computes in Fast precision outside llama.cpp-order mode and `HY_REPACK=0` is not set.
/// Which matrices:
/// - routed-expert stacks (`blk.N.ffn_{gate,up,down}_exps.weight`) of Q4_K and Q6_K, always:
///   their products have the few tokens a prompt gives each expert, where the layout is
///   fastest;
/// - on CPUs without AMX tiles, also the 32-weight block types' expert stacks, MLA's
///   per-head `attn_k_b`/`attn_v_b`, and the layer matrices the models use only through
///   products (attention projections, dense and shared-expert FFNs): with a prompt's rows the
///   16-row kernels are 3–4× the row-major ones there. With AMX, those products take the
///   row-major tiles (and the 32-weight types' layout is not measured there yet). Not the
///   output head, which a prompt multiplies by its last row only and where the row-major
///   Q6_K kernel streams faster at one row, nor the token embeddings (read by row).
///
/// Every row group must be whole (16 rows per expert or matrix). Returns whether it repacked.
fn repack_for_kernels(t: &GgufTensor, bytes: &mut [u8]) -> bool {
    use crate::kernels::{precision, quant::llama_order, x16, Precision};
    if precision() != Precision::Fast || llama_order() || !x16::enabled() {
        return false;
    }
    let tiles = x16::prompt_tiles();
    let kind = layer_kind(&t.name).unwrap_or("");
    let (cols, rows, wanted) = match t.dims[..] {
        [cols, rows, _] => {
            let experts = kind.ends_with("_exps") && x16::repacks_experts(t.ggml_type);
            let per_head = matches!(kind, "attn_k_b" | "attn_v_b") && !tiles;
            (cols, rows, experts || per_head)
        }
        [cols, rows] => (cols, rows, products_only(kind) && !tiles),
        _ => return false,
    };
    if !(wanted && x16::fits(t.ggml_type, rows as usize, cols as usize)) {
        return false;
    }
    x16::repack_in_place(t.ggml_type, bytes, cols as usize);
    true
}

/// `attn_q` for `blk.3.attn_q.weight`: the kind of a layer tensor (None for the others).
fn layer_kind(name: &str) -> Option<&str> {
    let (index, tail) = name.strip_prefix("blk.")?.split_once('.')?;
    index.parse::<usize>().ok()?;
    tail.strip_suffix(".weight")
}

/// Whether the models use layer tensors of `kind` (see [`layer_kind`]) only as the weights of
/// products (never by row or by their bytes; `attn_kv_b` is rearranged at load).
fn products_only(kind: &str) -> bool {
    const LAYER: [&str; 13] = [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "attn_q_a",
        "attn_q_b",
        "attn_kv_a_mqa",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
        "ffn_gate_shexp",
        "ffn_up_shexp",
        "ffn_down_shexp",
    ];
    LAYER.contains(&kind)
}

/// Loads an HF transformers folder (config.json + safetensors).
pub fn load_hf(dir: &Path, opts: &LoadOptions) -> anyhow::Result<Box<dyn Model>> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
    let config: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", cfg_path.display()))?;
    let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or("").to_string();
    let model: Box<dyn Model> = match model_type.as_str() {
        t if llama::HF_TYPES.contains(&t) => Box::new(
            llama::load_hf(dir, &config, opts.kv_dtype)
                .with_context(|| format!("loading HF model {}", dir.display()))?,
        ),
        "deepseek_v3" | "deepseek_v2" | "kimi_k2" => {
            super::deepseek2::load_hf(dir, &super::hf::HfConfig::load(dir)?, opts.kv_dtype)
                .with_context(|| format!("loading HF model {}", dir.display()))?
        }
        "qwen3_moe" => super::qwen3moe::load_hf(dir, &super::hf::HfConfig::load(dir)?, opts.kv_dtype)
            .with_context(|| format!("loading HF model {}", dir.display()))?,
        other => return Err(unsupported(other, dir)),
    };
    Ok(model)
}

fn unsupported(arch: &str, path: &Path) -> anyhow::Error {
    ModelError::Unsupported(format!(
        "architecture `{arch}` of {} (supported: llama, qwen2, mistral, gemma3)",
        path.display()
    ))
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf_writer::{GgufWriter, WriterTensor};
    use crate::kernels::{self, x16, QMatrix, WeightType};
    use crate::models::weights::{GgufSource, WeightSource};
    use crate::GgmlType;

    /// A Q4_K and a Q6_K expert stack (2 experts of 16 × 512 each), a Q8_0 one, a Q6_K
    /// per-head stack, a Q4_K attention matrix and Q4_K token embeddings.
    fn file_with_experts(dir: &Path) -> (PathBuf, Vec<u8>, Vec<u8>, Vec<u8>) {
        let random = |ty: GgmlType, seed| {
            let mut v = vec![0u8; ty.bytes_for(2 * 16 * 512).unwrap() as usize];
            crate::synth::fill_random(ty, &mut v, seed);
            v
        };
        let (q4, q6, q8) = (random(GgmlType::Q4_K, 21), random(GgmlType::Q6_K, 22), random(GgmlType::Q8_0, 23));
        let mut w = GgufWriter::new();
        w.add_meta("general.architecture", crate::formats::MetaValue::String("deepseek2".into()));
        let dims = vec![512, 16, 2];
        w.add_tensor(WriterTensor::new("blk.1.ffn_up_exps.weight", dims.clone(), GgmlType::Q4_K, q4.clone()));
        w.add_tensor(WriterTensor::new("blk.1.ffn_down_exps.weight", dims.clone(), GgmlType::Q6_K, q6.clone()));
        w.add_tensor(WriterTensor::new("blk.1.attn_v_b.weight", dims.clone(), GgmlType::Q6_K, q6.clone()));
        w.add_tensor(WriterTensor::new("blk.1.ffn_gate_exps.weight", dims, GgmlType::Q8_0, q8.clone()));
        w.add_tensor(WriterTensor::new("blk.1.attn_q_a.weight", vec![512, 32], GgmlType::Q4_K, q4.clone()));
        w.add_tensor(WriterTensor::new("token_embd.weight", vec![512, 32], GgmlType::Q4_K, q4.clone()));
        let path = dir.join("experts.gguf");
        std::fs::write(&path, w.to_bytes()).unwrap();
        (path, q4, q6, q8)
    }

    /// The Q4_K expert stacks of the tiny DeepSeek fixture (16 experts of 64 × 256) are
    /// repacked, so the Fast-precision model tests (`models_moe_fast`) run the 16-row kernels.
    #[test]
    fn the_fixture_experts_are_repacked() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/tiny-deepseek-v3/gguf/tiny-deepseek-v3-Q4_K_M.gguf");
        let mut file = GgufFile::open(&path).unwrap();
        file.load_into_memory_repacking(&repack_for_kernels);
        let gate = file.tensor("blk.1.ffn_gate_exps.weight").unwrap();
        assert_eq!(gate.ggml_type, GgmlType::Q4_K);
        assert_eq!(file.is_repacked(gate), x16::enabled());
    }

    #[test]
    fn products_only_names_the_layer_matrices() {
        let kind = |name| layer_kind(name).unwrap_or("");
        for yes in ["blk.0.attn_output.weight", "blk.12.ffn_down_shexp.weight", "blk.3.attn_q_b.weight"] {
            assert!(products_only(kind(yes)), "{yes}");
        }
        let no = ["token_embd.weight", "output.weight", "blk.0.attn_kv_b.weight", "blk.1.ffn_gate_inp.weight"];
        for no in no.into_iter().chain(["blk.x.attn_q.weight"]) {
            assert!(!products_only(kind(no)), "{no}");
        }
    }

    #[test]
    fn k_quant_matrices_are_repacked_in_the_copy_and_compute_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let (path, q4, q6, q8) = file_with_experts(dir.path());
        let mut file = GgufFile::open(&path).unwrap();
        file.load_into_memory_repacking(&repack_for_kernels);
        let src = GgufSource::new(Arc::new(file));
        let weight = |name: &str| src.weight(name).unwrap().unwrap();
        let other = weight("blk.1.attn_q_a.weight");
        let dense = if x16::enabled() && !x16::prompt_tiles() { WeightType::X16(GgmlType::Q4_K) } else { other.ty };
        assert_eq!(other.ty, dense, "products-only matrices are repacked where no AMX tiles take them");
        let v_b = weight("blk.1.attn_v_b.weight");
        let heads = if x16::enabled() && !x16::prompt_tiles() { WeightType::X16(GgmlType::Q6_K) } else { v_b.ty };
        assert_eq!(v_b.ty, heads, "MLA's per-head values are repacked where no AMX tiles take them");
        let embd = weight("token_embd.weight");
        assert_eq!(embd.ty, WeightType::Ggml(GgmlType::Q4_K), "the token embeddings are read by row");
        let stacks = [
            ("blk.1.ffn_up_exps.weight", GgmlType::Q4_K, q4),
            ("blk.1.ffn_down_exps.weight", GgmlType::Q6_K, q6),
            ("blk.1.ffn_gate_exps.weight", GgmlType::Q8_0, q8),
        ];
        for (name, ty, plain) in stacks {
            let experts = weight(name);
            if !x16::enabled() || (x16::is_small(ty) && x16::prompt_tiles()) {
                eprintln!("{ty:?}: no repacking on this CPU");
                assert_eq!(experts.ty, WeightType::Ggml(ty));
                continue;
            }
            assert_eq!(experts.ty, WeightType::X16(ty));
            assert_ne!(&experts.bytes[..], &plain[..]);
            let second = experts.slice_rows(16, 16).unwrap();
            let want_w = QMatrix::new(ty, 16, 512, &plain[plain.len() / 2..]).unwrap();
            for n in [1, 3, 9] {
                let x: Vec<f32> = (0..n * 512).map(|i| ((i * 29 % 97) as f32 - 48.0) / 24.0).collect();
                let (mut got, mut want) = (vec![0f32; n * 16], vec![0f32; n * 16]);
                kernels::matmul(&second.qmatrix(), &x, n, &mut got);
                kernels::matmul(&want_w, &x, n, &mut want);
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{ty:?} n {n}: {a} vs {b}");
                }
            }
        }
    }
}
