//! Resolves the MODEL argument of `hy plan` into what the planner needs:
//! a catalog name or HF repo id alias → the catalog entry (any quantization);
//! a local GGUF file (single or sharded) → exact bytes summed from its tensor headers;
//! a local HF folder → exact bytes from its safetensors headers (or, with no weights in the
//! folder, or another quantization asked for, bytes computed from config.json).
//! Only headers are read; the files are memory-mapped, never loaded.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use hy_engine::formats::gguf::GgufFile;
use hy_engine::formats::safetensors::{SafeTensors, StDtype};
use hy_planner::arch::{ArchKind, Architecture, Mla};
use hy_planner::catalog::{self, CatalogModel};
use hy_planner::model::{classify_gguf, classify_hf, Excluded, ModelSpec};
use hy_planner::plan::{ModelInput, QuantChoice};
use hy_planner::Quant;
use serde_json::Value;

use crate::exit;

/// Resolves MODEL. `quant` matters only for HF folders: a quantization other than the
/// folder's own is priced from config.json. `from_config` prices an HF folder from its
/// config even when weights are present.
pub fn resolve(model: &str, quant: QuantChoice, from_config: bool) -> anyhow::Result<ModelInput> {
    let path = Path::new(model);
    if path.exists() {
        return resolve_path(path, quant, from_config);
    }
    if let Some(m) = catalog::find(model)? {
        return Ok(ModelInput::Catalog(Box::new(m)));
    }
    if model.ends_with(".gguf") || model.starts_with('.') || model.starts_with('/') {
        return Err(exit::coded(exit::INVALID_INPUT, format!("{model}: no such file or folder")));
    }
    let names: Vec<String> = catalog::catalog()?.into_iter().map(|m| m.name).collect();
    Err(exit::coded(
        exit::USAGE,
        format!(
            "unknown model '{model}': not a catalog name or alias, and no such path.\n  catalog: {}\n  \
             or pass a local GGUF file or HF folder (`hy plan --list-models` shows aliases)",
            names.join(", ")
        ),
    ))
}

fn invalid(e: impl std::fmt::Display) -> anyhow::Error {
    exit::coded(exit::INVALID_INPUT, e.to_string())
}

fn resolve_path(path: &Path, quant: QuantChoice, from_config: bool) -> anyhow::Result<ModelInput> {
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return hf_folder(path, quant, from_config);
        }
        return gguf_file(&gguf_in_dir(path)?);
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".gguf") {
        return gguf_file(path);
    }
    if name == "config.json" || name.ends_with(".safetensors") {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        return hf_folder(dir, quant, from_config);
    }
    Err(invalid(format!(
        "{}: not a GGUF file (.gguf), an HF folder (with config.json) or a folder holding one GGUF model",
        path.display()
    )))
}

/// The one GGUF model in a folder (its first shard when split).
fn gguf_in_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .filter(|p| hy_engine::formats::gguf::parse_split_name(p).is_none_or(|(_, no, _)| no == 1))
        .collect();
    files.sort();
    match files.len() {
        1 => Ok(files.remove(0)),
        0 => Err(invalid(format!("{}: no config.json and no .gguf file in this folder", dir.display()))),
        _ => Err(invalid(format!(
            "{}: holds {} GGUF models ({}); pass one file",
            dir.display(),
            files.len(),
            files.iter().filter_map(|f| f.file_name()?.to_str().map(str::to_string)).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// llama.cpp's `general.file_type` numbers (LLAMA_FTYPE_*).
fn ftype_name(n: u64) -> Option<&'static str> {
    Some(match n {
        0 => "f32",
        1 => "f16",
        2 => "q4_0",
        3 => "q4_1",
        7 => "q8_0",
        8 => "q5_0",
        9 => "q5_1",
        10 => "q2_k",
        11 => "q3_k_s",
        12 => "q3_k_m",
        13 => "q3_k_l",
        14 => "q4_k_s",
        15 => "q4_k_m",
        16 => "q5_k_s",
        17 => "q5_k_m",
        18 => "q6_k",
        19 => "iq2_xxs",
        20 => "iq2_xs",
        21 => "q2_k_s",
        22 => "iq3_xs",
        23 => "iq3_xxs",
        24 => "iq1_s",
        25 => "iq4_nl",
        26 => "iq3_s",
        27 => "iq3_m",
        28 => "iq2_s",
        29 => "iq2_m",
        30 => "iq4_xs",
        31 => "iq1_m",
        32 => "bf16",
        36 => "tq1_0",
        37 => "tq2_0",
        38 => "mxfp4_moe",
        _ => return None,
    })
}

fn kind_and_family(arch: &str, has_experts: bool) -> (ArchKind, &'static str) {
    match arch {
        "deepseek2" | "deepseek3" | "deepseek_v3" | "deepseek_v2" => (ArchKind::DeepseekV3, "deepseek"),
        "kimi_k2" => (ArchKind::DeepseekV3, "kimi"),
        "qwen3moe" | "qwen3_moe" | "qwen2moe" => (ArchKind::Qwen3Moe, "qwen3_moe"),
        "glm4moe" | "glm4_moe" => (ArchKind::Glm4Moe, "glm4_moe"),
        "gpt-oss" | "gpt_oss" => (ArchKind::GptOss, "gpt_oss"),
        _ if has_experts => (ArchKind::Qwen3Moe, "qwen3_moe"),
        _ => (ArchKind::Llama, "llama"),
    }
}

/// A GGUF file or split set: architecture from the metadata, bytes summed per component.
pub fn gguf_file(path: &Path) -> anyhow::Result<ModelInput> {
    let g = GgufFile::open(path).map_err(invalid)?;
    let arch_name = g.architecture().unwrap_or("unknown").to_string();
    let u = |k: &str| g.arch_u64(k);
    let experts = u("expert_count").unwrap_or(0);
    let (kind, family) = kind_and_family(&arch_name, experts > 1);
    let hidden = u("embedding_length").unwrap_or(0);
    let heads = u("attention.head_count").unwrap_or(0);
    let vocab = u("vocab_size")
        .or_else(|| g.get_str_array("tokenizer.ggml.tokens").map(|t| t.len() as u64))
        .or_else(|| g.tensor("token_embd.weight").and_then(|t| t.dims.get(1).copied()))
        .unwrap_or(0);
    let rope = u("rope.dimension_count").unwrap_or(0);
    let mla = u("attention.kv_lora_rank").map(|kv_lora| {
        let key = u("attention.key_length_mla").or(u("attention.key_length")).unwrap_or(rope);
        let value = u("attention.value_length_mla").or(u("attention.value_length")).unwrap_or(0);
        Mla {
            q_lora_rank: u("attention.q_lora_rank").unwrap_or(0),
            kv_lora_rank: kv_lora,
            qk_nope_head_dim: key.saturating_sub(rope),
            qk_rope_head_dim: rope,
            v_head_dim: value,
        }
    });
    let arch = Architecture {
        kind,
        hidden_size: hidden,
        num_layers: u("block_count").unwrap_or(0),
        vocab_size: vocab,
        num_heads: heads,
        num_kv_heads: u("attention.head_count_kv").unwrap_or(heads),
        head_dim: u("attention.key_length").unwrap_or(hidden.checked_div(heads).unwrap_or(0)),
        intermediate_size: u("feed_forward_length").unwrap_or(0),
        first_dense_layers: u("leading_dense_block_count").unwrap_or(0),
        num_experts: experts,
        experts_per_token: u("expert_used_count").unwrap_or(0),
        moe_intermediate_size: u("expert_feed_forward_length").unwrap_or(0),
        num_shared_experts: u("expert_shared_count").unwrap_or(0),
        mla,
        tie_word_embeddings: g.tensor("output.weight").is_none(),
        sliding_window: if kind == ArchKind::GptOss { u("attention.sliding_window") } else { None },
        max_context: u("context_length").unwrap_or(4096),
        mtp_layers: u("nextn_predict_layers").unwrap_or(0),
    };
    arch.check_bounds().map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    let quant = g.get_u64("general.file_type").and_then(ftype_name).unwrap_or("mixed");
    let name = g
        .get_str("general.name")
        .map(str::to_string)
        .unwrap_or_else(|| path.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string());
    let shards = g.paths().len();
    let source = format!("gguf {} ({shards} file{})", path.display(), if shards == 1 { "" } else { "s" });
    let mut spec = ModelSpec::new(&name, &source, quant, family, arch, true);
    let mut excluded = 0u64;
    for t in g.tensors() {
        match classify_gguf(&t.name) {
            Some((c, layer)) => spec.add_tensor(c, layer, t.ggml_type.name(), t.n_elements(), t.n_bytes),
            None => excluded += t.n_bytes,
        }
    }
    if excluded > 0 {
        spec.excluded.push(Excluded { what: "MTP (nextn) tensors: not loaded".into(), bytes: excluded });
    }
    Ok(ModelInput::Fixed { spec: Box::new(spec), reference: path.display().to_string() })
}

/// An HF folder's architecture from config.json, as a catalog-like entry.
fn hf_config(dir: &Path) -> anyhow::Result<CatalogModel> {
    let file = dir.join("config.json");
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let c: Value = serde_json::from_str(&text).map_err(|e| invalid(format!("{}: {e}", file.display())))?;
    let get = |k: &str| c.get(k).and_then(Value::as_u64);
    let model_type = c.get("model_type").and_then(Value::as_str).unwrap_or("unknown");
    let experts = get("n_routed_experts").or(get("num_experts")).or(get("num_local_experts")).unwrap_or(0);
    let (kind, family) = kind_and_family(model_type, experts > 1);
    let hidden = get("hidden_size").unwrap_or(0);
    let heads = get("num_attention_heads").unwrap_or(0);
    let mla = get("kv_lora_rank").map(|kv| Mla {
        q_lora_rank: get("q_lora_rank").unwrap_or(0),
        kv_lora_rank: kv,
        qk_nope_head_dim: get("qk_nope_head_dim").unwrap_or(0),
        qk_rope_head_dim: get("qk_rope_head_dim").unwrap_or(0),
        v_head_dim: get("v_head_dim").unwrap_or(0),
    });
    let moe_inter =
        get("moe_intermediate_size").or(if kind == ArchKind::GptOss { get("intermediate_size") } else { None });
    let arch = Architecture {
        kind,
        hidden_size: hidden,
        num_layers: get("num_hidden_layers").unwrap_or(0),
        vocab_size: get("vocab_size").unwrap_or(0),
        num_heads: heads,
        num_kv_heads: get("num_key_value_heads").unwrap_or(heads),
        head_dim: get("head_dim").unwrap_or(hidden.checked_div(heads).unwrap_or(0)),
        intermediate_size: get("intermediate_size").unwrap_or(0),
        first_dense_layers: get("first_k_dense_replace").unwrap_or(0),
        num_experts: experts,
        experts_per_token: get("num_experts_per_tok").or(get("experts_per_token")).unwrap_or(0),
        moe_intermediate_size: moe_inter.unwrap_or(0),
        num_shared_experts: get("n_shared_experts").unwrap_or(0),
        mla,
        tie_word_embeddings: c.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
        sliding_window: if kind == ArchKind::GptOss { get("sliding_window") } else { None },
        max_context: get("max_position_embeddings").unwrap_or(4096),
        mtp_layers: get("num_nextn_predict_layers").unwrap_or(0),
    };
    arch.validate().map_err(|e| invalid(format!("{}: {e}", file.display())))?;
    let qc = c.get("quantization_config");
    let native = match qc.and_then(|q| q.get("quant_method")).and_then(Value::as_str) {
        Some("fp8") => "fp8",
        Some("mxfp4") => "mxfp4",
        _ => "bf16",
    };
    let mut quants = vec![native.to_string()];
    quants.extend(
        ["q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k"]
            .iter()
            .filter(|_| native != "mxfp4")
            .map(|s| s.to_string()),
    );
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .unwrap_or_else(|| "model".into());
    Ok(CatalogModel {
        display_name: name.clone(),
        name,
        family: family.into(),
        description: format!("{model_type} from {}", file.display()),
        aliases: vec![],
        native_quant: native.into(),
        quants,
        architecture: arch,
    })
}

fn st_type_name(d: StDtype) -> &'static str {
    match d {
        StDtype::F64 => "F64",
        StDtype::F32 => "F32",
        StDtype::F16 => "F16",
        StDtype::BF16 => "BF16",
        StDtype::F8E4M3 => "FP8",
        StDtype::F8E5M2 => "F8_E5M2",
        StDtype::I64 => "I64",
        StDtype::I32 => "I32",
        StDtype::I16 => "I16",
        StDtype::I8 => "I8",
        StDtype::U8 => "U8",
        StDtype::Bool => "BOOL",
    }
}

fn has_safetensors(dir: &Path) -> bool {
    dir.join("model.safetensors.index.json").is_file()
        || std::fs::read_dir(dir)
            .map(|r| r.filter_map(|e| e.ok()).any(|e| e.path().extension().is_some_and(|x| x == "safetensors")))
            .unwrap_or(false)
}

/// An HF folder: exact bytes from the safetensors headers when the weights are there and
/// the folder's own quantization is asked for; otherwise priced from config.json.
fn hf_folder(dir: &Path, quant: QuantChoice, from_config: bool) -> anyhow::Result<ModelInput> {
    let model = hf_config(dir)?;
    let native = Quant::parse(&model.native_quant);
    let wants_other = matches!(quant, QuantChoice::Fixed(q) if Some(q) != native);
    if from_config || wants_other || !has_safetensors(dir) {
        if !from_config && !wants_other {
            eprintln!("hy: {}: no safetensors weights; sizes computed from config.json", dir.display());
        }
        return Ok(ModelInput::Catalog(Box::new(model)));
    }
    let st = SafeTensors::open(dir).map_err(invalid)?;
    let source = format!("safetensors {} ({} file(s))", dir.display(), st.paths().len());
    let arch = model.architecture.clone();
    let mut spec = ModelSpec::new(&model.name, &source, &model.native_quant, &model.family, arch, true);
    let mut mtp = 0u64;
    for t in st.tensors() {
        match classify_hf(&t.name, model.architecture.num_layers) {
            Some((c, layer)) => {
                // FP8 block scales are bytes of their weight, not parameters.
                let params = if t.name.ends_with("_scale_inv") { 0 } else { t.n_elements() };
                spec.add_tensor(c, layer, st_type_name(t.dtype), params, t.n_bytes)
            }
            None => mtp += t.n_bytes,
        }
    }
    if mtp > 0 {
        spec.excluded.push(Excluded { what: "multi-token-prediction layer(s): not loaded".into(), bytes: mtp });
    }
    if spec.total_bytes() == 0 {
        bail!("{}: the safetensors files hold no tensors", dir.display());
    }
    Ok(ModelInput::Fixed { spec: Box::new(spec), reference: dir.display().to_string() })
}
