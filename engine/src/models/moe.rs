//! Mixture-of-Experts building blocks shared by DeepSeek-V3 (`deepseek2`) and Qwen3-MoE:
//! the router (which experts a token uses, with what weight) and the expert FFN execution.
//!
//! Routing, as the reference implementations define it:
//! - DeepSeek-V3 / Kimi-K2 (`noaux_tc`): `s = sigmoid(logits)`; the selection uses
//!   `s + e_score_correction_bias`, restricted to the `topk_group` best of `n_group` groups,
//!   a group's score being the sum of its two best biased scores; the weights are the
//!   *unbiased* `s` of the chosen experts, normalised to sum 1 (`norm_topk_prob`) and then
//!   multiplied by `routed_scaling_factor`.
//! - Qwen3-MoE: `p = softmax(logits)`, the `top_k` largest, renormalised when `norm_topk_prob`.
//!
//! Ties are broken towards the lower index (expert or group), so selection is deterministic.
//! Experts outside the chosen groups are excluded outright (as the official DeepSeek code and
//! llama.cpp do with -inf), never picked by a zero fill.
//!
//! Execution ([`MoeFfn::forward`]) handles `n` token rows at once: it routes every row, then
//! runs each selected expert once over all the rows that chose it (one read of its weights per
//! step, however many sequences are batched), and adds the shared experts.

use std::cmp::Ordering;

use std::sync::{Arc, Mutex};

use anyhow::{ensure, Context, Result};

use crate::kernels::{self, WeightType};
use crate::models::common::{gated_activation, Activation, PAR_MIN_ROWS};
use crate::models::weights::{optional_vec, require_shape, Weight, WeightSource};
use crate::models::ModelError;
use crate::runtime::experts::{expert_pass, ExpertMats};
use crate::runtime::pool::Pool;
use crate::runtime::profile;

/// How router logits become expert scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoring {
    Softmax,
    Sigmoid,
}

/// How a group's score is formed from its experts' (biased) scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupScore {
    /// Sum of the two best scores (DeepSeek-V3 `noaux_tc`).
    Top2Sum,
    /// The best score (DeepSeek-V2 `group_limited_greedy`).
    Max,
}

/// Router hyper-parameters (from config.json or GGUF metadata).
#[derive(Clone, Debug, PartialEq)]
pub struct RouterConfig {
    pub n_experts: usize,
    pub top_k: usize,
    /// Number of expert groups; 1 disables group-limited routing.
    pub n_group: usize,
    /// Groups kept per token when `n_group > 1`.
    pub topk_group: usize,
    pub group_score: GroupScore,
    pub scoring: Scoring,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f32,
}

impl RouterConfig {
    /// DeepSeek-V3's scheme (sigmoid scores, group-limited by the top-2 sum, normalised top-k,
    /// scaling 2.5) at the given sizes, for tests.
    #[cfg(test)]
    pub(crate) fn deepseek_v3_style(n_experts: usize, top_k: usize, n_group: usize, topk_group: usize) -> Self {
        RouterConfig {
            n_experts,
            top_k,
            n_group,
            topk_group,
            group_score: GroupScore::Top2Sum,
            scoring: Scoring::Sigmoid,
            norm_topk_prob: true,
            routed_scaling_factor: 2.5,
        }
    }

    /// Checks the invariants routing relies on, so a bad config is an error at load time.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.n_experts > 0, "router: expert count is 0");
        ensure!(
            self.top_k > 0 && self.top_k <= self.n_experts,
            "router: top_k {} must be in 1..={}",
            self.top_k,
            self.n_experts
        );
        ensure!(
            self.n_group > 0 && self.n_experts.is_multiple_of(self.n_group),
            "router: {} experts cannot be split into {} groups",
            self.n_experts,
            self.n_group
        );
        if self.n_group > 1 {
            let per_group = self.n_experts / self.n_group;
            ensure!(
                self.topk_group > 0 && self.topk_group <= self.n_group,
                "router: topk_group {} must be in 1..={}",
                self.topk_group,
                self.n_group
            );
            ensure!(
                self.topk_group * per_group >= self.top_k,
                "router: {} groups of {} experts cannot supply top_k {}",
                self.topk_group,
                per_group,
                self.top_k
            );
            ensure!(
                self.group_score != GroupScore::Top2Sum || per_group >= 2,
                "router: top-2 group scores need at least 2 experts per group"
            );
        }
        ensure!(self.routed_scaling_factor.is_finite(), "router: routed_scaling_factor is not finite");
        Ok(())
    }
}

/// The experts chosen for one token and their weights (scaling included), best first.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    pub experts: Vec<usize>,
    pub weights: Vec<f32>,
}

/// Descending by value, ascending by index on ties; NaN ranks last.
fn rank(a: (usize, f32), b: (usize, f32)) -> Ordering {
    let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    key(b.1).total_cmp(&key(a.1)).then(a.0.cmp(&b.0))
}

/// Indices of the `k` best values (see [`rank`]), best first.
fn top_k_indices(values: impl Iterator<Item = (usize, f32)>, k: usize) -> Vec<usize> {
    let mut all: Vec<(usize, f32)> = values.collect();
    all.sort_by(|&a, &b| rank(a, b));
    all.truncate(k);
    all.into_iter().map(|(i, _)| i).collect()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Softmax in place (max-subtracted, f32 like the reference).
pub fn softmax_in_place(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    if sum > 0.0 {
        for x in v.iter_mut() {
            *x /= sum;
        }
    }
}

/// The groups a token may use (all of them when group routing is off).
fn allowed_groups(cfg: &RouterConfig, choice: &[f32]) -> Vec<bool> {
    if cfg.n_group <= 1 || cfg.topk_group >= cfg.n_group {
        return vec![true; cfg.n_group.max(1)];
    }
    let per_group = cfg.n_experts / cfg.n_group;
    let group_scores = choice.chunks(per_group).map(|g| match cfg.group_score {
        GroupScore::Max => g.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        GroupScore::Top2Sum => {
            let best = top_k_indices(g.iter().copied().enumerate(), 2);
            best.iter().map(|&i| g[i]).sum()
        }
    });
    let mut allowed = vec![false; cfg.n_group];
    for g in top_k_indices(group_scores.enumerate(), cfg.topk_group) {
        allowed[g] = true;
    }
    allowed
}

/// Routes one token. `logits` has `n_experts` router outputs; `bias` is the
/// `e_score_correction_bias`, added for the choice only. `cfg` must be validated.
pub fn route(cfg: &RouterConfig, logits: &[f32], bias: Option<&[f32]>) -> Selection {
    let n = cfg.n_experts.min(logits.len());
    let mut scores = logits[..n].to_vec();
    match cfg.scoring {
        Scoring::Softmax => softmax_in_place(&mut scores),
        Scoring::Sigmoid => scores.iter_mut().for_each(|x| *x = sigmoid(*x)),
    }
    let choice: Vec<f32> = match bias {
        Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
        None => scores.clone(),
    };
    let allowed = allowed_groups(cfg, &choice);
    let per_group = (n / allowed.len()).max(1);
    let candidates =
        choice.iter().copied().enumerate().filter(|&(e, _)| allowed.get(e / per_group).copied().unwrap_or(false));
    let experts = top_k_indices(candidates, cfg.top_k);
    let mut weights: Vec<f32> = experts.iter().map(|&e| scores[e]).collect();
    if cfg.norm_topk_prob {
        // The reference adds 1e-20 to the denominator (sigmoid scores can be tiny).
        let sum: f32 = weights.iter().sum::<f32>() + 1e-20;
        weights.iter_mut().for_each(|w| *w /= sum);
    }
    weights.iter_mut().for_each(|w| *w *= cfg.routed_scaling_factor);
    Selection { experts, weights }
}

/// The three matrices of one SwiGLU FFN (an expert, a shared expert or a dense MLP):
/// `down(silu(gate(x)) * up(x))`.
pub struct FfnWeights {
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
}

impl FfnWeights {
    /// Checks that the three shapes chain: gate/up `[ff × hidden]`, down `[hidden × ff]`.
    pub fn validate(&self, hidden: usize, what: &str) -> Result<()> {
        let (g, u, d) = (self.gate.qmatrix(), self.up.qmatrix(), self.down.qmatrix());
        ensure!(
            g.cols == hidden && u.cols == hidden && g.rows == u.rows,
            "{what}: gate {}x{} / up {}x{} do not match hidden size {hidden}",
            g.rows,
            g.cols,
            u.rows,
            u.cols
        );
        ensure!(
            d.rows == hidden && d.cols == g.rows,
            "{what}: down is {}x{}, expected {hidden}x{}",
            d.rows,
            d.cols,
            g.rows
        );
        Ok(())
    }

    /// The FFN on `n` rows of `x` (row-major `n × hidden`), written to `y` (`n × hidden`).
    pub fn forward(&self, x: &[f32], n: usize, y: &mut [f32]) -> Result<()> {
        let ff = self.gate.qmatrix().rows;
        let mut g = vec![0.0f32; n * ff];
        let mut u = vec![0.0f32; n * ff];
        self.gate.linear(x, n, &mut g)?;
        self.up.linear(x, n, &mut u)?;
        gated_activation(Activation::Silu, &mut g, &u);
        Ok(self.down.linear(&g, n, y)?)
    }
}

/// One MoE block: router, routed experts, optional shared experts.
pub struct MoeFfn {
    pub router_cfg: RouterConfig,
    /// Router weight `[n_experts × hidden]` (kept f32 or as stored; computed exactly).
    pub router: Weight,
    /// `e_score_correction_bias` (DeepSeek-V3), selection only.
    pub bias: Option<Vec<f32>>,
    pub experts: Vec<FfnWeights>,
    /// Shared experts, run on every token with weight 1 (DeepSeek). Several are fused into one.
    pub shared: Option<FfnWeights>,
}

impl MoeFfn {
    /// Checks shapes and the router config once, at load time.
    pub fn validate(&self, hidden: usize, layer: usize) -> Result<()> {
        self.router_cfg.validate().with_context(|| format!("layer {layer}"))?;
        let r = self.router.qmatrix();
        ensure!(
            r.rows == self.router_cfg.n_experts && r.cols == hidden,
            "layer {layer}: router is {}x{}, expected {}x{hidden}",
            r.rows,
            r.cols,
            self.router_cfg.n_experts
        );
        ensure!(
            self.experts.len() == self.router_cfg.n_experts,
            "layer {layer}: {} experts loaded, config says {}",
            self.experts.len(),
            self.router_cfg.n_experts
        );
        if let Some(b) = &self.bias {
            ensure!(
                b.len() == self.router_cfg.n_experts,
                "layer {layer}: expert bias has {} values, expected {}",
                b.len(),
                self.router_cfg.n_experts
            );
        }
        for (e, ffn) in self.experts.iter().enumerate() {
            ffn.validate(hidden, &format!("layer {layer} expert {e}"))?;
        }
        if let Some(s) = &self.shared {
            s.validate(hidden, &format!("layer {layer} shared expert"))?;
        }
        Ok(())
    }

    /// Routing decisions for `n` rows of `x` (`n × hidden`).
    pub fn route_rows(&self, x: &[f32], n: usize) -> Result<Vec<Selection>> {
        let ne = self.router_cfg.n_experts;
        let mut logits = vec![0.0f32; n * ne];
        self.router.linear(x, n, &mut logits)?;
        // A prompt's tokens are routed on the pool (sorting 256 scores per token adds up).
        let mut out = vec![Selection { experts: Vec::new(), weights: Vec::new() }; n];
        crate::runtime::pool::par_chunks_mut(&mut out, 1, PAR_MIN_ROWS, &|first, sel| {
            for (i, s) in sel.iter_mut().enumerate() {
                *s = route(&self.router_cfg, &logits[(first + i) * ne..(first + i + 1) * ne], self.bias.as_deref());
            }
        });
        Ok(out)
    }

    /// The MoE output for `n` rows of `x` (`n × hidden`) into `y` (`n × hidden`, overwritten).
    /// Each selected expert runs once over all the rows that chose it: through the
    /// bandwidth-oriented pass on the process-wide expert pool when one is set (see
    /// [`set_expert_pool`]), else expert by expert through the kernels.
    pub fn forward(&self, x: &[f32], n: usize, y: &mut [f32]) -> Result<()> {
        let hidden = self.router.qmatrix().cols;
        ensure!(x.len() == n * hidden && y.len() == n * hidden, "moe: bad input shape");
        let selections = {
            let _p = profile::scope("moe_router");
            self.route_rows(x, n)?
        };
        y.fill(0.0);
        let pool = expert_pool().filter(|_| self.uniform_experts());
        // On the pool, a shared expert with the routed experts' formats joins their pass as
        // one more expert every token selects with weight 1: one job instead of three more,
        // and its rows stream with the others'.
        let fold_shared = pool.is_some() && self.shared_fits_pass();
        {
            let _p = profile::scope("moe_routed_experts");
            match &pool {
                Some(pool) => self.routed_on_pool(pool, &selections, fold_shared, x, y),
                None => self.routed_per_expert(&selections, x, y)?,
            }
        }
        if let (Some(shared), false) = (&self.shared, fold_shared) {
            let _p = profile::scope("moe_shared_expert");
            let mut out = vec![0.0f32; n * hidden];
            shared.forward(x, n, &mut out)?;
            y.iter_mut().zip(&out).for_each(|(a, b)| *a += b);
        }
        Ok(())
    }

    fn routed_per_expert(&self, selections: &[Selection], x: &[f32], y: &mut [f32]) -> Result<()> {
        let hidden = self.router.qmatrix().cols;
        for (e, rows) in rows_per_expert(selections, self.experts.len()).into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let xs: Vec<f32> =
                rows.iter().flat_map(|&(r, _)| x[r * hidden..(r + 1) * hidden].iter().copied()).collect();
            let mut out = vec![0.0f32; rows.len() * hidden];
            self.experts[e].forward(&xs, rows.len(), &mut out)?;
            for (&(r, w), o) in rows.iter().zip(out.chunks(hidden)) {
                for (yv, ov) in y[r * hidden..(r + 1) * hidden].iter_mut().zip(o) {
                    *yv += w * ov;
                }
            }
        }
        Ok(())
    }

    fn routed_on_pool(
        &self,
        pool: &Mutex<Pool>,
        selections: &[Selection],
        with_shared: bool,
        x: &[f32],
        y: &mut [f32],
    ) {
        fn as_mats(f: &FfnWeights) -> ExpertMats<'_> {
            ExpertMats { gate: f.gate.qmatrix(), up: f.up.qmatrix(), down: f.down.qmatrix() }
        }
        let mut mats: Vec<ExpertMats> = self.experts.iter().map(as_mats).collect();
        let shared = self.shared.as_ref().filter(|_| with_shared).map(|f| {
            mats.push(as_mats(f));
            mats.len() - 1
        });
        let routes: Vec<Vec<(usize, f32)>> = selections
            .iter()
            .map(|s| s.experts.iter().copied().zip(s.weights.iter().copied()).chain(shared.map(|e| (e, 1.0))).collect())
            .collect();
        // One pass at a time: the pool runs one job on all its threads.
        let pool = pool.lock().unwrap_or_else(|e| e.into_inner());
        expert_pass(&pool, &mats, x, &routes, y);
    }

    /// Whether the shared expert has the routed experts' shapes and storage types (repacked or
    /// not: the pass prepares each expert's activations for its own layout), so the pooled
    /// pass can run it as one of them.
    fn shared_fits_pass(&self) -> bool {
        let (Some(sh), Some(first)) = (&self.shared, self.experts.first()) else { return false };
        let same = |a: &Weight, b: &Weight| a.ty.unpacked() == b.ty.unpacked() && a.rows == b.rows && a.cols == b.cols;
        same(&sh.gate, &first.gate) && same(&sh.up, &first.up) && same(&sh.down, &first.down)
    }

    /// The pooled pass prepares one activation format for gate and up of every expert, so it
    /// needs gate and up in one storage type across all experts (and down in one type).
    fn uniform_experts(&self) -> bool {
        let Some(first) = self.experts.first() else { return false };
        self.experts.iter().all(|f| {
            f.gate.ty == first.gate.ty
                && f.up.ty == first.gate.ty
                && f.down.ty == first.down.ty
                && f.gate.rows == first.gate.rows
        })
    }
}

/// Routes every MoE layer's expert pass (and the engine's large matrix products) through
/// `pool` (pinned threads claiming rows of their NUMA node; see `runtime::experts`), or back
/// through the kernels' own threads with `None`. Process-wide, so the runtime sets it once
/// after building its thread layout.
pub fn set_expert_pool(pool: Option<Pool>) {
    crate::runtime::pool::set_global(pool);
}

fn expert_pool() -> Option<Arc<Mutex<Pool>>> {
    crate::runtime::pool::global()
}

/// The sequence bookkeeping both MoE architectures share: `forward` runs one sequence's new
/// tokens, `forward_batch` one token of each sequence, through `run(caches, segments,
/// tokens, output_rows)`, where `C` is the architecture's cache type.
pub(crate) fn forward_one<C: 'static>(
    state: &mut crate::models::SeqState,
    tokens: &[u32],
    which: crate::models::Logits,
    run: impl FnOnce(&mut [&mut C], &Segments, &[usize]) -> Result<Vec<f32>>,
) -> Result<Vec<f32>> {
    if tokens.is_empty() {
        return Ok(Vec::new());
    }
    let segs = Segments::new(&[(state.pos, tokens.len(), state.max_tokens)])?;
    let out_rows: Vec<usize> = match which {
        crate::models::Logits::All => (0..tokens.len()).collect(),
        crate::models::Logits::Last => vec![tokens.len() - 1],
    };
    let pos = state.pos;
    let cache = state.cache.downcast_mut::<C>().ok_or(crate::models::ModelError::WrongState)?;
    let logits = run(&mut [cache], &segs, &out_rows)?;
    state.pos = pos + tokens.len();
    Ok(logits)
}

/// See [`forward_one`]: one decode step for several sequences; `vocab` splits the logits.
pub(crate) fn forward_step<C: 'static>(
    states: &mut [&mut crate::models::SeqState],
    tokens: &[u32],
    vocab: usize,
    run: impl FnOnce(&mut [&mut C], &Segments, &[usize]) -> Result<Vec<f32>>,
) -> Result<Vec<Vec<f32>>> {
    ensure!(states.len() == tokens.len(), "one token per sequence");
    if tokens.is_empty() {
        return Ok(Vec::new());
    }
    let spec: Vec<(usize, usize, usize)> = states.iter().map(|s| (s.pos, 1, s.max_tokens)).collect();
    let segs = Segments::new(&spec)?;
    let mut caches = states
        .iter_mut()
        .map(|s| s.cache.downcast_mut::<C>().ok_or(crate::models::ModelError::WrongState))
        .collect::<Result<Vec<_>, _>>()?;
    let rows: Vec<usize> = (0..tokens.len()).collect();
    let logits = run(&mut caches, &segs, &rows)?;
    for s in states.iter_mut() {
        s.pos += 1;
    }
    Ok(logits.chunks(vocab).map(<[f32]>::to_vec).collect())
}

/// For each expert, the `(row, weight)` pairs that selected it, in row order.
pub fn rows_per_expert(selections: &[Selection], n_experts: usize) -> Vec<Vec<(usize, f32)>> {
    let mut per = vec![Vec::new(); n_experts];
    for (r, s) in selections.iter().enumerate() {
        for (&e, &w) in s.experts.iter().zip(&s.weights) {
            if let Some(list) = per.get_mut(e) {
                list.push((r, w));
            }
        }
    }
    per
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the MoE models (weights → f32, linear layers, embeddings)
// ---------------------------------------------------------------------------------------------

/// [`Weight::linear`] into a fresh `n × rows` buffer.
pub fn linear_new(w: &Weight, x: &[f32], n: usize) -> Result<Vec<f32>> {
    let mut y = vec![0.0f32; n * w.rows];
    w.linear(x, n, &mut y)?;
    Ok(y)
}

/// The whole matrix as f32, FP8 included (`kv_b_proj`, which the MLA load rearranges).
pub fn to_f32(w: &Weight) -> Result<Vec<f32>> {
    let q = w.qmatrix();
    q.validate().map_err(|e| anyhow::anyhow!("tensor {}: {e}", w.name))?;
    Ok(kernels::dequantize_matrix(&q))
}

/// Embedding rows for `tokens` from a `[vocab × hidden]` table (any storage type).
pub fn embed(table: &Weight, tokens: &[u32]) -> Result<Vec<f32>> {
    let hidden = table.cols;
    for &t in tokens {
        ensure!((t as usize) < table.rows, ModelError::TokenOutOfRange { id: t, vocab: table.rows });
    }
    let mut out = vec![0.0f32; tokens.len() * hidden];
    if table.ty == WeightType::Fp8E4M3Block128 {
        // Block scales span 128 rows, so no row view; the reference checkpoints keep the
        // embedding in bf16 anyway.
        let all = to_f32(table)?;
        for (&t, dst) in tokens.iter().zip(out.chunks_mut(hidden)) {
            dst.copy_from_slice(&all[t as usize * hidden..][..hidden]);
        }
        return Ok(out);
    }
    for (&t, dst) in tokens.iter().zip(out.chunks_mut(hidden)) {
        table.row_f32(t as usize, dst)?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// A dense SwiGLU FFN `blk.{l}.ffn_{gate,up,down}.weight` of width `ff`.
pub fn load_dense_ffn(src: &dyn WeightSource, arch: &str, l: usize, hidden: usize, ff: usize) -> Result<FfnWeights> {
    let name = |s: &str| format!("blk.{l}.{s}");
    Ok(FfnWeights {
        gate: require_shape(src, &name("ffn_gate.weight"), arch, ff, hidden)?,
        up: require_shape(src, &name("ffn_up.weight"), arch, ff, hidden)?,
        down: require_shape(src, &name("ffn_down.weight"), arch, hidden, ff)?,
    })
}

/// An MoE block: router `ffn_gate_inp`, optional `exp_probs_b.bias`, routed experts (stacked
/// GGUF `ffn_*_exps` or per-expert `ffn_*.E`) and, when `shared_ff > 0`, `ffn_*_shexp`.
pub fn load_moe(
    src: &dyn WeightSource,
    arch: &str,
    l: usize,
    router_cfg: RouterConfig,
    hidden: usize,
    ff: usize,
    shared_ff: usize,
) -> Result<MoeFfn> {
    let name = |s: &str| format!("blk.{l}.{s}");
    let ne = router_cfg.n_experts;
    let router = require_shape(src, &name("ffn_gate_inp.weight"), arch, ne, hidden)?;
    let bias = optional_vec(src, &name("exp_probs_b.bias"), ne)?;
    let shared = if shared_ff > 0 {
        Some(FfnWeights {
            gate: require_shape(src, &name("ffn_gate_shexp.weight"), arch, shared_ff, hidden)?,
            up: require_shape(src, &name("ffn_up_shexp.weight"), arch, shared_ff, hidden)?,
            down: require_shape(src, &name("ffn_down_shexp.weight"), arch, hidden, shared_ff)?,
        })
    } else {
        None
    };
    let moe = MoeFfn { router_cfg, router, bias, experts: load_experts(src, arch, l, ne, hidden, ff)?, shared };
    moe.validate(hidden, l)?;
    Ok(moe)
}

/// Routed experts: zero-copy row slices of the stacked GGUF tensors (`ffn_gate_exps` is
/// `[n_expert × ff × hidden]`, expert e = rows `e·ff..(e+1)·ff`), else per-expert tensors.
pub fn load_experts(
    src: &dyn WeightSource,
    arch: &str,
    l: usize,
    ne: usize,
    hidden: usize,
    ff: usize,
) -> Result<Vec<FfnWeights>> {
    let name = |s: &str| format!("blk.{l}.{s}");
    if let Some(gate) = src.weight(&name("ffn_gate_exps.weight"))? {
        crate::models::weights::check_shape(&gate, ne * ff, hidden)?;
        let up = require_shape(src, &name("ffn_up_exps.weight"), arch, ne * ff, hidden)?;
        let down = require_shape(src, &name("ffn_down_exps.weight"), arch, ne * hidden, ff)?;
        return (0..ne)
            .map(|e| {
                Ok(FfnWeights {
                    gate: gate.slice_rows(e * ff, ff)?,
                    up: up.slice_rows(e * ff, ff)?,
                    down: down.slice_rows(e * hidden, hidden)?,
                })
            })
            .collect();
    }
    (0..ne)
        .map(|e| {
            Ok(FfnWeights {
                gate: require_shape(src, &name(&format!("ffn_gate.{e}.weight")), arch, ff, hidden)?,
                up: require_shape(src, &name(&format!("ffn_up.{e}.weight")), arch, ff, hidden)?,
                down: require_shape(src, &name(&format!("ffn_down.{e}.weight")), arch, hidden, ff)?,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Batch layout
// ---------------------------------------------------------------------------------------------

/// How the rows of a step map to sequences: sequence `s` contributes `n` consecutive rows at
/// positions `pos0..pos0+n` (a prefill is one sequence with many rows; a batched decode step
/// is many sequences with one row each).
#[derive(Clone, Debug)]
pub struct Segments {
    /// `(pos0, n)` per sequence, rows in this order.
    segs: Vec<(usize, usize)>,
}

impl Segments {
    /// `spec[s] = (pos0, n, max_tokens)`; errors when a sequence would overflow its state.
    pub fn new(spec: &[(usize, usize, usize)]) -> Result<Segments, crate::models::ModelError> {
        for &(pos0, n, max) in spec {
            if pos0 + n > max {
                return Err(crate::models::ModelError::ContextOverflow { have: pos0, adding: n, max });
            }
        }
        Ok(Segments { segs: spec.iter().map(|&(p, n, _)| (p, n)).collect() })
    }

    pub fn n_rows(&self) -> usize {
        self.segs.iter().map(|s| s.1).sum()
    }

    /// `(sequence, position)` of every row, in row order.
    pub fn rows(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.segs.iter().enumerate().flat_map(|(s, &(p, n))| (p..p + n).map(move |pos| (s, pos)))
    }

    /// `(sequence, pos0, first_row, n)` per sequence.
    pub fn spans(&self) -> impl Iterator<Item = (usize, usize, usize, usize)> + '_ {
        let mut row = 0;
        self.segs.iter().enumerate().map(move |(s, &(p, n))| {
            let r = row;
            row += n;
            (s, p, r, n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deepseek_cfg() -> RouterConfig {
        RouterConfig::deepseek_v3_style(16, 4, 4, 2)
    }

    /// Router logits that give exactly the sigmoid scores `s`.
    fn logits_for(s: &[f32]) -> Vec<f32> {
        s.iter().map(|&p| (p / (1.0 - p)).ln()).collect()
    }

    fn sorted(mut v: Vec<usize>) -> Vec<usize> {
        v.sort();
        v
    }

    #[test]
    fn group_limit_excludes_the_best_single_expert() {
        // Group 0 holds the single best expert (0.95) but its top-2 sum (0.95+0.05) = 1.0
        // loses to group 1 (0.6+0.6 = 1.2) and group 2 (0.55+0.55 = 1.1). Group 3: 0.5+0.5.
        let s = [
            0.95, 0.05, 0.05, 0.05, // g0
            0.6, 0.6, 0.1, 0.1, // g1
            0.55, 0.55, 0.52, 0.1, // g2
            0.5, 0.5, 0.5, 0.5, // g3
        ];
        let sel = route(&deepseek_cfg(), &logits_for(&s), None);
        assert_eq!(sel.experts, vec![4, 5, 8, 9]);
        // Without the group limit, expert 0 wins.
        let mut flat = deepseek_cfg();
        flat.n_group = 1;
        let sel = route(&flat, &logits_for(&s), None);
        assert_eq!(sel.experts[0], 0);
    }

    #[test]
    fn bias_steers_selection_but_not_weights() {
        let s = [
            0.9, 0.8, 0.7, 0.6, // g0
            0.5, 0.5, 0.5, 0.5, // g1
            0.3, 0.3, 0.3, 0.3, // g2
            0.2, 0.2, 0.2, 0.2, // g3
        ];
        let mut bias = vec![0.0f32; 16];
        // Lift group 3 above group 1 and expert 13 to the top inside it.
        bias[12] = 0.35;
        bias[13] = 0.45;
        let sel = route(&deepseek_cfg(), &logits_for(&s), Some(&bias));
        // Groups 0 (0.9+0.8) and 3 (0.65+0.55) beat group 1 (0.5+0.5); by biased score the
        // experts are 0 (0.9), 1 (0.8), 2 (0.7), 13 (0.65), ahead of 3 (0.6) and all of g1.
        assert_eq!(sel.experts, vec![0, 1, 2, 13]);
        // Weights come from the unbiased scores 0.9, 0.8, 0.7, 0.2, normalised, x2.5.
        let raw = [0.9f32, 0.8, 0.7, 0.2];
        let sum: f32 = raw.iter().sum();
        for (w, r) in sel.weights.iter().zip(raw) {
            assert!((w - r / sum * 2.5).abs() < 1e-5, "{w} vs {}", r / sum * 2.5);
        }
    }

    #[test]
    fn ties_resolve_to_lower_indices() {
        // All groups tie on their top-2 sums: groups 0 and 1 are kept.
        let s = [0.5f32; 16];
        let sel = route(&deepseek_cfg(), &logits_for(&s), None);
        assert_eq!(sel.experts, vec![0, 1, 2, 3]);
        // Groups 1 and 3 tie with each other above groups 0 and 2; equal experts inside.
        let mut s = [0.4f32; 16];
        for e in [4, 5, 12, 13] {
            s[e] = 0.7;
        }
        let sel = route(&deepseek_cfg(), &logits_for(&s), None);
        assert_eq!(sel.experts, vec![4, 5, 12, 13]);
        for w in &sel.weights {
            assert!((w - 2.5 / 4.0).abs() < 1e-6);
        }
    }

    #[test]
    fn negative_biased_scores_never_pick_excluded_groups() {
        // Inside the chosen groups the biased scores are negative; experts from other groups
        // must still not be chosen (a zero fill would pick them).
        let mut s = [0.1f32; 16];
        s[0] = 0.12;
        s[1] = 0.11;
        s[4] = 0.115;
        s[5] = 0.114;
        let bias = vec![-0.15f32; 16];
        let sel = route(&deepseek_cfg(), &logits_for(&s), Some(&bias));
        assert_eq!(sorted(sel.experts.clone()), vec![0, 1, 4, 5]);
    }

    #[test]
    fn scaling_and_normalisation() {
        let logits: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let sel = route(&deepseek_cfg(), &logits, None);
        let sum: f32 = sel.weights.iter().sum();
        assert!((sum - 2.5).abs() < 1e-5);
        let mut raw = deepseek_cfg();
        raw.norm_topk_prob = false;
        raw.routed_scaling_factor = 1.0;
        let plain = route(&raw, &logits, None);
        assert_eq!(plain.experts, sel.experts);
        for (&e, w) in plain.experts.iter().zip(&plain.weights) {
            assert!((w - sigmoid(logits[e])).abs() < 1e-6);
        }
    }

    #[test]
    fn softmax_top_k_renormalised() {
        let cfg = RouterConfig {
            n_experts: 6,
            top_k: 2,
            n_group: 1,
            topk_group: 1,
            group_score: GroupScore::Max,
            scoring: Scoring::Softmax,
            norm_topk_prob: true,
            routed_scaling_factor: 1.0,
        };
        let logits = [0.0f32, 2.0, 1.0, 3.0, -1.0, 0.5];
        let sel = route(&cfg, &logits, None);
        assert_eq!(sel.experts, vec![3, 1]);
        // Renormalised softmax over the two: e^3/(e^3+e^2), e^2/(e^3+e^2).
        let a = 1.0 / (1.0 + (-1.0f32).exp());
        assert!((sel.weights[0] - a).abs() < 1e-6);
        assert!((sel.weights[1] - (1.0 - a)).abs() < 1e-6);
        let mut raw = cfg.clone();
        raw.norm_topk_prob = false;
        let sel = route(&raw, &logits, None);
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!((sel.weights[0] - 3.0f32.exp() / z).abs() < 1e-6);
    }

    #[test]
    fn validate_rejects_bad_configs() {
        let mut c = deepseek_cfg();
        c.n_group = 3;
        assert!(c.validate().is_err());
        let mut c = deepseek_cfg();
        c.top_k = 9;
        assert!(c.validate().is_err());
        let mut c = deepseek_cfg();
        c.topk_group = 0;
        assert!(c.validate().is_err());
        assert!(deepseek_cfg().validate().is_ok());
    }

    #[test]
    fn nan_logits_do_not_panic() {
        let mut logits = vec![0.5f32; 16];
        logits[3] = f32::NAN;
        let sel = route(&deepseek_cfg(), &logits, None);
        assert_eq!(sel.experts.len(), 4);
        assert!(!sel.experts.contains(&3));
    }
}

#[cfg(test)]
mod exec_tests {
    use super::*;
    use crate::dtype::GgmlType;
    use crate::formats::TensorBytes;
    use std::sync::Arc;

    fn f32_weight(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f32) -> Weight {
        let data: Vec<u8> = (0..rows * cols).flat_map(|i| f(i / cols, i % cols).to_le_bytes()).collect();
        Weight::new("t", TensorBytes::Owned(Arc::new(data)), WeightType::Ggml(GgmlType::F32), rows, cols).unwrap()
    }

    fn dense(w: &Weight) -> Vec<f32> {
        to_f32(w).unwrap()
    }

    /// Naive `down(silu(gate x) * up x)` with explicit loops.
    fn naive_ffn(f: &FfnWeights, x: &[f32]) -> Vec<f32> {
        let (g, u, d) = (dense(&f.gate), dense(&f.up), dense(&f.down));
        let (ff, h) = (f.gate.rows, f.gate.cols);
        let act: Vec<f32> = (0..ff)
            .map(|i| {
                let a: f32 = (0..h).map(|j| g[i * h + j] * x[j]).sum();
                let b: f32 = (0..h).map(|j| u[i * h + j] * x[j]).sum();
                a / (1.0 + (-a).exp()) * b
            })
            .collect();
        (0..h).map(|r| (0..ff).map(|i| d[r * ff + i] * act[i]).sum()).collect()
    }

    fn expert(seed: usize, h: usize, ff: usize) -> FfnWeights {
        let v =
            move |k: usize| move |i: usize, j: usize| (((i * 31 + j * 17 + seed * 7 + k) % 23) as f32 - 11.0) * 0.05;
        FfnWeights { gate: f32_weight(ff, h, v(1)), up: f32_weight(ff, h, v(2)), down: f32_weight(h, ff, v(3)) }
    }

    /// 8 experts in 4 groups (top-2 groups, top-3 experts), with a one-hot-ish router so the
    /// scores are known exactly: expert e's logit is `x[0] · a_e`.
    fn layer(h: usize, ff: usize) -> (MoeFfn, Vec<f32>) {
        let a = [2.0f32, -1.0, 0.5, 1.5, -2.0, 1.0, 0.25, -0.5];
        let router = f32_weight(8, h, |e, j| if j == 0 { a[e] } else { 0.0 });
        let bias = vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0];
        let cfg = RouterConfig {
            n_experts: 8,
            top_k: 3,
            n_group: 4,
            topk_group: 2,
            group_score: GroupScore::Top2Sum,
            scoring: Scoring::Sigmoid,
            norm_topk_prob: true,
            routed_scaling_factor: 2.5,
        };
        let moe = MoeFfn {
            router_cfg: cfg,
            router,
            bias: Some(bias),
            experts: (0..8).map(|e| expert(e, h, ff)).collect(),
            shared: Some(expert(99, h, 2 * ff)),
        };
        moe.validate(h, 0).unwrap();
        (moe, a.to_vec())
    }

    #[test]
    fn combined_output_is_scaled_weighted_sum_plus_shared() {
        let (h, ff) = (8, 4);
        let (moe, a) = layer(h, ff);
        let x: Vec<f32> = (0..h).map(|j| if j == 0 { 1.0 } else { (j as f32 * 0.7).sin() }).collect();
        let mut y = vec![0.0; h];
        moe.forward(&x, 1, &mut y).unwrap();
        // Scores sigmoid(a_e); biased: expert 6 gets +3. Groups {0,1},{2,3},{4,5},{6,7}:
        // top-2 sums: g0 = s0+s1, g1 = s2+s3, g2 = s4+s5, g3 = (s6+3)+s7 -> g3 and g1 win
        // (g1: σ(0.5)+σ(1.5) = 1.44 > g0: σ(2)+σ(-1) = 1.15). Experts by biased score: 6, 3, 2.
        let s = |e: usize| 1.0 / (1.0 + (-a[e]).exp());
        let chosen = [6usize, 3, 2];
        let total: f32 = chosen.iter().map(|&e| s(e)).sum();
        let mut want = naive_ffn(moe.shared.as_ref().unwrap(), &x);
        for &e in &chosen {
            let w = s(e) / total * 2.5;
            for (o, v) in want.iter_mut().zip(naive_ffn(&moe.experts[e], &x)) {
                *o += w * v;
            }
        }
        for (g, w) in y.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{y:?} vs {want:?}");
        }
        let sel = moe.route_rows(&x, 1).unwrap();
        assert_eq!(sel[0].experts, chosen);
    }

    #[test]
    fn batched_rows_equal_single_rows() {
        let (h, ff) = (8, 4);
        let (moe, _) = layer(h, ff);
        let n = 5;
        let x: Vec<f32> = (0..n * h).map(|i| ((i * 13 % 19) as f32 - 9.0) * 0.2).collect();
        let mut batched = vec![0.0; n * h];
        moe.forward(&x, n, &mut batched).unwrap();
        for r in 0..n {
            let mut one = vec![0.0; h];
            moe.forward(&x[r * h..(r + 1) * h], 1, &mut one).unwrap();
            for (a, b) in one.iter().zip(&batched[r * h..(r + 1) * h]) {
                assert!((a - b).abs() < 1e-5);
            }
        }
        // Every expert is visited once per step, with all the rows that chose it.
        let sel = moe.route_rows(&x, n).unwrap();
        let per = rows_per_expert(&sel, 8);
        let visits: usize = per.iter().map(Vec::len).sum();
        assert_eq!(visits, n * 3);
        for (e, rows) in per.iter().enumerate() {
            for &(r, w) in rows {
                let k = sel[r].experts.iter().position(|&x| x == e).unwrap();
                assert_eq!(sel[r].weights[k], w);
            }
        }
    }

    #[test]
    fn shape_errors_are_reported() {
        let (moe, _) = layer(8, 4);
        let mut y = vec![0.0; 8];
        assert!(moe.forward(&[0.0; 7], 1, &mut y).is_err());
        assert!(moe.validate(16, 0).is_err());
    }
}
