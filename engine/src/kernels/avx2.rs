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
use crate::dtype::GgmlType;

/// Per-block scales: the 16 group scales as i8 bytes, the 16 group offsets as i16 (mins, or
/// the implicit 32·scale / 4·scale of Q6_K / Q3_K), and the two f32 factors.
pub(crate) struct KScales {
    pub sc8: __m128i,
    pub mn: __m256i,
    pub d: f32,
    pub dmin: f32,
}

/// f16 at byte offset `off` to f32 with F16C (no library call in the hot loop).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn f16c_at(b: &[u8], off: usize) -> f32 {
    let bits = u16::from_le_bytes([b[off], b[off + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Duplicates each of the first (`hi` = false) or last 8 bytes of `v` (8 → 16 groups).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dup8(v: __m128i, hi: bool) -> __m128i {
    let idx = if hi {
        _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15)
    } else {
        _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7)
    };
    _mm_shuffle_epi8(v, idx)
}

/// The scales of 32-weight chunk `c` as 16 i16 lanes: 8 × group 2c, then 8 × group 2c+1.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn chunk_scales(sc8: __m128i, c: usize) -> __m256i {
    let (a, b) = ((2 * c) as i8, (2 * c + 1) as i8);
    let idx = _mm_setr_epi8(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b);
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, idx))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load32(b: &[u8]) -> __m256i {
    assert!(b.len() >= 32);
    // SAFETY: at least 32 readable bytes (checked above); unaligned load.
    unsafe { _mm256_loadu_si256(b.as_ptr() as *const __m256i) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load16(b: &[u8]) -> __m128i {
    assert!(b.len() >= 16);
    // SAFETY: at least 16 readable bytes (checked above); unaligned load.
    unsafe { _mm_loadu_si128(b.as_ptr() as *const __m128i) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn u32x4_to_m128(u: [u32; 4]) -> __m128i {
    _mm_setr_epi32(u[0] as i32, u[1] as i32, u[2] as i32, u[3] as i32)
}

/// Bytes equal to `mask` bit set in `v` become `val`, others 0 (a per-byte bit test).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bit_to(v: __m256i, bit: u32, val: i8) -> __m256i {
    let m = _mm256_set1_epi8((1u8 << bit) as i8);
    _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, m), m), _mm256_set1_epi8(val))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn srl16(v: __m256i, n: u32) -> __m256i {
    _mm256_srl_epi16(v, _mm_cvtsi32_si128(n as i32))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn k_scales(t: GgmlType, b: &[u8]) -> KScales {
    match t {
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let v = u32x4_to_m128(k4_scale_min_bytes(&b[4..16]));
            let mn = _mm256_cvtepu8_epi16(dup8(v, true));
            KScales { sc8: dup8(v, false), mn, d: f16c_at(b, 0), dmin: f16c_at(b, 2) }
        }
        GgmlType::Q6_K => {
            let sc8 = load16(&b[192..208]);
            let d = f16c_at(b, 208);
            KScales { sc8, mn: _mm256_slli_epi16(_mm256_cvtepi8_epi16(sc8), 5), d, dmin: d }
        }
        GgmlType::Q3_K => {
            let raw = u32x4_to_m128(q3k_scale_bytes(&b[96..108]));
            let sc8 = _mm_sub_epi8(raw, _mm_set1_epi8(32));
            let d = f16c_at(b, 108);
            KScales { sc8, mn: _mm256_slli_epi16(_mm256_cvtepi8_epi16(sc8), 2), d, dmin: d }
        }
        _ => {
            // Q2_K: low nibble scale, high nibble min.
            let v = load16(&b[0..16]);
            let m4 = _mm_set1_epi8(0xF);
            let mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(v, 4), m4));
            KScales { sc8: _mm_and_si128(v, m4), mn, d: f16c_at(b, 80), dmin: f16c_at(b, 82) }
        }
    }
}

/// The 256 unsigned quants of a k-quant block as eight 32-byte vectors, in weight order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn k_chunks(t: GgmlType, b: &[u8]) -> [__m256i; 8] {
    let m4 = _mm256_set1_epi8(0xF);
    let mut ch = [_mm256_setzero_si256(); 8];
    match t {
        GgmlType::Q4_K => {
            for j in 0..4 {
                let q = load32(&b[16 + 32 * j..]);
                ch[2 * j] = _mm256_and_si256(q, m4);
                ch[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            }
        }
        GgmlType::Q5_K => {
            let qh = load32(&b[16..48]);
            for j in 0..4 {
                let q = load32(&b[48 + 32 * j..]);
                let lo = _mm256_and_si256(q, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                ch[2 * j] = _mm256_or_si256(lo, bit_to(qh, 2 * j as u32, 16));
                ch[2 * j + 1] = _mm256_or_si256(hi, bit_to(qh, 2 * j as u32 + 1, 16));
            }
        }
        GgmlType::Q6_K => {
            let m30 = _mm256_set1_epi8(0x30);
            for n in 0..2 {
                let ql0 = load32(&b[64 * n..]);
                let ql1 = load32(&b[64 * n + 32..]);
                let qh = load32(&b[128 + 32 * n..]);
                ch[4 * n] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
                ch[4 * n + 1] =
                    _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
                ch[4 * n + 2] =
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m30));
                ch[4 * n + 3] = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                    _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
                );
            }
        }
        GgmlType::Q3_K => {
            let m3 = _mm256_set1_epi8(3);
            let hm = load32(&b[0..32]);
            for n in 0..2 {
                let q = load32(&b[32 + 32 * n..]);
                for j in 0..4 {
                    let low = _mm256_and_si256(srl16(q, 2 * j as u32), m3);
                    ch[4 * n + j] = _mm256_or_si256(low, bit_to(hm, (4 * n + j) as u32, 4));
                }
            }
        }
        _ => {
            // Q2_K
            let m3 = _mm256_set1_epi8(3);
            for n in 0..2 {
                let q = load32(&b[16 + 32 * n..]);
                for j in 0..4 {
                    ch[4 * n + j] = _mm256_and_si256(srl16(q, 2 * j as u32), m3);
                }
            }
        }
    }
    ch
}

/// k-quant row · Q8_K activations.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `t` must be a k-quant type.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_k(t: GgmlType, row: &[u8], acts: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, a) in row.chunks_exact(t.type_size()).zip(acts) {
        let s = k_scales(t, b);
        let ch = k_chunks(t, b);
        let mut isum = _mm256_setzero_si256();
        for (c, &q) in ch.iter().enumerate() {
            let y = load32(as_bytes(&a.qs[32 * c..32 * c + 32]));
            let p = _mm256_maddubs_epi16(q, y);
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, chunk_scales(s.sc8, c)));
        }
        let bs = load32(as_bytes_i16(&a.bsums));
        let msum = _mm256_madd_epi16(bs, s.mn);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(s.d * a.d), _mm256_cvtepi32_ps(isum), acc);
        acc = _mm256_fnmadd_ps(_mm256_set1_ps(s.dmin * a.d), _mm256_cvtepi32_ps(msum), acc);
    }
    hsum256(acc)
}

pub(crate) fn as_bytes(v: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment; every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len()) }
}

pub(crate) fn as_bytes_i16(v: &[i16]) -> &[u8] {
    // SAFETY: any initialized i16 memory is valid as bytes; length scaled by size.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 2) }
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

/// 16 bytes of nibbles to 32 bytes: low nibbles first, then high nibbles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nib(x: __m128i) -> __m256i {
    let m4 = _mm_set1_epi8(0xF);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(x, 4), m4), _mm_and_si128(x, m4))
}

/// The 32 quants of a Q4_0-family block and whether they are signed (`d·q`) or offset (`d·q + m`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn s_quants(t: GgmlType, b: &[u8]) -> __m256i {
    let qh = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    match t {
        GgmlType::Q8_0 => load32(&b[2..34]),
        GgmlType::Q4_0 => _mm256_sub_epi8(nib(load16(&b[2..18])), _mm256_set1_epi8(8)),
        GgmlType::Q4_1 => nib(load16(&b[4..20])),
        GgmlType::Q5_0 => {
            let q = _mm256_or_si256(nib(load16(&b[6..22])), bits_to_bytes(qh(2), 16));
            _mm256_sub_epi8(q, _mm256_set1_epi8(16))
        }
        _ => _mm256_or_si256(nib(load16(&b[8..24])), bits_to_bytes(qh(4), 16)), // Q5_1
    }
}

/// Q4_0-family row · Q8_0 activations.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `t` must be a Q4_0-family type.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_s(t: GgmlType, row: &[u8], acts: &[BlockQ8_0]) -> f32 {
    let offset = matches!(t, GgmlType::Q4_1 | GgmlType::Q5_1);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut msum = 0f32;
    for (b, a) in row.chunks_exact(t.type_size()).zip(acts) {
        let q = s_quants(t, b);
        let y = load32(as_bytes(&a.qs));
        let p = if offset {
            msum += f16c_at(b, 2) * a.s;
            _mm256_maddubs_epi16(q, y)
        } else {
            _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q))
        };
        let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16c_at(b, 0) * a.d), s, acc);
    }
    hsum256(acc) + msum
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
    let v = _mm_cvtepu8_epi16(unsafe { _mm_loadl_epi64(b.as_ptr() as *const __m128i) });
    let s = _mm_slli_epi16(_mm_and_si128(v, _mm_set1_epi16(0x80)), 8);
    let m = _mm_slli_epi16(_mm_and_si128(v, _mm_set1_epi16(0x7F)), 7);
    _mm256_cvtph_ps(_mm_or_si128(s, m))
}

/// FP8 e4m3 row · f32 activations with one scale per 128 columns.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_fp8(row: &[u8], scales: &[f32], x: &[f32]) -> f32 {
    let mut total = _mm256_setzero_ps();
    let mut tail = 0f32;
    for ((b, xs), &s) in row.chunks(128).zip(x.chunks(128)).zip(scales) {
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
            let q: [__m256i; 4] =
                std::array::from_fn(|k| _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(c.as_ptr().add(8 * k)), idv)));
            let p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, _mm256_permutevar8x32_epi32(p, perm));
        }
    }
}
