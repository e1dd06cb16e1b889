//! The 32-weight block types of [`super`]: Q4_0, Q5_0 and Q8_0 (`w = d · (q − offset)`, one
//! f16 scale per 32 weights). One group of 16 rows holds, for each block, 16 × the type's
//! block bytes:
//! ```text
//!   [0, 32)     d[16]  f16, one per row
//!   Q8_0: [32, 544)   q[8][16][4]  per quad j and row r: weights 4j .. 4j + 4 as q + 128 (u8)
//!   Q4_0: [32, 288)   q[4][16][4]  per pair p and row r: byte b holds weight 8p + b (low
//!                     nibble) and weight 8p + 4 + b (high nibble)
//!   Q5_0: Q4_0's 288 bytes for the low 4 bits, then [288, 352) h[16][4]: per row r, byte b
//!                     holds the 5th bit of weight 4j + b in bit j (j = 0..8)
//! ```
//! The kernel: the unsigned quants against the Q8_0 activations, one `vpdpbusd` per 64
//! weights and activation row, and per block and activation row one multiply-add for the
//! scales and one for the offset (`offset · d · d_act · Σ activations`, from the activation
//! block's sum).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::lanes;
use super::{MAX_N, ROWS};
use crate::dtype::GgmlType;
use crate::kernels::blocks::{unpack_s, SBlock};
use crate::kernels::quant::BlockQ8_0;

/// Bytes of the scales of one repacked block.
const D: usize = 32;
/// Offset of Q5_0's high bits in a repacked block.
const HIGH: usize = 288;

/// The offset subtracted from the stored unsigned quant (Q8_0's i8 is stored + 128).
fn offset(ty: GgmlType) -> f32 {
    match ty {
        GgmlType::Q4_0 => 8.0,
        GgmlType::Q5_0 => 16.0,
        _ => 128.0,
    }
}

/// The 32 unsigned quants of one block: the stored nibbles (Q8_0: q + 128), before the offset
/// that `unpack_s` takes off.
fn quants(ty: GgmlType, b: &[u8]) -> [u8; 32] {
    let mut s = SBlock::default();
    unpack_s(ty, b, &mut s);
    s.q.map(|v| (v as i32 + offset(ty) as i32) as u8)
}

/// The inverse of [`quants`] into a block's quant bytes (after its d).
fn store_quants(ty: GgmlType, q: &[u8; 32], b: &mut [u8]) {
    match ty {
        GgmlType::Q8_0 => {
            for (d, &v) in b[2..34].iter_mut().zip(q) {
                *d = v ^ 0x80;
            }
        }
        _ => {
            let qs_at = if ty == GgmlType::Q5_0 { 6 } else { 2 };
            let mut qh = 0u32;
            for i in 0..16 {
                b[qs_at + i] = (q[i] & 15) | ((q[i + 16] & 15) << 4);
                qh |= ((q[i] >> 4) as u32 & 1) << i | ((q[i + 16] >> 4) as u32 & 1) << (i + 16);
            }
            if ty == GgmlType::Q5_0 {
                b[2..6].copy_from_slice(&qh.to_le_bytes());
            }
        }
    }
}

/// Block `k` of 16 rows (`row(r)` gives row r's block) into one repacked block.
pub(super) fn repack_block<'a>(ty: GgmlType, row: impl Fn(usize) -> &'a [u8], ob: &mut [u8]) {
    ob[D..].fill(0);
    for r in 0..ROWS {
        let b = row(r);
        ob[2 * r..2 * r + 2].copy_from_slice(&b[0..2]);
        let q = quants(ty, b);
        for j in 0..8 {
            for byte in 0..4 {
                let v = q[4 * j + byte];
                match ty {
                    GgmlType::Q8_0 => ob[D + 64 * j + 4 * r + byte] = v,
                    _ => {
                        // Quad j is the low (even j) or high (odd j) nibble of pair j / 2.
                        ob[D + 64 * (j / 2) + 4 * r + byte] |= (v & 15) << (4 * (j % 2));
                        if ty == GgmlType::Q5_0 {
                            ob[HIGH + 4 * r + byte] |= (v >> 4) << j;
                        }
                    }
                }
            }
        }
    }
}

/// Row `r` of one repacked block as a block of `ty`.
pub(super) fn unpack_row(ty: GgmlType, b: &[u8], r: usize, out: &mut [u8]) {
    out[0..2].copy_from_slice(&b[2 * r..2 * r + 2]);
    let mut q = [0u8; 32];
    for j in 0..8 {
        for byte in 0..4 {
            q[4 * j + byte] = match ty {
                GgmlType::Q8_0 => b[D + 64 * j + 4 * r + byte],
                _ => {
                    let nib = (b[D + 64 * (j / 2) + 4 * r + byte] >> (4 * (j % 2))) & 15;
                    let high = if ty == GgmlType::Q5_0 { (b[HIGH + 4 * r + byte] >> j) & 1 } else { 0 };
                    nib | (high << 4)
                }
            };
        }
    }
    store_quants(ty, &q, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_chunk(ty: GgmlType, group: &[u8], a: &[&[BlockQ8_0]], out: &mut [[f32; ROWS]]) {
    // SAFETY (all arms): same features; N = a.len() = out.len() (1..=MAX_N).
    unsafe {
        match ty {
            GgmlType::Q8_0 => by_count!(dot_n<8>, a.len(), (group, a, out)),
            GgmlType::Q5_0 => by_count!(dot_n<5>, a.len(), (group, a, out)),
            _ => by_count!(dot_n<4>, a.len(), (group, a, out)),
        }
    }
}

/// Quad `j` (weights `4j .. 4j + 4` of 16 rows, one row per lane) of the repacked block at
/// `p`, for `BITS` = 8 (Q8_0), 5 (Q5_0) or 4 (Q4_0).
///
/// # Safety
/// `p` addresses a whole repacked block of that type.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quad<const BITS: u32>(p: *const u8, j: usize) -> __m512i {
    if BITS == 8 {
        // SAFETY: inside the block.
        return unsafe { _mm512_loadu_si512(p.add(D + 64 * j) as *const _) };
    }
    let nib = _mm512_set1_epi8(15);
    // SAFETY: inside the block.
    let v = unsafe { _mm512_loadu_si512(p.add(D + 64 * (j / 2)) as *const _) };
    let low =
        if j.is_multiple_of(2) { _mm512_and_si512(v, nib) } else { _mm512_and_si512(_mm512_srli_epi16(v, 4), nib) };
    if BITS == 4 {
        return low;
    }
    // SAFETY: inside the block (Q5_0 has the high bits).
    let h = unsafe { _mm512_loadu_si512(p.add(HIGH) as *const _) };
    // Bit j of each byte to bit 4 (16-bit shifts: the mask drops what crosses bytes).
    let moved = if j <= 4 {
        _mm512_sll_epi16(h, _mm_cvtsi32_si128(4 - j as i32))
    } else {
        _mm512_srl_epi16(h, _mm_cvtsi32_si128(j as i32 - 4))
    };
    _mm512_ternarylogic_epi32::<0xF8>(low, moved, _mm512_set1_epi8(0x10))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_n<const BITS: u32, const N: usize>(group: &[u8], acts: &[&[BlockQ8_0]], out: &mut [[f32; ROWS]]) {
    let ty = match BITS {
        8 => GgmlType::Q8_0,
        5 => GgmlType::Q5_0,
        _ => GgmlType::Q4_0,
    };
    let block = ROWS * ty.type_size();
    let off = offset(ty);
    let mut total = [_mm512_setzero_ps(); N];
    let a: [&[BlockQ8_0]; N] = std::array::from_fn(|i| acts[i]);
    for (k, b) in group.chunks_exact(block).enumerate() {
        let p = b.as_ptr();
        // SAFETY: `b` is one whole repacked block; the loads stay inside it.
        let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p as *const __m256i) });
        let mut isum = [_mm512_setzero_si512(); N];
        for j in 0..8 {
            // SAFETY: as above.
            let w = unsafe { quad::<BITS>(p, j) };
            for i in 0..N {
                isum[i] = _mm512_dpbusd_epi32(isum[i], w, lanes::quad(&a[i][k].qs, 4 * j));
            }
        }
        for i in 0..N {
            let blk = &a[i][k];
            total[i] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(blk.d)), _mm512_cvtepi32_ps(isum[i]), total[i]);
            total[i] = _mm512_fnmadd_ps(d, _mm512_set1_ps(off * blk.s), total[i]);
        }
    }
    lanes::store(&total, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quants_round_trip_through_the_block_bytes() {
        for ty in [GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0] {
            let mut b = vec![0u8; ty.type_size()];
            crate::synth::fill_random(ty, &mut b, 2);
            let q = quants(ty, &b);
            let mut back = b.clone();
            back[2..].fill(0);
            store_quants(ty, &q, &mut back);
            assert_eq!(back, b, "{ty:?}");
        }
    }
}
