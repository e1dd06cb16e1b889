//! Qwen3-MoE: GGUF arch `qwen3moe`, HF `Qwen3MoeForCausalLM`.
//!
//! Attention is GQA with QK-norm (an RMSNorm over each query and key head before RoPE) and
//! NeoX (half-split) RoPE; the FFN of every sparse layer routes with a softmax over the
//! experts, keeps the `top_k` best and renormalises them (`norm_topk_prob`); no shared experts.
//! Layers listed in `mlp_only_layers` (or off the `decoder_sparse_step` grid) are dense.

use std::path::Path;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};

use crate::formats::GgufFile;
use crate::models::common::{
    add_assign, attention, rms_norm_rows, rms_norm_rows_into, AttnParams, KvCache, KvDtype, Rope, RopeStyle,
};
use crate::models::hf::{HfConfig, RopeScaling};
use crate::models::moe::{
    embed, linear_new, load_dense_ffn, load_moe, FfnWeights, GroupScore, MoeFfn, RouterConfig, Scoring, Segments,
};
use crate::models::weights::{require_shape, require_vec, Weight, WeightSource};
use crate::models::{Logits, Model, ModelInfo, SeqState};

const ARCH: &str = "qwen3moe";

/// Hyper-parameters, from config.json or GGUF metadata.
#[derive(Clone, Debug)]
pub struct Qwen3MoeConfig {
    pub name: String,
    pub n_layers: usize,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context_length: usize,
    /// Dense FFN width (for `mlp_only_layers`).
    pub intermediate: usize,
    pub moe_intermediate: usize,
    pub router: RouterConfig,
    /// Layers with a dense FFN instead of experts.
    pub dense_layers: Vec<usize>,
    pub sparse_step: usize,
    pub rms_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
}

impl Qwen3MoeConfig {
    pub fn from_hf(c: &HfConfig, name: &str) -> Result<Self> {
        let hidden = c.usize("hidden_size")?;
        let n_heads = c.usize("num_attention_heads")?;
        ensure!(n_heads > 0, "{}: num_attention_heads is 0", c.path.display());
        // Neither family uses attention biases; refuse rather than silently drop them.
        ensure!(
            !c.opt_bool("attention_bias")?.unwrap_or(false),
            "{}: attention_bias = true is not supported for this architecture",
            c.path.display()
        );
        let cfg = Qwen3MoeConfig {
            name: name.to_string(),
            n_layers: c.usize("num_hidden_layers")?,
            hidden,
            n_heads,
            n_kv_heads: c.opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
            head_dim: c.opt_usize("head_dim")?.unwrap_or(hidden / n_heads),
            vocab: c.usize("vocab_size")?,
            context_length: c.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            intermediate: c.opt_usize("intermediate_size")?.unwrap_or(0),
            moe_intermediate: c.usize("moe_intermediate_size")?,
            router: RouterConfig {
                n_experts: c.usize("num_experts")?,
                top_k: c.usize("num_experts_per_tok")?,
                n_group: 1,
                topk_group: 1,
                group_score: GroupScore::Max,
                scoring: Scoring::Softmax,
                norm_topk_prob: c.opt_bool("norm_topk_prob")?.unwrap_or(false),
                routed_scaling_factor: 1.0,
            },
            dense_layers: c.usize_list("mlp_only_layers")?,
            sparse_step: c.opt_usize("decoder_sparse_step")?.unwrap_or(1).max(1),
            rms_eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta: c.rope_theta(1e6)?,
            rope_scaling: c.rope_scaling()?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let key = |s: &str| format!("{ARCH}.{s}");
        let req = |s: &str| {
            g.get_u64(&key(s)).map(|v| v as usize).with_context(|| format!("GGUF metadata `{}` is missing", key(s)))
        };
        let opt = |s: &str| g.get_u64(&key(s)).map(|v| v as usize);
        let hidden = req("embedding_length")?;
        let n_heads = req("attention.head_count")?;
        ensure!(n_heads > 0, "GGUF {}: head count is 0", key("attention.head_count"));
        let vocab = match opt("vocab_size") {
            Some(v) => v,
            None => g.get_str_array("tokenizer.ggml.tokens").map(|t| t.len()).context("GGUF has no token list")?,
        };
        let cfg = Qwen3MoeConfig {
            name: g.get_str("general.name").unwrap_or(ARCH).to_string(),
            n_layers: req("block_count")?,
            hidden,
            n_heads,
            n_kv_heads: opt("attention.head_count_kv").unwrap_or(n_heads),
            head_dim: opt("attention.key_length").unwrap_or(hidden / n_heads),
            vocab,
            context_length: opt("context_length").unwrap_or(4096),
            intermediate: opt("feed_forward_length").unwrap_or(0),
            moe_intermediate: req("expert_feed_forward_length")?,
            router: RouterConfig {
                n_experts: req("expert_count")?,
                top_k: req("expert_used_count")?,
                n_group: 1,
                topk_group: 1,
                group_score: GroupScore::Max,
                scoring: Scoring::Softmax,
                // llama.cpp always renormalises Qwen3-MoE's top-k weights.
                norm_topk_prob: g.get_bool(&key("expert_weights_norm")).unwrap_or(true),
                routed_scaling_factor: 1.0,
            },
            dense_layers: Vec::new(),
            sparse_step: 1,
            rms_eps: g.get_f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6) as f32,
            rope_theta: g.get_f64(&key("rope.freq_base")).unwrap_or(1e6),
            rope_scaling: gguf_rope_scaling(g),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            self.n_layers > 0 && self.hidden > 0 && self.vocab > 0 && self.head_dim > 0,
            "{}: layer count, hidden size, head size and vocabulary must be positive",
            self.name
        );
        ensure!(
            self.n_kv_heads > 0 && self.n_heads.is_multiple_of(self.n_kv_heads),
            "{}: {} query heads cannot share {} KV heads",
            self.name,
            self.n_heads,
            self.n_kv_heads
        );
        ensure!(self.head_dim.is_multiple_of(2), "{}: head_dim {} must be even for RoPE", self.name, self.head_dim);
        self.router.validate()
    }

    /// Whether layer `l` routes to experts.
    pub fn is_moe_layer(&self, l: usize) -> bool {
        !self.dense_layers.contains(&l) && (l + 1).is_multiple_of(self.sparse_step)
    }

    pub fn rope(&self) -> Result<Rope> {
        match &self.rope_scaling {
            Some(s) => s.rope(RopeStyle::NeoX, self.head_dim, self.rope_theta),
            None => Ok(Rope::new(RopeStyle::NeoX, self.head_dim, self.rope_theta, 1.0)),
        }
    }
}

fn gguf_rope_scaling(g: &GgufFile) -> Option<RopeScaling> {
    let key = |s: &str| format!("{ARCH}.rope.scaling.{s}");
    let kind = g.get_str(&key("type")).filter(|k| *k != "none")?.to_string();
    let factor = g.get_f64(&key("factor")).filter(|&f| f > 1.0)?;
    Some(RopeScaling {
        kind,
        factor,
        original_max_position_embeddings: g.get_u64(&key("original_context_length")).map(|v| v as usize),
        beta_fast: g.get_f64(&key("yarn_beta_fast")).unwrap_or(32.0),
        beta_slow: g.get_f64(&key("yarn_beta_slow")).unwrap_or(1.0),
        mscale: None,
        mscale_all_dim: None,
        attention_factor: None,
    })
}

struct Attn {
    attn_norm: Vec<f32>,
    q: Weight,
    k: Weight,
    v: Weight,
    o: Weight,
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
}

enum Ffn {
    Dense(FfnWeights),
    Moe(MoeFfn),
}

struct Layer {
    attn: Attn,
    ffn_norm: Vec<f32>,
    ffn: Ffn,
}

/// A loaded Qwen3-MoE model.
pub struct Qwen3Moe {
    info: ModelInfo,
    cfg: Qwen3MoeConfig,
    rope: Rope,
    attn: AttnParams,
    kv_dtype: KvDtype,
    embed: Weight,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: Weight,
}

impl Qwen3Moe {
    pub fn load(cfg: Qwen3MoeConfig, src: &dyn WeightSource, kv_dtype: KvDtype) -> Result<Self> {
        let h = cfg.hidden;
        let embed = require_shape(src, "token_embd.weight", ARCH, cfg.vocab, h)?;
        let output = src.weight("output.weight")?.unwrap_or_else(|| embed.clone());
        ensure!(
            output.rows == cfg.vocab && output.cols == h,
            "output.weight is {}x{}, expected {}x{h}",
            output.rows,
            output.cols,
            cfg.vocab
        );
        let norm = require_vec(src, "output_norm.weight", ARCH, h)?;
        let layers = (0..cfg.n_layers)
            .map(|l| load_layer(&cfg, src, l).with_context(|| format!("loading layer {l}")))
            .collect::<Result<Vec<_>>>()?;
        let attn = AttnParams {
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            v_head_dim: cfg.head_dim,
            scale: 1.0 / (cfg.head_dim as f32).sqrt(),
            window: None,
            softcap: None,
        };
        let info = ModelInfo {
            arch: ARCH.to_string(),
            name: cfg.name.clone(),
            vocab_size: cfg.vocab,
            context_length: cfg.context_length,
            n_layers: cfg.n_layers,
            hidden_size: h,
        };
        Ok(Qwen3Moe { info, rope: cfg.rope()?, attn, kv_dtype, cfg, embed, layers, norm, output })
    }

    pub fn config(&self) -> &Qwen3MoeConfig {
        &self.cfg
    }

    fn run(
        &self,
        caches: &mut [&mut KvCache],
        segs: &Segments,
        tokens: &[u32],
        out_rows: &[usize],
    ) -> Result<Vec<f32>> {
        let h = self.cfg.hidden;
        let n = tokens.len();
        let mut x = embed(&self.embed, tokens)?;
        let mut xn = vec![0.0f32; n * h];
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm_rows_into(&x, &layer.attn.attn_norm, self.cfg.rms_eps, &mut xn);
            let a = self.attention(l, &layer.attn, caches, segs, &xn)?;
            add_assign(&mut x, &a);
            rms_norm_rows_into(&x, &layer.ffn_norm, self.cfg.rms_eps, &mut xn);
            let mut y = vec![0.0f32; n * h];
            match &layer.ffn {
                Ffn::Dense(f) => f.forward(&xn, n, &mut y)?,
                Ffn::Moe(m) => m.forward(&xn, n, &mut y)?,
            }
            add_assign(&mut x, &y);
        }
        let mut last: Vec<f32> = out_rows.iter().flat_map(|&r| x[r * h..(r + 1) * h].iter().copied()).collect();
        rms_norm_rows(&mut last, &self.norm, self.cfg.rms_eps);
        linear_new(&self.output, &last, out_rows.len())
    }

    fn attention(
        &self,
        l: usize,
        w: &Attn,
        caches: &mut [&mut KvCache],
        segs: &Segments,
        xn: &[f32],
    ) -> Result<Vec<f32>> {
        let n = segs.n_rows();
        let hd = self.cfg.head_dim;
        let (qw, kw) = (self.cfg.n_heads * hd, self.cfg.n_kv_heads * hd);
        let mut q = linear_new(&w.q, xn, n)?;
        let mut k = linear_new(&w.k, xn, n)?;
        let v = linear_new(&w.v, xn, n)?;
        // QK-norm: the norm weights have head_dim values, so this normalises head by head.
        rms_norm_rows(&mut q, &w.q_norm, self.cfg.rms_eps);
        rms_norm_rows(&mut k, &w.k_norm, self.cfg.rms_eps);
        let mut out = vec![0.0f32; n * qw];
        for (seq, pos0, r0, len) in segs.spans() {
            let qs = &mut q[r0 * qw..(r0 + len) * qw];
            let ks = &mut k[r0 * kw..(r0 + len) * kw];
            self.rope.apply_rows(qs, qw, pos0, hd);
            self.rope.apply_rows(ks, kw, pos0, hd);
            caches[seq].store(l, pos0, ks, &v[r0 * kw..(r0 + len) * kw]);
            attention(qs, caches[seq].layer(l), pos0, &self.attn, &mut out[r0 * qw..(r0 + len) * qw]);
        }
        linear_new(&w.o, &out, n)
    }
}

fn load_layer(cfg: &Qwen3MoeConfig, src: &dyn WeightSource, l: usize) -> Result<Layer> {
    let name = |s: &str| format!("blk.{l}.{s}");
    let (h, hd) = (cfg.hidden, cfg.head_dim);
    let attn = Attn {
        attn_norm: require_vec(src, &name("attn_norm.weight"), ARCH, h)?,
        q: require_shape(src, &name("attn_q.weight"), ARCH, cfg.n_heads * hd, h)?,
        k: require_shape(src, &name("attn_k.weight"), ARCH, cfg.n_kv_heads * hd, h)?,
        v: require_shape(src, &name("attn_v.weight"), ARCH, cfg.n_kv_heads * hd, h)?,
        o: require_shape(src, &name("attn_output.weight"), ARCH, h, cfg.n_heads * hd)?,
        q_norm: require_vec(src, &name("attn_q_norm.weight"), ARCH, hd)?,
        k_norm: require_vec(src, &name("attn_k_norm.weight"), ARCH, hd)?,
    };
    let ffn = if cfg.is_moe_layer(l) {
        Ffn::Moe(load_moe(src, ARCH, l, cfg.router.clone(), h, cfg.moe_intermediate, 0)?)
    } else {
        Ffn::Dense(load_dense_ffn(src, ARCH, l, h, cfg.intermediate)?)
    };
    Ok(Layer { attn, ffn_norm: require_vec(src, &name("ffn_norm.weight"), ARCH, h)?, ffn })
}

impl Model for Qwen3Moe {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn new_state(&self, max_tokens: usize) -> SeqState {
        let kv = self.cfg.n_kv_heads * self.cfg.head_dim;
        let dims = vec![(kv, kv); self.cfg.n_layers];
        SeqState { pos: 0, max_tokens, cache: Box::new(KvCache::new(&dims, max_tokens, self.kv_dtype)) }
    }

    fn forward(&self, state: &mut SeqState, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        crate::models::moe::forward_one::<KvCache>(state, tokens, which, |caches, segs, rows| {
            self.run(caches, segs, tokens, rows)
        })
    }

    fn forward_batch(&self, states: &mut [&mut SeqState], tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        crate::models::moe::forward_step::<KvCache>(states, tokens, self.cfg.vocab, |caches, segs, rows| {
            self.run(caches, segs, tokens, rows)
        })
    }
}

/// Loads from a GGUF file (`general.architecture == "qwen3moe"`).
pub fn load_gguf(file: Arc<GgufFile>, kv_dtype: KvDtype) -> Result<Box<dyn Model>> {
    let cfg = Qwen3MoeConfig::from_gguf(&file)?;
    let src = crate::models::weights::GgufSource::new(file);
    Ok(Box::new(Qwen3Moe::load(cfg, &src, kv_dtype)?))
}

/// Loads from an HF folder (config.json + safetensors).
pub fn load_hf(dir: &Path, cfg: &HfConfig, kv_dtype: KvDtype) -> Result<Box<dyn Model>> {
    // Qwen's FP8 releases use the same e4m3 + 128×128 `weight_scale_inv` layout.
    cfg.fp8_block()?;
    let name = crate::models::hf::model_name(dir, ARCH);
    let qc = Qwen3MoeConfig::from_hf(cfg, &name)?;
    let src = crate::models::hf::SafetensorsSource::open(dir)?;
    Ok(Box::new(Qwen3Moe::load(qc, &src, kv_dtype)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture_cfg() -> HfConfig {
        HfConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-qwen3-moe/hf")).unwrap()
    }

    #[test]
    fn hf_config_of_the_fixture() {
        let c = Qwen3MoeConfig::from_hf(&fixture_cfg(), "t").unwrap();
        assert_eq!((c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim), (3, 256, 4, 2, 64));
        assert_eq!((c.router.n_experts, c.router.top_k, c.moe_intermediate), (16, 4, 64));
        assert_eq!(c.router.scoring, Scoring::Softmax);
        assert!(c.router.norm_topk_prob);
        assert!((0..3).all(|l| c.is_moe_layer(l)));
        assert_eq!(c.rope_theta, 1e6);
    }

    #[test]
    fn dense_layers_and_bad_head_counts() {
        let mut raw = fixture_cfg().raw;
        raw["mlp_only_layers"] = serde_json::json!([1]);
        raw["decoder_sparse_step"] = serde_json::json!(1);
        let c = HfConfig { path: PathBuf::from("config.json"), raw: raw.clone() };
        let q = Qwen3MoeConfig::from_hf(&c, "t").unwrap();
        assert_eq!((0..3).map(|l| q.is_moe_layer(l)).collect::<Vec<_>>(), [true, false, true]);
        raw["num_key_value_heads"] = serde_json::json!(3);
        let c = HfConfig { path: PathBuf::from("config.json"), raw };
        assert!(Qwen3MoeConfig::from_hf(&c, "t").is_err());
    }
}
