//! The routed-expert pass of one MoE layer, designed for memory bandwidth.
//!
//! Decode reads each selected expert's three matrices once per step, whatever the batch:
//! the experts chosen by any sequence in the batch are gathered, and every sequence routed to
//! an expert is computed from the same read of its rows.
//!
//! Work split: threads claim contiguous row ranges from a [`RowQueue`] (large first, smaller
//! toward the end, only from their NUMA node's part of every matrix), so a slow thread holds
//! the others up by one small claim, not by a whole equal share. Phases:
//!
//! 1. gate and up rows → `silu(gate) · up` for the claimed rows of each active expert (fused;
//!    no gate/up round trip);
//! 2. barrier; each expert's hidden activations are quantized once (threads split experts);
//! 3. barrier; down rows of every active expert → weighted sum into the claimed output rows
//!    (no write conflicts).
//!
//! Activations entering the layer are quantized once per expert (phase 0, experts split across
//! threads), shared by all threads.

use std::cell::RefCell;
use std::sync::OnceLock;

use crate::kernels::{self, Isa, Prepared, QMatrix};

use super::pool::{share, Pool, SyncPtr};
use super::queue::{RowQueue, MIN_CLAIM_BYTES};

/// One expert's matrices: gate and up are `n_ff × hidden`, down is `hidden × n_ff`.
#[derive(Clone, Copy, Debug)]
pub struct ExpertMats<'a> {
    pub gate: QMatrix<'a>,
    pub up: QMatrix<'a>,
    pub down: QMatrix<'a>,
}

impl ExpertMats<'_> {
    /// Weight bytes read when this expert runs.
    pub fn bytes(&self) -> usize {
        self.gate.data.len()
            + self.up.data.len()
            + self.down.data.len()
            + self.gate.block_scales.len()
            + self.up.block_scales.len()
            + self.down.block_scales.len()
    }
}

/// The tokens routed to one active expert, with their routing weights.
struct Active {
    expert: usize,
    tokens: Vec<usize>,
    weights: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Groups per-token routes `(expert, weight)` by expert, in expert order.
fn group_by_expert(routes: &[Vec<(usize, f32)>]) -> Vec<Active> {
    let mut by: std::collections::BTreeMap<usize, Active> = Default::default();
    for (tok, r) in routes.iter().enumerate() {
        for &(e, w) in r {
            let a = by.entry(e).or_insert_with(|| Active { expert: e, tokens: Vec::new(), weights: Vec::new() });
            a.tokens.push(tok);
            a.weights.push(w);
        }
    }
    by.into_values().collect()
}

/// Number of distinct experts `routes` selects (each is read once per pass).
pub fn distinct_experts(routes: &[Vec<(usize, f32)>]) -> usize {
    group_by_expert(routes).len()
}

/// `out[t] += Σ_e w_{t,e} · down_e(silu(gate_e x_t) · up_e x_t)` for every token `t` of `x`
/// (`routes.len()` rows of `hidden`), over the experts in `routes[t]`. `out` is added to,
/// not overwritten. All experts must share shapes.
pub fn expert_pass(pool: &Pool, experts: &[ExpertMats], x: &[f32], routes: &[Vec<(usize, f32)>], out: &mut [f32]) {
    let active = group_by_expert(routes);
    let Some(first) = active.first().map(|a| experts[a.expert]) else { return };
    let hidden = first.gate.cols;
    let n_ff = first.gate.rows;
    debug_assert_eq!(x.len(), routes.len() * hidden);
    debug_assert_eq!(out.len(), routes.len() * hidden);

    // Each expert's input rows are gathered (in phase 0, by the thread that quantizes them)
    // into one buffer, and its hidden activations written to another; both are kept by the
    // calling thread between passes, so a prompt's tens of MB are not page-faulted in again
    // for every layer.
    let offsets: Vec<usize> = active
        .iter()
        .scan(0, |acc, a| {
            let o = *acc;
            *acc += a.tokens.len();
            Some(o)
        })
        .collect();
    let total_rows: usize = active.iter().map(|a| a.tokens.len()).sum();
    PASS_BUFFERS.with(|b| {
        let (xs, h) = &mut *b.borrow_mut();
        run_pass(pool, experts, &active, &offsets, x, grown(xs, total_rows * hidden), grown(h, total_rows * n_ff), out);
        // A long prompt's buffers (GBs at thousands of tokens) are not kept for the next one.
        for v in [xs, h] {
            if v.len() * 4 > KEEP_MAX_BYTES {
                *v = Vec::new();
            }
        }
    });
}

thread_local! {
    /// The gathered inputs and the hidden activations of [`expert_pass`] on this thread.
    static PASS_BUFFERS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// [`PASS_BUFFERS`] kept between passes up to this size each (a 256-token prompt of
/// DeepSeek-V3 gathers 66 MB of inputs).
const KEEP_MAX_BYTES: usize = 256 << 20;

/// The first `len` values of `v`, grown (zeroed) when shorter; old values stay (callers
/// overwrite all `len`).
fn grown(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// [`expert_pass`] for the grouped `active` experts; `xs` and `h` are scratch of
/// `Σ tokens × hidden` and `Σ tokens × n_ff` values.
#[allow(clippy::too_many_arguments)]
fn run_pass(
    pool: &Pool,
    experts: &[ExpertMats],
    active: &[Active],
    offsets: &[usize],
    x: &[f32],
    xs: &mut [f32],
    h: &mut [f32],
    out: &mut [f32],
) {
    let first = experts[active[0].expert];
    let (hidden, n_ff) = (first.gate.cols, first.gate.rows);
    let xs_ptr = SyncPtr(xs.as_mut_ptr());
    let h_ptr = SyncPtr(h.as_mut_ptr());
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let x_prep: Vec<OnceLock<Prepared>> = active.iter().map(|_| OnceLock::new()).collect();
    let h_prep: Vec<OnceLock<Prepared>> = active.iter().map(|_| OnceLock::new()).collect();
    let h_len = h.len();
    let threads = pool.threads();
    let isa = Isa::best();
    let stamps = super::profile::Stamps::<2>::new(threads);
    // Claims of ~64 KB per matrix or more (gate and up are read together; down once per
    // active expert for the claimed output rows).
    let gate_up = RowQueue::segmented(pool, active.len(), n_ff, MIN_CLAIM_BYTES / first.gate.row_bytes().max(1));
    let down_row_bytes = first.down.row_bytes() * active.len();
    let down = RowQueue::new(pool, hidden, MIN_CLAIM_BYTES / down_row_bytes.max(1));

    pool.run(&|t| {
        // Phase 0: gather and quantize the inputs, experts split across threads.
        for j in (t..active.len()).step_by(threads) {
            let n = active[j].tokens.len();
            // SAFETY: expert j's rows of `xs` are written by this thread only (experts are
            // split across threads) and read only through this slice; `xs` outlives the job.
            let rows = unsafe { std::slice::from_raw_parts_mut(xs_ptr.ptr().add(offsets[j] * hidden), n * hidden) };
            for (dst, &tok) in rows.chunks_exact_mut(hidden).zip(&active[j].tokens) {
                dst.copy_from_slice(&x[tok * hidden..(tok + 1) * hidden]);
            }
            // Each expert's own storage type: a folded shared expert keeps the file's layout
            // (and with a prompt's rows, the tiles) where the routed ones are repacked.
            let _ = x_prep[j].set(kernels::prepare(experts[active[j].expert].gate.ty, hidden, rows, n));
        }
        pool.barrier();
        // Phase 1: fused gate/up + SiLU, on the rows of every active expert this thread claims.
        SCRATCH.with(|s| {
            let (g, u) = &mut *s.borrow_mut();
            for (j, rows) in gate_up.claims(t) {
                let a = &active[j];
                let n = a.tokens.len();
                let p = x_prep[j].get().expect("prepared in phase 0");
                let e = &experts[a.expert];
                g.resize(rows.len() * n, 0.0);
                u.resize(rows.len() * n, 0.0);
                kernels::matmul_rows(isa, &e.gate, p, rows.clone(), g);
                kernels::matmul_rows(isa, &e.up, p, rows.clone(), u);
                for (ri, r) in rows.enumerate() {
                    for i in 0..n {
                        let v = silu(g[ri * n + i]) * u[ri * n + i];
                        // SAFETY: the queue hands row r of expert j to this claim only; the
                        // index is inside `h`.
                        unsafe { *h_ptr.ptr().add((offsets[j] + i) * n_ff + r) = v };
                    }
                }
            }
        });
        stamps.mark(t, 0);
        pool.barrier();
        // Phase 2: quantize each expert's hidden activations once.
        // SAFETY: phase 1 (all writes to `h`) ended at the barrier above; from here to the end
        // of the job `h` is only read, and it outlives the job.
        let h_ref: &[f32] = unsafe { std::slice::from_raw_parts(h_ptr.ptr(), h_len) };
        for j in (t..active.len()).step_by(threads) {
            let n = active[j].tokens.len();
            let rows = &h_ref[offsets[j] * n_ff..(offsets[j] + n) * n_ff];
            let _ = h_prep[j].set(kernels::prepare(experts[active[j].expert].down.ty, n_ff, rows, n));
        }
        pool.barrier();
        // Phase 3: down projection of every active expert on the output rows this thread
        // claims, weighted into `out`.
        SCRATCH.with(|s| {
            let (d, _) = &mut *s.borrow_mut();
            for (_, rows) in down.claims(t) {
                for (j, a) in active.iter().enumerate() {
                    let n = a.tokens.len();
                    let p = h_prep[j].get().expect("prepared in phase 2");
                    d.resize(rows.len() * n, 0.0);
                    kernels::matmul_rows(isa, &experts[a.expert].down, p, rows.clone(), d);
                    for (ri, r) in rows.clone().enumerate() {
                        for (i, (&tok, &w)) in a.tokens.iter().zip(&a.weights).enumerate() {
                            // SAFETY: the queue hands output row r to this claim only.
                            unsafe { *out_ptr.ptr().add(tok * hidden + r) += w * d[ri * n + i] };
                        }
                    }
                }
            }
        });
        stamps.mark(t, 1);
    });
    report_phases(&stamps);
}

/// With `HY_PROFILE` on: how far the last thread to finish the gate/up phase and the down
/// phase lagged behind the mean thread (time the others spent waiting), and when the gate/up
/// phase ended.
fn report_phases(stamps: &super::profile::Stamps<2>) {
    use super::profile::{add, enabled, mean_max};
    if !enabled() {
        return;
    }
    let (gate_up, down) = (mean_max(&stamps.at(0)), mean_max(&stamps.at(1)));
    add("experts.gate_up_lag", gate_up.1.saturating_sub(gate_up.0));
    add("experts.down_lag", down.1.saturating_sub(down.0));
    add("experts.gate_up_phase", gate_up.1);
}

/// `Y = X · Wᵀ` (X is n × cols) on the pool: threads claim row ranges of W from a
/// [`RowQueue`] and compute them for all n inputs, so each row is read once. The inputs are
/// quantized once, before the job.
pub fn pool_matmul(pool: &Pool, w: &QMatrix, x: &[f32], n: usize, y: &mut [f32]) {
    debug_assert_eq!(x.len(), n * w.cols);
    debug_assert_eq!(y.len(), n * w.rows);
    let p = {
        let _p = super::profile::scope("pool_matmul_prepare");
        kernels::prepare_on_pool(pool, w.ty, w.cols, x, n)
    };
    let isa = Isa::best();
    let out = SyncPtr(y.as_mut_ptr());
    let queue = RowQueue::new(pool, w.rows, MIN_CLAIM_BYTES / w.row_bytes().max(1));
    pool.run(&|t| {
        for (_, rows) in queue.claims(t) {
            if n == 1 {
                // SAFETY: the queue hands each row to one claim only; y outlives the job.
                let slice = unsafe { std::slice::from_raw_parts_mut(out.ptr().add(rows.start), rows.len()) };
                kernels::matmul_rows(isa, w, &p, rows, slice);
                continue;
            }
            // The kernels give rows × n (one weight row's n results together); each thread
            // turns its own rows into y's n × rows layout (a serial transpose afterwards took
            // as long as an AMX product for a 256-token prompt).
            SCRATCH.with(|s| {
                let (yt, _) = &mut *s.borrow_mut();
                yt.resize(rows.len() * n, 0.0);
                kernels::matmul_rows(isa, w, &p, rows.clone(), yt);
                for i in 0..n {
                    // SAFETY: row i of y at columns `rows` belongs to this claim only.
                    let dst =
                        unsafe { std::slice::from_raw_parts_mut(out.ptr().add(i * w.rows + rows.start), rows.len()) };
                    for (d, src) in dst.iter_mut().zip(yt.chunks_exact(n)) {
                        *d = src[i];
                    }
                }
            });
        }
    });
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Reads `buffers` through the pool: thread `t` sums the `t`-th share of every buffer with a
/// plain vectorizable loop. The ceiling an expert pass over the same memory can reach.
pub fn read_all(pool: &Pool, buffers: &[&[u8]]) -> u64 {
    read_shares(pool, buffers, sum_words)
}

/// [`read_all`] with the widest loads and a software prefetch `dist` bytes ahead (0 = none;
/// `kernels::bench::read_stream_with`): the higher ceiling on CPUs whose cores stream faster
/// with prefetches, as the kernels do.
pub fn read_all_prefetched(pool: &Pool, buffers: &[&[u8]], dist: usize) -> u64 {
    read_shares(pool, buffers, |b| kernels::bench::read_stream_with(b, dist))
}

/// Thread `t` applies `read` to its share (whole 64-byte lines) of every buffer; the result
/// only defeats dead-code elimination.
fn read_shares(pool: &Pool, buffers: &[&[u8]], read: impl Fn(&[u8]) -> u64 + Sync) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    let sums: Vec<AtomicU64> = (0..pool.threads()).map(|_| AtomicU64::new(0)).collect();
    pool.run(&|t| {
        let mut acc = 0u64;
        for b in buffers {
            let r = share(b.len() / 64, pool.threads(), t);
            acc = acc.wrapping_add(read(&b[r.start * 64..r.end * 64]));
        }
        sums[t].store(acc, Ordering::Relaxed);
    });
    sums.iter().fold(0, |x, s| x ^ s.load(Ordering::Relaxed))
}

/// Wrapping sums of the aligned u64 words of `b` in eight lanes, folded (a plain loop the
/// compiler vectorizes).
fn sum_words(b: &[u8]) -> u64 {
    // SAFETY: every bit pattern is a valid u64; `align_to` only yields aligned words.
    let (_, words, _) = unsafe { b.align_to::<u64>() };
    let mut acc = [0u64; 8];
    for line in words.chunks_exact(8) {
        for (a, &w) in acc.iter_mut().zip(line) {
            *a = a.wrapping_add(w);
        }
    }
    acc.iter().fold(0, |x, &y| x ^ y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::GgmlType;
    use crate::runtime::pool::ThreadLayout;
    use crate::synth::fill_random;

    struct Owned {
        g: Vec<u8>,
        u: Vec<u8>,
        d: Vec<u8>,
    }

    fn make(ty: GgmlType, hidden: usize, n_ff: usize, e: usize, seed: u64) -> Vec<Owned> {
        (0..e)
            .map(|i| {
                let mut g = vec![0u8; ty.bytes_for((n_ff * hidden) as u64).unwrap() as usize];
                let mut u = g.clone();
                let mut d = g.clone();
                fill_random(ty, &mut g, seed + 3 * i as u64);
                fill_random(ty, &mut u, seed + 3 * i as u64 + 1);
                fill_random(ty, &mut d, seed + 3 * i as u64 + 2);
                Owned { g, u, d }
            })
            .collect()
    }

    /// The reference: per token, per expert, plain matvec from the kernels module.
    fn reference(experts: &[ExpertMats], x: &[f32], routes: &[Vec<(usize, f32)>], hidden: usize) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        for (t, r) in routes.iter().enumerate() {
            for &(e, w) in r {
                let m = &experts[e];
                let xt = &x[t * hidden..(t + 1) * hidden];
                let mut g = vec![0f32; m.gate.rows];
                let mut u = vec![0f32; m.up.rows];
                kernels::matvec(&m.gate, xt, &mut g);
                kernels::matvec(&m.up, xt, &mut u);
                let hv: Vec<f32> = g.iter().zip(&u).map(|(&a, &b)| silu(a) * b).collect();
                let mut y = vec![0f32; hidden];
                kernels::matvec(&m.down, &hv, &mut y);
                for (o, v) in out[t * hidden..(t + 1) * hidden].iter_mut().zip(y) {
                    *o += w * v;
                }
            }
        }
        out
    }

    /// Expert `o`'s three matrices of `ty`, in the 16-row layout when `x16`.
    fn view(ty: GgmlType, o: &Owned, hidden: usize, n_ff: usize, x16: bool) -> ExpertMats<'_> {
        let mat = |d, rows, cols| {
            let q = QMatrix::new(ty, rows, cols, d).unwrap();
            QMatrix { ty: if x16 { crate::kernels::WeightType::X16(ty) } else { q.ty }, ..q }
        };
        ExpertMats { gate: mat(&o.g, n_ff, hidden), up: mat(&o.u, n_ff, hidden), down: mat(&o.d, hidden, n_ff) }
    }

    /// The pass over `experts` on 1 and 3 threads and on `simulated` threads in 2 simulated
    /// nodes equals `want` within 1e-4 of its largest value.
    fn assert_pass_gives(
        experts: &[ExpertMats],
        x: &[f32],
        routes: &[Vec<(usize, f32)>],
        want: &[f32],
        simulated: usize,
        what: &str,
    ) {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for layout in [ThreadLayout::unpinned(1), ThreadLayout::unpinned(3), ThreadLayout::simulated(simulated, 2)] {
            let pool = Pool::new(layout.clone());
            let mut got = vec![0f32; x.len()];
            expert_pass(&pool, experts, x, routes, &mut got);
            for (a, b) in got.iter().zip(want) {
                assert!((a - b).abs() <= 1e-4 * scale.max(1e-6), "{what} {layout:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn pass_equals_per_token_reference_for_every_layout() {
        let (hidden, n_ff, n_exp) = (512, 256, 6);
        for ty in [GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::Q6_K] {
            let owned = make(ty, hidden, n_ff, n_exp, 11);
            let experts: Vec<ExpertMats> = owned.iter().map(|o| view(ty, o, hidden, n_ff, false)).collect();
            let routes = vec![vec![(0, 0.5), (3, 1.5)], vec![(3, 0.25), (5, 1.0)], vec![(1, 2.0)]];
            let x: Vec<f32> = (0..routes.len() * hidden).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
            let want = reference(&experts, &x, &routes, hidden);
            assert_pass_gives(&experts, &x, &routes, &want, 4, &ty.to_string());
        }
    }

    /// Q4_K and Q6_K experts repacked into 16-row groups (as at load) give the per-token
    /// reference of the file's layout, with several tokens per expert (the prompt kernels'
    /// batches).
    #[test]
    fn repacked_experts_equal_the_reference_of_the_plain_ones() {
        use crate::kernels::x16;
        if !x16::supported() {
            return eprintln!("skipped: no AVX-512 VNNI");
        }
        let (hidden, n_ff, n_exp) = (512, 256, 4);
        for ty in [GgmlType::Q4_K, GgmlType::Q6_K] {
            let owned = make(ty, hidden, n_ff, n_exp, 17);
            let repack = |v: &[u8], cols: usize| {
                let mut out = vec![0u8; v.len()];
                x16::repack(ty, v, cols, &mut out);
                out
            };
            let packed: Vec<Owned> = owned
                .iter()
                .map(|o| Owned { g: repack(&o.g, hidden), u: repack(&o.u, hidden), d: repack(&o.d, n_ff) })
                .collect();
            let mut plain: Vec<ExpertMats> = owned.iter().map(|o| view(ty, o, hidden, n_ff, false)).collect();
            let mut x16: Vec<ExpertMats> = packed.iter().map(|o| view(ty, o, hidden, n_ff, true)).collect();
            // A shared expert in the file's layout, folded into the pass as the model does.
            let shared = view(ty, &owned[1], hidden, n_ff, false);
            plain.push(shared);
            x16.push(shared);
            // Expert 2 gets 11 of 12 tokens (one kernel pass of 8 and one of 3), expert 0 two,
            // the shared expert all.
            let routes: Vec<Vec<(usize, f32)>> = (0..12)
                .map(|t| if t == 5 { vec![(1, 1.0)] } else { vec![(2, 0.5), (t % 2 * 3, 0.75)] })
                .map(|mut r| {
                    r.push((n_exp, 1.0));
                    r
                })
                .collect();
            let x: Vec<f32> = (0..routes.len() * hidden).map(|i| ((i * 41 % 103) as f32 - 51.0) / 26.0).collect();
            let want = reference(&plain, &x, &routes, hidden);
            assert_pass_gives(&x16, &x, &routes, &want, 5, &format!("{ty:?} repacked"));
        }
    }

    #[test]
    fn pool_matmul_equals_kernels_matmul() {
        let (rows, cols) = (300, 512);
        let mut data = vec![0u8; GgmlType::Q4_K.bytes_for((rows * cols) as u64).unwrap() as usize];
        fill_random(GgmlType::Q4_K, &mut data, 5);
        let w = QMatrix::new(GgmlType::Q4_K, rows, cols, &data).unwrap();
        for n in [1, 3] {
            let x: Vec<f32> = (0..n * cols).map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0).collect();
            let mut want = vec![0f32; n * rows];
            kernels::matmul(&w, &x, n, &mut want);
            for layout in [ThreadLayout::unpinned(1), ThreadLayout::unpinned(4)] {
                let pool = Pool::new(layout);
                let mut got = vec![0f32; n * rows];
                pool_matmul(&pool, &w, &x, n, &mut got);
                assert_eq!(got, want, "n = {n}");
            }
        }
    }

    #[test]
    fn shared_experts_are_counted_once() {
        let routes = vec![vec![(1, 1.0), (2, 1.0)], vec![(2, 1.0), (7, 1.0)]];
        assert_eq!(distinct_experts(&routes), 3);
    }
}
