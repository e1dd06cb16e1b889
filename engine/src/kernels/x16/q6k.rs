//! The Q6_K layout of [`super`]. A Q6_K weight is `d · scale[i/16] · (q − 32)` with a 6-bit q;
//! one group of 16 rows holds, for each 256-weight block, 3360 bytes (16 × 210):
//! ```text
//!   [0, 32)       d[16]         f16, one per row
//!   [32, 288)     sc[16][16]    i8 per 16-weight sub-block s and row r
//!   [288, 2336)   ql[8][4][16][4]  per 32 weights j, pair p of quads and row r: 4 bytes, byte b
//!                 holding the low 4 bits of weight 32j + 8p + b (low nibble) and of
//!                 weight 32j + 8p + 4 + b (high nibble)
//!   [2336, 3360)  qh[8][2][16][4]  per 32 weights j, half h and row r: 4 bytes, byte b holding
//!                 the high 2 bits of weight 32j + 4(4h + k) + b in bits 2k..2k+2 (k = 0..4)
//! ```
//! The kernel: one `vpdpbusd` per 64 weights and activation row on the unsigned q, one
//! conversion and multiply-add per 16-weight sub-block for 16 rows, and the −32 offset as one
//! `vpdpwssd` per two sub-blocks against the activations' 16-weight sums.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::lanes;
use super::ROWS;
use crate::kernels::blocks::{unpack_q6_k, KBlock};
use crate::kernels::quant::BlockQ8K;

/// Bytes of one row's Q6_K block.
const ROW_BLOCK: usize = 210;
/// Bytes of one repacked block (16 rows, 256 weights each).
const GROUP_BLOCK: usize = ROWS * ROW_BLOCK;

const SC: usize = 32;
const QL: usize = 288;
const QH: usize = 2336;

/// The 256 unsigned 6-bit quants of a Q6_K block in weight order (the stored q, before the
/// −32 offset that `unpack_q6_k` applies).
fn quants(b: &[u8]) -> [u8; 256] {
    let mut k = KBlock::default();
    unpack_q6_k(b, &mut k);
    k.q.map(|v| (v + 32) as u8)
}

/// The inverse of [`quants`] into a block's `ql` and `qh` bytes.
fn store_quants(q: &[u8; 256], b: &mut [u8]) {
    let (ql, qh) = b[0..192].split_at_mut(128);
    for n in 0..2 {
        let (ql, qh, q) = (&mut ql[64 * n..][..64], &mut qh[32 * n..][..32], &q[128 * n..][..128]);
        for l in 0..32 {
            ql[l] = (q[l] & 15) | ((q[l + 64] & 15) << 4);
            ql[l + 32] = (q[l + 32] & 15) | ((q[l + 96] & 15) << 4);
            qh[l] = (q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) | ((q[l + 96] >> 4) << 6);
        }
    }
}

/// Block `k` of 16 rows (`row(r)` gives row r's 210-byte block) into one repacked block.
pub(super) fn repack_block<'a>(row: impl Fn(usize) -> &'a [u8], ob: &mut [u8]) {
    ob[QH..].fill(0);
    for r in 0..ROWS {
        let b = row(r);
        ob[2 * r..2 * r + 2].copy_from_slice(&b[208..210]);
        for s in 0..16 {
            ob[SC + 16 * s + r] = b[192 + s];
        }
        let q = quants(b);
        for j in 0..8 {
            for p in 0..4 {
                let (at, o) = (32 * j + 8 * p, QL + 256 * j + 64 * p + 4 * r);
                for byte in 0..4 {
                    ob[o + byte] = (q[at + byte] & 15) | ((q[at + 4 + byte] & 15) << 4);
                }
            }
            for h in 0..2 {
                let o = QH + 128 * j + 64 * h + 4 * r;
                for k in 0..4 {
                    for byte in 0..4 {
                        ob[o + byte] |= (q[32 * j + 4 * (4 * h + k) + byte] >> 4) << (2 * k);
                    }
                }
            }
        }
    }
}

/// Row `r` of one repacked block as a Q6_K block.
pub(super) fn unpack_row(b: &[u8], r: usize, out: &mut [u8]) {
    out[208..210].copy_from_slice(&b[2 * r..2 * r + 2]);
    for s in 0..16 {
        out[192 + s] = b[SC + 16 * s + r];
    }
    let mut q = [0u8; 256];
    for j in 0..8 {
        for p in 0..4 {
            let (at, o) = (32 * j + 8 * p, QL + 256 * j + 64 * p + 4 * r);
            for byte in 0..4 {
                q[at + byte] = b[o + byte] & 15;
                q[at + 4 + byte] = b[o + byte] >> 4;
            }
        }
        for h in 0..2 {
            let o = QH + 128 * j + 64 * h + 4 * r;
            for k in 0..4 {
                for byte in 0..4 {
                    q[32 * j + 4 * (4 * h + k) + byte] |= ((b[o + byte] >> (2 * k)) & 3) << 4;
                }
            }
        }
    }
    store_quants(&q, out);
}

/// The 16 rows' scales of 16-weight sub-block `s` of the repacked block at `p`, as i32 lanes.
///
/// # Safety
/// `p` addresses a whole repacked block.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn scales(p: *const u8, s: usize) -> __m512i {
    // SAFETY: inside the block (see the layout).
    _mm512_cvtepi8_epi32(unsafe { _mm_loadu_si128(p.add(SC + 16 * s) as *const __m128i) })
}

/// The high 2 bits of quads `4h + k` (k = 0..4) of the 32 weights `j` of the 16 rows of the
/// repacked block at `p`, moved to bits 4..6 of each byte.
///
/// # Safety
/// `p` addresses a whole repacked block.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn high_bits(p: *const u8, j: usize, h: usize) -> [__m512i; 4] {
    let top = _mm512_set1_epi8(0x30);
    // SAFETY: inside the block (see the layout).
    let vh = unsafe { _mm512_loadu_si512(p.add(QH + 128 * j + 64 * h) as *const _) };
    [
        _mm512_and_si512(_mm512_slli_epi16(vh, 4), top),
        _mm512_and_si512(_mm512_slli_epi16(vh, 2), top),
        _mm512_and_si512(vh, top),
        _mm512_and_si512(_mm512_srli_epi16(vh, 2), top),
    ]
}

/// Quads `2·pair` and `2·pair + 1` of the 32 weights `j` of the block at `p` as bytes (the
/// 6-bit quants, one row per 32-bit lane), with their high bits `hi` from [`high_bits`].
///
/// # Safety
/// `p` addresses a whole repacked block.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn quad_pair(p: *const u8, j: usize, pair: usize, hi: (__m512i, __m512i)) -> (__m512i, __m512i) {
    let nib = _mm512_set1_epi8(15);
    // SAFETY: inside the block.
    let v = unsafe { _mm512_loadu_si512(p.add(QL + 256 * j + 64 * pair) as *const _) };
    (
        _mm512_or_si512(_mm512_and_si512(v, nib), hi.0),
        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(v, 4), nib), hi.1),
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_n<const N: usize>(group: &[u8], acts: &[&[BlockQ8K]], out: &mut [[f32; ROWS]]) {
    let low16 = _mm512_set1_epi32(0xFFFF);
    let pf = crate::kernels::simd::prefetch_distance();
    let mut total = [_mm512_setzero_ps(); N];
    let a: [&[BlockQ8K]; N] = std::array::from_fn(|i| acts[i]);
    for (k, b) in group.chunks_exact(GROUP_BLOCK).enumerate() {
        let p = b.as_ptr();
        crate::kernels::avx512::prefetch_block(b, pf);
        // SAFETY (all loads below): `b` is GROUP_BLOCK bytes, a whole block, and every offset
        // stays inside it (see the layout).
        let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p as *const __m256i) });
        let scale = |s: usize| unsafe { scales(p, s) };
        let mut fsum = [_mm512_setzero_ps(); N];
        let mut osum = [_mm512_setzero_si512(); N];
        for j in 0..8 {
            for h in 0..2 {
                // SAFETY (both): `p` is a whole block.
                let hi = unsafe { high_bits(p, j, h) };
                let mut isum = [_mm512_setzero_si512(); N];
                for pp in 0..2 {
                    let pair = 2 * h + pp;
                    let (w0, w1) = unsafe { quad_pair(p, j, pair, (hi[2 * pp], hi[2 * pp + 1])) };
                    let at = 32 * j + 8 * pair;
                    for i in 0..N {
                        let q = &a[i][k].qs;
                        isum[i] = _mm512_dpbusd_epi32(isum[i], w0, lanes::quad(q, at));
                        isum[i] = _mm512_dpbusd_epi32(isum[i], w1, lanes::quad(q, at + 4));
                    }
                }
                let sc = _mm512_cvtepi32_ps(scale(2 * j + h));
                for i in 0..N {
                    fsum[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i]), sc, fsum[i]);
                }
            }
            // The offset: Σ scale_s · (activation sum of sub-block s), two sub-blocks per
            // `vpdpwssd` (both scales as i16 halves of each lane).
            let pair = _mm512_or_si512(_mm512_and_si512(scale(2 * j), low16), _mm512_slli_epi32(scale(2 * j + 1), 16));
            for i in 0..N {
                osum[i] = _mm512_dpwssd_epi32(osum[i], pair, lanes::sum_pair(&a[i][k].bsums, j));
            }
        }
        let k32 = _mm512_set1_ps(32.0);
        for i in 0..N {
            let dd = _mm512_mul_ps(d, _mm512_set1_ps(a[i][k].d));
            let net = _mm512_fnmadd_ps(k32, _mm512_cvtepi32_ps(osum[i]), fsum[i]);
            total[i] = _mm512_fmadd_ps(dd, net, total[i]);
        }
    }
    lanes::store(&total, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quants_round_trip_through_the_block_bytes() {
        let mut b = vec![0u8; ROW_BLOCK];
        crate::synth::fill_random(crate::dtype::GgmlType::Q6_K, &mut b, 8);
        let q = quants(&b);
        let mut back = b.clone();
        back[..192].fill(0);
        store_quants(&q, &mut back);
        assert_eq!(back, b);
    }
}
