//! The Q4_K layout of [`super`]. One group of 16 rows holds, for each 256-weight block,
//! 2304 bytes (16 × 144):
//! ```text
//!   [0, 32)      d[16]     f16, one per row
//!   [32, 64)     dmin[16]  f16
//!   [64, 192)    lo[8][16] per sub-block j and row r: (scale_j & 15) | (min_j & 15) << 4
//!   [192, 256)   hi[16]    u32 per row: bits 4j..4j+2 = scale_j >> 4, bits 4j+2..4j+4 = min_j >> 4
//!   [256, 2304)  qs[8][4][16][4] per sub-block j, pair p of quads and row r: 4 bytes, byte b
//!                holding weight 32j + 8p + b (low nibble) and weight 32j + 8p + 4 + b (high)
//! ```
//! The kernel: one `vpdpbusd` per 64 weights and activation row, one conversion and
//! multiply-add per 32-weight sub-block for 16 rows, the mins as one `vpdpwssd` per sub-block
//! against the activations' 16-weight sums.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::lanes;
use super::ROWS;
use crate::kernels::blocks::{unpack_q4_k, KBlock};
use crate::kernels::quant::BlockQ8K;

/// Bytes of one repacked block (16 rows, 256 weights each).
const GROUP_BLOCK: usize = ROWS * 144;

const LO: usize = 64;
const HI: usize = 192;
const QS: usize = 256;

/// Block `k` of 16 rows (`row(r)` gives row r's 144-byte block) into one repacked block.
pub(super) fn repack_block<'a>(row: impl Fn(usize) -> &'a [u8], ob: &mut [u8]) {
    ob[HI..QS].fill(0);
    let mut k = KBlock::default();
    for r in 0..ROWS {
        let b = row(r);
        ob[2 * r..2 * r + 2].copy_from_slice(&b[0..2]);
        ob[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&b[2..4]);
        unpack_q4_k(b, &mut k);
        let mut hi = 0u32;
        for j in 0..8 {
            // Sub-block j covers 16-weight groups 2j and 2j + 1, which share its scale and min.
            let (sc, m) = (k.scales[2 * j] as u32, k.mins[2 * j] as u32);
            ob[LO + 16 * j + r] = (sc as u8 & 15) | ((m as u8 & 15) << 4);
            hi |= ((sc >> 4) | ((m >> 4) << 2)) << (4 * j);
        }
        ob[HI + 4 * r..HI + 4 * r + 4].copy_from_slice(&hi.to_le_bytes());
        // The 4-bit quants, 0..=15.
        let q = k.q.map(|v| v as u8);
        for j in 0..8 {
            for p in 0..4 {
                let at = 32 * j + 8 * p;
                let o = QS + 256 * j + 64 * p + 4 * r;
                for byte in 0..4 {
                    ob[o + byte] = q[at + byte] | (q[at + 4 + byte] << 4);
                }
            }
        }
    }
}

/// Row `r` of one repacked block as a Q4_K block.
pub(super) fn unpack_row(b: &[u8], r: usize, out: &mut [u8]) {
    out[0..2].copy_from_slice(&b[2 * r..2 * r + 2]);
    out[2..4].copy_from_slice(&b[32 + 2 * r..32 + 2 * r + 2]);
    let hi = u32::from_le_bytes(b[HI + 4 * r..HI + 4 * r + 4].try_into().expect("4 bytes"));
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        let lo = b[LO + 16 * j + r];
        sc[j] = (lo & 15) | (((hi >> (4 * j)) & 3) as u8) << 4;
        mn[j] = (lo >> 4) | (((hi >> (4 * j + 2)) & 3) as u8) << 4;
    }
    // The 12-byte packing that `scale_min_k4` reads.
    let s = &mut out[4..16];
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4);
    }
    let mut q = [0u8; 256];
    for j in 0..8 {
        for p in 0..4 {
            let at = 32 * j + 8 * p;
            let o = QS + 256 * j + 64 * p + 4 * r;
            for byte in 0..4 {
                q[at + byte] = b[o + byte] & 15;
                q[at + 4 + byte] = b[o + byte] >> 4;
            }
        }
    }
    for (c, bytes) in out[16..144].chunks_exact_mut(32).enumerate() {
        for (i, v) in bytes.iter_mut().enumerate() {
            *v = q[64 * c + i] | (q[64 * c + 32 + i] << 4);
        }
    }
}

/// The 16 rows' `d` and `dmin` (f32 lanes) and the words of their scales' and mins' high bits,
/// of the repacked block at `p`.
///
/// # Safety
/// `p` addresses a whole repacked block.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c")]
pub(super) unsafe fn header(p: *const u8) -> (__m512, __m512, __m512i) {
    // SAFETY: inside the block (see the layout).
    unsafe {
        (
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
            _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32) as *const __m256i)),
            _mm512_loadu_si512(p.add(HI) as *const _),
        )
    }
}

/// Quads `2·pair` and `2·pair + 1` of sub-block `j` of the repacked block at `p` as bytes (the
/// 4-bit quants, one row per 32-bit lane).
///
/// # Safety
/// `p` addresses a whole repacked block.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn quad_pair(p: *const u8, j: usize, pair: usize) -> (__m512i, __m512i) {
    let nib = _mm512_set1_epi8(15);
    // SAFETY: inside the block.
    let v = unsafe { _mm512_loadu_si512(p.add(QS + 256 * j + 64 * pair) as *const _) };
    (_mm512_and_si512(v, nib), _mm512_and_si512(_mm512_srli_epi16(v, 4), nib))
}

/// Scale and min of sub-block `j` for the 16 rows of the repacked block at `p` (`hi`: its 16
/// words of high bits), as i32 lanes.
///
/// # Safety
/// `p` addresses a whole repacked block.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn scale_min(p: *const u8, hi: __m512i, j: usize) -> (__m512i, __m512i) {
    let three = _mm512_set1_epi32(3);
    // SAFETY: inside the block (see the layout).
    let lo = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(p.add(LO + 16 * j) as *const __m128i) });
    let hij = _mm512_srlv_epi32(hi, _mm512_set1_epi32(4 * j as i32));
    let sc = _mm512_or_si512(
        _mm512_and_si512(lo, _mm512_set1_epi32(15)),
        _mm512_slli_epi32(_mm512_and_si512(hij, three), 4),
    );
    let mn = _mm512_or_si512(
        _mm512_srli_epi32(lo, 4),
        _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hij, 2), three), 4),
    );
    (sc, mn)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_n<const N: usize>(group: &[u8], acts: &[&[BlockQ8K]], out: &mut [[f32; ROWS]]) {
    let pf = crate::kernels::simd::prefetch_distance();
    let mut total = [_mm512_setzero_ps(); N];
    let a: [&[BlockQ8K]; N] = std::array::from_fn(|i| acts[i]);
    for (k, b) in group.chunks_exact(GROUP_BLOCK).enumerate() {
        let p = b.as_ptr();
        crate::kernels::avx512::prefetch_block(b, pf);
        // SAFETY: `b` is GROUP_BLOCK bytes, a whole block.
        let (d, dmin, hi) = unsafe { header(p) };
        let mut fsum = [_mm512_setzero_ps(); N];
        let mut msum = [_mm512_setzero_si512(); N];
        for j in 0..8 {
            // SAFETY: `p` is a whole block.
            let (sc, mn) = unsafe { scale_min(p, hi, j) };
            // The min in both i16 halves: one `vpdpwssd` takes the two 16-weight sums of a
            // sub-block (bsums 2j and 2j+1) at once.
            let mn2 = _mm512_or_si512(mn, _mm512_slli_epi32(mn, 16));
            let mut isum = [_mm512_setzero_si512(); N];
            for pair in 0..4 {
                // SAFETY: `p` is a whole block.
                let (w0, w1) = unsafe { quad_pair(p, j, pair) };
                let at = 32 * j + 8 * pair;
                for i in 0..N {
                    let q = &a[i][k].qs;
                    isum[i] = _mm512_dpbusd_epi32(isum[i], w0, lanes::quad(q, at));
                    isum[i] = _mm512_dpbusd_epi32(isum[i], w1, lanes::quad(q, at + 4));
                }
            }
            let scf = _mm512_cvtepi32_ps(sc);
            for i in 0..N {
                fsum[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i]), scf, fsum[i]);
                msum[i] = _mm512_dpwssd_epi32(msum[i], mn2, lanes::sum_pair(&a[i][k].bsums, j));
            }
        }
        for i in 0..N {
            let da = _mm512_set1_ps(a[i][k].d);
            total[i] = _mm512_fmadd_ps(_mm512_mul_ps(d, da), fsum[i], total[i]);
            total[i] = _mm512_fnmadd_ps(_mm512_mul_ps(dmin, da), _mm512_cvtepi32_ps(msum[i]), total[i]);
        }
    }
    lanes::store(&total, out);
}
