//! FP8 e4m3 weights (128×128 block `scale_inv`) · BF16 activations, for Fast precision on
//! CPUs with AVX512_BF16: each 32 weight bytes become 32 bf16 with three integer instructions
//! (sign-extend, shift, and) and one `vdpbf16ps` multiplies and adds them with 32 activations
//! in f32. The activations take 2 bytes per weight byte in L1 (f32 took 4: a 7168-column row
//! was 28 KB next to the streamed weights in a 48 KB L1), prepared once per layer input.
//!
//! # Number formats and exponents
//!
//! e4m3 byte `s eeee mmm` (bias 7): `w = ±2^(E−7)·(1 + m/8)` for E ≥ 1, `±2^−6·m/8` for E = 0.
//! Sign-extended to 16 bits, shifted left by 4 and masked with `0x87F0`, the sign lands in
//! bf16 bit 15, `eeee` in the low four bits of the bf16 exponent (bias 127) and `mmm` in the
//! top three mantissa bits: the bf16 is `w_b = w·2^−120` exactly (2^(E−127) vs 2^(E−7)).
//! Normal e4m3 (|w| ≥ 2^−6) give bf16 in [2^−126, 448·2^−120]: all normal.
//!
//! Activations are prepared as `a = bf16(x·2^64)`: the scaling is exact, and rounding to nearest
//! even gives |a − x·2^64| ≤ 2^−8·|x·2^64| (bf16 has 8 significant bits; half an ulp is 2^−8
//! relative). A product is `w_b·a = w·x·2^−56`. `vdpbf16ps` treats subnormal inputs as zero and
//! flushes subnormal results (it ignores MXCSR), so products and sums must stay ≥ 2^−126: with
//! |w| ≥ 2^−6 a product `|w·x|·2^−56 ≥ 2^−126` for every |x| ≥ 2^−64; and |x| < 2^64 keeps `a`
//! finite and each product below 2^−111·2^128 = 2^17, block sums far from 2^128. Hidden states
//! (RMS-normed) and SwiGLU products are nowhere near either end of [2^−64, 2^64). Each
//! 128-column block sum in f32 is then multiplied by `scale_inv·2^56` ([`UNSCALE`]).
//!
//! e4m3 subnormals (E = 0, |w| ≤ 7·2^−9 < 2^−6) become bf16 subnormals, so count as zero.
//! DeepSeek's block scales map each block's largest |weight| to 448, so these are weights
//! below 2^−6/448 ≈ 3.5·10^−5 of the block maximum; dropping one errs by less than 2^−6, which
//! is below the rounding step of every weight ≥ 2^−3 (e4m3 steps are 1/8 of the binade), i.e.
//! far below the quantization error of the weights that matter. The NaN encodings
//! (`S.1111.111`) would read as ±480; they do not occur in checkpoints and cost no instruction.
//!
//! Error against f32 activations: at most `2^−8·Σ|w·x|` from the bf16 rounding, plus the
//! dropped subnormals and f32 summation (tests/`fp8_bf16_kernel_matches_f32_reference`).
//! [`dot_row_ref`] is the scalar model of the same arithmetic, for ISAs without the kernel.

use super::fp::{bf16_to_f32, f32_to_bf16, fp8_e4m3_to_f32};

/// 2^e as f32 (−126 ≤ e ≤ 127).
const fn pow2(e: i32) -> f32 {
    f32::from_bits(((127 + e) as u32) << 23)
}

/// log2 of the factor activations are scaled by before rounding to bf16.
pub const ACT_EXP: i32 = 64;
/// Activations are scaled by this (2^64) before rounding to bf16.
pub const ACT_SCALE: f32 = pow2(ACT_EXP);
/// Undoes the 2^−120 of the weight decoding and the 2^64 of the activations: 2^56.
pub const UNSCALE: f32 = pow2(120 - ACT_EXP);

/// Whether an e4m3 byte is a subnormal (exponent field 0, nonzero mantissa) or zero: the
/// bytes the kernel reads as 0.
#[inline]
pub fn is_subnormal(b: u8) -> bool {
    b & 0x78 == 0
}

/// bf16 bits of `x · 2^64`, rounded to nearest even (NaN is not expected).
#[inline]
pub fn act_bf16(x: f32) -> u16 {
    f32_to_bf16(x * ACT_SCALE)
}

/// Prepares `x` (any number of rows, row-major) as scaled bf16 activations.
pub fn prepare_bf16(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| act_bf16(v)).collect()
}

/// Scalar model of the BF16 kernel (used where no AVX512_BF16 kernel runs): FP8 row ·
/// prepared bf16 activations, `scales` one `scale_inv` per 128 columns. Like the kernel it
/// counts e4m3 subnormals as zero, so every ISA gives the same values up to f32 sum order.
pub fn dot_row_ref(row: &[u8], scales: &[f32], x: &[u16]) -> f32 {
    let unscale = pow2(-ACT_EXP);
    let mut total = 0f64;
    for ((b, xs), &s) in row.chunks(128).zip(x.chunks(128)).zip(scales) {
        let mut acc = [0f32; 8];
        for (i, (&q, &v)) in b.iter().zip(xs).enumerate() {
            let w = if is_subnormal(q) { 0.0 } else { fp8_e4m3_to_f32(q) };
            acc[i % 8] += w * (bf16_to_f32(v) * unscale);
        }
        total += (acc.iter().sum::<f32>() * s) as f64;
    }
    total as f32
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::super::unpack::dispatch_rows;
    use super::UNSCALE;

    /// 32 e4m3 bytes at `p` as 32 bf16 of value·2^−120 (module comment); `mask` selects the
    /// bytes read (the others are 0).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn weights(p: *const u8, mask: __mmask32) -> __m512bh {
        // SAFETY: the caller guarantees the selected bytes are readable; masked-off bytes are
        // not accessed.
        let v = _mm512_cvtepi8_epi16(unsafe { _mm256_maskz_loadu_epi8(mask, p as *const i8) });
        let h = _mm512_and_si512(_mm512_slli_epi16::<4>(v), _mm512_set1_epi16(0x87F0u16 as i16));
        // SAFETY: same size, plain bits.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(h) }
    }

    /// 32 bf16 activations at `p` (`mask` as in [`weights`]).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn acts(p: *const u16, mask: __mmask32) -> __m512bh {
        // SAFETY: as in `weights`.
        let v = unsafe { _mm512_maskz_loadu_epi16(mask, p as *const i16) };
        // SAFETY: same size, plain bits.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    /// FP8 row · up to 4 rows of prepared bf16 activations (`out[i] = row · xs[i]`), one
    /// `scale_inv` per 128 columns; each 32-weight group is decoded once for all rows.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn dot(row: &[u8], scales: &[f32], xs: &[&[u16]], out: &mut [f32]) {
        assert!((1..=4).contains(&xs.len()) && out.len() >= xs.len());
        assert!(xs.iter().all(|x| x.len() >= row.len()) && scales.len() >= row.len().div_ceil(128));
        // SAFETY (all arms): same features; lengths checked above; N matches xs.len().
        unsafe { dispatch_rows!(dot_n, xs.len(), (row, scales, xs, out)) }
    }

    /// # Safety
    /// As [`dot`], and `xs[i].len() ≥ row.len()`, `scales.len() ≥ ⌈row.len()/128⌉`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn dot_n<const N: usize>(row: &[u8], scales: &[f32], xs: &[&[u16]], out: &mut [f32]) {
        let cols = row.len();
        let pf = super::super::simd::prefetch_distance();
        let w = row.as_ptr();
        let x: [*const u16; N] = std::array::from_fn(|k| xs[k].as_ptr());
        let mut total = [_mm512_setzero_ps(); N];
        let full = cols / 128;
        for (blk, &s) in scales.iter().enumerate().take(cols.div_ceil(128)) {
            let c0 = 128 * blk;
            // Two accumulators per activation row (sub-blocks 0, 2 and 1, 3) halve the chain of
            // dependent `vdpbf16ps`; blocks are independent until the scaled add into `total`.
            let mut a = [[_mm512_setzero_ps(); N]; 2];
            if blk < full {
                if pf > 0 {
                    // The two cache lines of this block's weights, `pf` bytes ahead (as the
                    // quantized kernels: the loads alone keep too few misses in flight).
                    let p = w.wrapping_add(c0 + pf);
                    _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64) as *const i8);
                }
                for j in 0..4 {
                    let c = c0 + 32 * j;
                    // SAFETY: c + 32 ≤ 128·full ≤ cols ≤ every xs[k].len().
                    let wv = unsafe { weights(w.add(c), !0) };
                    for k in 0..N {
                        // SAFETY: as above.
                        let xv = unsafe { acts(x[k].add(c), !0) };
                        a[j & 1][k] = _mm512_dpbf16_ps(a[j & 1][k], wv, xv);
                    }
                }
            } else {
                // The last, partial block: masked loads read only the columns that exist.
                let mut c = c0;
                while c < cols {
                    let m = (cols - c).min(32);
                    let mask = (u64::MAX >> (64 - m)) as __mmask32;
                    // SAFETY: the mask selects columns c..c+m ≤ cols only.
                    let wv = unsafe { weights(w.add(c), mask) };
                    for k in 0..N {
                        // SAFETY: as above.
                        let xv = unsafe { acts(x[k].add(c), mask) };
                        a[0][k] = _mm512_dpbf16_ps(a[0][k], wv, xv);
                    }
                    c += 32;
                }
            }
            let sv = _mm512_set1_ps(s * UNSCALE);
            for k in 0..N {
                total[k] = _mm512_fmadd_ps(_mm512_add_ps(a[0][k], a[1][k]), sv, total[k]);
            }
        }
        for k in 0..N {
            out[k] = _mm512_reduce_add_ps(total[k]);
        }
    }
}
