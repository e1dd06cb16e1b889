//! DeepSeek-V3/R1 and Kimi-K2: GGUF arch `deepseek2`, HF `DeepseekV3ForCausalLM`.
//!
//! Attention is MLA (multi-head latent attention). Per token and layer the cache holds only
//! the compressed latent: `kv_lora_rank` values (`kv_a_norm(kv_a_proj(x))[..kv_lora_rank]`)
//! plus the `qk_rope_head_dim` roped key part shared by all heads — 576 values for
//! DeepSeek-V3 instead of 2 × 128 heads × 128–192.
//!
//! Scores and outputs use the weight-absorbed form: with `W_UK_h` / `W_UV_h` the key/value
//! up-projections of head h (the two halves of `kv_b_proj`),
//!   `q_nope_h · (W_UK_h c) = (W_UK_hᵀ q_nope_h) · c`  and  `Σ a_t W_UV_h c_t = W_UV_h Σ a_t c_t`,
//! so attention runs over the latents directly and keys/values are never expanded. GGUF files
//! from current llama.cpp store exactly `W_UK_hᵀ` (`attn_k_b`, `[n_head, kv_lora, qk_nope]`)
//! and `W_UV_h` (`attn_v_b`); for HF checkpoints and older GGUFs (`attn_kv_b`) the load splits
//! `kv_b_proj` per head once, keeping the stored precision where that is exact (bf16/f16
//! transposed as stored; FP8 transposed with its block scales when heads sit on 128-row block
//! boundaries, as in DeepSeek-V3 and Kimi-K2) and f32 otherwise.
//!
//! RoPE on the `qk_rope` part rotates adjacent pairs: HF's `rope_interleave` de-interleaves
//! then applies `rotate_half`, which is the same rotation with the output permuted identically
//! for q and k (dot products unchanged); llama.cpp runs deepseek2 with its "normal" rope on
//! unpermuted weights. The softmax scale is `1/sqrt(qk_nope + qk_rope)`, times `mscale²` when
//! YaRN scaling is configured (`mscale = 0.1 · mscale_all_dim · ln(factor) + 1`).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use half::f16;

use crate::dtype::GgmlType;
use crate::formats::TensorBytes;
use crate::kernels::WeightType;
use crate::models::common::{add_assign, rms_norm_rows, rms_norm_rows_into, KvDtype, Rope, RopeStyle, PAR_MIN_ROWS};
use crate::models::hf::{yarn_get_mscale, HfConfig, RopeScaling};
use crate::models::mla;
use crate::models::moe::{
    embed, linear_new, load_dense_ffn, load_moe, to_f32, FfnWeights, GroupScore, MoeFfn, RouterConfig, Scoring,
    Segments,
};
use crate::models::weights::{require_shape, require_vec, Weight, WeightSource};
use crate::models::{Logits, Model, ModelInfo, SeqState};
use crate::runtime::profile;

const ARCH: &str = "deepseek2";

/// Hyper-parameters, from config.json or GGUF metadata.
#[derive(Clone, Debug)]
pub struct DeepseekConfig {
    pub name: String,
    pub n_layers: usize,
    pub hidden: usize,
    pub n_heads: usize,
    pub vocab: usize,
    pub context_length: usize,
    /// `None`: queries come from a plain `q_proj` (DeepSeek-V2-Lite).
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope: usize,
    pub qk_rope: usize,
    pub v_head: usize,
    /// Dense FFN width (the first `first_k_dense` layers).
    pub intermediate: usize,
    pub moe_intermediate: usize,
    pub n_shared: usize,
    pub first_k_dense: usize,
    pub moe_layer_freq: usize,
    /// `None`: no routed experts at all.
    pub router: Option<RouterConfig>,
    pub rms_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub rope_style: RopeStyle,
}

impl DeepseekConfig {
    /// From an HF `config.json` (DeepseekV3ForCausalLM / Kimi-K2).
    pub fn from_hf(c: &HfConfig, name: &str) -> Result<Self> {
        let n_experts = c.opt_usize("n_routed_experts")?;
        let router = match n_experts {
            Some(n) if n > 0 => Some(hf_router(c, n)?),
            _ => None,
        };
        // Neither family uses attention biases; refuse rather than silently drop them.
        ensure!(
            !c.opt_bool("attention_bias")?.unwrap_or(false),
            "{}: attention_bias = true is not supported for this architecture",
            c.path.display()
        );
        let cfg = DeepseekConfig {
            name: name.to_string(),
            n_layers: c.usize("num_hidden_layers")?,
            hidden: c.usize("hidden_size")?,
            n_heads: c.usize("num_attention_heads")?,
            vocab: c.usize("vocab_size")?,
            context_length: c.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            q_lora_rank: c.opt_usize("q_lora_rank")?.filter(|&r| r > 0),
            kv_lora_rank: c.usize("kv_lora_rank")?,
            qk_nope: c.usize("qk_nope_head_dim")?,
            qk_rope: c.usize("qk_rope_head_dim")?,
            v_head: c.usize("v_head_dim")?,
            intermediate: c.usize("intermediate_size")?,
            moe_intermediate: c.opt_usize("moe_intermediate_size")?.unwrap_or(0),
            n_shared: c.opt_usize("n_shared_experts")?.unwrap_or(0),
            first_k_dense: c.opt_usize("first_k_dense_replace")?.unwrap_or(0),
            moe_layer_freq: c.opt_usize("moe_layer_freq")?.unwrap_or(1).max(1),
            router,
            rms_eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta: c.rope_theta(10000.0)?,
            rope_scaling: c.rope_scaling()?,
            // transformers' DeepseekV3Config defaults rope_interleave to true (the official
            // checkpoints do not set it).
            rope_style: if c.opt_bool("rope_interleave")?.unwrap_or(true) {
                RopeStyle::Interleaved
            } else {
                RopeStyle::NeoX
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// From GGUF `deepseek2.*` metadata (both the `attn_kv_b` and split `attn_k_b/v_b` forms).
    pub fn from_gguf(g: &crate::formats::GgufFile) -> Result<Self> {
        let key = |s: &str| format!("{ARCH}.{s}");
        let req = |s: &str| {
            g.get_u64(&key(s)).map(|v| v as usize).with_context(|| format!("GGUF metadata `{}` is missing", key(s)))
        };
        let opt = |s: &str| g.get_u64(&key(s)).map(|v| v as usize);
        let qk_rope = req("rope.dimension_count")?;
        // Split-MLA files store the MQA view in key/value_length and the real head sizes in
        // the `_mla` keys.
        let (qk_nope, v_head) = match (opt("attention.key_length_mla"), opt("attention.value_length_mla")) {
            (Some(k), Some(v)) => (k.checked_sub(qk_rope), v),
            _ => (req("attention.key_length")?.checked_sub(qk_rope), req("attention.value_length")?),
        };
        let qk_nope = qk_nope.context("GGUF key length is smaller than the rope dimension")?;
        let router = match opt("expert_count") {
            Some(n) if n > 0 => Some(gguf_router(g, n)?),
            _ => None,
        };
        let vocab = match opt("vocab_size") {
            Some(v) => v,
            None => g
                .get_str_array("tokenizer.ggml.tokens")
                .map(|t| t.len())
                .context("GGUF has neither deepseek2.vocab_size nor a token list")?,
        };
        let cfg = DeepseekConfig {
            name: g.get_str("general.name").unwrap_or(ARCH).to_string(),
            n_layers: req("block_count")?,
            hidden: req("embedding_length")?,
            n_heads: req("attention.head_count")?,
            vocab,
            context_length: opt("context_length").unwrap_or(4096),
            q_lora_rank: opt("attention.q_lora_rank").filter(|&r| r > 0),
            kv_lora_rank: req("attention.kv_lora_rank")?,
            qk_nope,
            qk_rope,
            v_head,
            intermediate: req("feed_forward_length")?,
            moe_intermediate: opt("expert_feed_forward_length").unwrap_or(0),
            n_shared: opt("expert_shared_count").unwrap_or(0),
            first_k_dense: opt("leading_dense_block_count").unwrap_or(0),
            moe_layer_freq: 1,
            router,
            rms_eps: g.get_f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6) as f32,
            rope_theta: g.get_f64(&key("rope.freq_base")).unwrap_or(10000.0),
            rope_scaling: gguf_rope_scaling(g)?,
            rope_style: RopeStyle::Interleaved,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            self.n_layers > 0 && self.hidden > 0 && self.n_heads > 0 && self.vocab > 0,
            "{}: layer count, hidden size, head count and vocabulary must be positive",
            self.name
        );
        ensure!(
            self.kv_lora_rank > 0 && self.v_head > 0 && self.qk_rope.is_multiple_of(2),
            "{}: MLA dims kv_lora_rank {}, v_head {}, qk_rope {} (must be even) are invalid",
            self.name,
            self.kv_lora_rank,
            self.v_head,
            self.qk_rope
        );
        if let Some(r) = &self.router {
            r.validate()?;
            ensure!(self.moe_intermediate > 0, "{}: moe_intermediate_size is 0", self.name);
        }
        if let Some(s) = &self.rope_scaling {
            ensure!(
                s.kind == "yarn" || s.kind == "linear",
                "{}: rope scaling `{}` is not supported (yarn, linear)",
                self.name,
                s.kind
            );
        }
        Ok(())
    }

    /// Whether layer `l` has routed experts (else a dense FFN).
    pub fn is_moe_layer(&self, l: usize) -> bool {
        self.router.is_some() && l >= self.first_k_dense && l.is_multiple_of(self.moe_layer_freq)
    }

    /// Softmax scale of the attention scores.
    pub fn softmax_scale(&self) -> f32 {
        let base = 1.0 / ((self.qk_nope + self.qk_rope) as f64).sqrt();
        let m = match &self.rope_scaling {
            Some(s) => match s.mscale_all_dim {
                Some(all) if all != 0.0 => yarn_get_mscale(s.factor, all),
                _ => 1.0,
            },
            None => 1.0,
        };
        (base * m * m) as f32
    }

    pub fn rope(&self) -> Result<Rope> {
        match &self.rope_scaling {
            Some(s) => s.rope(self.rope_style, self.qk_rope, self.rope_theta),
            None => Ok(Rope::new(self.rope_style, self.qk_rope, self.rope_theta, 1.0)),
        }
    }

    /// Values cached per token per layer: the latent plus the shared roped key part.
    pub fn latent_width(&self) -> usize {
        self.kv_lora_rank + self.qk_rope
    }
}

fn hf_router(c: &HfConfig, n_experts: usize) -> Result<RouterConfig> {
    let scoring = match c.opt_str("scoring_func").unwrap_or("softmax") {
        "sigmoid" => Scoring::Sigmoid,
        "softmax" => Scoring::Softmax,
        other => bail!("{}: scoring_func `{other}` is not supported", c.path.display()),
    };
    let method = c.opt_str("topk_method").unwrap_or("greedy");
    let (n_group, topk_group) = match method {
        "greedy" => (1, 1),
        "noaux_tc" | "group_limited_greedy" => {
            (c.opt_usize("n_group")?.unwrap_or(1).max(1), c.opt_usize("topk_group")?.unwrap_or(1).max(1))
        }
        other => bail!("{}: topk_method `{other}` is not supported", c.path.display()),
    };
    Ok(RouterConfig {
        n_experts,
        top_k: c.usize("num_experts_per_tok")?,
        n_group,
        topk_group,
        group_score: if method == "noaux_tc" { GroupScore::Top2Sum } else { GroupScore::Max },
        scoring,
        norm_topk_prob: c.opt_bool("norm_topk_prob")?.unwrap_or(false),
        routed_scaling_factor: c.opt_f64("routed_scaling_factor")?.unwrap_or(1.0) as f32,
    })
}

fn gguf_router(g: &crate::formats::GgufFile, n_experts: usize) -> Result<RouterConfig> {
    let key = |s: &str| format!("{ARCH}.{s}");
    // llama.cpp: expert_gating_func 1 = softmax, 2 = sigmoid; DeepSeek-V2 files lack it.
    let scoring = match g.get_u64(&key("expert_gating_func")).unwrap_or(1) {
        1 => Scoring::Softmax,
        2 => Scoring::Sigmoid,
        other => bail!("GGUF expert_gating_func {other} is not supported"),
    };
    let n_group = g.get_u64(&key("expert_group_count")).unwrap_or(1).max(1) as usize;
    Ok(RouterConfig {
        n_experts,
        top_k: g.get_u64(&key("expert_used_count")).context("GGUF metadata deepseek2.expert_used_count is missing")?
            as usize,
        n_group,
        topk_group: g.get_u64(&key("expert_group_used_count")).map_or(n_group, |v| v as usize),
        group_score: if scoring == Scoring::Sigmoid { GroupScore::Top2Sum } else { GroupScore::Max },
        scoring,
        norm_topk_prob: g.get_bool(&key("expert_weights_norm")).unwrap_or(false),
        routed_scaling_factor: g.get_f64(&key("expert_weights_scale")).unwrap_or(1.0) as f32,
    })
}

/// GGUF `rope.scaling.*`: llama.cpp stores YaRN's `0.1 · mscale_all_dim` as
/// `yarn_log_multiplier` and keeps the cos/sin factor at 1 for deepseek2.
fn gguf_rope_scaling(g: &crate::formats::GgufFile) -> Result<Option<RopeScaling>> {
    let key = |s: &str| format!("{ARCH}.rope.scaling.{s}");
    let kind = match g.get_str(&key("type")) {
        None | Some("none") => return Ok(None),
        Some(k) => k.to_string(),
    };
    let factor = g.get_f64(&key("factor")).unwrap_or(1.0);
    if factor <= 1.0 {
        return Ok(None);
    }
    let log_mul = g.get_f64(&key("yarn_log_multiplier")).unwrap_or(0.0);
    Ok(Some(RopeScaling {
        kind,
        factor,
        original_max_position_embeddings: g.get_u64(&key("original_context_length")).map(|v| v as usize),
        beta_fast: g.get_f64(&key("yarn_beta_fast")).unwrap_or(32.0),
        beta_slow: g.get_f64(&key("yarn_beta_slow")).unwrap_or(1.0),
        mscale: Some(1.0),
        mscale_all_dim: Some(log_mul / 0.1),
        attention_factor: Some(1.0),
    }))
}

/// One layer's MLA weights.
struct Mla {
    attn_norm: Vec<f32>,
    /// `(q_a_proj, q_a_layernorm)` when queries are low-rank.
    q_a: Option<(Weight, Vec<f32>)>,
    /// `q_b_proj` (or `q_proj`): `[n_heads·(qk_nope+qk_rope) × (q_lora_rank | hidden)]`.
    q_b: Weight,
    /// `kv_a_proj_with_mqa`: `[(kv_lora_rank + qk_rope) × hidden]`.
    kv_a: Weight,
    kv_a_norm: Vec<f32>,
    /// Per head `W_UKᵀ`: `[kv_lora_rank × qk_nope]`.
    k_b: Vec<Weight>,
    /// Per head `W_UV`: `[v_head × kv_lora_rank]`.
    v_b: Vec<Weight>,
    o: Weight,
}

enum Ffn {
    Dense(FfnWeights),
    Moe(MoeFfn),
}

struct Layer {
    attn: Mla,
    ffn_norm: Vec<f32>,
    ffn: Ffn,
}

/// A loaded DeepSeek-V3 family model.
pub struct Deepseek2 {
    info: ModelInfo,
    cfg: DeepseekConfig,
    rope: Rope,
    scale: f32,
    kv_dtype: KvDtype,
    embed: Weight,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: Weight,
}

/// Per-sequence cache: per layer, `[token][kv_lora_rank + qk_rope]` (normalised latent, then
/// the roped shared key part), in f32 or f16. Grows with the tokens stored, up to the state's
/// capacity.
pub struct MlaCache {
    layers: Vec<LatentBuf>,
    width: usize,
    max_tokens: usize,
}

enum LatentBuf {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl MlaCache {
    fn new(n_layers: usize, width: usize, max_tokens: usize, dtype: KvDtype) -> Self {
        let layers = (0..n_layers)
            .map(|_| match dtype {
                KvDtype::F32 => LatentBuf::F32(Vec::new()),
                KvDtype::F16 => LatentBuf::F16(Vec::new()),
            })
            .collect();
        MlaCache { layers, width, max_tokens }
    }

    fn store(&mut self, l: usize, pos: usize, row: &[f32]) {
        let w = self.width;
        let need = (pos + 1) * w;
        let cap = (self.max_tokens * w).max(need);
        match &mut self.layers[l] {
            LatentBuf::F32(buf) => {
                if buf.len() < need {
                    buf.resize(need.max(buf.len() * 2).min(cap), 0.0);
                }
                buf[pos * w..need].copy_from_slice(row);
            }
            LatentBuf::F16(buf) => {
                if buf.len() < need {
                    buf.resize(need.max(buf.len() * 2).min(cap), f16::ZERO);
                }
                buf[pos * w..need].iter_mut().zip(row).for_each(|(d, &v)| *d = f16::from_f32(v));
            }
        }
    }

    /// Layer `l`'s latents.
    fn latents(&self, l: usize) -> mla::Latents<'_> {
        match &self.layers[l] {
            LatentBuf::F32(c) => mla::Latents::F32(c),
            LatentBuf::F16(c) => mla::Latents::F16(c),
        }
    }

    /// Cache bytes per token over all layers: `(kv_lora_rank + qk_rope) · layers · 4 or 2`.
    pub fn bytes_per_token(&self) -> usize {
        let elem = match self.layers.first() {
            Some(LatentBuf::F16(_)) => 2,
            _ => 4,
        };
        self.width * elem * self.layers.len()
    }
}

impl Deepseek2 {
    pub fn load(cfg: DeepseekConfig, src: &dyn WeightSource, kv_dtype: KvDtype) -> Result<Self> {
        let h = cfg.hidden;
        let embed = require_shape(src, "token_embd.weight", ARCH, cfg.vocab, h)?;
        let output = match src.weight("output.weight")? {
            Some(w) => w,
            None => embed.clone(),
        };
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
        let info = ModelInfo {
            arch: ARCH.to_string(),
            name: cfg.name.clone(),
            vocab_size: cfg.vocab,
            context_length: cfg.context_length,
            n_layers: cfg.n_layers,
            hidden_size: h,
        };
        Ok(Deepseek2 {
            info,
            rope: cfg.rope()?,
            scale: cfg.softmax_scale(),
            kv_dtype,
            cfg,
            embed,
            layers,
            norm,
            output,
        })
    }

    pub fn config(&self) -> &DeepseekConfig {
        &self.cfg
    }

    /// Runs the rows of `segs` (sequence `s` contributes tokens at its positions) through the
    /// network, storing their latents in `caches`; returns logits for `out_rows`.
    fn run(
        &self,
        caches: &mut [&mut MlaCache],
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
            let a = {
                let _p = profile::scope("attention");
                self.attention(l, &layer.attn, caches, segs, &xn)?
            };
            add_assign(&mut x, &a);
            rms_norm_rows_into(&x, &layer.ffn_norm, self.cfg.rms_eps, &mut xn);
            let mut y = vec![0.0f32; n * h];
            match &layer.ffn {
                Ffn::Dense(f) => {
                    let _p = profile::scope("dense_ffn");
                    f.forward(&xn, n, &mut y)?
                }
                Ffn::Moe(m) => m.forward(&xn, n, &mut y)?,
            }
            add_assign(&mut x, &y);
        }
        let mut last: Vec<f32> = out_rows.iter().flat_map(|&r| x[r * h..(r + 1) * h].iter().copied()).collect();
        rms_norm_rows(&mut last, &self.norm, self.cfg.rms_eps);
        let _p = profile::scope("output");
        linear_new(&self.output, &last, out_rows.len())
    }

    /// MLA for all rows of one layer; returns `n × hidden`.
    fn attention(
        &self,
        l: usize,
        w: &Mla,
        caches: &mut [&mut MlaCache],
        segs: &Segments,
        xn: &[f32],
    ) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let n = segs.n_rows();
        let (nh, nope, rope, lora) = (c.n_heads, c.qk_nope, c.qk_rope, c.kv_lora_rank);
        let q_head = nope + rope;
        let p_proj = profile::scope("attn_q_kv_proj");
        let mut q = match &w.q_a {
            Some((qa, qa_norm)) => {
                let mut t = linear_new(qa, xn, n)?;
                rms_norm_rows(&mut t, qa_norm, c.rms_eps);
                linear_new(&w.q_b, &t, n)?
            }
            None => linear_new(&w.q_b, xn, n)?,
        };
        let mut kv = linear_new(&w.kv_a, xn, n)?;
        drop(p_proj);
        let width = c.latent_width();
        for (r, (seq, pos)) in segs.rows().enumerate() {
            let latent = &mut kv[r * width..(r + 1) * width];
            rms_norm_rows(&mut latent[..lora], &w.kv_a_norm, c.rms_eps);
            self.rope.apply(&mut latent[lora..], pos, rope);
            caches[seq].store(l, pos, latent);
        }
        // The queries' rope parts, rows in parallel for a prompt.
        let positions: Vec<usize> = segs.rows().map(|(_, pos)| pos).collect();
        crate::runtime::pool::par_chunks_mut(&mut q, nh * q_head, PAR_MIN_ROWS, &|first, rows| {
            let mut q_pe = vec![0f32; nh * rope];
            for (row, &pos) in rows.chunks_exact_mut(nh * q_head).zip(&positions[first..]) {
                // All heads' rope parts in one call: sin/cos are computed once per row.
                for (dst, head) in q_pe.chunks_exact_mut(rope).zip(row.chunks_exact(q_head)) {
                    dst.copy_from_slice(&head[nope..]);
                }
                self.rope.apply(&mut q_pe, pos, rope);
                for (src, head) in q_pe.chunks_exact(rope).zip(row.chunks_exact_mut(q_head)) {
                    head[nope..].copy_from_slice(src);
                }
            }
        });
        let o_in = {
            let _p = profile::scope("attn_heads");
            let rows: Vec<(usize, usize)> = segs.rows().collect();
            mla::HeadPass {
                dims: mla::Dims { n_heads: nh, nope, rope, lora, v_head: c.v_head },
                scale: self.scale,
                k_b: w.k_b.iter().map(Weight::qmatrix).collect(),
                v_b: w.v_b.iter().map(Weight::qmatrix).collect(),
                q: &q,
                rows: &rows,
                latents: caches.iter().map(|c| c.latents(l)).collect(),
            }
            .run()
        };
        let _p = profile::scope("attn_o_proj");
        linear_new(&w.o, &o_in, n)
    }
}

fn load_layer(cfg: &DeepseekConfig, src: &dyn WeightSource, l: usize) -> Result<Layer> {
    let name = |s: &str| format!("blk.{l}.{s}");
    let attn = load_mla(cfg, src, l)?;
    let ffn_norm = require_vec(src, &name("ffn_norm.weight"), ARCH, cfg.hidden)?;
    let ffn = match (&cfg.router, cfg.is_moe_layer(l)) {
        (Some(rc), true) => Ffn::Moe(load_moe(
            src,
            ARCH,
            l,
            rc.clone(),
            cfg.hidden,
            cfg.moe_intermediate,
            cfg.moe_intermediate * cfg.n_shared,
        )?),
        _ => Ffn::Dense(load_dense_ffn(src, ARCH, l, cfg.hidden, cfg.intermediate)?),
    };
    Ok(Layer { attn, ffn_norm, ffn })
}

fn load_mla(cfg: &DeepseekConfig, src: &dyn WeightSource, l: usize) -> Result<Mla> {
    let name = |s: &str| format!("blk.{l}.{s}");
    let (h, nh) = (cfg.hidden, cfg.n_heads);
    let q_out = nh * (cfg.qk_nope + cfg.qk_rope);
    let (q_a, q_b) = match cfg.q_lora_rank {
        Some(r) => {
            let qa = require_shape(src, &name("attn_q_a.weight"), ARCH, r, h)?;
            let qn = require_vec(src, &name("attn_q_a_norm.weight"), ARCH, r)?;
            let qb = require_shape(src, &name("attn_q_b.weight"), ARCH, q_out, r)?;
            (Some((qa, qn)), qb)
        }
        None => (None, require_shape(src, &name("attn_q.weight"), ARCH, q_out, h)?),
    };
    let kv_a = require_shape(src, &name("attn_kv_a_mqa.weight"), ARCH, cfg.latent_width(), h)?;
    let kv_a_norm = require_vec(src, &name("attn_kv_a_norm.weight"), ARCH, cfg.kv_lora_rank)?;
    let (k_b, v_b) = load_kv_b(cfg, src, l)?;
    let o = require_shape(src, &name("attn_output.weight"), ARCH, h, nh * cfg.v_head)?;
    Ok(Mla { attn_norm: require_vec(src, &name("attn_norm.weight"), ARCH, h)?, q_a, q_b, kv_a, kv_a_norm, k_b, v_b, o })
}

/// Per-head `W_UKᵀ` and `W_UV`: views of the split GGUF tensors, or split from `kv_b_proj`.
fn load_kv_b(cfg: &DeepseekConfig, src: &dyn WeightSource, l: usize) -> Result<(Vec<Weight>, Vec<Weight>)> {
    let (nh, nope, lora, vh) = (cfg.n_heads, cfg.qk_nope, cfg.kv_lora_rank, cfg.v_head);
    let k_name = format!("blk.{l}.attn_k_b.weight");
    if let Some(kb) = src.weight(&k_name)? {
        ensure!(
            kb.rows == nh * lora && kb.cols == nope,
            "{k_name}: {}x{}, expected {}x{nope}",
            kb.rows,
            kb.cols,
            nh * lora
        );
        let vb = require_shape(src, &format!("blk.{l}.attn_v_b.weight"), ARCH, nh * vh, lora)?;
        let k = (0..nh).map(|hd| kb.slice_rows(hd * lora, lora)).collect::<Result<_, _>>()?;
        let v = (0..nh).map(|hd| vb.slice_rows(hd * vh, vh)).collect::<Result<_, _>>()?;
        return Ok((k, v));
    }
    let kv_b_name = format!("blk.{l}.attn_kv_b.weight");
    let kv_b = require_shape(src, &kv_b_name, ARCH, nh * (nope + vh), lora)?;
    split_kv_b(&kv_b, KvBDims { nh, nope, vh, lora })
}

/// Head count and sizes of a `kv_b_proj` (`[nh·(nope+vh) × lora]`).
#[derive(Clone, Copy, Debug)]
struct KvBDims {
    nh: usize,
    nope: usize,
    vh: usize,
    lora: usize,
}

/// Splits `kv_b_proj` into per-head `W_UKᵀ` (`[lora × nope]`) and `W_UV` (`[vh × lora]`) in the
/// stored precision where that is exact: float types are transposed element by element (W_UV
/// is a zero-copy row view); FP8 is transposed with its 128×128 block scales when the heads
/// sit on block boundaries (DeepSeek-V3 / Kimi-K2: nope = v = 128), so the FP8 release keeps
/// its 1-byte weights. Other layouts (quantised GGUF `attn_kv_b`, unaligned FP8) become f32.
fn split_kv_b(kv_b: &Weight, d: KvBDims) -> Result<(Vec<Weight>, Vec<Weight>)> {
    const B: usize = crate::models::hf::FP8_BLOCK;
    match kv_b.ty {
        WeightType::Ggml(t @ (GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)) => {
            split_kv_b_plain(kv_b, d, t.type_size())
        }
        WeightType::Fp8E4M3Block128 if d.nope.is_multiple_of(B) && d.vh.is_multiple_of(B) => split_kv_b_fp8(kv_b, d),
        _ => split_kv_b_f32(kv_b, d),
    }
}

/// `[rows × cols]` elements of `elem` bytes starting at row `r0` of `src`, transposed.
fn transpose_bytes(src: &[u8], cols: usize, r0: usize, rows: usize, elem: usize) -> Vec<u8> {
    let mut out = vec![0u8; rows * cols * elem];
    for i in 0..rows {
        for j in 0..cols {
            let from = ((r0 + i) * cols + j) * elem;
            let to = (j * rows + i) * elem;
            out[to..to + elem].copy_from_slice(&src[from..from + elem]);
        }
    }
    out
}

fn owned(bytes: Vec<u8>) -> TensorBytes {
    TensorBytes::Owned(Arc::new(bytes))
}

fn split_kv_b_plain(kv_b: &Weight, d: KvBDims, elem: usize) -> Result<(Vec<Weight>, Vec<Weight>)> {
    let (mut k, mut v) = (Vec::with_capacity(d.nh), Vec::with_capacity(d.nh));
    for hd in 0..d.nh {
        let r0 = hd * (d.nope + d.vh);
        let kt = transpose_bytes(&kv_b.bytes, d.lora, r0, d.nope, elem);
        k.push(Weight::new(&format!("{}[k_b {hd}]", kv_b.name), owned(kt), kv_b.ty, d.lora, d.nope)?);
        v.push(kv_b.slice_rows(r0 + d.nope, d.vh)?);
    }
    Ok((k, v))
}

/// f32 block scales of an FP8 weight, `[ceil(rows/128)][ceil(cols/128)]`.
fn fp8_scales(w: &Weight) -> Result<Vec<f32>> {
    let s = w.block_scales.as_ref().with_context(|| format!("{}: FP8 weight without block scales", w.name))?;
    Ok(s.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn fp8_weight(name: &str, data: TensorBytes, scales: &[f32], rows: usize, cols: usize) -> Result<Weight> {
    let mut w = Weight::new(name, data, WeightType::Fp8E4M3Block128, rows, cols)?;
    w.block_scales = Some(owned(scales.iter().flat_map(|v| v.to_le_bytes()).collect()));
    w.qmatrix().validate().map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    Ok(w)
}

fn split_kv_b_fp8(kv_b: &Weight, d: KvBDims) -> Result<(Vec<Weight>, Vec<Weight>)> {
    const B: usize = crate::models::hf::FP8_BLOCK;
    let scales = fp8_scales(kv_b)?;
    let cb = d.lora.div_ceil(B);
    let (mut k, mut v) = (Vec::with_capacity(d.nh), Vec::with_capacity(d.nh));
    for hd in 0..d.nh {
        let r0 = hd * (d.nope + d.vh);
        let (kb0, kbn, vb0, vbn) = (r0 / B, d.nope / B, (r0 + d.nope) / B, d.vh / B);
        // Block (i, j) of W_UK_h is block (j, i) of its transpose, with the same scale.
        let kt_scales: Vec<f32> =
            (0..cb).flat_map(|j| (0..kbn).map(move |i| (i, j))).map(|(i, j)| scales[(kb0 + i) * cb + j]).collect();
        let kt = transpose_bytes(&kv_b.bytes, d.lora, r0, d.nope, 1);
        k.push(fp8_weight(&format!("{}[k_b {hd}]", kv_b.name), owned(kt), &kt_scales, d.lora, d.nope)?);
        let v_bytes = sub_bytes(&kv_b.bytes, (r0 + d.nope) * d.lora, d.vh * d.lora);
        let v_scales = &scales[vb0 * cb..(vb0 + vbn) * cb];
        v.push(fp8_weight(&format!("{}[v_b {hd}]", kv_b.name), v_bytes, v_scales, d.vh, d.lora)?);
    }
    Ok((k, v))
}

/// `len` bytes of `b` from `start`, without copying mapped bytes.
fn sub_bytes(b: &TensorBytes, start: usize, len: usize) -> TensorBytes {
    match b {
        TensorBytes::Mapped { map, start: s, .. } => TensorBytes::Mapped { map: map.clone(), start: s + start, len },
        TensorBytes::Owned(v) => owned(v[start..start + len].to_vec()),
    }
}

/// The general case: dequantise once and split in f32.
fn split_kv_b_f32(kv_b: &Weight, d: KvBDims) -> Result<(Vec<Weight>, Vec<Weight>)> {
    let KvBDims { nh, nope, vh, lora } = d;
    let full = to_f32(kv_b)?;
    let mut k = Vec::with_capacity(nh);
    let mut v = Vec::with_capacity(nh);
    for hd in 0..nh {
        let base = hd * (nope + vh) * lora;
        // W_UK_h is rows [base, base + nope·lora) as [nope × lora]; store its transpose.
        let mut kt = vec![0.0f32; lora * nope];
        for i in 0..nope {
            for j in 0..lora {
                kt[j * nope + i] = full[base + i * lora + j];
            }
        }
        let vv = full[base + nope * lora..base + (nope + vh) * lora].to_vec();
        k.push(f32_weight(&format!("{}[k_b {hd}]", kv_b.name), kt, lora, nope)?);
        v.push(f32_weight(&format!("{}[v_b {hd}]", kv_b.name), vv, vh, lora)?);
    }
    Ok((k, v))
}

/// An owned f32 matrix as a weight.
fn f32_weight(name: &str, data: Vec<f32>, rows: usize, cols: usize) -> Result<Weight> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(Weight::new(name, TensorBytes::Owned(Arc::new(bytes)), WeightType::Ggml(GgmlType::F32), rows, cols)?)
}

impl Model for Deepseek2 {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn new_state(&self, max_tokens: usize) -> SeqState {
        SeqState {
            pos: 0,
            max_tokens,
            cache: Box::new(MlaCache::new(self.cfg.n_layers, self.cfg.latent_width(), max_tokens, self.kv_dtype)),
        }
    }

    fn forward(&self, state: &mut SeqState, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        crate::models::moe::forward_one::<MlaCache>(state, tokens, which, |caches, segs, rows| {
            self.run(caches, segs, tokens, rows)
        })
    }

    fn forward_batch(&self, states: &mut [&mut SeqState], tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        crate::models::moe::forward_step::<MlaCache>(states, tokens, self.cfg.vocab, |caches, segs, rows| {
            self.run(caches, segs, tokens, rows)
        })
    }
}

/// Loads from a GGUF file (`general.architecture == "deepseek2"`).
pub fn load_gguf(file: Arc<crate::formats::GgufFile>, kv_dtype: KvDtype) -> Result<Box<dyn Model>> {
    let cfg = DeepseekConfig::from_gguf(&file)?;
    let src = crate::models::weights::GgufSource::new(file);
    Ok(Box::new(Deepseek2::load(cfg, &src, kv_dtype)?))
}

/// Loads from an HF folder (config.json + safetensors, BF16 or DeepSeek FP8).
pub fn load_hf(dir: &Path, cfg: &HfConfig, kv_dtype: KvDtype) -> Result<Box<dyn Model>> {
    cfg.fp8_block()?;
    let name = crate::models::hf::model_name(dir, ARCH);
    let dc = DeepseekConfig::from_hf(cfg, &name)?;
    let src = crate::models::hf::SafetensorsSource::open(dir)?;
    Ok(Box::new(Deepseek2::load(dc, &src, kv_dtype)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-deepseek-v3").join(rel)
    }

    fn hf() -> DeepseekConfig {
        DeepseekConfig::from_hf(&HfConfig::load(&fixture("hf")).unwrap(), "t").unwrap()
    }

    #[test]
    fn hf_and_gguf_configs_agree() {
        let a = hf();
        let g = crate::formats::GgufFile::open(&fixture("gguf/tiny-deepseek-v3-Q8_0.gguf")).unwrap();
        let b = DeepseekConfig::from_gguf(&g).unwrap();
        for c in [&a, &b] {
            assert_eq!((c.n_layers, c.hidden, c.n_heads, c.vocab), (3, 256, 4, 512));
            assert_eq!((c.q_lora_rank, c.kv_lora_rank, c.qk_nope, c.qk_rope, c.v_head), (Some(256), 256, 64, 64, 64));
            assert_eq!((c.intermediate, c.moe_intermediate, c.n_shared, c.first_k_dense), (512, 64, 1, 1));
            assert_eq!(c.rope_style, RopeStyle::Interleaved);
            assert!(!c.is_moe_layer(0) && c.is_moe_layer(1) && c.is_moe_layer(2));
            assert!((c.softmax_scale() - 1.0 / 128f32.sqrt()).abs() < 1e-7);
        }
        let (ra, rb) = (a.router.unwrap(), b.router.unwrap());
        assert_eq!(ra, rb);
        assert_eq!((ra.n_group, ra.topk_group, ra.top_k), (4, 2, 4));
        assert_eq!((ra.scoring, ra.group_score), (Scoring::Sigmoid, GroupScore::Top2Sum));
        assert!(ra.norm_topk_prob && ra.routed_scaling_factor == 2.5);
    }

    #[test]
    fn yarn_scales_the_softmax_by_mscale_squared() {
        let mut raw = HfConfig::load(&fixture("hf")).unwrap().raw;
        raw["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 40, "mscale": 1.0,
            "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1});
        let c = DeepseekConfig::from_hf(&HfConfig { path: "config.json".into(), raw: raw.clone() }, "t").unwrap();
        let m = 0.1 * 40f64.ln() + 1.0;
        let want = (m * m / 128f64.sqrt()) as f32;
        assert!((c.softmax_scale() - want).abs() < 1e-7);
        let rope = c.rope().unwrap();
        assert_eq!(rope.attn_factor, 1.0);
        assert_eq!(rope.inv_freq.len(), 32);
        raw["rope_scaling"] = serde_json::json!({"type": "dynamic", "factor": 2});
        assert!(DeepseekConfig::from_hf(&HfConfig { path: "config.json".into(), raw }, "t").is_err());
    }

    #[test]
    fn routing_methods_from_config() {
        let mut raw = HfConfig::load(&fixture("hf")).unwrap().raw;
        raw["topk_method"] = serde_json::json!("greedy");
        raw["scoring_func"] = serde_json::json!("softmax");
        let c = DeepseekConfig::from_hf(&HfConfig { path: "config.json".into(), raw: raw.clone() }, "t").unwrap();
        let r = c.router.unwrap();
        assert_eq!((r.n_group, r.scoring), (1, Scoring::Softmax));
        raw["scoring_func"] = serde_json::json!("tanh");
        assert!(DeepseekConfig::from_hf(&HfConfig { path: "config.json".into(), raw }, "t").is_err());
    }

    fn random_bytes(n: usize, seed: u64, mask: u8) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 33) as u8) & mask
            })
            .collect()
    }

    fn assert_same_split(a: &(Vec<Weight>, Vec<Weight>), b: &(Vec<Weight>, Vec<Weight>)) {
        for (x, y) in a.0.iter().zip(&b.0).chain(a.1.iter().zip(&b.1)) {
            assert_eq!((x.rows, x.cols), (y.rows, y.cols));
            assert_eq!(to_f32(x).unwrap(), to_f32(y).unwrap(), "{} vs {}", x.name, y.name);
        }
    }

    #[test]
    fn kv_b_splits_keep_fp8_and_bf16_exactly() {
        // DeepSeek-V3-like alignment: nope = v = 128, with a partial last column block.
        let d = KvBDims { nh: 2, nope: 128, vh: 128, lora: 320 };
        let rows = d.nh * (d.nope + d.vh);
        // e4m3 bytes without the NaN encodings (0x7f, 0xff): clear bit 0 of the top nibble.
        let q = random_bytes(rows * d.lora, 7, 0xf7);
        let sc: Vec<f32> = random_bytes(rows.div_ceil(128) * d.lora.div_ceil(128), 9, 0xff)
            .iter()
            .map(|&b| 1e-3 * (1.0 + b as f32))
            .collect();
        let w = fp8_weight("kv_b", owned(q), &sc, rows, d.lora).unwrap();
        let fp8 = split_kv_b(&w, d).unwrap();
        assert!(fp8.0.iter().chain(&fp8.1).all(|w| w.ty == WeightType::Fp8E4M3Block128));
        assert_same_split(&fp8, &split_kv_b_f32(&w, d).unwrap());
        // bf16: transposed as stored; W_UV rows are a view.
        let bf = Weight::new(
            "kv_b",
            owned(random_bytes(rows * d.lora * 2, 3, 0x3f)),
            WeightType::Ggml(GgmlType::BF16),
            rows,
            d.lora,
        )
        .unwrap();
        let split = split_kv_b(&bf, d).unwrap();
        assert!(split.0.iter().chain(&split.1).all(|w| w.ty == WeightType::Ggml(GgmlType::BF16)));
        assert_same_split(&split, &split_kv_b_f32(&bf, d).unwrap());
        // Unaligned FP8 heads (the tiny fixture's nope = 64) fall back to f32.
        let d2 = KvBDims { nh: 2, nope: 64, vh: 64, lora: 320 };
        let rows2 = d2.nh * 128;
        let w2 = fp8_weight("kv_b", owned(random_bytes(rows2 * d2.lora, 5, 0xf7)), &sc[..6], rows2, d2.lora).unwrap();
        assert!(split_kv_b(&w2, d2).unwrap().0.iter().all(|w| w.ty == WeightType::Ggml(GgmlType::F32)));
    }
}
