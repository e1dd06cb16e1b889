//! Hugging Face checkpoint folders: `config.json` parsing and a safetensors weight source
//! (memory-mapped views; BF16/F16/F32 as stored, DeepSeek FP8 as e4m3 + `weight_scale_inv`).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::dtype::GgmlType;
use crate::formats::safetensors::{SafeTensors, StDtype};
use crate::formats::TensorBytes;
use crate::kernels::WeightType;
use crate::models::common::{Rope, RopeStyle, YarnParams};
use crate::models::weights::{hf_common_name, Weight, WeightSource};
use crate::models::ModelError;

/// A parsed `config.json` with typed, error-reporting accessors.
#[derive(Clone, Debug)]
pub struct HfConfig {
    pub path: PathBuf,
    pub raw: Value,
}

impl HfConfig {
    /// Reads `<dir>/config.json` (or the file itself when `path` is a file).
    pub fn load(path: &Path) -> Result<HfConfig> {
        let file = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        Self::parse(&text, file)
    }

    /// Parses config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: PathBuf) -> Result<HfConfig> {
        let raw: Value = serde_json::from_str(text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        if !raw.is_object() {
            bail!("{}: expected a JSON object", path.display());
        }
        Ok(HfConfig { path, raw })
    }

    pub fn model_type(&self) -> Option<&str> {
        self.raw.get("model_type").and_then(Value::as_str)
    }

    /// First entry of `architectures` ("DeepseekV3ForCausalLM", ...).
    pub fn architecture(&self) -> Option<&str> {
        self.raw.get("architectures").and_then(Value::as_array).and_then(|a| a.first()).and_then(Value::as_str)
    }

    fn missing(&self, key: &str) -> anyhow::Error {
        anyhow!(
            "{}: `{key}` is missing or not the expected type; is this the model's own config.json?",
            self.path.display()
        )
    }

    /// `None` when absent or JSON null.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.raw.get(key).filter(|v| !v.is_null())
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().and_then(|u| usize::try_from(u).ok()).map(Some).ok_or_else(|| self.missing(key)),
        }
    }

    pub fn f64(&self, key: &str) -> Result<f64> {
        self.opt_f64(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.missing(key)),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.missing(key)),
        }
    }

    pub fn opt_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// A list of integers (e.g. `mlp_only_layers`); empty when absent.
    pub fn usize_list(&self, key: &str) -> Result<Vec<usize>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => {
                a.iter().map(|v| v.as_u64().map(|u| u as usize).ok_or_else(|| self.missing(key))).collect()
            }
            Some(_) => Err(self.missing(key)),
        }
    }

    /// `rope_scaling` (or the newer `rope_parameters` when it carries a scaling type).
    pub fn rope_scaling(&self) -> Result<Option<RopeScaling>> {
        let v = match self.get("rope_scaling") {
            Some(v) => v,
            None => match self.get("rope_parameters") {
                Some(v) if v.get("rope_type").and_then(Value::as_str) != Some("default") => v,
                _ => return Ok(None),
            },
        };
        RopeScaling::from_json(v, self.opt_usize("max_position_embeddings")?)
            .with_context(|| format!("{}: rope_scaling", self.path.display()))
    }

    /// RoPE base: top-level `rope_theta`, else inside `rope_parameters` / `rope_scaling`
    /// (transformers 5 moved it there), else `default`.
    pub fn rope_theta(&self, default: f64) -> Result<f64> {
        if let Some(t) = self.opt_f64("rope_theta")? {
            return Ok(t);
        }
        let nested = ["rope_parameters", "rope_scaling"]
            .iter()
            .find_map(|k| self.get(k).and_then(|v| v.get("rope_theta")).and_then(Value::as_f64));
        Ok(nested.unwrap_or(default))
    }

    /// The FP8 block quantisation (`quantization_config.quant_method == "fp8"`).
    pub fn fp8_block(&self) -> Result<Option<[usize; 2]>> {
        let Some(q) = self.get("quantization_config") else {
            return Ok(None);
        };
        match q.get("quant_method").and_then(Value::as_str) {
            Some("fp8") => {}
            Some(other) => bail!(
                "{}: quantization method `{other}` is not supported (only the DeepSeek fp8 format)",
                self.path.display()
            ),
            None => return Ok(None),
        }
        let block = q
            .get("weight_block_size")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect::<Vec<_>>())
            .unwrap_or_else(|| vec![128, 128]);
        if block != [128, 128] {
            bail!("{}: fp8 weight_block_size {block:?} is not supported (only [128, 128])", self.path.display());
        }
        if let Some(fmt) = q.get("fmt").and_then(Value::as_str) {
            if fmt != "e4m3" {
                bail!("{}: fp8 format `{fmt}` is not supported (only e4m3)", self.path.display());
            }
        }
        Ok(Some([128, 128]))
    }
}

/// Rope scaling parameters (YaRN is the one DeepSeek/Kimi use).
#[derive(Clone, Debug, PartialEq)]
pub struct RopeScaling {
    /// "yarn", "linear", ...
    pub kind: String,
    pub factor: f64,
    pub original_max_position_embeddings: Option<usize>,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    pub attention_factor: Option<f64>,
}

impl RopeScaling {
    fn from_json(v: &Value, max_pos: Option<usize>) -> Result<Option<RopeScaling>> {
        let kind =
            v.get("type").or_else(|| v.get("rope_type")).and_then(Value::as_str).unwrap_or("default").to_string();
        if kind == "default" {
            return Ok(None);
        }
        let num = |k: &str| v.get(k).and_then(Value::as_f64);
        let orig = v.get("original_max_position_embeddings").and_then(Value::as_u64).map(|u| u as usize);
        // transformers: without `factor`, the ratio of the context to the pretrained context.
        let factor = match (num("factor"), orig, max_pos) {
            (Some(f), _, _) => f,
            (None, Some(o), Some(m)) if o > 0 => m as f64 / o as f64,
            _ => bail!("`factor` is missing"),
        };
        if !(factor.is_finite() && factor > 0.0) {
            bail!("`factor` {factor} must be positive");
        }
        Ok(Some(RopeScaling {
            kind,
            factor,
            original_max_position_embeddings: orig.or(max_pos),
            beta_fast: num("beta_fast").unwrap_or(32.0),
            beta_slow: num("beta_slow").unwrap_or(1.0),
            mscale: num("mscale"),
            mscale_all_dim: num("mscale_all_dim"),
            attention_factor: num("attention_factor"),
        }))
    }
}

/// A model's display name from its HF folder: the folder's name, else `fallback`.
pub fn model_name(dir: &Path, fallback: &str) -> String {
    dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| fallback.to_string())
}

/// YaRN's attention-magnitude correction: `0.1 · m · ln(s) + 1` for `s > 1`, else 1.
pub fn yarn_get_mscale(scale: f64, m: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * m * scale.ln() + 1.0
    }
}

impl RopeScaling {
    /// The multiplier HF applies to cos/sin for YaRN (`attention_factor`, else the ratio of
    /// the `mscale` and `mscale_all_dim` corrections, else `0.1 ln(factor) + 1`).
    pub fn yarn_attn_factor(&self) -> f32 {
        let f = match (self.attention_factor, self.mscale, self.mscale_all_dim) {
            (Some(a), _, _) => a,
            (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                yarn_get_mscale(self.factor, m) / yarn_get_mscale(self.factor, all)
            }
            _ => yarn_get_mscale(self.factor, 1.0),
        };
        f as f32
    }

    /// The rope for `rot_dim` rotated dims with base `theta` under this scaling.
    pub fn rope(&self, style: RopeStyle, rot_dim: usize, theta: f64) -> Result<Rope> {
        match self.kind.as_str() {
            "yarn" => Ok(Rope::yarn(
                style,
                rot_dim,
                theta,
                YarnParams {
                    factor: self.factor,
                    original_context: self.original_max_position_embeddings.unwrap_or(4096) as f64,
                    beta_fast: self.beta_fast,
                    beta_slow: self.beta_slow,
                    attn_factor: self.yarn_attn_factor(),
                },
            )),
            "linear" => Ok(Rope::new(style, rot_dim, theta, 1.0 / self.factor)),
            other => bail!("rope scaling type `{other}` is not supported (yarn, linear)"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// safetensors weight source
// ---------------------------------------------------------------------------------------------

/// Weights of an HF checkpoint folder, served under internal (llama.cpp GGUF) names.
///
/// Tensors are views into the memory-mapped shards: BF16/F16/F32 as stored; a `float8_e4m3fn`
/// weight is paired with its sibling `<name>_scale_inv` (f32, one value per 128×128 block) and
/// stays FP8 ([`WeightType::Fp8E4M3Block128`]) — nothing is converted at load time.
pub struct SafetensorsSource {
    st: SafeTensors,
    dir: PathBuf,
}

impl SafetensorsSource {
    pub fn open(dir: &Path) -> Result<SafetensorsSource> {
        let st =
            SafeTensors::open(dir).with_context(|| format!("opening the safetensors weights of {}", dir.display()))?;
        // Map every weight page now, not as page faults in the middle of decode.
        st.prefault();
        Ok(SafetensorsSource { st, dir: dir.to_path_buf() })
    }

    pub fn safetensors(&self) -> &SafeTensors {
        &self.st
    }

    /// A tensor by its HF name (no mapping), `Ok(None)` when absent.
    pub fn hf_weight(&self, hf: &str) -> Result<Option<Weight>, ModelError> {
        let Some(t) = self.st.tensor(hf) else {
            return Ok(None);
        };
        let (rows, cols) = match t.shape.as_slice() {
            [] => (1, 1),
            [n] => (1, *n as usize),
            [r, c] => (*r as usize, *c as usize),
            other => {
                return Err(ModelError::tensor(
                    hf,
                    format!("{}-dimensional tensors are not supported here", other.len()),
                ))
            }
        };
        let ty = match t.dtype {
            StDtype::F32 => WeightType::Ggml(GgmlType::F32),
            StDtype::F16 => WeightType::Ggml(GgmlType::F16),
            StDtype::BF16 => WeightType::Ggml(GgmlType::BF16),
            StDtype::F8E4M3 => WeightType::Fp8E4M3Block128,
            other => return Err(ModelError::tensor(hf, format!("dtype {other:?} is not supported for weights"))),
        };
        let mut w = Weight::new(hf, self.st.tensor_bytes(t), ty, rows, cols)?;
        if ty == WeightType::Fp8E4M3Block128 {
            w.block_scales = Some(self.fp8_scales(hf, rows, cols)?);
        }
        Ok(Some(w))
    }

    /// The `scale_inv` sibling of an FP8 weight, checked to be f32 `[⌈rows/128⌉, ⌈cols/128⌉]`.
    fn fp8_scales(&self, hf: &str, rows: usize, cols: usize) -> Result<TensorBytes, ModelError> {
        let name = fp8_scale_name(hf);
        let t = self.st.tensor(&name).ok_or_else(|| {
            ModelError::tensor(hf, format!("FP8 weight without its `{name}` tensor in {}", self.dir.display()))
        })?;
        let want = [rows.div_ceil(FP8_BLOCK) as u64, cols.div_ceil(FP8_BLOCK) as u64];
        if t.dtype != StDtype::F32 || t.shape != want {
            return Err(ModelError::tensor(
                &name,
                format!("expected f32 {want:?} block scales, found {:?} {:?}", t.dtype, t.shape),
            ));
        }
        Ok(self.st.tensor_bytes(t))
    }
}

/// FP8 block edge (rows and columns).
pub const FP8_BLOCK: usize = 128;

/// `a.weight` → `a.weight_scale_inv` (the DeepSeek FP8 release naming).
pub fn fp8_scale_name(weight: &str) -> String {
    format!("{weight}_scale_inv")
}

impl WeightSource for SafetensorsSource {
    fn weight(&self, name: &str) -> Result<Option<Weight>, ModelError> {
        let Some(hf) = hf_name(name) else {
            return Ok(None);
        };
        self.hf_weight(&hf)
    }

    fn describe(&self) -> String {
        format!("safetensors folder {}", self.dir.display())
    }
}

/// Internal (GGUF) name → HF checkpoint name, for the llama-like tensors and those of
/// DeepSeek-V3 and Qwen3-MoE. Routed experts use the per-expert internal names of older GGUF
/// files, `blk.N.ffn_{gate,up,down}.E.weight`.
pub fn hf_name(internal: &str) -> Option<String> {
    if let Some(n) = hf_common_name(internal) {
        return Some(n);
    }
    let rest = internal.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf_tail = match tail {
        "attn_q_a.weight" => "self_attn.q_a_proj.weight".to_string(),
        "attn_q_a_norm.weight" => "self_attn.q_a_layernorm.weight".to_string(),
        "attn_q_b.weight" => "self_attn.q_b_proj.weight".to_string(),
        "attn_kv_a_mqa.weight" => "self_attn.kv_a_proj_with_mqa.weight".to_string(),
        "attn_kv_a_norm.weight" => "self_attn.kv_a_layernorm.weight".to_string(),
        "attn_kv_b.weight" => "self_attn.kv_b_proj.weight".to_string(),
        "ffn_gate_inp.weight" => "mlp.gate.weight".to_string(),
        "exp_probs_b.bias" => "mlp.gate.e_score_correction_bias".to_string(),
        "ffn_gate_shexp.weight" => "mlp.shared_experts.gate_proj.weight".to_string(),
        "ffn_up_shexp.weight" => "mlp.shared_experts.up_proj.weight".to_string(),
        "ffn_down_shexp.weight" => "mlp.shared_experts.down_proj.weight".to_string(),
        _ => expert_hf_tail(tail)?,
    };
    Some(format!("model.layers.{layer}.{hf_tail}"))
}

/// `ffn_gate.7.weight` → `mlp.experts.7.gate_proj.weight`.
fn expert_hf_tail(tail: &str) -> Option<String> {
    let mut parts = tail.split('.');
    let proj = match parts.next()? {
        "ffn_gate" => "gate_proj",
        "ffn_up" => "up_proj",
        "ffn_down" => "down_proj",
        _ => return None,
    };
    let e: usize = parts.next()?.parse().ok()?;
    (parts.next()? == "weight" && parts.next().is_none()).then(|| format!("mlp.experts.{e}.{proj}.weight"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> HfConfig {
        HfConfig::parse(text, PathBuf::from("config.json")).unwrap()
    }

    #[test]
    fn typed_accessors_report_missing_keys() {
        let c = cfg(r#"{"model_type":"deepseek_v3","hidden_size":256,"rope_scaling":null,
                       "norm_topk_prob":true,"mlp_only_layers":[1,3],"rope_theta":10000.0}"#);
        assert_eq!(c.model_type(), Some("deepseek_v3"));
        assert_eq!(c.usize("hidden_size").unwrap(), 256);
        assert_eq!(c.f64("rope_theta").unwrap(), 10000.0);
        assert_eq!(c.opt_bool("norm_topk_prob").unwrap(), Some(true));
        assert_eq!(c.usize_list("mlp_only_layers").unwrap(), vec![1, 3]);
        assert!(c.rope_scaling().unwrap().is_none());
        let err = c.usize("num_hidden_layers").unwrap_err().to_string();
        assert!(err.contains("num_hidden_layers"), "{err}");
        assert!(c.usize("rope_theta").is_err());
        assert!(HfConfig::parse("[1]", PathBuf::from("x")).is_err());
    }

    #[test]
    fn fp8_quantization_config() {
        let c = cfg(r#"{"quantization_config":{"activation_scheme":"dynamic","fmt":"e4m3",
                       "quant_method":"fp8","weight_block_size":[128,128]}}"#);
        assert_eq!(c.fp8_block().unwrap(), Some([128, 128]));
        let c = cfg(r#"{"quantization_config":{"quant_method":"fp8","weight_block_size":[64,64]}}"#);
        assert!(c.fp8_block().is_err());
        let c = cfg(r#"{"quantization_config":{"quant_method":"awq"}}"#);
        assert!(c.fp8_block().is_err());
        assert_eq!(cfg("{}").fp8_block().unwrap(), None);
    }

    #[test]
    fn deepseek_v3_yarn() {
        // DeepSeek-V3's published rope_scaling.
        let c = cfg(r#"{"max_position_embeddings":163840,"rope_scaling":{"beta_fast":32,"beta_slow":1,
            "factor":40,"mscale":1.0,"mscale_all_dim":1.0,
            "original_max_position_embeddings":4096,"type":"yarn"}}"#);
        let s = c.rope_scaling().unwrap().unwrap();
        assert_eq!(s.original_max_position_embeddings, Some(4096));
        // Softmax scale multiplier mscale^2 with mscale = 0.1 ln 40 + 1.
        let m = yarn_get_mscale(s.factor, s.mscale_all_dim.unwrap());
        assert!((m - (0.1 * 40f64.ln() + 1.0)).abs() < 1e-12);
        assert_eq!(s.kind, "yarn");
        assert_eq!((s.beta_fast, s.beta_slow), (32.0, 1.0));
        assert_eq!(s.yarn_attn_factor(), 1.0, "mscale == mscale_all_dim gives factor 1");
    }

    #[test]
    fn internal_to_hf_names() {
        let cases = [
            ("blk.1.attn_kv_a_mqa.weight", "model.layers.1.self_attn.kv_a_proj_with_mqa.weight"),
            ("blk.2.exp_probs_b.bias", "model.layers.2.mlp.gate.e_score_correction_bias"),
            ("blk.0.ffn_gate_inp.weight", "model.layers.0.mlp.gate.weight"),
            ("blk.3.ffn_down.15.weight", "model.layers.3.mlp.experts.15.down_proj.weight"),
            ("blk.1.ffn_up_shexp.weight", "model.layers.1.mlp.shared_experts.up_proj.weight"),
            ("blk.1.attn_q_norm.weight", "model.layers.1.self_attn.q_norm.weight"),
            ("output.weight", "lm_head.weight"),
        ];
        for (i, h) in cases {
            assert_eq!(hf_name(i).as_deref(), Some(h), "{i}");
        }
        assert_eq!(hf_name("blk.1.ffn_down.x.weight"), None);
        assert_eq!(hf_name("blk.1.ffn_down.1.bias"), None);
        assert_eq!(fp8_scale_name("a.weight"), "a.weight_scale_inv");
    }

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(rel)
    }

    #[test]
    fn fp8_weights_pair_with_their_block_scales() {
        let src = SafetensorsSource::open(&fixture("tiny-deepseek-v3/hf-fp8")).unwrap();
        // kv_a_proj_with_mqa is 320×256: a partial 128-row edge block, scales [3, 2].
        let w = src.weight("blk.1.attn_kv_a_mqa.weight").unwrap().unwrap();
        assert_eq!(w.ty, WeightType::Fp8E4M3Block128);
        assert_eq!((w.rows, w.cols), (320, 256));
        assert_eq!(w.bytes.len(), 320 * 256);
        assert_eq!(w.block_scales.as_ref().map(|b| b.len()), Some(3 * 2 * 4));
        // Expert down 256×64: scales [2, 1].
        let d = src.weight("blk.2.ffn_down.5.weight").unwrap().unwrap();
        assert_eq!(d.block_scales.as_ref().map(|b| b.len()), Some(2 * 4));
        // Router and norms stay bf16, the bias f32.
        let g = src.weight("blk.1.ffn_gate_inp.weight").unwrap().unwrap();
        assert_eq!(g.ty, WeightType::Ggml(GgmlType::BF16));
        assert!(g.block_scales.is_none());
        let b = src.weight("blk.1.exp_probs_b.bias").unwrap().unwrap();
        assert_eq!((b.ty, b.rows, b.cols), (WeightType::Ggml(GgmlType::F32), 1, 16));
        assert!(src.weight("blk.9.attn_q_a.weight").unwrap().is_none());
        // The bf16 folder has the same tensor as plain BF16.
        let bf = SafetensorsSource::open(&fixture("tiny-deepseek-v3/hf")).unwrap();
        let w = bf.weight("blk.1.attn_kv_a_mqa.weight").unwrap().unwrap();
        assert_eq!(w.ty, WeightType::Ggml(GgmlType::BF16));
    }

    #[test]
    fn transformers5_rope_parameters() {
        // rope_theta and the scaling inside `rope_parameters`; no `factor`: context ratio.
        let c = cfg(r#"{"max_position_embeddings":163840,"rope_parameters":{"rope_type":"yarn",
            "rope_theta":50000.0,"original_max_position_embeddings":4096,"mscale_all_dim":1.0}}"#);
        assert_eq!(c.rope_theta(10000.0).unwrap(), 50000.0);
        let s = c.rope_scaling().unwrap().unwrap();
        assert_eq!((s.kind.as_str(), s.factor), ("yarn", 40.0));
        let plain = cfg(r#"{"rope_parameters":{"rope_type":"default","rope_theta":1000.0}}"#);
        assert_eq!(plain.rope_theta(1.0).unwrap(), 1000.0);
        assert!(plain.rope_scaling().unwrap().is_none());
        assert_eq!(cfg("{}").rope_theta(7.0).unwrap(), 7.0);
        assert!(cfg(r#"{"rope_scaling":{"type":"yarn"}}"#).rope_scaling().is_err());
    }
}
