//! Matrix-vector and matrix-matrix products over [`QMatrix`] weights, with run-time ISA
//! dispatch and row-parallel drivers.
//!
//! Building blocks for callers with their own threads (per-NUMA pools, issue 6):
//! [`prepare`] quantizes the activations once, then any thread runs [`matmul_rows`] on the
//! contiguous weight rows it owns.

use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use rayon::prelude::*;

use super::blocks::{is_k_quant, is_small_block};
use super::quant::{quantize_q8_0, quantize_q8_k_rows, BlockQ8K, BlockQ8_0};
use super::{fp8, scalar, simd, Precision, QMatrix, WeightType};
use crate::runtime::pool::Pool;
use crate::GgmlType;

/// Instruction set a kernel runs with. Variants other than `Scalar` are only run when the
/// CPU has them ([`Isa::supported`]); asking for an unsupported one falls back to scalar.
/// Ordered by what they include (`isa >= Isa::Avx512`: AVX-512 F/BW/VL available).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL.
    Avx512,
    /// AVX-512 plus VNNI (fused i16 multiply-add in the k-quant kernels).
    Avx512Vnni,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512vnni",
        }
    }

    /// Whether this CPU can run the variant.
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => simd::avx2_supported(),
            Isa::Avx512 => simd::avx512_supported(),
            Isa::Avx512Vnni => simd::vnni_supported(),
        }
    }

    /// All variants this CPU runs, scalar first.
    pub fn all_supported() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni].into_iter().filter(|i| i.supported()).collect()
    }

    /// The best supported variant, capped by the `HY_ISA` environment variable
    /// (`scalar`, `avx2`, `avx512`, `avx512vnni`) when set; detected once per process.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let cap = match std::env::var("HY_ISA").as_deref() {
                Ok("scalar") => Isa::Scalar,
                Ok("avx2") => Isa::Avx2,
                Ok("avx512") => Isa::Avx512,
                _ => Isa::Avx512Vnni,
            };
            let order = [Isa::Avx512Vnni, Isa::Avx512, Isa::Avx2, Isa::Scalar];
            let start = order.iter().position(|&i| i == cap).unwrap_or(0);
            order[start..].iter().copied().find(|i| i.supported()).unwrap_or(Isa::Scalar)
        })
    }
}

static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Sets the process-wide precision (default [`Precision::Fast`]).
pub fn set_precision(p: Precision) {
    PRECISION.store(matches!(p, Precision::Exact) as u8, Ordering::Relaxed);
}

pub fn precision() -> Precision {
    if PRECISION.load(Ordering::Relaxed) == 1 {
        Precision::Exact
    } else {
        Precision::Fast
    }
}

/// Activations ready for one weight format: `n` rows of `cols` values, either as f32 or
/// quantized to the 8-bit blocks the weight format's integer kernels use.
pub struct Prepared<'x> {
    pub n: usize,
    pub cols: usize,
    act: Act<'x>,
}

impl Prepared<'_> {
    /// Whether these activations can be used with weights of type `ty` (f32 activations suit
    /// every type; Q8_K ones suit the k-quants, Q8_0 ones the Q4_0 family).
    pub fn suits(&self, ty: WeightType) -> bool {
        // The repacked layout's own tiles; everything else suits a repacked matrix as it suits
        // the file's layout (`matmul_rows` unpacks what its 16-row kernels cannot take).
        #[cfg(target_arch = "x86_64")]
        if let Act::X16Tiles(_) = &self.act {
            return matches!(ty, WeightType::X16(t) if is_k_quant(t));
        }
        match (&self.act, ty.unpacked()) {
            (Act::F32(_), _) => true,
            (Act::Q8K(_), WeightType::Ggml(t)) => is_k_quant(t),
            (Act::Q8_0(_), WeightType::Ggml(t)) => is_small_block(t),
            (Act::Bf16(_), WeightType::Fp8E4M3Block128) => true,
            #[cfg(target_arch = "x86_64")]
            (Act::Amx(_), WeightType::Ggml(t)) => super::amx::suits(t),
            #[cfg(target_arch = "x86_64")]
            (Act::AmxI8(_), WeightType::Ggml(t)) => t == GgmlType::Q4_K,
            _ => false,
        }
    }
}

enum Act<'x> {
    F32(&'x [f32]),
    Q8_0(Vec<BlockQ8_0>),
    Q8K(Vec<BlockQ8K>),
    /// FP8 weights in Fast precision on AVX512_BF16 CPUs: bf16 of x·2^64 (see `fp8.rs`).
    Bf16(Vec<u16>),
    /// Quantized weights in Fast precision with many rows on AMX CPUs: bf16 tiles (`amx.rs`).
    #[cfg(target_arch = "x86_64")]
    Amx(super::amx::Acts),
    /// Q4_K weights in Fast precision with several rows on AMX-INT8 CPUs (`amx_q4k.rs`).
    #[cfg(target_arch = "x86_64")]
    AmxI8(super::amx_q4k::ActsI8),
    /// Repacked weights in Fast precision with many rows on AMX CPUs (`x16/tiles.rs`).
    #[cfg(target_arch = "x86_64")]
    X16Tiles(super::x16::tiles::Acts),
}

/// How the bf16 tile path (`amx::pack`) may split a large prompt's activations by column
/// chunk while preparing them.
#[derive(Clone, Copy)]
pub enum Split<'a> {
    /// On the calling thread (callers inside parallel work).
    One,
    /// Over rayon's threads (callers outside parallel work whose own threads wait meanwhile).
    Rayon,
    /// Over this pool's threads: the pool that will run the product, idle until then (rayon's
    /// threads would compete with its spinning threads for the cores).
    Pool(&'a Pool),
}

/// Prepares `x` (n × cols, row-major) for weights of type `ty` at the process precision.
pub fn prepare<'x>(ty: WeightType, cols: usize, x: &'x [f32], n: usize) -> Prepared<'x> {
    prepare_with(ty, cols, x, n, precision())
}

/// As [`prepare`] with an explicit precision.
pub fn prepare_with<'x>(ty: WeightType, cols: usize, x: &'x [f32], n: usize, p: Precision) -> Prepared<'x> {
    prepare_for(Isa::best(), ty, cols, x, n, p, Split::One)
}

/// As [`prepare`], splitting large inputs over `pool`'s threads: for a product about to
/// run on that pool (idle meanwhile).
pub fn prepare_on_pool<'x>(pool: &Pool, ty: WeightType, cols: usize, x: &'x [f32], n: usize) -> Prepared<'x> {
    prepare_for(Isa::best(), ty, cols, x, n, precision(), Split::Pool(pool))
}

/// As [`prepare_with`] for kernels of `isa`: the AMX tiles serve only the best ISA (a test or
/// benchmark that asks for another one gets that ISA's own activations).
fn prepare_for<'x>(
    isa: Isa,
    ty: WeightType,
    cols: usize,
    x: &'x [f32],
    n: usize,
    p: Precision,
    split: Split,
) -> Prepared<'x> {
    debug_assert_eq!(x.len(), n * cols, "activations must be n × cols");
    #[cfg(target_arch = "x86_64")]
    if use_amx_q4k(isa, ty, n, p) {
        let q = quantize_q8_k_rows(x, n);
        return Prepared { n, cols, act: Act::AmxI8(super::amx_q4k::pack(&q, n, cols)) };
    }
    #[cfg(target_arch = "x86_64")]
    if use_x16_tiles(isa, ty, n, p) {
        return Prepared { n, cols, act: Act::X16Tiles(super::x16::tiles::pack(x, n, cols)) };
    }
    #[cfg(target_arch = "x86_64")]
    if use_amx(isa, ty, n, p) {
        return Prepared { n, cols, act: Act::Amx(super::amx::pack(x, n, cols, split)) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = split;
    let act = match (p, ty.unpacked()) {
        (Precision::Fast, WeightType::Ggml(t)) if is_k_quant(t) => Act::Q8K(quantize_q8_k_rows(x, n)),
        (Precision::Fast, WeightType::Ggml(t)) if is_small_block(t) => Act::Q8_0(quantize_q8_0(x)),
        (Precision::Fast, WeightType::Fp8E4M3Block128) if simd::fp8_bf16_enabled() => Act::Bf16(fp8::prepare_bf16(x)),
        _ => Act::F32(x),
    };
    Prepared { n, cols, act }
}

/// Whether a product of `n` activation rows with weights `ty`, on kernels of `isa` at the
/// process precision, runs on the AMX tiles (benchmarks label their rows with it).
pub fn runs_on_amx(isa: Isa, ty: WeightType, n: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if use_amx_q4k(isa, ty, n, precision()) || use_x16_tiles(isa, ty, n, precision()) {
        return true;
    }
    use_amx(isa, ty, n, precision())
}

/// Whether repacked weights meet `n` activation rows on the bf16 tiles (`x16/tiles.rs`).
#[cfg(target_arch = "x86_64")]
fn use_x16_tiles(isa: Isa, ty: WeightType, n: usize, p: Precision) -> bool {
    use super::x16::tiles;
    matches!(ty, WeightType::X16(GgmlType::Q4_K | GgmlType::Q6_K))
        && tiles_allowed(isa, p)
        && n >= tiles::min_rows()
        && tiles::available()
}

/// What both AMX paths require: Fast precision, on the best ISA (VNNI), outside llama.cpp-order
/// mode (a test or benchmark that asks for another ISA gets that ISA's own kernels).
#[cfg(target_arch = "x86_64")]
fn tiles_allowed(isa: Isa, p: Precision) -> bool {
    p == Precision::Fast && isa == Isa::Avx512Vnni && isa == Isa::best() && !super::quant::llama_order()
}

/// [`runs_on_amx`] at precision `p` on the bf16 tiles: quantized weights with at least
/// `amx::min_rows()` rows.
fn use_amx(isa: Isa, ty: WeightType, n: usize, p: Precision) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use super::amx;
        let WeightType::Ggml(t) = ty else { return false };
        tiles_allowed(isa, p) && n >= amx::min_rows() && amx::suits(t) && amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, ty, n, p);
        false
    }
}

/// Whether Q4_K weights meet these activations on the AMX int8 tiles (`amx_q4k.rs`).
#[cfg(target_arch = "x86_64")]
fn use_amx_q4k(isa: Isa, ty: WeightType, n: usize, p: Precision) -> bool {
    use super::amx_q4k;
    tiles_allowed(isa, p)
        && ty == WeightType::Ggml(GgmlType::Q4_K)
        && amx_q4k::rows().contains(&n)
        && amx_q4k::available()
}

/// Whether a product of one activation row with short rows of `w` runs as one kernel call
/// over all rows (`avx512::dot_k_rows` / `dot_s_rows`).
#[cfg(target_arch = "x86_64")]
fn one_call_for_rows(isa: Isa, w: &QMatrix, p: &Prepared) -> bool {
    p.n == 1 && w.cols <= SHORT_ROW_COLS && isa >= Isa::Avx512 && !super::quant::llama_order()
}

/// Bytes of one weight row.
fn row_bytes(w: &QMatrix) -> usize {
    w.row_bytes()
}

/// Computes weight rows `rows` against all `p.n` activation rows on the calling thread:
/// `out[(r − rows.start)·n + i] = W[r] · x[i]`. Each weight row is read once.
pub fn matmul_rows(isa: Isa, w: &QMatrix, p: &Prepared, rows: Range<usize>, out: &mut [f32]) {
    debug_assert_eq!(out.len(), rows.len() * p.n);
    debug_assert_eq!(p.cols, w.cols);
    let isa = if isa.supported() { isa } else { Isa::Scalar };
    let rb = row_bytes(w);
    let data = &w.data[rows.start * rb..rows.end * rb];
    if !p.suits(w.ty) {
        return mismatched(out);
    }
    if let WeightType::X16(t) = w.ty {
        return x16_rows(isa, t, w, p, rows, out);
    }
    match (&p.act, w.ty) {
        #[cfg(target_arch = "x86_64")]
        (Act::Q8K(a), WeightType::Ggml(t))
            if p.n >= 2 && isa == Isa::Avx512Vnni && super::gemm::supported() && !super::quant::llama_order() =>
        {
            let g = super::gemm::GROUP;
            each_row_multi(data, rb, a, w.cols / 256, p.n, g, out, |row, a, o| super::gemm::dot(t, row, a, o));
        }
        #[cfg(target_arch = "x86_64")]
        (Act::Q8K(a), WeightType::Ggml(t)) if one_call_for_rows(isa, w, p) => {
            let vnni = isa == Isa::Avx512Vnni;
            // SAFETY: AVX-512 F/BW/VL (with AVX2/FMA/F16C, and VNNI when `vnni`) is what `isa`
            // says this CPU has.
            unsafe { super::avx512::dot_k_rows(t, data, rb, &a[..w.cols / 256], out, vnni) }
        }
        (Act::Q8K(a), WeightType::Ggml(t)) => {
            let f = simd::k_kernel(isa, t);
            each_row_multi(data, rb, a, w.cols / 256, p.n, simd::MAX_ACTS, out, |row, a, o| f(t, row, a, o));
        }
        #[cfg(target_arch = "x86_64")]
        (Act::Q8_0(a), WeightType::Ggml(t)) if one_call_for_rows(isa, w, p) => {
            // SAFETY: AVX-512 F/BW/VL (with AVX2/FMA/F16C) is what `isa` says this CPU has.
            unsafe { super::avx512::dot_s_rows(t, data, rb, &a[..w.cols / 32], out) }
        }
        (Act::Q8_0(a), WeightType::Ggml(t)) => {
            let f = simd::s_kernel(isa, t);
            each_row_multi(data, rb, a, w.cols / 32, p.n, simd::MAX_ACTS, out, |row, a, o| f(t, row, a, o));
        }
        (Act::F32(x), WeightType::Ggml(t)) => {
            let f = simd::f_kernel(isa, t);
            each_row(data, rb, x, w.cols, p.n, out, |row, x| f(t, row, x));
        }
        (Act::F32(x), WeightType::Fp8E4M3Block128) => fp8_rows(w, x, rows, p.n, out, simd::fp8_kernel(isa)),
        (Act::Bf16(x), WeightType::Fp8E4M3Block128) => fp8_rows(w, x, rows, p.n, out, simd::fp8_bf16_kernel(isa)),
        #[cfg(target_arch = "x86_64")]
        (Act::Amx(a), WeightType::Ggml(t)) => super::amx::matmul_rows(t, data, rb, a, out),
        #[cfg(target_arch = "x86_64")]
        (Act::AmxI8(a), WeightType::Ggml(_)) => super::amx_q4k::matmul_rows(data, rb, a, out),
        // Excluded by `suits` above (and repacked weights by the early return).
        (_, WeightType::Fp8E4M3Block128 | WeightType::X16(_)) | (Act::Bf16(_), WeightType::Ggml(_)) => mismatched(out),
        #[cfg(target_arch = "x86_64")]
        (Act::X16Tiles(_), WeightType::Ggml(_)) => mismatched(out),
    }
}

/// [`matmul_rows`] for weights of `t` repacked 16 rows at a time: whole groups with Q8_K (the
/// k-quants) or Q8_0 (the 32-weight block types) activations on the small-batch kernels
/// ([`super::x16`]), or with many rows on the tiles; anything else (f32 activations,
/// another ISA, llama.cpp-order mode, a range that splits a group) on the rows unpacked back
/// to the file's layout.
fn x16_rows(isa: Isa, t: GgmlType, w: &QMatrix, p: &Prepared, rows: Range<usize>, out: &mut [f32]) {
    use super::x16::{self, ROWS};
    let rb = row_bytes(w);
    let whole = rows.start.is_multiple_of(ROWS) && rows.end.is_multiple_of(ROWS);
    let kernels = whole && isa == Isa::Avx512Vnni && x16::supported() && !super::quant::llama_order();
    let data = &w.data[rows.start * rb..rows.end * rb];
    let (group, outs) = (ROWS * rb, ROWS * p.n);
    match &p.act {
        Act::Q8K(a) if kernels => {
            let acts: Vec<&[BlockQ8K]> = a.chunks_exact(w.cols / 256).take(p.n).collect();
            let each = data.chunks_exact(group).zip(out.chunks_exact_mut(outs));
            return each.for_each(|(g, o)| x16::dot(t, g, &acts, o));
        }
        Act::Q8_0(a) if kernels => {
            let acts: Vec<&[BlockQ8_0]> = a.chunks_exact(w.cols / 32).take(p.n).collect();
            let each = data.chunks_exact(group).zip(out.chunks_exact_mut(outs));
            return each.for_each(|(g, o)| x16::dot_small(t, g, &acts, o));
        }
        _ => {}
    }
    #[cfg(target_arch = "x86_64")]
    if let Act::X16Tiles(a) = &p.act {
        if whole {
            return x16::tiles::matmul_rows(t, data, w.cols, a, out);
        }
        let x = a.to_f32();
        let f = Prepared { n: p.n, cols: p.cols, act: Act::F32(&x) };
        return x16_rows(isa, t, w, &f, rows, out);
    }
    let (g0, g1) = (rows.start / ROWS * ROWS, rows.end.next_multiple_of(ROWS));
    let mut plain = vec![0u8; (g1 - g0) * rb];
    x16::unpack(t, &w.data[g0 * rb..g1 * rb], w.cols, &mut plain);
    let q = QMatrix { ty: WeightType::Ggml(t), rows: g1 - g0, cols: w.cols, data: &plain, block_scales: &[] };
    matmul_rows(isa, &q, p, rows.start - g0..rows.end - g0, out)
}

/// Rows up to this long (with one activation row) go through one kernel call for all rows.
#[cfg(target_arch = "x86_64")]
const SHORT_ROW_COLS: usize = 1024;

/// Activations quantized for another weight family (e.g. Q8_K for a Q8_0 matrix): a bug in
/// the caller. NaN makes it visible instead of a plausible wrong number.
fn mismatched(out: &mut [f32]) {
    debug_assert!(false, "activations prepared for a different weight type");
    out.fill(f32::NAN);
}

fn each_row<A>(
    data: &[u8],
    rb: usize,
    acts: &[A],
    per_row: usize,
    n: usize,
    out: &mut [f32],
    f: impl Fn(&[u8], &[A]) -> f32,
) {
    // Cache-blocked like the multi-row kernels: f32 activation rows are as long as the weight
    // rows (a router's 256 × 7168 f32 against a 256-token prompt streamed 7 MB of
    // activations from L3 per weight row without it).
    for_blocks(data.len() / rb.max(1), rb, n, F32_GROUP, out, |r, a, o| {
        let row = &data[r * rb..(r + 1) * rb];
        for (i, oi) in a.zip(o) {
            *oi = f(row, &acts[i * per_row..(i + 1) * per_row]);
        }
    });
}

/// f32 activation rows per cache block of [`each_row`].
const F32_GROUP: usize = 8;

/// Like [`each_row`] for kernels that take up to `group` activation rows per call, so each
/// weight block is unpacked once per group rather than once per activation row.
#[allow(clippy::too_many_arguments)]
fn each_row_multi<A>(
    data: &[u8],
    rb: usize,
    acts: &[A],
    per_row: usize,
    n: usize,
    group: usize,
    out: &mut [f32],
    f: impl Fn(&[u8], &[&[A]], &mut [f32]),
) {
    let rows: Vec<&[A]> = acts.chunks_exact(per_row).take(n).collect();
    for_blocks(data.len() / rb.max(1), rb, n, group, out, |r, a, o| f(&data[r * rb..(r + 1) * rb], &rows[a], o));
}

/// Visits every (weight row, group of at most `group` activation rows) pair of an
/// `n_rows × n` product once, as `visit(row, activation rows, their outputs)`, with `out`
/// row-major `n_rows × n`. With more activation rows than one group, cache blocking: a
/// block of weight rows and one group of activation rows both stay in L2 while the group
/// runs over the block; otherwise every weight row would stream all n activation rows
/// through the cache, and with all cores doing so the shared cache, not the arithmetic,
/// sets the pace.
fn for_blocks(
    n_rows: usize,
    row_bytes: usize,
    n: usize,
    group: usize,
    out: &mut [f32],
    mut visit: impl FnMut(usize, Range<usize>, &mut [f32]),
) {
    let block_rows = if n <= group { n_rows.max(1) } else { (BLOCK_WEIGHT_BYTES / row_bytes.max(1)).max(1) };
    for (b, ob) in out.chunks_mut(block_rows * n).enumerate() {
        for a0 in (0..n).step_by(group.max(1)) {
            let acts = a0..(a0 + group).min(n);
            for (k, o) in ob.chunks_exact_mut(n).enumerate() {
                visit(b * block_rows + k, acts.clone(), &mut o[acts.clone()]);
            }
        }
    }
}

/// Weight bytes per cache block of [`for_blocks`] (with one activation group, well inside a
/// 1–2 MB L2).
const BLOCK_WEIGHT_BYTES: usize = 192 * 1024;

/// FP8 rows `rows` · `n` activation rows (f32, or bf16 prepared by `fp8::prepare_bf16`) with
/// kernel `f`, up to [`simd::MAX_ACTS`] activation rows per call, cache-blocked as
/// [`for_blocks`] does.
fn fp8_rows<A>(w: &QMatrix, x: &[A], rows: Range<usize>, n: usize, out: &mut [f32], f: simd::Fp8RowFn<A>) {
    let cb = w.cols.div_ceil(128);
    let xs: Vec<&[A]> = x.chunks_exact(w.cols).take(n).collect();
    let mut scales = vec![0f32; cb];
    let mut group = usize::MAX;
    for_blocks(rows.len(), w.cols, n, simd::MAX_ACTS, out, |k, a, o| {
        let r = rows.start + k;
        if r / 128 != group {
            // This 128-row group's block scales.
            group = r / 128;
            let s = &w.block_scales[group * cb * 4..(group + 1) * cb * 4];
            for (d, c) in scales.iter_mut().zip(s.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        f(&w.data[r * w.cols..(r + 1) * w.cols], &scales, &xs[a], o);
    });
}

/// Below this many weight bytes a product runs on the calling thread (thread hand-off would
/// cost more than the work).
const PAR_MIN_BYTES: usize = 128 * 1024;

/// Runs all rows, split into one contiguous chunk per rayon thread; `yt` is rows × n.
fn drive(isa: Isa, w: &QMatrix, p: &Prepared, yt: &mut [f32]) {
    let n = p.n;
    let threads = rayon::current_num_threads();
    if threads <= 1 || w.rows < 2 || w.data.len() < PAR_MIN_BYTES {
        matmul_rows(isa, w, p, 0..w.rows, yt);
        return;
    }
    // Whole 16-row groups of repacked weights per thread.
    let align = if matches!(w.ty, WeightType::X16(_)) { super::x16::ROWS } else { 1 };
    let chunk = w.rows.div_ceil(threads).next_multiple_of(align);
    yt.par_chunks_mut(chunk * n).enumerate().for_each(|(c, out)| {
        let r0 = c * chunk;
        matmul_rows(isa, w, p, r0..r0 + out.len() / n, out);
    });
}

/// `y = W · x` with the best ISA.
pub fn matvec(w: &QMatrix, x: &[f32], y: &mut [f32]) {
    matvec_with(Isa::best(), w, x, y)
}

/// `y = W · x` with a chosen ISA (tests, benchmarks).
pub fn matvec_with(isa: Isa, w: &QMatrix, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), w.cols);
    debug_assert_eq!(y.len(), w.rows);
    let p = prepare(w.ty, w.cols, x, 1);
    drive(isa, w, &p, y);
}

/// `y[..] = W[rows] · x` on the calling thread (quantizes x itself; for several calls on the
/// same x, use [`prepare`] + [`matmul_rows`]).
pub fn matvec_rows(w: &QMatrix, x: &[f32], rows: Range<usize>, y: &mut [f32]) {
    let p = prepare(w.ty, w.cols, x, 1);
    matmul_rows(Isa::best(), w, &p, rows, y);
}

/// `Y = X · Wᵀ`: X is n × cols, Y is n × rows (row-major); W is read once for all n rows.
pub fn matmul(w: &QMatrix, x: &[f32], n: usize, y: &mut [f32]) {
    matmul_with(Isa::best(), w, x, n, y)
}

/// [`matmul`] with a chosen ISA.
pub fn matmul_with(isa: Isa, w: &QMatrix, x: &[f32], n: usize, y: &mut [f32]) {
    debug_assert_eq!(x.len(), n * w.cols);
    debug_assert_eq!(y.len(), n * w.rows);
    let p = prepare_for(isa, w.ty, w.cols, x, n, precision(), Split::Rayon);
    if n == 1 {
        drive(isa, w, &p, y);
        return;
    }
    let mut yt = vec![0f32; w.rows * n];
    drive(isa, w, &p, &mut yt);
    for (r, row) in yt.chunks_exact(n).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            y[i * w.rows + r] = v;
        }
    }
}

/// The whole matrix as f32 (rows × cols).
pub fn dequantize_matrix(w: &QMatrix) -> Vec<f32> {
    let mut out = vec![0f32; w.rows * w.cols];
    let rb = row_bytes(w);
    match w.ty {
        WeightType::Ggml(t) => {
            for (row, o) in w.data.chunks_exact(rb).zip(out.chunks_exact_mut(w.cols)) {
                super::dequant::dequantize_unchecked(t, row, o);
            }
        }
        WeightType::X16(t) => {
            let mut plain = vec![0u8; w.data.len()];
            super::x16::unpack(t, w.data, w.cols, &mut plain);
            return dequantize_matrix(&QMatrix { ty: WeightType::Ggml(t), data: &plain, ..*w });
        }
        WeightType::Fp8E4M3Block128 => {
            let cb = w.cols.div_ceil(128);
            for (r, o) in out.chunks_exact_mut(w.cols).enumerate() {
                for (c, v) in o.iter_mut().enumerate() {
                    let si = ((r / 128) * cb + c / 128) * 4;
                    let s = &w.block_scales[si..si + 4];
                    let s = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                    *v = super::fp::fp8_e4m3_to_f32(w.data[r * w.cols + c]) * s;
                }
            }
        }
    }
    out
}

/// The scalar kernels with the signatures the dispatch tables use.
pub(crate) mod reference {
    use super::*;
    use crate::dtype::GgmlType;

    pub fn k(t: GgmlType, row: &[u8], a: &[&[BlockQ8K]], out: &mut [f32]) {
        for (o, a) in out.iter_mut().zip(a) {
            *o = scalar::dot_k_row(t, row, a);
        }
    }
    pub fn s(t: GgmlType, row: &[u8], a: &[&[BlockQ8_0]], out: &mut [f32]) {
        for (o, a) in out.iter_mut().zip(a) {
            *o = scalar::dot_s_row(t, row, a);
        }
    }
    pub fn f(t: GgmlType, row: &[u8], x: &[f32]) -> f32 {
        scalar::dot_exact_row(t, row, x)
    }
    pub fn fp8(row: &[u8], scales: &[f32], xs: &[&[f32]], out: &mut [f32]) {
        for (o, x) in out.iter_mut().zip(xs) {
            *o = scalar::dot_fp8_row(row, scales, x);
        }
    }
    pub fn fp8_bf16(row: &[u8], scales: &[f32], xs: &[&[u16]], out: &mut [f32]) {
        for (o, x) in out.iter_mut().zip(xs) {
            *o = fp8::dot_row_ref(row, scales, x);
        }
    }
}
