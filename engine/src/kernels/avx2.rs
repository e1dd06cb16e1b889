//! AVX2 + FMA + F16C row kernels. Every function here is `unsafe` because it must only run on
//! a CPU with those features; `simd.rs` hands them out only after run-time detection.
//!
//! k-quants share one skeleton: unpack a 256-weight block into eight 32-byte vectors of
//! unsigned quants, multiply them with the Q8_K activations (`maddubs`: u8 × i8 → i16 pairs),
//! weight each 16-group by its scale (`madd` → i32) and fold the per-group offsets (mins, or
//! the implicit −32/−4 of Q6_K/Q3_K) in through the activation block sums.

use std::arch::x86_64::*;

use super::blocks::{k4_scale_min_bytes, q3k_scale_bytes};
use super::quant::{BlockQ8K, BlockQ8_0};
use super::unpack::{dispatch, ty, unpack_fns};
use crate::dtype::GgmlType;

/// Per-block scales: the 16 group scales as i8 bytes, the 16 group offsets as i16 (mins, or
/// the implicit 32·scale / 4·scale of Q6_K / Q3_K), and the two f32 factors.
pub(crate) struct KScales {
    pub sc8: __m128i,
    pub mn: __m256i,
    pub d: f32,
    pub dmin: f32,
}

unpack_fns!("avx2,fma,f16c");

/// Bytes with bit `bit` set in `v` become `val`, others 0 (a per-byte bit test).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bit_to(v: __m256i, bit: u32, val: i8) -> __m256i {
    let m = _mm256_set1_epi8((1u8 << bit) as i8);
    _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, m), m), _mm256_set1_epi8(val))
}

/// The 32 bits of a u32 as 32 bytes: byte i = `val` if bit i is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bits_to_bytes(bits: u32, val: i8) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    #[rustfmt::skip]
    let shuf = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let m = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let x = _mm256_and_si256(_mm256_shuffle_epi8(v, shuf), m);
    _mm256_and_si256(_mm256_cmpeq_epi8(x, m), _mm256_set1_epi8(val))
}

/// k-quant row · up to 4 rows of Q8_K activations: each block is unpacked once and used for
/// every activation row (`out[i]` = row · `acts[i]`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `t` must be a k-quant type; 1 ≤ acts.len() ≤ 4.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_k(t: GgmlType, row: &[u8], acts: &[&[BlockQ8K]], out: &mut [f32]) {
    // SAFETY (all arms): same features; N matches acts.len() (1..=4 checked by the caller).
    unsafe { dispatch!(dot_k_n, t, acts.len(), [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K], (row, acts, out)) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_k_n<const T: u32, const N: usize>(row: &[u8], acts: &[&[BlockQ8K]], out: &mut [f32]) {
    let t = ty(T);
    let pf = super::simd::prefetch_distance();
    let mut acc = [_mm256_setzero_ps(); N];
    for (k, b) in row.chunks_exact(t.type_size()).enumerate() {
        prefetch_block(b, pf);
        let s = k_scales::<T>(b);
        let ch = k_chunks::<T>(b);
        for i in 0..N {
            let a = &acts[i][k];
            let mut isum = _mm256_setzero_si256();
            for (c, &q) in ch.iter().enumerate() {
                let y = load32(as_bytes(&a.qs[32 * c..32 * c + 32]));
                let p = _mm256_maddubs_epi16(q, y);
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, chunk_scales(s.sc8, c)));
            }
            let msum = _mm256_madd_epi16(load32(as_bytes_i16(&a.bsums)), s.mn);
            acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(s.d * a.d), _mm256_cvtepi32_ps(isum), acc[i]);
            acc[i] = _mm256_fnmadd_ps(_mm256_set1_ps(s.dmin * a.d), _mm256_cvtepi32_ps(msum), acc[i]);
        }
    }
    for i in 0..N {
        out[i] = hsum256(acc[i]);
    }
}

pub(crate) fn as_bytes(v: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment; every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len()) }
}

pub(crate) fn as_bytes_i16(v: &[i16]) -> &[u8] {
    // SAFETY: any initialized i16 memory is valid as bytes; length scaled by size.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 2) }
}

/// Q4_0-family row · up to 4 rows of Q8_0 activations (`out[i]` = row · `acts[i]`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `t` must be a Q4_0-family type;
/// 1 ≤ acts.len() ≤ 4.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_s(t: GgmlType, row: &[u8], acts: &[&[BlockQ8_0]], out: &mut [f32]) {
    out[..acts.len()].fill(0.0);
    // SAFETY (all arms): same features; N matches acts.len() (1..=4 checked by the caller).
    unsafe { dispatch!(dot_s_n, t, acts.len(), [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0], (row, acts, 0, out)) }
}

/// As [`dot_s`] for the blocks of `row` starting at block `first` of the activations; adds
/// to `out` (the AVX-512 kernel finishes odd block counts with it).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_s_n<const T: u32, const N: usize>(
    row: &[u8],
    acts: &[&[BlockQ8_0]],
    first: usize,
    out: &mut [f32],
) {
    let mut acc = [_mm256_setzero_ps(); N];
    // SAFETY: same CPU features as this function.
    let msum = unsafe { dot_s_acc::<T, N>(row, acts, first, &mut acc) };
    for i in 0..N {
        out[i] += hsum256(acc[i]) + msum[i];
    }
}

/// The block loop of [`dot_s_n`]: adds each block's scaled integer dot product to `acc`
/// (eight lanes, one fused multiply-add per block, in block order: ggml's order) and returns
/// the offset terms (Q4_1/Q5_1) separately.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_s_acc<const T: u32, const N: usize>(
    row: &[u8],
    acts: &[&[BlockQ8_0]],
    first: usize,
    acc: &mut [__m256; N],
) -> [f32; N] {
    let t = ty(T);
    let offset = matches!(t, GgmlType::Q4_1 | GgmlType::Q5_1);
    let pf = super::simd::prefetch_distance();
    let ones = _mm256_set1_epi16(1);
    let mut msum = [0f32; N];
    for (k, b) in row.chunks_exact(t.type_size()).enumerate() {
        prefetch_block(b, pf);
        let q = s_quants::<T>(b);
        let (aq, dw) = (_mm256_sign_epi8(q, q), f16c_at(b, 0));
        let m = if offset { f16c_at(b, 2) } else { 0.0 };
        for i in 0..N {
            let a = &acts[i][first + k];
            let y = load32(as_bytes(&a.qs));
            let p = if offset {
                msum[i] += m * a.s;
                _mm256_maddubs_epi16(q, y)
            } else {
                _mm256_maddubs_epi16(aq, _mm256_sign_epi8(y, q))
            };
            let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
            acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a.d), s, acc[i]);
        }
    }
    msum
}

/// Eight weights of a float row as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load8_f(t: GgmlType, b: &[u8]) -> __m256 {
    match t {
        GgmlType::F32 => {
            assert!(b.len() >= 32);
            // SAFETY: 32 readable bytes; unaligned load.
            unsafe { _mm256_loadu_ps(b.as_ptr() as *const f32) }
        }
        GgmlType::F16 => _mm256_cvtph_ps(load16(b)),
        _ => _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load16(b)), 16)), // BF16
    }
}

/// F32/F16/BF16 row · f32 activations (other types: scalar exact path).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `t` must be F32, F16 or BF16.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_float(t: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    let es = t.type_size();
    let n = x.len().min(row.len() / es);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            let j = i + 8 * k;
            let w = load8_f(t, &row[j * es..]);
            // SAFETY: j + 8 <= n <= x.len().
            let xv = unsafe { _mm256_loadu_ps(x.as_ptr().add(j)) };
            *a = _mm256_fmadd_ps(w, xv, *a);
        }
        i += 32;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    hsum256(v) + super::scalar::dot_exact_row(t, &row[i * es..n * es], &x[i..n])
}

/// Eight e4m3 bytes as f32 divided by 256 (moved into an f16 exponent, see fp.rs).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fp8x8(b: &[u8]) -> __m256 {
    assert!(b.len() >= 8);
    // SAFETY: 8 readable bytes.
    let v = _mm_cvtepi8_epi16(unsafe { _mm_loadl_epi64(b.as_ptr() as *const __m128i) });
    // Sign-extended, shifted by 7: exponent and mantissa land in f16 bits 7..13 and the
    // sign (copied into every high bit) in bit 15; bit 14 must be cleared.
    _mm256_cvtph_ps(_mm_and_si128(_mm_slli_epi16(v, 7), _mm_set1_epi16(0xBF80u16 as i16)))
}

/// FP8 e4m3 row · f32 activations with one scale per 128 columns.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_fp8(row: &[u8], scales: &[f32], x: &[f32]) -> f32 {
    let pf = super::simd::prefetch_distance();
    let mut total = _mm256_setzero_ps();
    let mut tail = 0f32;
    for ((b, xs), &s) in row.chunks(128).zip(x.chunks(128)).zip(scales) {
        prefetch_block(b, pf);
        let n = b.len().min(xs.len());
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n <= xs.len().
            let (x0, x1) = unsafe { (_mm256_loadu_ps(xs.as_ptr().add(i)), _mm256_loadu_ps(xs.as_ptr().add(i + 8))) };
            a0 = _mm256_fmadd_ps(fp8x8(&b[i..]), x0, a0);
            a1 = _mm256_fmadd_ps(fp8x8(&b[i + 8..]), x1, a1);
            i += 16;
        }
        total = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), _mm256_set1_ps(s * 256.0), total);
        let rest: f32 = b[i..n].iter().zip(&xs[i..n]).map(|(&q, &v)| super::fp::fp8_e4m3_to_f32(q) * v).sum();
        tail += rest * s;
    }
    hsum256(total) + tail
}

/// max |x[i]| (x a multiple of 8 long).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn amax(x: &[f32]) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for c in x.chunks_exact(8) {
        // SAFETY: 8 readable floats.
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, unsafe { _mm256_loadu_ps(c.as_ptr()) }));
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    _mm_cvtss_f32(_mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1)))
}

/// `out[i] = round(x[i]·id)` (round half to even, what `cvtps2dq` does in the default
/// rounding mode; |x·id| ≤ 127.5 by construction of id, so no clamping is needed).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_with(x: &[f32], id: f32, out: &mut [i8]) {
    let idv = _mm256_set1_ps(id);
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (c, o) in x.chunks_exact(32).zip(out.chunks_exact_mut(32)) {
        // SAFETY: 32 readable floats in c, 32 writable bytes in o.
        unsafe {
            let mut q = [_mm256_setzero_si256(); 4];
            for (k, qk) in q.iter_mut().enumerate() {
                *qk = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(c.as_ptr().add(8 * k)), idv));
            }
            let p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, _mm256_permutevar8x32_epi32(p, perm));
        }
    }
}
