//! Shared building blocks of the transformer architectures: RMSNorm, activations, RoPE
//! (adjacent-pair and NeoX layouts, linear / frequency-factor / YaRN scaling), a per-sequence KV
//! cache (f32 or f16) and causal (optionally sliding-window) attention over it.
//!
//! Everything here works on f32 activations laid out row-major, one row per token. Weight
//! matrices go through `kernels` (see `weights::Weight::linear`); nothing here reads weights.

use crate::runtime::pool::par_chunks_mut;
use half::f16;
use rayon::prelude::*;

// ---------------------------------------------------------------------------------------------
// Normalisation and activations
// ---------------------------------------------------------------------------------------------

/// `x ← x / rms(x) · w` for every row of `x` (row length = `w.len()`).
///
/// The sum of squares is accumulated in f64 so the result does not depend on the row length's
/// rounding behaviour (the references accumulate in at least f32 pairwise / double).
pub fn rms_norm_rows(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    if d == 0 {
        return;
    }
    par_chunks_mut(x, d, PAR_MIN_ROWS, &|_, rows| {
        for row in rows.chunks_exact_mut(d) {
            let scale = rms_scale(row, eps);
            for (v, &g) in row.iter_mut().zip(w) {
                *v = *v * scale * g;
            }
        }
    });
}

/// Rows (tokens) from which the row-wise steps of a prompt (norms, activations, routing,
/// rope) run on the pool; decode steps stay on the calling thread.
pub(crate) const PAR_MIN_ROWS: usize = 16;
/// Values of an element-wise activation from which it runs on the pool.
const PAR_MIN_VALUES: usize = 1 << 18;

/// `out ← x / rms(x) · w` row by row, leaving `x` untouched (pre-norm of a residual stream).
pub fn rms_norm_rows_into(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    if d == 0 {
        return;
    }
    par_chunks_mut(out, d, PAR_MIN_ROWS, &|first, out| {
        for (row, o) in x[first * d..].chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let scale = rms_scale(row, eps);
            for ((o, &v), &g) in o.iter_mut().zip(row).zip(w) {
                *o = v * scale * g;
            }
        }
    });
}

fn rms_scale(row: &[f32], eps: f32) -> f32 {
    // Squares in f32 summed in f64, then mean and scale in f32: the reference order of ggml
    // (so llama.cpp's numbers can be reproduced bit for bit), and within an ulp of exact.
    let ss: f64 = row.iter().map(|&v| (v * v) as f64).sum();
    let mean = (ss / row.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// SiLU (swish): `x · σ(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation (what Gemma's `gelu_pytorch_tanh` and ggml's `gelu` compute).
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh())
}

/// Gated FFN activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: `silu(gate) · up` (llama, qwen, deepseek).
    Silu,
    /// GeGLU with tanh-approximated GELU: `gelu(gate) · up` (gemma).
    GeluTanh,
}

/// `gate ← act(gate) · up`, element-wise.
pub fn gated_activation(act: Activation, gate: &mut [f32], up: &[f32]) {
    const UNIT: usize = 4096;
    par_chunks_mut(gate, UNIT, PAR_MIN_VALUES / UNIT, &|first, gate| {
        let up = &up[first * UNIT..];
        match act {
            Activation::Silu => gate.iter_mut().zip(up).for_each(|(g, &u)| *g = silu(*g) * u),
            Activation::GeluTanh => gate.iter_mut().zip(up).for_each(|(g, &u)| *g = gelu_tanh(*g) * u),
        }
    });
}

/// As [`gated_activation`], with GELU computed as ggml's CPU backend does (a table indexed by
/// the f16-rounded input holding f16 results; identity/zero beyond ±10), so the `Fast` path can
/// reproduce llama.cpp's numbers. SiLU is computed exactly there too.
pub fn gated_activation_ggml(act: Activation, gate: &mut [f32], up: &[f32]) {
    match act {
        Activation::Silu => gated_activation(act, gate, up),
        Activation::GeluTanh => gate.iter_mut().zip(up).for_each(|(g, &u)| {
            // ggml's `vec_geglu_f32` writes a plain 0 below −10 (not 0 · up, which may be −0).
            *g = if *g <= -10.0 { 0.0 } else { gelu_ggml(*g) * u }
        }),
    }
}

fn gelu_ggml(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        gelu_f16_table()[f16::from_f32(x).to_bits() as usize]
    }
}

/// GELU of every f16 value, rounded to f16 (as ggml's `table_gelu_f16`); built once.
fn gelu_f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX).map(|b| f16::from_f32(gelu_tanh_ggml(f16::from_bits(b).to_f32())).to_f32()).collect()
    })
}

/// ggml's `ggml_gelu_f32` as GCC compiles it (`1 + a·x·x` contracted to one fused
/// multiply-add), which fills its table.
fn gelu_tanh_ggml(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const A: f32 = 0.044_715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (A * x).mul_add(x, 1.0)).tanh())
}

/// `x ← cap · tanh(x / cap)` (Gemma 2 style logit soft-capping).
pub fn softcap(x: &mut [f32], cap: f32) {
    if cap > 0.0 {
        x.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
    }
}

/// `dst += src`, element-wise (residual connection).
pub fn add_assign(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
}

// ---------------------------------------------------------------------------------------------
// Rotary position embedding
// ---------------------------------------------------------------------------------------------

/// Which pairs of a head's dimensions RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(x[2i], x[2i+1])`: llama.cpp's "normal" rope. GGUF llama files use it on
    /// Q/K rows that llama.cpp's converter permuted back to Meta's original order; DeepSeek's
    /// interleaved rope is the same rotation.
    Interleaved,
    /// Half-split pairs `(x[i], x[i + d/2])`: HF transformers' `rotate_half`, llama.cpp's NeoX
    /// rope (gemma, qwen2/3, HF llama checkpoints).
    NeoX,
}

/// A RoPE configuration: one inverse frequency per rotated pair, and a magnitude factor on
/// cos/sin (YaRN's attention factor; 1.0 otherwise).
#[derive(Clone, Debug)]
pub struct Rope {
    pub style: RopeStyle,
    /// Number of leading dimensions of each head that are rotated (≤ head_dim, even).
    pub rot_dim: usize,
    /// `rot_dim / 2` inverse frequencies (radians per position).
    pub inv_freq: Vec<f64>,
    /// Multiplies cos and sin (YaRN `attention_factor`/mscale); 1.0 for plain RoPE.
    pub attn_factor: f32,
    /// Plain RoPE's (theta, freq_scale), for [`Rope::apply_rows_ggml`]; None once the
    /// frequencies are modified (frequency factors, YaRN).
    pub plain: Option<(f64, f64)>,
}

/// YaRN parameters (HF `rope_scaling` with `type: yarn`, GGUF `rope.scaling.*`).
#[derive(Clone, Copy, Debug)]
pub struct YarnParams {
    pub factor: f64,
    pub original_context: f64,
    pub beta_fast: f64,
    pub beta_slow: f64,
    /// Multiplier on cos/sin (HF `attention_factor`, computed by the caller from mscale and
    /// mscale_all_dim, since DeepSeek moves part of it into the softmax scale).
    pub attn_factor: f32,
}

impl Rope {
    /// Plain RoPE with base `theta`; `freq_scale` < 1 is linear position interpolation
    /// (positions multiplied by `freq_scale` = 1 / factor).
    pub fn new(style: RopeStyle, rot_dim: usize, theta: f64, freq_scale: f64) -> Self {
        let inv_freq = (0..rot_dim / 2).map(|i| freq_scale / theta.powf(2.0 * i as f64 / rot_dim as f64)).collect();
        Rope { style, rot_dim, inv_freq, attn_factor: 1.0, plain: Some((theta, freq_scale)) }
    }

    /// Divides each frequency by a per-pair factor (llama 3.1's `rope_freqs.weight` in GGUF).
    /// Extra or missing factors are ignored (the caller validates the length).
    pub fn with_freq_factors(mut self, factors: &[f32]) -> Self {
        self.plain = None;
        for (f, &k) in self.inv_freq.iter_mut().zip(factors) {
            if k != 0.0 {
                *f /= k as f64;
            }
        }
        self
    }

    /// YaRN ("NTK-by-parts") scaling as HF transformers computes it: frequencies above the
    /// `beta_fast` correction dimension are kept, those below `beta_slow` are interpolated by
    /// `factor`, with a linear ramp in between.
    pub fn yarn(style: RopeStyle, rot_dim: usize, theta: f64, p: YarnParams) -> Self {
        let d = rot_dim as f64;
        let corr_dim =
            |n_rot: f64| d * (p.original_context / (n_rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln());
        let low = corr_dim(p.beta_fast).floor().max(0.0);
        let mut high = corr_dim(p.beta_slow).ceil().min(d - 1.0);
        if high == low {
            high += 0.001;
        }
        let inv_freq = (0..rot_dim / 2)
            .map(|i| {
                let extrap = 1.0 / theta.powf(2.0 * i as f64 / d);
                let interp = extrap / p.factor;
                let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                let keep = 1.0 - ramp;
                interp * (1.0 - keep) + extrap * keep
            })
            .collect();
        Rope { style, rot_dim, inv_freq, attn_factor: p.attn_factor, plain: None }
    }

    /// Rotates one token's heads in place: `x` holds `x.len() / head_dim` heads of `head_dim`
    /// values each, at absolute position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize, head_dim: usize) {
        let half = self.rot_dim / 2;
        if head_dim == 0 || half == 0 {
            return;
        }
        for (i, &f) in self.inv_freq.iter().enumerate().take(half) {
            let (sin, cos) = (pos as f64 * f).sin_cos();
            let (sin, cos) = (sin as f32 * self.attn_factor, cos as f32 * self.attn_factor);
            let (a, b) = match self.style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::NeoX => (i, i + half),
            };
            for head in x.chunks_exact_mut(head_dim) {
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos - x1 * sin;
                head[b] = x0 * sin + x1 * cos;
            }
        }
    }

    /// As [`Rope::apply_rows`], computed as ggml's CPU `rope` does (so the `Fast` path can
    /// reproduce llama.cpp's numbers): angles in f32, the frequency stepped by repeated
    /// multiplication with `base^(−2/d)`, f32 `cos`/`sin`, and the rotation with one fused
    /// multiply-add per output (GCC contracts ggml's `x0·cos − x1·sin` that way). Ropes
    /// with modified frequencies (YaRN, frequency factors) use [`Rope::apply_rows`].
    pub fn apply_rows_ggml(&self, x: &mut [f32], row_len: usize, pos0: usize, head_dim: usize) {
        let Some((theta, freq_scale)) = self.plain else {
            return self.apply_rows(x, row_len, pos0, head_dim);
        };
        let half = self.rot_dim / 2;
        if row_len == 0 || head_dim == 0 || half == 0 {
            return;
        }
        let theta_scale = (theta as f32).powf(-2.0 / self.rot_dim as f32);
        let mut cs = vec![(0f32, 0f32); half];
        for (t, row) in x.chunks_exact_mut(row_len).enumerate() {
            let mut th = (pos0 + t) as f32;
            for c in cs.iter_mut() {
                let a = freq_scale as f32 * th;
                *c = (a.cos() * self.attn_factor, a.sin() * self.attn_factor);
                th *= theta_scale;
            }
            rotate_ggml(self.style, row, head_dim, &cs);
        }
    }

    /// Rotates `rows` consecutive tokens (row length `row_len`), the first at position `pos0`.
    pub fn apply_rows(&self, x: &mut [f32], row_len: usize, pos0: usize, head_dim: usize) {
        if row_len == 0 {
            return;
        }
        for (t, row) in x.chunks_exact_mut(row_len).enumerate() {
            self.apply(row, pos0 + t, head_dim);
        }
    }
}

/// Defines `$name(args)`: `$body` (an `#[inline(always)]` fn of the same arguments) compiled
/// with FMA where the CPU has it, so its `mul_add`s are single instructions and its loops
/// vectorize, else as is (`mul_add` is then a library call, with the same result).
macro_rules! with_fma {
    ($(#[$doc:meta])* fn $name:ident($($a:ident: $t:ty),*) => $body:ident) => {
        $(#[$doc])*
        fn $name($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            if crate::kernels::simd::avx2_supported() {
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn fma($($a: $t),*) {
                    $body($($a),*)
                }
                // SAFETY: AVX2/FMA/F16C detected.
                return unsafe { fma($($a),*) };
            }
            $body($($a),*)
        }
    };
}

with_fma!(
    /// `x0·cos − x1·sin`, `x0·sin + x1·cos` with ggml's contraction, for every head of a row.
    fn rotate_ggml(style: RopeStyle, row: &mut [f32], head_dim: usize, cs: &[(f32, f32)]) => rotate_ggml_generic
);

#[inline(always)]
fn rotate_ggml_generic(style: RopeStyle, row: &mut [f32], head_dim: usize, cs: &[(f32, f32)]) {
    let half = cs.len();
    for head in row.chunks_exact_mut(head_dim) {
        for (i, &(cos, sin)) in cs.iter().enumerate() {
            let (a, b) = match style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::NeoX => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0.mul_add(cos, -(x1 * sin));
            head[b] = x0.mul_add(sin, x1 * cos);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// KV cache
// ---------------------------------------------------------------------------------------------

/// Element type of a KV cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvDtype {
    /// Exact (default; what `hy logits` compares against f32 references with).
    #[default]
    F32,
    /// Half the memory; llama.cpp's default.
    F16,
}

#[derive(Debug)]
enum KvBuf {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl KvBuf {
    fn new(dtype: KvDtype) -> Self {
        match dtype {
            KvDtype::F32 => KvBuf::F32(Vec::new()),
            KvDtype::F16 => KvBuf::F16(Vec::new()),
        }
    }

    fn len(&self) -> usize {
        match self {
            KvBuf::F32(v) => v.len(),
            KvBuf::F16(v) => v.len(),
        }
    }

    /// Grows geometrically (capped at `cap` values) so appends do not reallocate per token.
    fn ensure(&mut self, need: usize, cap: usize) {
        if self.len() >= need {
            return;
        }
        let target = need.max(self.len() * 2).min(cap.max(need));
        match self {
            KvBuf::F32(v) => v.resize(target, 0.0),
            KvBuf::F16(v) => v.resize(target, f16::ZERO),
        }
    }

    fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            KvBuf::F32(v) => v[at..at + src.len()].copy_from_slice(src),
            KvBuf::F16(v) => {
                for (d, &s) in v[at..at + src.len()].iter_mut().zip(src) {
                    *d = f16::from_f32(s);
                }
            }
        }
    }
}

/// One layer's keys and values, `[position][kv_head][dim]`.
#[derive(Debug)]
pub struct LayerKv {
    k: KvBuf,
    v: KvBuf,
    k_dim: usize,
    v_dim: usize,
}

impl LayerKv {
    /// Row width of the keys (n_kv_heads × key head dim).
    pub fn k_dim(&self) -> usize {
        self.k_dim
    }

    /// Row width of the values.
    pub fn v_dim(&self) -> usize {
        self.v_dim
    }
}

/// A sequence's KV cache for all layers. Memory grows with the tokens actually stored (up to
/// `max_tokens`), so a state sized for a long context costs nothing until it is used.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    max_tokens: usize,
}

impl KvCache {
    /// `dims[l] = (k_dim, v_dim)` per layer.
    pub fn new(dims: &[(usize, usize)], max_tokens: usize, dtype: KvDtype) -> Self {
        let layers = dims
            .iter()
            .map(|&(k_dim, v_dim)| LayerKv { k: KvBuf::new(dtype), v: KvBuf::new(dtype), k_dim, v_dim })
            .collect();
        KvCache { layers, max_tokens }
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn layer(&self, l: usize) -> &LayerKv {
        &self.layers[l]
    }

    /// Stores `n` rows of keys and values for positions `pos0..pos0 + n` of layer `l`.
    /// The caller has checked `pos0 + n <= max_tokens`.
    pub fn store(&mut self, l: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let max = self.max_tokens;
        let layer = &mut self.layers[l];
        let n = k.len() / layer.k_dim.max(1);
        let (kd, vd) = (layer.k_dim, layer.v_dim);
        layer.k.ensure((pos0 + n) * kd, max * kd);
        layer.v.ensure((pos0 + n) * vd, max * vd);
        layer.k.write(pos0 * kd, &k[..n * kd]);
        layer.v.write(pos0 * vd, &v[..n * vd]);
    }
}

// ---------------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------------

/// Shape and options of one layer's attention.
#[derive(Clone, Copy, Debug)]
pub struct AttnParams {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// Query/key head dimension.
    pub head_dim: usize,
    /// Value head dimension (usually = head_dim).
    pub v_head_dim: usize,
    /// Multiplies q·k before the softmax (usually 1/sqrt(head_dim)).
    pub scale: f32,
    /// Sliding window: a query at position p sees keys at positions > p - window.
    pub window: Option<usize>,
    /// Soft-capping of the attention scores (Gemma 2); None for most models.
    pub softcap: Option<f32>,
}

/// Causal attention of `n` query rows (positions `pos0..pos0+n`, each `n_heads × head_dim`)
/// over the cache (which already holds those positions). Writes `n × n_heads × v_head_dim`.
///
/// One task per (token, head), in parallel; each keeps a running max and sum (online softmax),
/// so no score buffer is allocated however long the context is.
pub fn attention(q: &[f32], kv: &LayerKv, pos0: usize, p: &AttnParams, out: &mut [f32]) {
    let group = (p.n_heads / p.n_kv_heads.max(1)).max(1);
    let q_row = p.n_heads * p.head_dim;
    // llama.cpp sums an f16 cache's dot products in one order for a single token and in
    // another for several (see `F16Dot`).
    let flavour = if q.len() > q_row { F16Dot::TinyBlas } else { F16Dot::VecDot };
    out.par_chunks_mut(p.v_head_dim).enumerate().for_each(|(idx, o)| {
        let (t, h) = (idx / p.n_heads, idx % p.n_heads);
        let pos = pos0 + t;
        let qh = &q[t * q_row + h * p.head_dim..][..p.head_dim];
        let kvh = h / group;
        let first = match p.window {
            Some(w) if w > 0 => (pos + 1).saturating_sub(w),
            _ => 0,
        };
        match (&kv.k, &kv.v) {
            (KvBuf::F16(kc), KvBuf::F16(vc)) => attend_f16(qh, (kc, vc), kv, kvh, first, pos, p, o, flavour),
            _ => attend_online(qh, kv, kvh, first, pos, p, o),
        }
    });
}

/// f32 cache: exact, one pass with a running max and sum (online softmax).
fn attend_online(q: &[f32], kv: &LayerKv, kvh: usize, first: usize, last: usize, p: &AttnParams, o: &mut [f32]) {
    o.iter_mut().for_each(|v| *v = 0.0);
    let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
    for j in first..=last {
        let k_off = j * kv.k_dim + kvh * p.head_dim;
        let v_off = j * kv.v_dim + kvh * p.v_head_dim;
        let s = score(dot_kv(q, &kv.k, k_off), p);
        if s > max {
            // Rescale what was accumulated under the old maximum.
            let r = (max - s).exp();
            sum *= r;
            o.iter_mut().for_each(|v| *v *= r);
            max = s;
        }
        let w = (s - max).exp();
        sum += w;
        axpy_kv(w, &kv.v, v_off, o);
    }
    if sum > 0.0 {
        let inv = 1.0 / sum;
        o.iter_mut().for_each(|v| *v *= inv);
    }
}

#[inline]
fn score(dot: f32, p: &AttnParams) -> f32 {
    let s = dot * p.scale;
    match p.softcap {
        Some(cap) => cap * (s / cap).tanh(),
        None => s,
    }
}

thread_local! {
    /// Per-thread buffers of the f16 path: the query (f16 values as f32), one row of keys
    /// or values as f32, the scores/probabilities, and the lane accumulators of the values.
    static F16_SCRATCH: std::cell::RefCell<[Vec<f32>; 4]> = const {
        std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new(), Vec::new()])
    };
}

/// How ggml sums an f16 dot product (the reduction order decides the last bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F16Dot {
    /// `ggml_vec_dot_f16` (AVX-512 without FP16): term i goes to lane i % 64 of four 16-lane
    /// accumulators; they are added pairwise, then the 16 lanes; terms beyond a multiple of
    /// 64 are added in f64. What llama.cpp runs for one token.
    VecDot,
    /// llamafile's tinyBLAS (f16 × f16, AVX-512): term i goes to lane i % 16 of one
    /// accumulator, then the 16 lanes are added. What llama.cpp runs for several tokens
    /// (for lengths that are a multiple of 16; otherwise it falls back to `VecDot`).
    TinyBlas,
}

/// Accumulator lanes of a flavour for a sum of `n` terms.
fn dot_lanes(flavour: F16Dot, n: usize) -> usize {
    match flavour {
        F16Dot::TinyBlas if n.is_multiple_of(16) => 16,
        _ => 64,
    }
}

/// `_mm512_reduce_add_ps`'s order: halves of 8, 4, 2, then the last pair.
fn reduce16(x: &[f32]) -> f32 {
    let mut t = [0f32; 8];
    for l in 0..8 {
        t[l] = x[l] + x[l + 8];
    }
    let u = [t[0] + t[4], t[1] + t[5], t[2] + t[6], t[3] + t[7]];
    (u[0] + u[2]) + (u[1] + u[3])
}

/// The final reduction of 64 (VecDot's four registers) or 16 (one register) lanes.
fn reduce_lanes(acc: &[f32]) -> f32 {
    if acc.len() == 16 {
        return reduce16(acc);
    }
    let mut x = [0f32; 16];
    for l in 0..16 {
        x[l] = (acc[l] + acc[32 + l]) + (acc[16 + l] + acc[48 + l]);
    }
    reduce16(&x)
}

with_fma!(
    /// `acc[i % lanes] = fma(a[i], b[i], acc[i % lanes])` over whole groups of `acc.len()`.
    fn fma_lanes(acc: &mut [f32], a: &[f32], b: &[f32]) => fma_lanes_generic
);

#[inline(always)]
fn fma_lanes_generic(acc: &mut [f32], a: &[f32], b: &[f32]) {
    let lanes = acc.len();
    for (ca, cb) in a.chunks_exact(lanes).zip(b.chunks_exact(lanes)) {
        for ((s, &x), &y) in acc.iter_mut().zip(ca).zip(cb) {
            *s = x.mul_add(y, *s);
        }
    }
}

with_fma!(
    /// `acc[d] = fma(v[d], w, acc[d])`.
    fn axpy_fma(acc: &mut [f32], w: f32, v: &[f32]) => axpy_fma_generic
);

#[inline(always)]
fn axpy_fma_generic(acc: &mut [f32], w: f32, v: &[f32]) {
    for (s, &x) in acc.iter_mut().zip(v) {
        *s = x.mul_add(w, *s);
    }
}

/// ggml's f16 dot product of `a` and `b` (f16 values held as f32), in `flavour`'s order.
fn dot_f16_ggml(a: &[f32], b: &[f32], flavour: F16Dot) -> f32 {
    let n = a.len();
    let lanes = dot_lanes(flavour, n);
    let main = n - n % lanes;
    let mut acc = [0f32; 64];
    fma_lanes(&mut acc[..lanes], &a[..main], &b[..main]);
    let mut sum = reduce_lanes(&acc[..lanes]) as f64;
    for (x, y) in a[main..].iter().zip(&b[main..]) {
        sum += (x * y) as f64;
    }
    sum as f32
}

/// exp(x) as ggml's `ggml_v_expf` computes it (its AVX-512 flavour, used by llama.cpp's CPU
/// softmax): a range reduction by ln 2 and a degree-5 polynomial, bit for bit.
fn expf_ggml(x: f32) -> f32 {
    let c = f32::from_bits;
    let r = c(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(c(0x3fb8_aa3b), r);
    let n = z - r;
    let b = (-n).mul_add(c(0x35bf_be8e), (-n).mul_add(c(0x3f31_7200), x));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let u = b * b;
    let j = c(0x3c07_2010).mul_add(b, c(0x3d2b_9f17)).mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb)));
    let j = j.mul_add(u, c(0x3f7f_fff6).mul_add(b, 1.0));
    // j · 2^n as `vscalefps` (two power-of-two factors: each step exact or rounded once).
    let n = n as i32;
    let (h, l) = (n / 2, n - n / 2);
    j * c(((127 + h) as u32) << 23) * c(((127 + l) as u32) << 23)
}

/// f16 cache: computed exactly as ggml's CPU backend does with an f16 KV cache (llama.cpp's
/// default, flash attention off), so the `Fast` path can reproduce llama.cpp's numbers bit
/// for bit: the query is rounded to f16; q·k is an f16 dot product; the softmax uses ggml's
/// exp and sums 16-position chunks in f64; the probabilities are rounded to f16 and the
/// weighted sum of values is again an f16 dot product over the positions (position j in
/// lane j % lanes). The summation order is the one llama.cpp uses for one token (`VecDot`)
/// or for several (`TinyBlas`).
/// `(kc, vc)` are `kv`'s f16 key and value rows.
#[allow(clippy::too_many_arguments)]
fn attend_f16(
    q: &[f32],
    (kc, vc): (&[f16], &[f16]),
    kv: &LayerKv,
    kvh: usize,
    first: usize,
    last: usize,
    p: &AttnParams,
    o: &mut [f32],
    flavour: F16Dot,
) {
    F16_SCRATCH.with(|cell| {
        let [q16, row, probs, acc] = &mut *cell.borrow_mut();
        q16.clear();
        q16.extend(q.iter().map(|&x| f16::from_f32(x).to_f32()));
        row.resize(p.head_dim.max(p.v_head_dim), 0.0);
        // Scores of positions 0..=last; masked slots (−inf) pad to whole 16-chunks.
        let n = (last + 1).next_multiple_of(16);
        probs.clear();
        probs.resize(n, f32::NEG_INFINITY);
        for j in first..=last {
            let k = &kc[j * kv.k_dim + kvh * p.head_dim..][..p.head_dim];
            for (d, s) in row.iter_mut().zip(k) {
                *d = s.to_f32();
            }
            probs[j] = score(dot_f16_ggml(&row[..p.head_dim], q16, flavour), p);
        }
        let max = probs[first..=last].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f64;
        for chunk in probs.chunks_exact_mut(16) {
            for s in chunk.iter_mut() {
                *s = if *s == f32::NEG_INFINITY { 0.0 } else { expf_ggml(*s - max) };
            }
            sum += reduce16(chunk) as f64;
        }
        let inv = (1.0 / sum) as f32;
        // llama.cpp's cache holds a multiple of 256 positions (masked ones weigh 0), so the
        // sum over positions has no f64 leftovers.
        let lanes = dot_lanes(flavour, 256);
        let vd = p.v_head_dim;
        acc.clear();
        acc.resize(lanes * vd, 0.0);
        for j in first..=last {
            let w = f16::from_f32(probs[j] * inv).to_f32();
            let v = &vc[j * kv.v_dim + kvh * vd..][..vd];
            for (d, s) in row.iter_mut().zip(v) {
                *d = s.to_f32();
            }
            let l = j % lanes;
            axpy_fma(&mut acc[l * vd..(l + 1) * vd], w, &row[..vd]);
        }
        reduce_lane_rows(acc, lanes, vd, o);
    });
}

/// [`reduce_lanes`] for `vd` sums at once: `acc` holds `lanes` rows of `vd` values (row l =
/// lane l of every sum); the rows are combined in place, element-wise (vectorizes).
fn reduce_lane_rows(acc: &mut [f32], lanes: usize, vd: usize, out: &mut [f32]) {
    let add_rows = |acc: &mut [f32], dst: usize, src: usize| {
        let (lo, hi) = acc.split_at_mut(src * vd);
        lo[dst * vd..(dst + 1) * vd].iter_mut().zip(&hi[..vd]).for_each(|(a, &b)| *a += b);
    };
    if lanes == 64 {
        // Four registers of 16 lanes: r0 + r2, r1 + r3, then (r0 + r2) + (r1 + r3).
        for l in 0..16 {
            add_rows(acc, l, 32 + l);
            add_rows(acc, 16 + l, 48 + l);
            add_rows(acc, l, 16 + l);
        }
    }
    // One register: halves of 8, 4, 2, then the last pair.
    for (half, n) in [(8, 8), (4, 4), (2, 2)] {
        for l in 0..n {
            add_rows(acc, l, l + half);
        }
    }
    for (d, o) in out.iter_mut().enumerate() {
        *o = acc[d] + acc[vd + d];
    }
}

#[inline]
fn dot_kv(q: &[f32], buf: &KvBuf, off: usize) -> f32 {
    match buf {
        KvBuf::F32(k) => crate::kernels::dot_f32(q, &k[off..off + q.len()]),
        KvBuf::F16(k) => q.iter().zip(&k[off..off + q.len()]).map(|(a, b)| a * b.to_f32()).sum(),
    }
}

#[inline]
fn axpy_kv(w: f32, buf: &KvBuf, off: usize, o: &mut [f32]) {
    let n = o.len();
    match buf {
        KvBuf::F32(v) => o.iter_mut().zip(&v[off..off + n]).for_each(|(d, &s)| *d += w * s),
        KvBuf::F16(v) => o.iter_mut().zip(&v[off..off + n]).for_each(|(d, s)| *d += w * s.to_f32()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggml_gelu_is_gelu_within_f16_rounding() {
        for i in -2000..2000 {
            let x = i as f32 * 0.0061;
            let (a, b) = (gelu_ggml(x), gelu_tanh(x));
            assert!((a - b).abs() <= 2e-3 * b.abs().max(0.05), "{x}: {a} vs {b}");
        }
        assert_eq!(gelu_ggml(12.5), 12.5);
        assert_eq!(gelu_ggml(-12.5), 0.0);
    }

    #[test]
    fn ggml_exp_and_rope_are_accurate() {
        // Down to −76 (below, the results are subnormal and lose relative precision).
        for i in 0..1700 {
            let x = -(i as f32) * 0.045;
            let (a, b) = (expf_ggml(x), (x as f64).exp());
            assert!(((a as f64) - b).abs() <= 4e-7 * b, "{x}: {a} vs {b}");
        }
        assert_eq!(expf_ggml(0.0), 1.0);
        assert_eq!(expf_ggml(-200.0), 0.0);
        let r = Rope::new(RopeStyle::NeoX, 8, 10000.0, 1.0);
        let x: Vec<f32> = (0..16).map(|i| i as f32 * 0.3 - 2.0).collect();
        let (mut a, mut b) = (x.clone(), x.clone());
        r.apply_rows(&mut a, 16, 41, 8);
        r.apply_rows_ggml(&mut b, 16, 41, 8);
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).abs() < 1e-4, "{u} vs {v}");
        }
    }

    #[test]
    fn ggml_f16_dot_orders_sum_the_same_terms() {
        let a: Vec<f32> = (0..200).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.125).collect();
        let b: Vec<f32> = (0..200).map(|i| ((i * 11 % 17) as f32 - 8.0) * 0.25).collect();
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| (x * y) as f64).sum();
        for f in [F16Dot::VecDot, F16Dot::TinyBlas] {
            // Small integers times powers of two: every order is exact.
            assert_eq!(dot_f16_ggml(&a, &b, f) as f64, exact);
            assert_eq!(
                dot_f16_ggml(&a[..192], &b[..192], f) as f64,
                a[..192].iter().zip(&b).map(|(x, y)| (x * y) as f64).sum::<f64>()
            );
        }
    }

    #[test]
    fn rms_norm_matches_definition() {
        let mut x = vec![1.0f32, -2.0, 3.0, 4.0];
        let w = [1.0f32, 0.5, 2.0, 1.0];
        rms_norm_rows(&mut x, &w, 0.0);
        let rms = ((1.0 + 4.0 + 9.0 + 16.0) / 4.0f32).sqrt();
        let want = [1.0 / rms, -1.0 / rms, 6.0 / rms, 4.0 / rms];
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn rope_styles_agree_up_to_permutation() {
        // Rotating adjacent pairs of a permuted vector equals rotating half-split pairs of the
        // original: the reason GGUF llama (permuted Q/K) and HF llama give the same logits.
        let d = 8;
        let x: Vec<f32> = (0..d).map(|i| i as f32 * 0.37 - 1.0).collect();
        let neox = Rope::new(RopeStyle::NeoX, d, 10000.0, 1.0);
        let inter = Rope::new(RopeStyle::Interleaved, d, 10000.0, 1.0);
        let mut a = x.clone();
        neox.apply(&mut a, 7, d);
        // interleave: [x0, x4, x1, x5, ...]
        let mut b: Vec<f32> = (0..d).map(|i| x[(i % 2) * d / 2 + i / 2]).collect();
        inter.apply(&mut b, 7, d);
        for i in 0..d {
            assert!((a[(i % 2) * d / 2 + i / 2] - b[i]).abs() < 1e-6);
        }
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        let r = Rope::new(RopeStyle::NeoX, 4, 10000.0, 1.0);
        let mut x = vec![1.0f32, 2.0, 3.0, 4.0];
        r.apply(&mut x, 0, 4);
        assert_eq!(x, vec![1.0, 2.0, 3.0, 4.0]);
        r.apply(&mut x, 123, 4);
        let n: f32 = x.iter().map(|v| v * v).sum();
        assert!((n - 30.0).abs() < 1e-4);
    }

    #[test]
    fn yarn_keeps_high_and_interpolates_low_frequencies() {
        let p =
            YarnParams { factor: 40.0, original_context: 4096.0, beta_fast: 32.0, beta_slow: 1.0, attn_factor: 1.0 };
        let plain = Rope::new(RopeStyle::NeoX, 64, 10000.0, 1.0);
        let y = Rope::yarn(RopeStyle::NeoX, 64, 10000.0, p);
        assert!((y.inv_freq[0] - plain.inv_freq[0]).abs() < 1e-12);
        assert!((y.inv_freq[31] - plain.inv_freq[31] / 40.0).abs() < 1e-12);
    }

    fn naive_attention(q: &[f32], k: &[f32], v: &[f32], n_ctx: usize, d: usize, scale: f32) -> Vec<f32> {
        let s: Vec<f32> =
            (0..n_ctx).map(|j| q.iter().zip(&k[j * d..]).map(|(a, b)| a * b).sum::<f32>() * scale).collect();
        let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f32 = e.iter().sum();
        (0..d).map(|c| (0..n_ctx).map(|j| e[j] / z * v[j * d + c]).sum()).collect()
    }

    #[test]
    fn attention_matches_naive_softmax_with_gqa_and_window() {
        let (d, n_ctx) = (4, 5);
        let k: Vec<f32> = (0..n_ctx * d).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3).collect();
        let v: Vec<f32> = (0..n_ctx * d).map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.2).collect();
        for dtype in [KvDtype::F32, KvDtype::F16] {
            let mut cache = KvCache::new(&[(d, d)], 16, dtype);
            cache.store(0, 0, &k, &v);
            // Two query heads sharing the single KV head, at the last position.
            let q: Vec<f32> = (0..2 * d).map(|i| (i as f32 - 3.0) * 0.25).collect();
            let p = AttnParams {
                n_heads: 2,
                n_kv_heads: 1,
                head_dim: d,
                v_head_dim: d,
                scale: 0.5,
                window: None,
                softcap: None,
            };
            let mut out = vec![0.0; 2 * d];
            attention(&q, cache.layer(0), n_ctx - 1, &p, &mut out);
            let tol = if dtype == KvDtype::F32 { 1e-5 } else { 3e-3 };
            for h in 0..2 {
                let want = naive_attention(&q[h * d..][..d], &k, &v, n_ctx, d, 0.5);
                for c in 0..d {
                    assert!((out[h * d + c] - want[c]).abs() < tol);
                }
            }
            // Window 2: only the last two keys.
            let pw = AttnParams { window: Some(2), ..p };
            attention(&q, cache.layer(0), n_ctx - 1, &pw, &mut out);
            let want = naive_attention(&q[..d], &k[3 * d..], &v[3 * d..], 2, d, 0.5);
            for c in 0..d {
                assert!((out[c] - want[c]).abs() < tol);
            }
        }
    }
}
