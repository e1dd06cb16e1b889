//! AVX-512 (F/BW/VL) row kernels. The block unpacking is shared with the AVX2 code (it runs
//! on 32-byte halves); the multiply-accumulate work runs on 64-byte vectors, two 32-weight
//! chunks (or two Q8_0 blocks) at a time.

use std::arch::x86_64::*;

use super::avx2::{self, as_bytes, as_bytes_i16, KScales};
use super::blocks::{k4_scale_min_bytes, q3k_scale_bytes};
use super::unpack::{dispatch, dispatch_rows, dispatch_type, ty, unpack_fns};

unpack_fns!("avx512f,avx512bw,avx512vl,avx2,fma,f16c");

/// Bytes with bit `bit` set in `v` become `val`, others 0 (a mask-register bit test).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(dead_code)] // needed by the shared k_chunks, which k_chunks512 replaces here
fn bit_to(v: __m256i, bit: u32, val: i8) -> __m256i {
    let k = _mm256_test_epi8_mask(v, _mm256_set1_epi8((1u8 << bit) as i8));
    _mm256_maskz_mov_epi8(k, _mm256_set1_epi8(val))
}

/// The 32 bits of a u32 as 32 bytes: byte i = `val` if bit i is set, else 0.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn bits_to_bytes(bits: u32, val: i8) -> __m256i {
    _mm256_maskz_mov_epi8(bits, _mm256_set1_epi8(val))
}
use super::quant::{BlockQ8K, BlockQ8_0};
use crate::dtype::GgmlType;

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn load64(b: &[u8]) -> __m512i {
    assert!(b.len() >= 64);
    // SAFETY: at least 64 readable bytes (checked above); unaligned load.
    unsafe { _mm512_loadu_si512(b.as_ptr() as *const _) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
}

/// `a` in the low 256 bits, `b` in the high 256 bits (16-bit lanes).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn halves16(a: i16, b: i16) -> __m512i {
    _mm512_inserti64x4(_mm512_set1_epi16(a), _mm256_set1_epi16(b), 1)
}

/// `a` in the low 256 bits, `b` in the high 256 bits (bytes).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn halves8(a: u8, b: u8) -> __m512i {
    _mm512_inserti64x4(_mm512_set1_epi8(a as i8), _mm256_set1_epi8(b as i8), 1)
}

/// 32 bytes at `b`, in both 256-bit halves.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn bcast32(b: &[u8]) -> __m512i {
    _mm512_broadcast_i64x4(load32(b))
}

/// Bytes with the bit of `bits` (per byte) set in `v` become `val`, others 0.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn bits512(v: __m512i, bits: __m512i, val: i8) -> __m512i {
    _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(v, bits), _mm512_set1_epi8(val))
}

/// The 256 unsigned quants of a k-quant block as four 64-byte vectors, in weight order.
/// Each 64-weight chunk is two 32-weight halves that share their source bytes, so the
/// source is broadcast to both halves and shifted by a per-half count.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn k_chunks512<const T: u32>(b: &[u8]) -> [__m512i; 4] {
    let t = ty(T);
    let m4 = _mm512_set1_epi8(0xF);
    let m3 = _mm512_set1_epi8(3);
    let mut q = [_mm512_setzero_si512(); 4];
    match t {
        GgmlType::Q4_K => {
            for (c, qc) in q.iter_mut().enumerate() {
                *qc = _mm512_and_si512(_mm512_srlv_epi16(bcast32(&b[16 + 32 * c..]), halves16(0, 4)), m4);
            }
        }
        GgmlType::Q5_K => {
            let qh = bcast32(&b[16..48]);
            for (c, qc) in q.iter_mut().enumerate() {
                let low = _mm512_and_si512(_mm512_srlv_epi16(bcast32(&b[48 + 32 * c..]), halves16(0, 4)), m4);
                *qc = _mm512_or_si512(low, bits512(qh, halves8(1 << (2 * c), 2 << (2 * c)), 16));
            }
        }
        GgmlType::Q6_K => {
            let m30 = _mm512_set1_epi8(0x30);
            for n in 0..2 {
                let ql = load64(&b[64 * n..]);
                let qh = bcast32(&b[128 + 32 * n..]);
                let h0 = _mm512_and_si512(_mm512_sllv_epi16(qh, halves16(4, 2)), m30);
                let h1 = _mm512_and_si512(_mm512_srlv_epi16(qh, halves16(0, 2)), m30);
                q[2 * n] = _mm512_or_si512(_mm512_and_si512(ql, m4), h0);
                q[2 * n + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), h1);
            }
        }
        GgmlType::Q3_K => {
            let hm = bcast32(&b[0..32]);
            for (c, qc) in q.iter_mut().enumerate() {
                let (n, j) = (c / 2, 2 * (c % 2));
                let shift = halves16(2 * j as i16, 2 * j as i16 + 2);
                let low = _mm512_and_si512(_mm512_srlv_epi16(bcast32(&b[32 + 32 * n..]), shift), m3);
                *qc = _mm512_or_si512(low, bits512(hm, halves8(1 << (4 * n + j), 2 << (4 * n + j)), 4));
            }
        }
        _ => {
            // Q2_K
            for (c, qc) in q.iter_mut().enumerate() {
                let (n, j) = (c / 2, 2 * (c % 2));
                let shift = halves16(2 * j as i16, 2 * j as i16 + 2);
                *qc = _mm512_and_si512(_mm512_srlv_epi16(bcast32(&b[16 + 32 * n..]), shift), m3);
            }
        }
    }
    q
}

/// A k-quant block unpacked for the 512-bit kernels: its scales, its quants as four 64-weight
/// chunks, and each chunk's sub-block scales spread over the chunk's i16 pair lanes (`idx0`
/// = [`SCALE_IDX`] loaded).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn k_block512<const T: u32>(b: &[u8], idx0: __m512i) -> (KScales, [__m512i; 4], [__m512i; 4]) {
    let s = k_scales::<T>(b);
    let sc = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(s.sc8));
    let q = k_chunks512::<T>(b);
    // (Plain loops, not closures: closures would not inherit the target features.)
    let mut scv = [_mm512_setzero_si512(); 4];
    for (c, v) in scv.iter_mut().enumerate() {
        *v = _mm512_permutexvar_epi16(_mm512_add_epi16(idx0, _mm512_set1_epi16(4 * c as i16)), sc);
    }
    (s, q, scv)
}

/// Lane i of the result = lane `base + i/8` of the 16 group scales (4 groups of 8 i16 lanes).
pub(super) const SCALE_IDX: [i16; 32] =
    [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3];

/// k-quant row · up to 4 rows of Q8_K activations (block unpacked once for all of them).
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL, AVX2, FMA and F16C (and VNNI if `vnni`); `t` must
/// be a k-quant type; 1 ≤ acts.len() ≤ 4.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dot_k(t: GgmlType, row: &[u8], acts: &[&[BlockQ8K]], out: &mut [f32], vnni: bool) {
    // SAFETY (all arms): same features (plus VNNI when the caller says it was detected); N
    // matches acts.len() (1..=4 checked by the caller).
    unsafe {
        match (vnni, super::quant::llama_order()) {
            (true, false) => dispatch!(dot_k_n_vnni_f, t, acts.len(), [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K], (row, acts, out)),
            (true, true) => dispatch!(dot_k_n_vnni_x, t, acts.len(), [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K], (row, acts, out)),
            (false, false) => dispatch!(dot_k_n_f, t, acts.len(), [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K], (row, acts, out)),
            (false, true) => dispatch!(dot_k_n_x, t, acts.len(), [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K], (row, acts, out)),
        }
    }
}

/// Defines a k-quant kernel `$name::<T, N>` for `$features`, with `$mac(isum, p, scales)` as
/// the multiply-accumulate of the i16 pair sums (`madd` + `add`, or VNNI's fused `dpwssd`).
/// `$fast`/`$exact` are the kernel without/with [`super::quant::llama_order`].
macro_rules! k_kernel {
    ($name:ident, $fast:ident, $exact:ident, $features:literal, $mac:ident) => {
        #[target_feature(enable = $features)]
        unsafe fn $fast<const T: u32, const N: usize>(row: &[u8], acts: &[&[BlockQ8K]], out: &mut [f32]) {
            // SAFETY: same features.
            unsafe { $name::<T, N, false>(row, acts, out) }
        }

        #[target_feature(enable = $features)]
        unsafe fn $exact<const T: u32, const N: usize>(row: &[u8], acts: &[&[BlockQ8K]], out: &mut [f32]) {
            // SAFETY: same features.
            unsafe { $name::<T, N, true>(row, acts, out) }
        }

        #[target_feature(enable = $features)]
        unsafe fn $name<const T: u32, const N: usize, const E: bool>(
            row: &[u8],
            acts: &[&[BlockQ8K]],
            out: &mut [f32],
        ) {
            let t = ty(T);
            let pf = super::simd::prefetch_distance();
            let idx0 = load64(as_bytes_i16(&SCALE_IDX));
            let mut acc = [_mm512_setzero_ps(); N];
            let mut accm = [_mm256_setzero_ps(); N];
            // Q6_K sums as llama.cpp's `vec_dot_q6_K_q8_K` (eight i32 lanes, the −32 offset
            // subtracted as integers, one fused multiply-add per block: no slower than the
            // generic order). With E (llama.cpp's order, see `quant::set_llama_order`) Q4_K
            // sums as its repacked `gemv_q4_K_8x8_q8_K`, one f32 fused multiply-add per block
            // of the block's whole integer sum (and one for the mins, subtracted at the end),
            // or, for four activation rows, as `gemm_q4_K_8x8_q8_K` (per 64 weights); Q6_K in
            // products of ≥ 8 activation rows as its tiled kernel.
            let mut acc1 = [0f32; N];
            let mut accm1 = [0f32; N];
            let (mut acc4, mut accm4) = (_mm_setzero_ps(), _mm_setzero_ps());
            let mut acc8 = [_mm256_setzero_ps(); N];
            for (k, b) in row.chunks_exact(t.type_size()).enumerate() {
                prefetch_block(b, pf);
                let (s, q, scv) = k_block512::<T>(b, idx0);
                if E && t == GgmlType::Q4_K && N == 4 {
                    // Four activation rows: llama.cpp's `gemm_q4_K_8x8_q8_K`, one fused
                    // multiply-add per 64 weights (two sub-blocks), the four rows side by side.
                    let (mut sums, mut mins) = ([_mm_setzero_si128(); 4], [_mm_setzero_si128(); 4]);
                    for i in 0..4 {
                        let a = &acts[i][k];
                        let mut p = [_mm512_setzero_si512(); 4];
                        for (c, pc) in p.iter_mut().enumerate() {
                            let y = load64(as_bytes(&a.qs[64 * c..64 * c + 64]));
                            *pc = $mac(_mm512_setzero_si512(), _mm512_maddubs_epi16(q[c], y), scv[c]);
                        }
                        sums[i] = hsum4_epi32(p);
                        let m = _mm256_madd_epi16(load32(as_bytes_i16(&a.bsums)), s.mn);
                        mins[i] = _mm_hadd_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256::<1>(m));
                    }
                    let (sums, mins) = (transpose4_epi32(sums), transpose4_epi32(mins));
                    let ad = _mm_setr_ps(acts[0][k].d, acts[1 % N][k].d, acts[2 % N][k].d, acts[3 % N][k].d);
                    let (dd, dm) = (_mm_mul_ps(_mm_set1_ps(s.d), ad), _mm_mul_ps(_mm_set1_ps(s.dmin), ad));
                    for c in 0..4 {
                        acc4 = _mm_fmadd_ps(_mm_cvtepi32_ps(sums[c]), dd, acc4);
                        accm4 = _mm_fmadd_ps(_mm_cvtepi32_ps(mins[c]), dm, accm4);
                    }
                    continue;
                }
                for i in 0..N {
                    let a = &acts[i][k];
                    let mut isum = _mm512_setzero_si512();
                    for c in 0..4 {
                        let y = load64(as_bytes(&a.qs[64 * c..64 * c + 64]));
                        isum = $mac(isum, _mm512_maddubs_epi16(q[c], y), scv[c]);
                    }
                    let msum = _mm256_madd_epi16(load32(as_bytes_i16(&a.bsums)), s.mn);
                    match t {
                        GgmlType::Q4_K if E => {
                            let (is, ms) = sum_pair(isum, msum);
                            acc1[i] = is.mul_add(s.d * a.d, acc1[i]);
                            accm1[i] = ms.mul_add(s.dmin * a.d, accm1[i]);
                        }
                        GgmlType::Q6_K => {
                            let hi = _mm512_extracti64x4_epi64::<1>(isum);
                            let i8 = _mm256_sub_epi32(_mm256_add_epi32(_mm512_castsi512_si256(isum), hi), msum);
                            if E && a.tiled {
                                // llama.cpp's tiled kernel: (block sum · d) · d_act, summed.
                                let r = hsum256_epi32(i8) as f32 * s.d;
                                acc1[i] = r.mul_add(a.d, acc1[i]);
                            } else {
                                acc8[i] = _mm256_fmadd_ps(_mm256_set1_ps(s.d * a.d), _mm256_cvtepi32_ps(i8), acc8[i]);
                            }
                        }
                        _ => {
                            acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(s.d * a.d), _mm512_cvtepi32_ps(isum), acc[i]);
                            accm[i] = _mm256_fmadd_ps(_mm256_set1_ps(s.dmin * a.d), _mm256_cvtepi32_ps(msum), accm[i]);
                        }
                    }
                }
            }
            if E && t == GgmlType::Q4_K && N == 4 {
                let mut r = [0f32; 4];
                _mm_storeu_ps(r.as_mut_ptr(), _mm_sub_ps(acc4, accm4));
                out[..N].copy_from_slice(&r[..N]);
                return;
            }
            for i in 0..N {
                out[i] = match t {
                    GgmlType::Q4_K if E => acc1[i] - accm1[i],
                    GgmlType::Q6_K if E && acts[i].first().is_some_and(|a| a.tiled) => acc1[i],
                    GgmlType::Q6_K => hsum256(acc8[i]),
                    _ => _mm512_reduce_add_ps(acc[i]) - hsum256(accm[i]),
                };
            }
        }
    };
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn mac_plain(acc: __m512i, p: __m512i, s: __m512i) -> __m512i {
    _mm512_add_epi32(acc, _mm512_madd_epi16(p, s))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn mac_vnni(acc: __m512i, p: __m512i, s: __m512i) -> __m512i {
    _mm512_dpwssd_epi32(acc, p, s)
}

/// The sums of the 16 i32 lanes of each of four vectors (exact).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn hsum4_epi32(p: [__m512i; 4]) -> __m128i {
    let a = _mm512_add_epi32(_mm512_unpacklo_epi32(p[0], p[1]), _mm512_unpackhi_epi32(p[0], p[1]));
    let b = _mm512_add_epi32(_mm512_unpacklo_epi32(p[2], p[3]), _mm512_unpackhi_epi32(p[2], p[3]));
    let c = _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
    let h = _mm256_add_epi32(_mm512_castsi512_si256(c), _mm512_extracti64x4_epi64::<1>(c));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

/// Rows of a 4×4 i32 matrix to columns.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn transpose4_epi32(r: [__m128i; 4]) -> [__m128i; 4] {
    let (t0, t1) = (_mm_unpacklo_epi32(r[0], r[1]), _mm_unpacklo_epi32(r[2], r[3]));
    let (t2, t3) = (_mm_unpackhi_epi32(r[0], r[1]), _mm_unpackhi_epi32(r[2], r[3]));
    [_mm_unpacklo_epi64(t0, t1), _mm_unpackhi_epi64(t0, t1), _mm_unpacklo_epi64(t2, t3), _mm_unpackhi_epi64(t2, t3)]
}

/// (Σ lanes of `a`, Σ lanes of `b`) as f32 (the exact integer sums, rounded once).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn sum_pair(a: __m512i, b: __m256i) -> (f32, f32) {
    let fold = _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64::<1>(a));
    let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(fold), b);
    let v = _mm512_add_epi32(v, _mm512_shuffle_epi32::<0x4E>(v));
    let v = _mm512_add_epi32(v, _mm512_shuffle_epi32::<0xB1>(v));
    let v = _mm512_add_epi32(v, _mm512_shuffle_i32x4::<0xB1>(v, v));
    let f = _mm512_cvtepi32_ps(v);
    (_mm512_cvtss_f32(f), _mm_cvtss_f32(_mm512_extractf32x4_ps::<2>(f)))
}

/// Sum of the eight i32 lanes (exact).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn hsum256_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<1>(s)))
}

k_kernel!(dot_k_n, dot_k_n_f, dot_k_n_x, "avx512f,avx512bw,avx512vl,avx2,fma,f16c", mac_plain);
k_kernel!(dot_k_n_vnni, dot_k_n_vnni_f, dot_k_n_vnni_x, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c", mac_vnni);

/// Q4_0-family row · up to 4 rows of Q8_0 activations, two blocks per step.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL, AVX2, FMA and F16C; `t` must be a Q4_0-family type;
/// 1 ≤ acts.len() ≤ 4.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dot_s(t: GgmlType, row: &[u8], acts: &[&[BlockQ8_0]], out: &mut [f32]) {
    // SAFETY (all arms): same features; N matches acts.len() (1..=4 checked by the caller).
    unsafe {
        if super::quant::llama_order() {
            dispatch!(dot_s_n_x, t, acts.len(), [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0], (row, acts, out))
        } else {
            dispatch!(dot_s_n_f, t, acts.len(), [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0], (row, acts, out))
        }
    }
}

/// Every row of `data` (rows of `rb` bytes, type `t` of the Q4_0 family) · one activation
/// row, into `out`: [`dot_s`] with its dispatch hoisted out of the row loop. For matrices
/// of many short rows (MLA's per-head `attn_k_b`: 512 rows of four blocks) the per-row
/// dispatch and call cost as much as the dot products.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL, AVX2, FMA and F16C; `t` must be a small-block type.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dot_s_rows(t: GgmlType, data: &[u8], rb: usize, act: &[BlockQ8_0], out: &mut [f32]) {
    // SAFETY: same features.
    unsafe { dispatch_type!(s_rows, t, [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0], (data, rb, act, out)) }
}

/// As [`dot_s_rows`] for k-quant rows (MLA's per-head `attn_v_b`: 128 rows of two blocks).
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL, AVX2, FMA and F16C, and VNNI if `vnni`; `t` must
/// be a k-quant type.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dot_k_rows(t: GgmlType, data: &[u8], rb: usize, act: &[BlockQ8K], out: &mut [f32], vnni: bool) {
    // SAFETY: same features, VNNI when the caller says so.
    unsafe {
        if vnni {
            dispatch_type!(k_rows_vnni, t, [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K], (data, rb, act, out))
        } else {
            dispatch_type!(k_rows, t, [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K], (data, rb, act, out))
        }
    }
}

/// Defines `$name::<T>(data, rb, act, out)`: every row of `data` (rows of `rb` bytes) · one
/// activation row with `$kernel::<T, 1>`, compiled for `$features` so the kernel inlines.
macro_rules! rows_fn {
    ($name:ident, $features:literal, $act:ty, $kernel:ident) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<const T: u32>(data: &[u8], rb: usize, act: &[$act], out: &mut [f32]) {
            let a = [act];
            for (row, o) in data.chunks_exact(rb).zip(out.iter_mut()) {
                let mut r = [0f32; 1];
                // SAFETY: same features; one activation row.
                unsafe { $kernel::<T, 1>(row, &a, &mut r) };
                *o = r[0];
            }
        }
    };
}

rows_fn!(k_rows, "avx512f,avx512bw,avx512vl,avx2,fma,f16c", BlockQ8K, dot_k_n_f);
rows_fn!(k_rows_vnni, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c", BlockQ8K, dot_k_n_vnni_f);
rows_fn!(s_rows, "avx512f,avx512bw,avx512vl,avx2,fma,f16c", BlockQ8_0, dot_s_n_f);

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn dot_s_n_f<const T: u32, const N: usize>(row: &[u8], acts: &[&[BlockQ8_0]], out: &mut [f32]) {
    // SAFETY: same features.
    unsafe { dot_s_n::<T, N, false>(row, acts, out) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn dot_s_n_x<const T: u32, const N: usize>(row: &[u8], acts: &[&[BlockQ8_0]], out: &mut [f32]) {
    // SAFETY: same features.
    unsafe { dot_s_n::<T, N, true>(row, acts, out) }
}

/// Two f32 scales, one per 256-bit half.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn halves(a: f32, b: f32) -> __m512 {
    let lo = _mm512_castps_pd(_mm512_set1_ps(a));
    _mm512_castpd_ps(_mm512_insertf64x4(lo, _mm256_castps_pd(_mm256_set1_ps(b)), 1))
}

/// With E (llama.cpp's order): eight lanes per activation row, one fused multiply-add per
/// block in block order (ggml's `vec_dot_q*_0_q8_0` and llamafile's tinyBLAS); otherwise
/// sixteen lanes, one fused multiply-add per two blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn dot_s_n<const T: u32, const N: usize, const E: bool>(row: &[u8], acts: &[&[BlockQ8_0]], out: &mut [f32]) {
    let t = ty(T);
    let ts = t.type_size();
    let offset = matches!(t, GgmlType::Q4_1 | GgmlType::Q5_1);
    let pf = super::simd::prefetch_distance();
    let ones = _mm512_set1_epi16(1);
    let mut acc8 = [_mm256_setzero_ps(); N];
    let mut acc = [_mm512_setzero_ps(); N];
    let mut msum = [0f32; N];
    let pairs = row.len() / ts / 2;
    for (k, bb) in row.chunks_exact(2 * ts).enumerate() {
        let (b0, b1) = bb.split_at(ts);
        prefetch_block(bb, pf);
        let q = join(s_quants::<T>(b0), s_quants::<T>(b1));
        let (d0, d1) = (f16c_at(b0, 0), f16c_at(b1, 0));
        let (m0, m1) = if offset { (f16c_at(b0, 2), f16c_at(b1, 2)) } else { (0.0, 0.0) };
        let neg = _mm512_movepi8_mask(q);
        let aq = _mm512_abs_epi8(q);
        for i in 0..N {
            let (a0, a1) = (&acts[i][2 * k], &acts[i][2 * k + 1]);
            let y = join(load32(as_bytes(&a0.qs)), load32(as_bytes(&a1.qs)));
            let p = if offset {
                msum[i] += m0 * a0.s + m1 * a1.s;
                _mm512_maddubs_epi16(q, y)
            } else {
                // |q| · (y with q's sign): maddubs needs its first operand unsigned.
                _mm512_maddubs_epi16(aq, _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y))
            };
            let s = _mm512_cvtepi32_ps(_mm512_madd_epi16(p, ones));
            if E {
                let s1 = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s)));
                let s0 = _mm512_castps512_ps256(s);
                acc8[i] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * a0.d), s0, acc8[i]);
                acc8[i] = _mm256_fmadd_ps(_mm256_set1_ps(d1 * a1.d), s1, acc8[i]);
            } else {
                acc[i] = _mm512_fmadd_ps(halves(d0 * a0.d, d1 * a1.d), s, acc[i]);
            }
        }
    }
    if E {
        // An odd last block continues the same accumulators.
        // SAFETY: same CPU features as this function.
        let tail = unsafe { avx2::dot_s_acc::<T, N>(&row[2 * pairs * ts..], acts, 2 * pairs, &mut acc8) };
        for i in 0..N {
            out[i] = hsum256(acc8[i]) + msum[i] + tail[i];
        }
        return;
    }
    for i in 0..N {
        out[i] = _mm512_reduce_add_ps(acc[i]) + msum[i];
    }
    // An odd last block.
    // SAFETY: same CPU features as this function.
    unsafe { avx2::dot_s_n::<T, N>(&row[2 * pairs * ts..], acts, 2 * pairs, out) };
}

/// Sixteen weights of a float row as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn load16_f(t: GgmlType, b: &[u8]) -> __m512 {
    match t {
        GgmlType::F32 => _mm512_castsi512_ps(load64(b)),
        GgmlType::F16 => _mm512_cvtph_ps(load32(b)),
        _ => _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(load32(b)), 16)), // BF16
    }
}

/// F32/F16/BF16 row · f32 activations.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL, AVX2, FMA and F16C; `t` must be F32, F16 or BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dot_float(t: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    let es = t.type_size();
    let n = x.len().min(row.len() / es);
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            let j = i + 16 * k;
            // SAFETY: j + 16 <= n <= x.len().
            let xv = unsafe { _mm512_loadu_ps(x.as_ptr().add(j)) };
            *a = _mm512_fmadd_ps(load16_f(t, &row[j * es..]), xv, *a);
        }
        i += 64;
    }
    let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    // SAFETY: same CPU features as this function.
    let rest = unsafe { avx2::dot_float(t, &row[i * es..n * es], &x[i..n]) };
    _mm512_reduce_add_ps(v) + rest
}

/// 32 e4m3 bytes as f32 divided by 256 (moved into an f16 exponent, see fp.rs).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn fp8x32(b: &[u8]) -> (__m512, __m512) {
    // Sign-extended, shifted by 7: exponent and mantissa land in f16 bits 7..13 and the
    // sign (copied into every high bit) in bit 15; bit 14 must be cleared.
    let v = _mm512_cvtepi8_epi16(load32(b));
    let h = _mm512_and_si512(_mm512_slli_epi16(v, 7), _mm512_set1_epi16(0xBF80u16 as i16));
    (_mm512_cvtph_ps(_mm512_castsi512_si256(h)), _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1)))
}

/// FP8 e4m3 row · up to 4 rows of f32 activations, one scale per 128 columns; each group
/// of 32 weights is decoded once for all activation rows.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL, AVX2, FMA and F16C; 1 ≤ xs.len() ≤ 4.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dot_fp8(row: &[u8], scales: &[f32], xs: &[&[f32]], out: &mut [f32]) {
    // SAFETY (all arms): same features; N matches xs.len().
    unsafe { dispatch_rows!(dot_fp8_n, xs.len(), (row, scales, xs, out)) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn dot_fp8_n<const N: usize>(row: &[u8], scales: &[f32], xs: &[&[f32]], out: &mut [f32]) {
    let cols = row.len().min(xs.iter().map(|x| x.len()).min().unwrap_or(0));
    let pf = super::simd::prefetch_distance();
    let mut total = [_mm512_setzero_ps(); N];
    let mut tail = [0f32; N];
    for (blk, &s) in scales.iter().enumerate().take(cols.div_ceil(128)) {
        let (start, end) = (128 * blk, (128 * blk + 128).min(cols));
        // One 128-byte block of weights = two cache lines: prefetch them `pf` bytes ahead, as
        // the quantized kernels do (decode streams weights; the loads alone keep too few
        // misses in flight per core).
        prefetch_block(&row[start..end], pf);
        let mut a0 = [_mm512_setzero_ps(); N];
        let mut a1 = [_mm512_setzero_ps(); N];
        let mut i = start;
        while i + 32 <= end {
            let (w0, w1) = fp8x32(&row[i..]);
            for k in 0..N {
                // SAFETY: i + 32 <= end <= cols <= xs[k].len().
                let (x0, x1) =
                    unsafe { (_mm512_loadu_ps(xs[k].as_ptr().add(i)), _mm512_loadu_ps(xs[k].as_ptr().add(i + 16))) };
                a0[k] = _mm512_fmadd_ps(w0, x0, a0[k]);
                a1[k] = _mm512_fmadd_ps(w1, x1, a1[k]);
            }
            i += 32;
        }
        let sv = _mm512_set1_ps(s * 256.0);
        for k in 0..N {
            total[k] = _mm512_fmadd_ps(_mm512_add_ps(a0[k], a1[k]), sv, total[k]);
            let rest: f32 =
                row[i..end].iter().zip(&xs[k][i..end]).map(|(&q, &v)| super::fp::fp8_e4m3_to_f32(q) * v).sum();
            tail[k] += rest * s;
        }
    }
    for k in 0..N {
        out[k] = _mm512_reduce_add_ps(total[k]) + tail[k];
    }
}
