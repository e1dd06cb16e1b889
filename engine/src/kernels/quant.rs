//! Activation quantization (the "Fast" path, as llama.cpp does it): x is quantized once per
//! call to 8-bit blocks that match the weight blocks, so dot products run on integers.

/// 32 activations for the Q4_0/Q5_0/Q8_0 family: `x[i] ≈ d·qs[i]`; `s = d·Σqs` serves the
/// types with an offset (Q4_1/Q5_1).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

/// 256 activations for the k-quants: `x[i] ≈ d·qs[i]`; `bsums[j]` = Σ qs[16j..16j+16]
/// (for the per-sub-block mins).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
    /// In [`llama_order`] mode, part of a product with ≥ [`TILED_MIN_ROWS`] activation rows:
    /// llama.cpp computes those (k-quant weights it does not repack) with its tiled kernel,
    /// whose summation order the Fast kernels then follow. Always false outside that mode.
    pub tiled: bool,
}

/// Activation rows from which llama.cpp's CPU backend multiplies k-quant weights with its
/// tiled kernel (`ggml_tiled_min_batch`).
pub const TILED_MIN_ROWS: usize = 8;

static LLAMA_ORDER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the Fast integer kernels sum in exactly llama.cpp's x86 order (off by default).
///
/// The activation quantization and the Q6_K kernel follow llama.cpp in any case (at no cost);
/// this mode also makes the AVX-512 Q4_0-family and Q4_K kernels sum as llama.cpp does — the
/// Q4_0 family in eight lanes with one fused multiply-add per block in block order
/// (`vec_dot_q*_0_q8_0`, tinyBLAS), Q4_K with one per block of its integer sum (the repacked
/// `gemv_q4_K_8x8_q8_K`; per 64 weights for four activation rows, `gemm_q4_K_8x8_q8_K`), Q6_K
/// in products of ≥ [`TILED_MIN_ROWS`] rows as the tiled kernel — so that results are
/// bit-identical to llama.cpp's CPU backend. It is slower (longer dependency chains, more
/// horizontal sums: ~5–10 % per kernel at one activation row, up to ~45 % for Q4_K at four),
/// hence a mode: the Gemma 3 test against llama.cpp's greedy continuations selects it.
pub fn set_llama_order(on: bool) {
    LLAMA_ORDER.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// See [`set_llama_order`].
#[inline]
pub fn llama_order() -> bool {
    LLAMA_ORDER.load(std::sync::atomic::Ordering::Relaxed)
}

/// Symmetric scale for a block: values map to −127..=127 (never −128, which keeps the
/// sign tricks of the SIMD kernels exact). Returns (d, id) with id = 127/amax (or 0).
///
/// The rounding follows llama.cpp exactly, so the Fast path reproduces its numbers: Q8_0
/// stores d = amax/127 rounded to f16 (the block format holds an f16) and quantizes with
/// 127/amax; Q8_K quantizes with 127/amax and stores d = 1/id.
fn scale_for(x: &[f32], k_quant: bool) -> (f32, f32) {
    let amax = amax(x);
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    let d = if k_quant {
        if id > 0.0 {
            1.0 / id
        } else {
            0.0
        }
    } else {
        half::f16::from_f32(amax / 127.0).to_f32()
    };
    (d, id)
}

fn amax(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx2_supported() && x.chunks_exact(8).remainder().is_empty() {
        // SAFETY: AVX2/FMA/F16C detected.
        return unsafe { super::avx2::amax(x) };
    }
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// Round half to even, as the SIMD conversion does, so every ISA quantizes identically.
#[inline]
fn q8(v: f32, id: f32) -> i8 {
    (v * id).round_ties_even().clamp(-127.0, 127.0) as i8
}

/// `qs[i] = round(c[i]·id)` (AVX2 when present; bit-identical to the scalar loop).
fn quantize_with(c: &[f32], id: f32, qs: &mut [i8]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx2_supported() && c.chunks_exact(32).remainder().is_empty() {
        // SAFETY: AVX2/FMA/F16C detected; lengths are whole 32-value chunks.
        return unsafe { super::avx2::quantize_with(c, id, qs) };
    }
    quantize_with_scalar(c, id, qs)
}

fn quantize_with_scalar(c: &[f32], id: f32, qs: &mut [i8]) {
    for (q, &v) in qs.iter_mut().zip(c) {
        *q = q8(v, id);
    }
}

/// Quantizes `x` (a multiple of 32 long) to Q8_0 blocks.
pub fn quantize_q8_0(x: &[f32]) -> Vec<BlockQ8_0> {
    x.chunks_exact(32)
        .map(|c| {
            let (d, id) = scale_for(c, false);
            let mut qs = [0i8; 32];
            quantize_with(c, id, &mut qs);
            let sum: i32 = qs.iter().map(|&q| q as i32).sum();
            BlockQ8_0 { d, s: d * sum as f32, qs }
        })
        .collect()
}

/// Quantizes `x` (a multiple of 256 long) to Q8_K blocks.
pub fn quantize_q8_k(x: &[f32]) -> Vec<BlockQ8K> {
    quantize_q8_k_rows(x, 1)
}

/// As [`quantize_q8_k`] for `x` holding `rows` activation rows of one product (which
/// decides the summation order the kernels reproduce, see [`BlockQ8K::tiled`]).
pub fn quantize_q8_k_rows(x: &[f32], rows: usize) -> Vec<BlockQ8K> {
    let tiled = rows >= TILED_MIN_ROWS && llama_order();
    x.chunks_exact(256)
        .map(|c| {
            let (d, id) = scale_for(c, true);
            let mut qs = [0i8; 256];
            quantize_with(c, id, &mut qs);
            let mut bsums = [0i16; 16];
            for (s, g) in bsums.iter_mut().zip(qs.chunks_exact(16)) {
                *s = g.iter().map(|&q| q as i16).sum();
            }
            BlockQ8K { d, qs, bsums, tiled }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_k_round_trip_error_is_half_a_step() {
        let x: Vec<f32> = (0..512).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        let q = quantize_q8_k(&x);
        assert_eq!(q.len(), 2);
        for (b, c) in q.iter().zip(x.chunks_exact(256)) {
            for (i, &v) in c.iter().enumerate() {
                assert!((b.qs[i] as f32 * b.d - v).abs() <= b.d * 0.5 + 1e-6);
            }
            for j in 0..16 {
                let s: i32 = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
                assert_eq!(b.bsums[j] as i32, s);
            }
            assert!(b.qs.iter().any(|&q| q.abs() == 127));
        }
    }

    #[test]
    fn simd_quantization_is_bit_identical_to_scalar() {
        let x: Vec<f32> = (0..4096).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.0037).collect();
        for c in x.chunks_exact(256) {
            let (_, id) = scale_for(c, true);
            let (mut a, mut b) = ([0i8; 256], [0i8; 256]);
            quantize_with(c, id, &mut a);
            quantize_with_scalar(c, id, &mut b);
            assert_eq!(a, b);
            assert_eq!(amax(c), c.iter().fold(0f32, |m, v| m.max(v.abs())));
        }
        // Exact halves round to even on every path.
        let mut c = [0f32; 32];
        c[0] = 127.0;
        c[1] = 2.5;
        c[2] = -3.5;
        let mut q = [0i8; 32];
        quantize_with(&c, 1.0, &mut q);
        assert_eq!(&q[..3], &[127, 2, -4]);
    }

    #[test]
    fn zeros_quantize_to_zero() {
        let q = quantize_q8_0(&[0.0; 64]);
        assert!(q.iter().all(|b| b.d == 0.0 && b.s == 0.0 && b.qs.iter().all(|&v| v == 0)));
    }
}
