//! The per-head part of multi-head latent attention (DeepSeek-V2/V3, Kimi-K2) in absorbed form.
//!
//! Every head's no-rope query is projected into the latent space (`W_UKᵀ q_nope`), attends
//! over the cached latents that all heads share, and its latent context is projected out
//! (`W_UV ctx`). The matrices are small (per head 512 × 128) and the work per head is short,
//! so threads take contiguous runs of heads (from a work queue on the runtime's pinned pool,
//! when it is free; else one equal run per rayon thread) and run absorb, softmax and output
//! projection for a run in one go: one parallel region per layer, no allocation per head,
//! and each cached latent converted once per run.

use std::ops::Range;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::kernels::{self, Isa, QMatrix};
use crate::runtime::pool::{share, SyncPtr};
use crate::runtime::queue::RowQueue;

/// One sequence's cached latents for one layer: rows of `lora + rope` values.
#[derive(Clone, Copy)]
pub enum Latents<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// Head count and widths of one MLA layer.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub n_heads: usize,
    pub nope: usize,
    pub rope: usize,
    pub lora: usize,
    pub v_head: usize,
}

impl Dims {
    fn q_head(&self) -> usize {
        self.nope + self.rope
    }
    fn width(&self) -> usize {
        self.lora + self.rope
    }
}

/// Inputs of the per-head pass for one layer.
pub struct HeadPass<'a> {
    pub dims: Dims,
    /// Softmax scale (includes YaRN's mscale²).
    pub scale: f32,
    /// Per head `W_UKᵀ` (`lora × nope`) and `W_UV` (`v_head × lora`).
    pub k_b: Vec<QMatrix<'a>>,
    pub v_b: Vec<QMatrix<'a>>,
    /// `n × n_heads × (nope + rope)` queries, rope already applied.
    pub q: &'a [f32],
    /// `(sequence, position)` per row; row `i` attends to its sequence's latents `0..=pos`.
    pub rows: &'a [(usize, usize)],
    /// Per sequence, that sequence's latents (at least `pos + 1` rows for each of its rows).
    pub latents: Vec<Latents<'a>>,
}

impl HeadPass<'_> {
    /// `n × (n_heads · v_head)`: the input of the output projection.
    pub fn run(&self) -> Vec<f32> {
        let d = self.dims;
        let n = self.rows.len();
        let mut out = vec![0f32; n * d.n_heads * d.v_head];
        let ptr = SyncPtr(out.as_mut_ptr());
        let pool = crate::runtime::pool::global();
        let guard = pool.as_ref().and_then(|p| p.try_lock().ok());
        match guard {
            Some(pool) => {
                // Heads claimed one or a few at a time: threads do not run equally fast.
                let queue = RowQueue::new(&pool, d.n_heads, 1).aligned(1);
                pool.run(&|t| queue.claims(t).for_each(|(_, heads)| self.heads(heads, ptr)));
            }
            None => {
                let parts = rayon::current_num_threads().min(d.n_heads).max(1);
                (0..parts).into_par_iter().for_each(|t| self.heads(share(d.n_heads, parts, t), ptr));
            }
        }
        out
    }

    /// Absorb, attend and project the heads `heads` for every row, writing their slots of
    /// `out` (`n × n_heads × v_head`).
    fn heads(&self, heads: Range<usize>, out: SyncPtr<f32>) {
        if heads.is_empty() {
            return;
        }
        let d = self.dims;
        let (n, hc, width) = (self.rows.len(), heads.len(), d.width());
        let isa = Isa::best();
        // Absorbed queries [head][row][lora + rope].
        let mut qq = vec![0f32; hc * n * width];
        let mut q_nope = vec![0f32; n * d.nope];
        let mut t = vec![0f32; d.lora.max(d.v_head) * n];
        // Per-phase thread time, summed over the pool's threads (with `HY_PROFILE`).
        let absorb = crate::runtime::profile::scope("attn_heads.absorb (thread sum)");
        for (k, hd) in heads.clone().enumerate() {
            for (i, dst) in q_nope.chunks_exact_mut(d.nope).enumerate() {
                dst.copy_from_slice(&self.q[(i * d.n_heads + hd) * d.q_head()..][..d.nope]);
            }
            let p = kernels::prepare(self.k_b[hd].ty, d.nope, &q_nope, n);
            kernels::matmul_rows(isa, &self.k_b[hd], &p, 0..d.lora, &mut t[..d.lora * n]);
            let head = &mut qq[k * n * width..(k + 1) * n * width];
            transpose_into(&t[..d.lora * n], d.lora, n, head, width);
            for (i, dst) in head.chunks_exact_mut(width).enumerate() {
                dst[d.lora..].copy_from_slice(&self.q[(i * d.n_heads + hd) * d.q_head() + d.nope..][..d.rope]);
            }
        }
        drop(absorb);
        let attend_scope = crate::runtime::profile::scope("attn_heads.attend (thread sum)");
        // Latent contexts [head][row][lora].
        let mut ctx = vec![0f32; hc * n * d.lora];
        let mut scratch = Scratch::default();
        // A sequence with several rows here (a prompt) has its f16 latents converted to f32
        // once for all of them, when that copy is small; otherwise `attend` converts as it
        // goes. (f32 latents are used in place.)
        let mut converted: Vec<Option<Vec<f32>>> = vec![None; self.latents.len()];
        for (seq, c) in converted.iter_mut().enumerate() {
            let Latents::F16(lat) = self.latents[seq] else { continue };
            let mine = self.rows.iter().filter(|r| r.0 == seq);
            let (count, longest) = mine.fold((0, 0), |(c, l), r| (c + 1, l.max(r.1 + 1)));
            if count >= 2 && longest * width <= CONVERT_MAX_VALUES {
                let mut f = vec![0f32; longest * width];
                lat[..f.len()].convert_to_f32_slice(&mut f);
                *c = Some(f);
            }
        }
        for block in row_blocks(self.rows) {
            let seq = self.rows[block.start].0;
            let lat = converted[seq].as_deref().map_or(self.latents[seq], Latents::F32);
            if block.len() == 1 {
                // One row (decode): all heads together, each latent row feeding four heads.
                let (i, pos) = (block.start, self.rows[block.start].1);
                let qs: Vec<&[f32]> = (0..hc).map(|k| &qq[(k * n + i) * width..][..width]).collect();
                attend(lat, pos + 1, width, d.lora, self.scale, &qs, &mut scratch);
                for (k, c) in scratch.ctx.chunks_exact(d.lora).enumerate() {
                    ctx[(k * n + i) * d.lora..][..d.lora].copy_from_slice(c);
                }
                continue;
            }
            // Up to four rows of a prompt: per head, each latent row feeds the four queries.
            let pos: Vec<usize> = self.rows[block.clone()].iter().map(|r| r.1).collect();
            for k in 0..hc {
                let qs: Vec<&[f32]> = block.clone().map(|i| &qq[(k * n + i) * width..][..width]).collect();
                attend_rows(lat, &pos, width, d.lora, self.scale, &qs, &mut scratch);
                for (i, c) in block.clone().zip(scratch.ctx.chunks_exact(d.lora)) {
                    ctx[(k * n + i) * d.lora..][..d.lora].copy_from_slice(c);
                }
            }
        }
        drop(attend_scope);
        let _project = crate::runtime::profile::scope("attn_heads.project (thread sum)");
        // Output projection per head.
        let mut o = vec![0f32; n * d.v_head];
        for (k, hd) in heads.enumerate() {
            let c = &ctx[k * n * d.lora..(k + 1) * n * d.lora];
            let p = kernels::prepare(self.v_b[hd].ty, d.lora, c, n);
            kernels::matmul_rows(isa, &self.v_b[hd], &p, 0..d.v_head, &mut t[..d.v_head * n]);
            transpose_into(&t[..d.v_head * n], d.v_head, n, &mut o, d.v_head);
            for (i, src) in o.chunks_exact(d.v_head).enumerate() {
                // SAFETY: head hd's slots belong to this call only (heads are split into
                // disjoint ranges); the range is inside `out`, which outlives the job.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(out.ptr().add((i * d.n_heads + hd) * d.v_head), d.v_head) };
                dst.copy_from_slice(src);
            }
        }
    }
}

/// Rows × n results of the kernels (`t[r·n + i]`) into n rows of `stride` values (`rows` of
/// them written, `dst[i·stride + r]`), a block of [`TRANSPOSE_BLOCK`]² at a time: row by row,
/// a prompt's thousand tokens put every read on another cache line.
fn transpose_into(t: &[f32], rows: usize, n: usize, dst: &mut [f32], stride: usize) {
    debug_assert!(t.len() == rows * n && dst.len() >= n * stride && rows <= stride);
    for i0 in (0..n).step_by(TRANSPOSE_BLOCK) {
        let i1 = (i0 + TRANSPOSE_BLOCK).min(n);
        for r0 in (0..rows).step_by(TRANSPOSE_BLOCK) {
            let r1 = (r0 + TRANSPOSE_BLOCK).min(rows);
            for i in i0..i1 {
                let d = &mut dst[i * stride + r0..i * stride + r1];
                for (r, v) in (r0..r1).zip(d) {
                    *v = t[r * n + i];
                }
            }
        }
    }
}

/// Side of the blocks [`transpose_into`] moves: 32 × 32 f32 reads and writes stay in L1.
const TRANSPOSE_BLOCK: usize = 32;

/// Reused buffers of [`attend`].
#[derive(Default)]
struct Scratch {
    row: Vec<f32>,
    scores: Vec<f32>,
    ctx: Vec<f32>,
}

/// Latent values converted to f32 per thread at most (16 MB) for a prompt's rows to share.
const CONVERT_MAX_VALUES: usize = 4 << 20;

/// Latent rows converted per step when the cache is f16 (≈ 147 KB of f32 at width 576).
const CHUNK_ROWS: usize = 64;

/// Softmax attention of the queries `qs` (one per head, `width` long) over the first `len`
/// latent rows; the value of a row is its first `lora` values. Leaves `qs.len() × lora`
/// contexts in `s.ctx`. Scores are computed four queries × four latent rows at a time (each
/// loaded vector feeds four products), contexts sum four latent rows per pass over a
/// head's context; f16 latents are converted in chunks of [`CHUNK_ROWS`] rows.
fn attend(lat: Latents, len: usize, width: usize, lora: usize, scale: f32, qs: &[&[f32]], s: &mut Scratch) {
    let h = qs.len();
    s.scores.clear();
    s.scores.resize(h * len, 0.0);
    each_chunk(lat, len, width, &mut s.row, |j0, _, rows| score_chunk(rows, width, scale, qs, &mut s.scores, len, j0));
    softmax_rows(&mut s.scores, len);
    s.ctx.clear();
    s.ctx.resize(h * lora, 0.0);
    each_chunk(lat, len, width, &mut s.row, |j0, m, rows| {
        for (k, c) in s.ctx.chunks_exact_mut(lora).enumerate() {
            let p = &s.scores[k * len + j0..][..m];
            for i0 in (0..m).step_by(4) {
                let w: [f32; 4] = std::array::from_fn(|i| if i0 + i < m { p[i0 + i] } else { 0.0 });
                let x: [&[f32]; 4] = std::array::from_fn(|i| &rows[(i0 + i).min(m - 1) * width..][..lora]);
                axpy4(w, x, c);
            }
        }
    });
}

/// `f(j0, m, rows)` for the latent rows `0..len` in chunks of [`CHUNK_ROWS`] (`rows` holds
/// rows `j0..j0 + m` as f32; see [`chunk`]).
fn each_chunk(lat: Latents, len: usize, width: usize, buf: &mut Vec<f32>, mut f: impl FnMut(usize, usize, &[f32])) {
    for j0 in (0..len).step_by(CHUNK_ROWS) {
        let m = CHUNK_ROWS.min(len - j0);
        f(j0, m, chunk(lat, j0, m, width, buf));
    }
}

/// Consecutive rows of one sequence, at most four per block (a prompt's rows; a decode
/// batch has one row per sequence, so its blocks are single rows).
fn row_blocks(rows: &[(usize, usize)]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        match out.last_mut() {
            Some(b) if b.len() < 4 && rows[b.start].0 == r.0 => b.end = i + 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

/// [`attend`] for one head and up to four rows of one sequence (the query of row `a` attends
/// to latent rows `0..=pos[a]`): scores four queries × four latent rows at a time over the
/// longest row's span, the others masked, and contexts summed four latent rows into four
/// rows at a time. Each row's result is bit for bit [`attend`]'s: the masked scores add
/// exact zeros, in the same order.
fn attend_rows(lat: Latents, pos: &[usize], width: usize, lora: usize, scale: f32, qs: &[&[f32]], s: &mut Scratch) {
    let r = qs.len();
    let len = pos.iter().max().map_or(0, |p| p + 1);
    s.scores.clear();
    s.scores.resize(r * len, 0.0);
    each_chunk(lat, len, width, &mut s.row, |j0, _, rows| score_chunk(rows, width, scale, qs, &mut s.scores, len, j0));
    for (sc, &p) in s.scores.chunks_exact_mut(len).zip(pos) {
        sc[p + 1..].fill(f32::NEG_INFINITY);
    }
    softmax_rows(&mut s.scores, len);
    s.ctx.clear();
    s.ctx.resize(r * lora, 0.0);
    each_chunk(lat, len, width, &mut s.row, |j0, m, rows| {
        for i0 in (0..m).step_by(4) {
            let w: [[f32; 4]; 4] = std::array::from_fn(|a| {
                std::array::from_fn(|i| if a < r && i0 + i < m { s.scores[a * len + j0 + i0 + i] } else { 0.0 })
            });
            let x: [&[f32]; 4] = std::array::from_fn(|i| &rows[(i0 + i).min(m - 1) * width..][..lora]);
            axpy4x4(&w[..r], x, &mut s.ctx);
        }
    });
}

/// Latent rows `j0..j0 + m` as f32: a slice of an f32 cache, or converted into `buf`.
fn chunk<'a>(lat: Latents<'a>, j0: usize, m: usize, width: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
    match lat {
        Latents::F32(c) => &c[j0 * width..(j0 + m) * width],
        Latents::F16(c) => {
            buf.resize(m * width, 0.0);
            c[j0 * width..(j0 + m) * width].convert_to_f32_slice(buf);
            buf
        }
    }
}

/// Scores of every query against the latent rows `rows` (rows `j0..` of `len`), into
/// `scores[k · len + j]`.
fn score_chunk(rows: &[f32], width: usize, scale: f32, qs: &[&[f32]], scores: &mut [f32], len: usize, j0: usize) {
    let (h, m) = (qs.len(), rows.len() / width);
    for i0 in (0..m).step_by(4) {
        let r4: [&[f32]; 4] = std::array::from_fn(|c| &rows[(i0 + c).min(m - 1) * width..][..width]);
        for k0 in (0..h).step_by(4) {
            let q4: [&[f32]; 4] = std::array::from_fn(|c| qs[(k0 + c).min(h - 1)]);
            let d = dots4x4(q4, r4);
            for (a, dk) in d.iter().enumerate().take(h - k0) {
                for (c, &v) in dk.iter().enumerate().take(m - i0) {
                    scores[(k0 + a) * len + j0 + i0 + c] = v * scale;
                }
            }
        }
    }
}

/// Each row of `scores` (rows of `len`) replaced by its softmax.
fn softmax_rows(scores: &mut [f32], len: usize) {
    for sc in scores.chunks_exact_mut(len) {
        let max = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for v in sc.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
        sc.iter_mut().for_each(|v| *v *= inv);
    }
}

/// `out[a][b] = q[a] · l[b]` over the common length.
fn dots4x4(q: [&[f32]; 4], l: [&[f32]; 4]) -> [[f32; 4]; 4] {
    #[cfg(target_arch = "x86_64")]
    if matches!(Isa::best(), Isa::Avx512 | Isa::Avx512Vnni) {
        // SAFETY: AVX-512F checked just above.
        return unsafe { x86::dots4x4(q, l) };
    }
    std::array::from_fn(|a| std::array::from_fn(|b| q[a].iter().zip(l[b]).map(|(x, y)| x * y).sum()))
}

/// `y += Σ_i w[i] · x[i]` over the length of `y`.
fn axpy4(w: [f32; 4], x: [&[f32]; 4], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if matches!(Isa::best(), Isa::Avx512 | Isa::Avx512Vnni) {
        // SAFETY: AVX-512F checked just above.
        return unsafe { x86::axpy4(w, x, y) };
    }
    for (c, v) in y.iter_mut().enumerate() {
        *v += w[0] * x[0][c] + w[1] * x[1][c] + w[2] * x[2][c] + w[3] * x[3][c];
    }
}

/// `y[a] += Σ_i w[a][i] · x[i]` for the rows `a` of `w` (`y` holds them back to back, each
/// as long as the `x`), in [`axpy4`]'s order per row.
fn axpy4x4(w: &[[f32; 4]], x: [&[f32]; 4], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if matches!(Isa::best(), Isa::Avx512 | Isa::Avx512Vnni) {
        // SAFETY: AVX-512F checked just above.
        return unsafe { x86::axpy4x4(w, x, y) };
    }
    let len = x[0].len();
    for (wa, ya) in w.iter().zip(y.chunks_exact_mut(len)) {
        axpy4(*wa, x, ya);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dots4x4(q: [&[f32]; 4], l: [&[f32]; 4]) -> [[f32; 4]; 4] {
        let n = q.iter().chain(&l).map(|v| v.len()).min().unwrap_or(0);
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n, within every slice.
            let (qv, lv): ([__m512; 4], [__m512; 4]) = unsafe {
                (
                    std::array::from_fn(|a| _mm512_loadu_ps(q[a].as_ptr().add(i))),
                    std::array::from_fn(|b| _mm512_loadu_ps(l[b].as_ptr().add(i))),
                )
            };
            for a in 0..4 {
                for b in 0..4 {
                    acc[a][b] = _mm512_fmadd_ps(qv[a], lv[b], acc[a][b]);
                }
            }
            i += 16;
        }
        std::array::from_fn(|a| {
            std::array::from_fn(|b| {
                let tail: f32 = q[a][i..n].iter().zip(&l[b][i..n]).map(|(x, y)| x * y).sum();
                _mm512_reduce_add_ps(acc[a][b]) + tail
            })
        })
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn axpy4(w: [f32; 4], x: [&[f32]; 4], y: &mut [f32]) {
        let n = x.iter().map(|v| v.len()).min().unwrap_or(0).min(y.len());
        let wv: [__m512; 4] = std::array::from_fn(|i| _mm512_set1_ps(w[i]));
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n, within every slice.
            unsafe {
                let p = y.as_mut_ptr().add(i);
                let mut v = _mm512_loadu_ps(p);
                for r in 0..4 {
                    v = _mm512_fmadd_ps(wv[r], _mm512_loadu_ps(x[r].as_ptr().add(i)), v);
                }
                _mm512_storeu_ps(p, v);
            }
            i += 16;
        }
        for c in i..n {
            y[c] += w[0] * x[0][c] + w[1] * x[1][c] + w[2] * x[2][c] + w[3] * x[3][c];
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn axpy4x4(w: &[[f32; 4]], x: [&[f32]; 4], y: &mut [f32]) {
        let n = x.iter().map(|v| v.len()).min().unwrap_or(0);
        let rows = w.len().min(4);
        assert!(y.len() >= rows * n);
        let wv: [[__m512; 4]; 4] =
            std::array::from_fn(|a| std::array::from_fn(|i| _mm512_set1_ps(w[a.min(rows - 1)][i])));
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n, within every x and every row of y (asserted above).
            unsafe {
                let xv: [__m512; 4] = std::array::from_fn(|r| _mm512_loadu_ps(x[r].as_ptr().add(i)));
                for (a, wa) in wv.iter().enumerate().take(rows) {
                    let p = y.as_mut_ptr().add(a * n + i);
                    let mut v = _mm512_loadu_ps(p);
                    for r in 0..4 {
                        v = _mm512_fmadd_ps(wa[r], xv[r], v);
                    }
                    _mm512_storeu_ps(p, v);
                }
            }
            i += 16;
        }
        for (a, wa) in w.iter().enumerate().take(rows) {
            for c in i..n {
                y[a * n + c] += wa[0] * x[0][c] + wa[1] * x[1][c] + wa[2] * x[2][c] + wa[3] * x[3][c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::uniform;

    /// Naive reference: per head, scores over all rows, softmax, weighted sum.
    fn naive(lat: &[f32], len: usize, width: usize, lora: usize, scale: f32, q: &[f32]) -> Vec<f32> {
        let s: Vec<f32> = (0..len)
            .map(|j| q.iter().zip(&lat[j * width..(j + 1) * width]).map(|(a, b)| a * b).sum::<f32>() * scale)
            .collect();
        let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = s.iter().map(|v| (v - m).exp()).collect();
        let z: f32 = e.iter().sum();
        (0..lora).map(|c| (0..len).map(|j| e[j] * lat[j * width + c]).sum::<f32>() / z).collect()
    }

    #[test]
    fn attend_matches_naive_softmax_for_f32_and_f16_latents() {
        // 150 rows: three conversion chunks, the last one partial.
        for (len, heads) in [(7, 3), (150, 6)] {
            attend_case(40, 33, len, heads);
        }
    }

    fn attend_case(width: usize, lora: usize, len: usize, heads: usize) {
        let lat = uniform(len * width, 1);
        let lat16: Vec<f16> = lat.iter().map(|&v| f16::from_f32(v)).collect();
        let lat16_f32: Vec<f32> = lat16.iter().map(|v| v.to_f32()).collect();
        let qs: Vec<Vec<f32>> = (0..heads).map(|h| uniform(width, 10 + h as u32)).collect();
        let refs: Vec<&[f32]> = qs.iter().map(|q| q.as_slice()).collect();
        for (lat_view, values) in [(Latents::F32(&lat), &lat), (Latents::F16(&lat16), &lat16_f32)] {
            let mut s = Scratch::default();
            attend(lat_view, len, width, lora, 0.3, &refs, &mut s);
            for (k, q) in qs.iter().enumerate() {
                let want = naive(values, len, width, lora, 0.3, q);
                for (a, b) in s.ctx[k * lora..(k + 1) * lora].iter().zip(&want) {
                    assert!((a - b).abs() < 1e-5, "head {k}: {a} vs {b}");
                }
            }
        }
    }

    /// The blocked transpose puts every value where the plain loop puts it, for shapes that
    /// are and are not multiples of the block, and leaves the rest of each row alone.
    #[test]
    fn transpose_into_equals_the_plain_transpose() {
        for (rows, n, stride) in [(512, 70, 576), (128, 1, 128), (33, 64, 40), (64, 100, 64)] {
            let t = uniform(rows * n, 9);
            let mut got = vec![-1f32; n * stride];
            transpose_into(&t, rows, n, &mut got, stride);
            for i in 0..n {
                for r in 0..stride {
                    let want = if r < rows { t[r * n + i] } else { -1.0 };
                    assert_eq!(got[i * stride + r], want, "{rows}×{n} row {i} col {r}");
                }
            }
        }
    }

    /// Four prompt rows at once give each row exactly what one row at a time gives.
    #[test]
    fn row_blocks_equal_single_rows_bit_for_bit() {
        let (width, lora, len) = (40, 33, 150);
        let lat = uniform(len * width, 5);
        let lat16: Vec<f16> = lat.iter().map(|&v| f16::from_f32(v)).collect();
        for view in [Latents::F32(&lat), Latents::F16(&lat16)] {
            for pos in [vec![3usize, 4, 5, 6], vec![70, 71, 149], vec![0, 1], vec![63, 64, 65, 66]] {
                let qs: Vec<Vec<f32>> = pos.iter().map(|&p| uniform(width, 100 + p as u32)).collect();
                let refs: Vec<&[f32]> = qs.iter().map(|q| q.as_slice()).collect();
                let mut s = Scratch::default();
                attend_rows(view, &pos, width, lora, 0.3, &refs, &mut s);
                let got = s.ctx.clone();
                for (a, &p) in pos.iter().enumerate() {
                    let mut one = Scratch::default();
                    attend(view, p + 1, width, lora, 0.3, &refs[a..a + 1], &mut one);
                    assert_eq!(&got[a * lora..(a + 1) * lora], &one.ctx[..], "row {a} at {p} of {pos:?}");
                }
            }
        }
        let rows = [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 9), (2, 0), (2, 1)];
        assert_eq!(row_blocks(&rows), vec![0..4, 4..5, 5..6, 6..8]);
    }

    #[test]
    fn blocked_dots_and_axpy_handle_tails() {
        for n in [0, 1, 15, 16, 17, 33, 64, 100] {
            let q: Vec<Vec<f32>> = (0..4).map(|i| uniform(n, 3 + i)).collect();
            let l: Vec<Vec<f32>> = (0..4).map(|i| uniform(n, 30 + i)).collect();
            let d = dots4x4(std::array::from_fn(|i| q[i].as_slice()), std::array::from_fn(|i| l[i].as_slice()));
            for a in 0..4 {
                for b in 0..4 {
                    let want: f32 = q[a].iter().zip(&l[b]).map(|(x, y)| x * y).sum();
                    assert!((d[a][b] - want).abs() < 1e-4, "n {n} dot {a}·{b}");
                }
            }
            let y0 = uniform(n, 9);
            let mut y = y0.clone();
            let w = [0.5, -0.25, 2.0, 0.0];
            axpy4(w, std::array::from_fn(|i| l[i].as_slice()), &mut y);
            for c in 0..n {
                let want = y0[c] + (0..4).map(|i| w[i] * l[i][c]).sum::<f32>();
                assert!((y[c] - want).abs() < 1e-5, "n {n} axpy lane {c}");
            }
        }
    }
}
