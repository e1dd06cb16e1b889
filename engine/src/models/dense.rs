//! The dense decoder-only transformer that llama, qwen2 and gemma3 share. Architectures differ
//! only in options (see [`DenseConfig`]), which `llama.rs` and `gemma3.rs` read from their
//! files; the forward pass lives here once.
//!
//! Prefill runs all prompt tokens through each weight matrix in one `matmul` (weights read once
//! per layer); decode runs one token with `matvec`. `forward_batch` stacks one token of every
//! sequence into the same matmul, so batched decode also reads each weight once per step.

use super::common::{
    add_assign, attention, gated_activation, gated_activation_ggml, rms_norm_rows, rms_norm_rows_into, softcap,
    Activation, AttnParams, KvCache, KvDtype, Rope,
};
use super::error::ModelError;
use super::weights::{check_shape, optional_vec, require, require_vec, Weight, WeightSource};
use super::{Logits, Model, ModelInfo, SeqState};
use crate::kernels::{self, Precision};

/// Architecture options of a dense model.
#[derive(Clone, Debug)]
pub struct DenseConfig {
    pub info: ModelInfo,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    /// Multiplies the token embeddings (gemma: sqrt(hidden)).
    pub embed_scale: Option<f32>,
    pub activation: Activation,
    /// Multiplies q·k (1/sqrt(head_dim), or gemma's query_pre_attn_scalar^-0.5).
    pub attn_scale: f32,
    /// Apply `attn_scale` to q before q·k rather than to the scores (same maths; gemma does it
    /// this way, which matters for the rounding of an f16 KV cache).
    pub prescale_q: bool,
    pub attn_softcap: Option<f32>,
    pub final_softcap: Option<f32>,
    /// The rope configurations layers pick from (gemma3: local and global).
    pub ropes: Vec<Rope>,
    /// Per layer: index into `ropes` and the sliding window (None = full causal attention).
    pub layer_attn: Vec<(usize, Option<usize>)>,
    pub kv_dtype: KvDtype,
}

impl DenseConfig {
    /// Rejects shapes the forward pass cannot run (a malformed file must give an error, not a
    /// panic deep inside attention or rope).
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |key: &str, msg: String| Err(ModelError::config(key, msg));
        let (h, kv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        if self.info.hidden_size == 0 || self.info.n_layers == 0 {
            return bad("embedding_length/block_count", "must be positive".into());
        }
        if h == 0 || kv == 0 || h % kv != 0 {
            return bad("attention.head_count_kv", format!("{kv} KV heads for {h} query heads"));
        }
        if hd == 0 || hd % 2 != 0 {
            return bad("attention.key_length", format!("head dimension {hd} must be even and positive"));
        }
        for r in &self.ropes {
            if r.rot_dim > hd || r.rot_dim % 2 != 0 {
                return bad("rope.dimension_count", format!("{} rotated dimensions for heads of {hd}", r.rot_dim));
            }
        }
        if self.layer_attn.len() != self.info.n_layers || self.layer_attn.iter().any(|&(r, _)| r >= self.ropes.len()) {
            return bad("layer_attn", "one valid rope index per layer is required".into());
        }
        Ok(())
    }
}

/// One layer's weights. Optional parts are present only for the architectures that have them.
pub struct DenseLayer {
    attn_norm: Vec<f32>,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    wo: Weight,
    /// q/k/v biases (qwen2).
    bias: Option<[Vec<f32>; 3]>,
    /// Per-head RMSNorm of q and k (gemma3, qwen3).
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    /// Norm of the attention output before the residual add (gemma).
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    w_gate: Weight,
    w_up: Weight,
    w_down: Weight,
    /// Norm of the FFN output before the residual add (gemma).
    post_ffn_norm: Option<Vec<f32>>,
}

pub struct DenseModel {
    cfg: DenseConfig,
    tok_embd: Weight,
    layers: Vec<DenseLayer>,
    output_norm: Vec<f32>,
    /// The LM head (`output.weight`, or the embedding table when tied).
    output: Weight,
    ffn_dim: usize,
}

/// Per-sequence state: the KV cache and reusable activation buffers.
struct DenseState {
    kv: KvCache,
    scratch: Scratch,
}

/// Activation buffers, grown on demand and reused across calls (no allocation per token once
/// warm).
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
}

impl Scratch {
    fn ensure(&mut self, n: usize, m: &DenseModel) {
        let (d, q, kv, f) = (m.hidden(), m.q_dim(), m.kv_dim(), m.ffn_dim);
        for (buf, len) in [
            (&mut self.x, n * d),
            (&mut self.h, n * d),
            (&mut self.q, n * q),
            (&mut self.k, n * kv),
            (&mut self.v, n * kv),
            (&mut self.att, n * q),
            (&mut self.o, n * d),
            (&mut self.gate, n * f),
            (&mut self.up, n * f),
        ] {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
        }
    }
}

/// A contiguous run of rows of the batch that belongs to one sequence.
struct Segment<'a> {
    kv: &'a mut KvCache,
    pos0: usize,
    start: usize,
    n: usize,
}

impl DenseModel {
    /// Loads the weights by internal (GGUF) name. `tied_ok`: use the embedding table as the LM
    /// head when `output.weight` is absent.
    pub fn load(cfg: DenseConfig, src: &dyn WeightSource) -> Result<Self, ModelError> {
        cfg.validate()?;
        let arch = cfg.info.arch.clone();
        let d = cfg.info.hidden_size;
        let tok_embd = require(src, "token_embd.weight", &arch)?;
        if tok_embd.cols != d {
            return Err(ModelError::tensor(
                "token_embd.weight",
                format!("rows of {}, expected hidden size {d}", tok_embd.cols),
            ));
        }
        let output = match src.weight("output.weight")? {
            Some(w) => w,
            None => tok_embd.clone(),
        };
        if output.cols != d || output.rows == 0 {
            return Err(ModelError::tensor(
                &output.name,
                format!("shape {}×{}, expected V×{d}", output.rows, output.cols),
            ));
        }
        let layers = (0..cfg.info.n_layers).map(|l| load_layer(&cfg, src, l)).collect::<Result<Vec<_>, _>>()?;
        let ffn_dim = layers.iter().map(|l| l.w_gate.rows).max().unwrap_or(0);
        let output_norm = require_vec(src, "output_norm.weight", &arch, d)?;
        let mut cfg = cfg;
        cfg.info.vocab_size = output.rows;
        Ok(DenseModel { cfg, tok_embd, layers, output_norm, output, ffn_dim })
    }

    fn hidden(&self) -> usize {
        self.cfg.info.hidden_size
    }

    fn q_dim(&self) -> usize {
        self.cfg.n_heads * self.cfg.head_dim
    }

    fn kv_dim(&self) -> usize {
        self.cfg.n_kv_heads * self.cfg.head_dim
    }

    fn vocab(&self) -> usize {
        self.output.rows
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<(), ModelError> {
        let vocab = self.tok_embd.rows;
        match tokens.iter().find(|&&t| t as usize >= vocab) {
            Some(&id) => Err(ModelError::TokenOutOfRange { id, vocab }),
            None => Ok(()),
        }
    }

    /// Runs the rows of all segments through the network; returns the logits of the rows
    /// listed in `out_rows`, in that order.
    fn run(
        &self,
        segs: &mut [Segment],
        tokens: &[u32],
        s: &mut Scratch,
        out_rows: &[usize],
    ) -> Result<Vec<f32>, ModelError> {
        let n = tokens.len();
        s.ensure(n, self);
        self.embed(tokens, &mut s.x[..n * self.hidden()])?;
        for (l, layer) in self.layers.iter().enumerate() {
            self.attention_block(l, layer, segs, n, s)?;
            self.ffn_block(layer, n, s)?;
        }
        self.head(s, out_rows)
    }

    fn embed(&self, tokens: &[u32], x: &mut [f32]) -> Result<(), ModelError> {
        let d = self.hidden();
        for (&t, row) in tokens.iter().zip(x.chunks_exact_mut(d)) {
            self.tok_embd.row_f32(t as usize, row)?;
            if let Some(scale) = self.cfg.embed_scale {
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }
        Ok(())
    }

    fn attention_block(
        &self,
        l: usize,
        w: &DenseLayer,
        segs: &mut [Segment],
        n: usize,
        s: &mut Scratch,
    ) -> Result<(), ModelError> {
        let (d, qd, kvd, hd) = (self.hidden(), self.q_dim(), self.kv_dim(), self.cfg.head_dim);
        let eps = self.cfg.rms_eps;
        let (x, h) = (&mut s.x[..n * d], &mut s.h[..n * d]);
        let (q, k, v) = (&mut s.q[..n * qd], &mut s.k[..n * kvd], &mut s.v[..n * kvd]);
        rms_norm_rows_into(x, &w.attn_norm, eps, h);
        w.wq.linear(h, n, q)?;
        w.wk.linear(h, n, k)?;
        w.wv.linear(h, n, v)?;
        if let Some([bq, bk, bv]) = &w.bias {
            add_bias(q, bq);
            add_bias(k, bk);
            add_bias(v, bv);
        }
        if let Some((qn, kn)) = &w.qk_norm {
            rms_norm_rows(q, qn, eps);
            rms_norm_rows(k, kn, eps);
        }
        let (rope_idx, window) = self.cfg.layer_attn[l];
        let rope = &self.cfg.ropes[rope_idx];
        let scale = if self.cfg.prescale_q { 1.0 } else { self.cfg.attn_scale };
        // Fast means "as llama.cpp", whose rope computes its angles in f32.
        let apply_rope = if kernels::precision() == Precision::Fast { Rope::apply_rows_ggml } else { Rope::apply_rows };
        let params = AttnParams {
            n_heads: self.cfg.n_heads,
            n_kv_heads: self.cfg.n_kv_heads,
            head_dim: hd,
            v_head_dim: hd,
            scale,
            window,
            softcap: self.cfg.attn_softcap,
        };
        let att = &mut s.att[..n * qd];
        for seg in segs.iter_mut() {
            let (a, b) = (seg.start, seg.start + seg.n);
            apply_rope(rope, &mut q[a * qd..b * qd], qd, seg.pos0, hd);
            apply_rope(rope, &mut k[a * kvd..b * kvd], kvd, seg.pos0, hd);
        }
        if self.cfg.prescale_q {
            // After the rope, as llama.cpp does (the same maths; it matters for the rounding).
            q.iter_mut().for_each(|v| *v *= self.cfg.attn_scale);
        }
        for seg in segs.iter_mut() {
            let (a, b) = (seg.start, seg.start + seg.n);
            seg.kv.store(l, seg.pos0, &k[a * kvd..b * kvd], &v[a * kvd..b * kvd]);
            attention(&q[a * qd..b * qd], seg.kv.layer(l), seg.pos0, &params, &mut att[a * qd..b * qd]);
        }
        let o = &mut s.o[..n * d];
        w.wo.linear(att, n, o)?;
        if let Some(pn) = &w.post_attn_norm {
            rms_norm_rows(o, pn, eps);
        }
        add_assign(x, o);
        Ok(())
    }

    fn ffn_block(&self, w: &DenseLayer, n: usize, s: &mut Scratch) -> Result<(), ModelError> {
        let (d, f) = (self.hidden(), w.w_gate.rows);
        let (x, h, o) = (&mut s.x[..n * d], &mut s.h[..n * d], &mut s.o[..n * d]);
        let (gate, up) = (&mut s.gate[..n * f], &mut s.up[..n * f]);
        rms_norm_rows_into(x, &w.ffn_norm, self.cfg.rms_eps, h);
        w.w_gate.linear(h, n, gate)?;
        w.w_up.linear(h, n, up)?;
        // Fast means "as llama.cpp": its CPU GELU goes through an f16 table.
        match kernels::precision() {
            Precision::Fast => gated_activation_ggml(self.cfg.activation, gate, up),
            Precision::Exact => gated_activation(self.cfg.activation, gate, up),
        }
        w.w_down.linear(gate, n, o)?;
        if let Some(pn) = &w.post_ffn_norm {
            rms_norm_rows(o, pn, self.cfg.rms_eps);
        }
        add_assign(x, o);
        Ok(())
    }

    /// Final norm and LM head for the selected rows only (prefill usually needs just the last).
    fn head(&self, s: &mut Scratch, rows: &[usize]) -> Result<Vec<f32>, ModelError> {
        let d = self.hidden();
        let m = rows.len();
        if m == 0 {
            return Ok(Vec::new());
        }
        for (i, &r) in rows.iter().enumerate() {
            let (src, dst) = (&s.x[r * d..(r + 1) * d], &mut s.h[i * d..(i + 1) * d]);
            rms_norm_rows_into(src, &self.output_norm, self.cfg.rms_eps, dst);
        }
        let mut logits = vec![0.0f32; m * self.vocab()];
        self.output.linear(&s.h[..m * d], m, &mut logits)?;
        if let Some(cap) = self.cfg.final_softcap {
            softcap(&mut logits, cap);
        }
        Ok(logits)
    }
}

/// Tokens per pass of a long prompt: bounds the activation buffers (a 32k-token prompt would
/// otherwise need ~1 GB of them) while each weight is still read once per 512 tokens.
const PREFILL_CHUNK: usize = 512;

impl DenseModel {
    /// Runs `tokens` of one sequence in chunks of [`PREFILL_CHUNK`]; returns the requested rows.
    fn prefill_chunks(
        &self,
        kv: &mut KvCache,
        pos0: usize,
        tokens: &[u32],
        which: Logits,
        scratch: &mut Scratch,
    ) -> Result<Vec<f32>, ModelError> {
        let n_chunks = tokens.len().div_ceil(PREFILL_CHUNK);
        let mut logits = Vec::new();
        for (c, chunk) in tokens.chunks(PREFILL_CHUNK).enumerate() {
            let rows: Vec<usize> = match which {
                Logits::All => (0..chunk.len()).collect(),
                Logits::Last if c + 1 == n_chunks => vec![chunk.len() - 1],
                Logits::Last => Vec::new(),
            };
            let mut segs = [Segment { kv: &mut *kv, pos0: pos0 + c * PREFILL_CHUNK, start: 0, n: chunk.len() }];
            let out = self.run(&mut segs, chunk, scratch, &rows)?;
            logits.extend_from_slice(&out);
        }
        Ok(logits)
    }
}

fn add_bias(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_exact_mut(b.len().max(1)) {
        add_assign(row, b);
    }
}

fn load_layer(cfg: &DenseConfig, src: &dyn WeightSource, l: usize) -> Result<DenseLayer, ModelError> {
    let arch = cfg.info.arch.as_str();
    let d = cfg.info.hidden_size;
    let (qd, kvd, hd) = (cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.head_dim);
    let name = |t: &str| format!("blk.{l}.{t}");
    let mat = |t: &str, rows: usize, cols: usize| -> Result<Weight, ModelError> {
        let w = require(src, &name(t), arch)?;
        check_shape(&w, rows, cols)?;
        Ok(w)
    };
    let w_gate = require(src, &name("ffn_gate.weight"), arch)?;
    let f = w_gate.rows;
    check_shape(&w_gate, f, d)?;
    let bias = match optional_vec(src, &name("attn_q.bias"), qd)? {
        Some(bq) => Some([
            bq,
            require_vec(src, &name("attn_k.bias"), arch, kvd)?,
            require_vec(src, &name("attn_v.bias"), arch, kvd)?,
        ]),
        None => None,
    };
    let qk_norm = match optional_vec(src, &name("attn_q_norm.weight"), hd)? {
        Some(qn) => Some((qn, require_vec(src, &name("attn_k_norm.weight"), arch, hd)?)),
        None => None,
    };
    Ok(DenseLayer {
        attn_norm: require_vec(src, &name("attn_norm.weight"), arch, d)?,
        wq: mat("attn_q.weight", qd, d)?,
        wk: mat("attn_k.weight", kvd, d)?,
        wv: mat("attn_v.weight", kvd, d)?,
        wo: mat("attn_output.weight", d, qd)?,
        bias,
        qk_norm,
        post_attn_norm: optional_vec(src, &name("post_attention_norm.weight"), d)?,
        ffn_norm: require_vec(src, &name("ffn_norm.weight"), arch, d)?,
        w_gate,
        w_up: mat("ffn_up.weight", f, d)?,
        w_down: mat("ffn_down.weight", d, f)?,
        post_ffn_norm: optional_vec(src, &name("post_ffw_norm.weight"), d)?,
    })
}

fn dense_state(state: &mut SeqState) -> Result<&mut DenseState, ModelError> {
    state.cache.downcast_mut::<DenseState>().ok_or(ModelError::WrongState)
}

impl Model for DenseModel {
    fn info(&self) -> &ModelInfo {
        &self.cfg.info
    }

    fn new_state(&self, max_tokens: usize) -> SeqState {
        let dims = vec![(self.kv_dim(), self.kv_dim()); self.layers.len()];
        let kv = KvCache::new(&dims, max_tokens, self.cfg.kv_dtype);
        SeqState { pos: 0, max_tokens, cache: Box::new(DenseState { kv, scratch: Scratch::default() }) }
    }

    fn forward(&self, state: &mut SeqState, tokens: &[u32], which: Logits) -> anyhow::Result<Vec<f32>> {
        let n = tokens.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        self.check_tokens(tokens)?;
        let pos0 = state.pos;
        let max = state.max_tokens;
        if pos0 + n > max {
            return Err(ModelError::ContextOverflow { have: pos0, adding: n, max }.into());
        }
        let st = dense_state(state)?;
        let mut scratch = std::mem::take(&mut st.scratch);
        let result = self.prefill_chunks(&mut st.kv, pos0, tokens, which, &mut scratch);
        st.scratch = scratch;
        let logits = result?;
        state.pos += n;
        Ok(logits)
    }

    /// One token for each sequence, all through the same matmuls.
    fn forward_batch(&self, states: &mut [&mut SeqState], tokens: &[u32]) -> anyhow::Result<Vec<Vec<f32>>> {
        anyhow::ensure!(states.len() == tokens.len(), "one token per sequence");
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        self.check_tokens(tokens)?;
        for st in states.iter() {
            if st.pos + 1 > st.max_tokens {
                return Err(ModelError::ContextOverflow { have: st.pos, adding: 1, max: st.max_tokens }.into());
            }
        }
        let positions: Vec<usize> = states.iter().map(|s| s.pos).collect();
        let mut dense: Vec<&mut DenseState> = Vec::with_capacity(states.len());
        for st in states.iter_mut() {
            dense.push(dense_state(st)?);
        }
        let mut scratch = std::mem::take(&mut dense[0].scratch);
        let mut segs: Vec<Segment> = dense
            .iter_mut()
            .zip(&positions)
            .enumerate()
            .map(|(i, (st, &pos0))| Segment { kv: &mut st.kv, pos0, start: i, n: 1 })
            .collect();
        let rows: Vec<usize> = (0..tokens.len()).collect();
        let result = self.run(&mut segs, tokens, &mut scratch, &rows);
        drop(segs);
        dense[0].scratch = scratch;
        let logits = result?;
        for st in states.iter_mut() {
            st.pos += 1;
        }
        Ok(logits.chunks_exact(self.vocab()).map(<[f32]>::to_vec).collect())
    }
}
