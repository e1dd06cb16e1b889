//! GGML block layouts, unpacked by scalar code into plain integers plus scales.
//!
//! This is the one place that knows the bit layouts; dequantization and the scalar reference
//! dot products are both written on top of the unpacked form, and the SIMD kernels are tested
//! against them. Layouts (bytes, little-endian):
//! ```text
//! Q4_0 (18): d f16 | qs[16]           w = d·(q−8), q low nibbles first then high nibbles
//! Q4_1 (20): d f16 | m f16 | qs[16]   w = d·q + m
//! Q5_0 (22): d f16 | qh u32 | qs[16]  5th bit of weight j in bit j of qh; w = d·(q−16)
//! Q5_1 (24): d f16 | m f16 | qh u32 | qs[16]
//! Q8_0 (34): d f16 | qs[32] i8
//! Q2_K (84): scales[16] (low nibble scale, high nibble min) | qs[64] | d f16 | dmin f16
//! Q3_K (110): hmask[32] | qs[64] | scales[12] (16 × 6-bit, −32) | d f16
//! Q4_K (144): d f16 | dmin f16 | scales[12] (8 × 6-bit scale, 8 × 6-bit min) | qs[128]
//! Q5_K (176): d f16 | dmin f16 | scales[12] | qh[32] | qs[128]
//! Q6_K (210): ql[128] | qh[64] | scales[16] i8 | d f16
//! ```

// Index loops mirror the published bit layouts, which reads better than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use super::fp::f16_at;
use crate::dtype::GgmlType;

/// A 256-weight k-quant block: `w[i] = d·scales[i/16]·q[i] − dmin·mins[i/16]`.
/// Types with 32-weight sub-blocks (Q4_K, Q5_K) repeat each scale for both halves.
#[derive(Clone, Debug)]
pub struct KBlock {
    pub d: f32,
    pub dmin: f32,
    pub q: [i8; 256],
    pub scales: [i32; 16],
    pub mins: [i32; 16],
}

impl Default for KBlock {
    fn default() -> Self {
        KBlock { d: 0.0, dmin: 0.0, q: [0; 256], scales: [0; 16], mins: [0; 16] }
    }
}

/// A 32-weight block of the Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 family: `w[i] = d·q[i] + m`.
#[derive(Clone, Debug, Default)]
pub struct SBlock {
    pub d: f32,
    pub m: f32,
    pub q: [i8; 32],
}

/// Scale and min `j` (0..8) of the 12-byte, 6-bit packed Q4_K/Q5_K scales.
#[inline]
pub fn scale_min_k4(j: usize, s: &[u8]) -> (i32, i32) {
    if j < 4 {
        ((s[j] & 63) as i32, (s[j + 4] & 63) as i32)
    } else {
        let sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        let m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        (sc as i32, m as i32)
    }
}

/// The 16 unsigned 6-bit scales of a Q3_K block as bytes (4 per u32, little-endian),
/// before the −32 offset.
#[inline]
pub fn q3k_scale_bytes(s: &[u8]) -> [u32; 4] {
    const K1: u32 = 0x0303_0303;
    const K2: u32 = 0x0f0f_0f0f;
    let rd = |o: usize| u32::from_le_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]]);
    let (a0, a1, tmp) = (rd(0), rd(4), rd(8));
    [
        (a0 & K2) | ((tmp & K1) << 4),
        (a1 & K2) | (((tmp >> 2) & K1) << 4),
        ((a0 >> 4) & K2) | (((tmp >> 4) & K1) << 4),
        ((a1 >> 4) & K2) | (((tmp >> 6) & K1) << 4),
    ]
}

/// The 16 signed 6-bit scales of a Q3_K block (already minus 32).
pub fn q3k_scales(s: &[u8]) -> [i32; 16] {
    let aux = q3k_scale_bytes(s);
    let mut out = [0i32; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = ((aux[i / 4] >> (8 * (i % 4))) & 0xFF) as i32 - 32;
    }
    out
}

/// Q4_K/Q5_K 6-bit scales and mins as 16 bytes: 8 scales then 8 mins (same values as
/// [`scale_min_k4`], computed four at a time).
#[inline]
pub fn k4_scale_min_bytes(s: &[u8]) -> [u32; 4] {
    const K1: u32 = 0x3f3f_3f3f;
    const K2: u32 = 0x0f0f_0f0f;
    const K3: u32 = 0x0303_0303;
    let rd = |o: usize| u32::from_le_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]]);
    let (u0, u1, u2) = (rd(0), rd(4), rd(8));
    [u0 & K1, (u2 & K2) | (((u0 >> 6) & K3) << 4), u1 & K1, ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4)]
}

pub fn unpack_q2_k(b: &[u8], k: &mut KBlock) {
    let (sc, qs) = (&b[0..16], &b[16..80]);
    k.d = f16_at(b, 80);
    k.dmin = f16_at(b, 82);
    for i in 0..16 {
        k.scales[i] = (sc[i] & 0xF) as i32;
        k.mins[i] = (sc[i] >> 4) as i32;
    }
    for n in 0..2 {
        let q = &qs[32 * n..32 * n + 32];
        for j in 0..4 {
            for l in 0..32 {
                k.q[128 * n + 32 * j + l] = ((q[l] >> (2 * j)) & 3) as i8;
            }
        }
    }
}

pub fn unpack_q3_k(b: &[u8], k: &mut KBlock) {
    let (hm, qs) = (&b[0..32], &b[32..96]);
    k.scales = q3k_scales(&b[96..108]);
    k.mins = [0; 16];
    k.d = f16_at(b, 108);
    k.dmin = 0.0;
    for n in 0..2 {
        let q = &qs[32 * n..32 * n + 32];
        for j in 0..4 {
            let m = 1u8 << (4 * n + j);
            for l in 0..32 {
                let low = ((q[l] >> (2 * j)) & 3) as i8;
                k.q[128 * n + 32 * j + l] = low - if hm[l] & m != 0 { 0 } else { 4 };
            }
        }
    }
}

pub fn unpack_q4_k(b: &[u8], k: &mut KBlock) {
    k.d = f16_at(b, 0);
    k.dmin = f16_at(b, 2);
    let (sc, qs) = (&b[4..16], &b[16..144]);
    for j in 0..4 {
        set_scale_pair(k, j, sc);
        let q = &qs[32 * j..32 * j + 32];
        for l in 0..32 {
            k.q[64 * j + l] = (q[l] & 0xF) as i8;
            k.q[64 * j + 32 + l] = (q[l] >> 4) as i8;
        }
    }
}

pub fn unpack_q5_k(b: &[u8], k: &mut KBlock) {
    k.d = f16_at(b, 0);
    k.dmin = f16_at(b, 2);
    let (sc, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for j in 0..4 {
        set_scale_pair(k, j, sc);
        let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
        let q = &qs[32 * j..32 * j + 32];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            k.q[64 * j + l] = ((q[l] & 0xF) + h1) as i8;
            k.q[64 * j + 32 + l] = ((q[l] >> 4) + h2) as i8;
        }
    }
}

/// Q4_K/Q5_K: the 64 weights of chunk `j` use 6-bit scale/min `2j` then `2j+1`, one per 32.
fn set_scale_pair(k: &mut KBlock, j: usize, sc: &[u8]) {
    let (s1, m1) = scale_min_k4(2 * j, sc);
    let (s2, m2) = scale_min_k4(2 * j + 1, sc);
    k.scales[4 * j..4 * j + 4].copy_from_slice(&[s1, s1, s2, s2]);
    k.mins[4 * j..4 * j + 4].copy_from_slice(&[m1, m1, m2, m2]);
}

pub fn unpack_q6_k(b: &[u8], k: &mut KBlock) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    k.d = f16_at(b, 208);
    k.dmin = 0.0;
    k.mins = [0; 16];
    for i in 0..16 {
        k.scales[i] = sc[i] as i8 as i32;
    }
    for n in 0..2 {
        let (ql, qh) = (&ql[64 * n..64 * n + 64], &qh[32 * n..32 * n + 32]);
        let q = &mut k.q[128 * n..128 * n + 128];
        for l in 0..32 {
            q[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            q[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            q[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            q[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
}

/// Unpacks one 256-weight block of a k-quant type; `false` for other types.
pub fn unpack_k(ty: GgmlType, b: &[u8], k: &mut KBlock) -> bool {
    match ty {
        GgmlType::Q2_K => unpack_q2_k(b, k),
        GgmlType::Q3_K => unpack_q3_k(b, k),
        GgmlType::Q4_K => unpack_q4_k(b, k),
        GgmlType::Q5_K => unpack_q5_k(b, k),
        GgmlType::Q6_K => unpack_q6_k(b, k),
        _ => return false,
    }
    true
}

/// Unpacks one 32-weight block of the Q4_0 family; `false` for other types.
pub fn unpack_s(ty: GgmlType, b: &[u8], s: &mut SBlock) -> bool {
    s.d = f16_at(b, 0);
    s.m = 0.0;
    match ty {
        GgmlType::Q4_0 => nibbles(&b[2..18], &[0; 4], -8, &mut s.q),
        GgmlType::Q4_1 => {
            s.m = f16_at(b, 2);
            nibbles(&b[4..20], &[0; 4], 0, &mut s.q)
        }
        GgmlType::Q5_0 => nibbles(&b[6..22], &b[2..6], -16, &mut s.q),
        GgmlType::Q5_1 => {
            s.m = f16_at(b, 2);
            nibbles(&b[8..24], &b[4..8], 0, &mut s.q)
        }
        GgmlType::Q8_0 => {
            for (q, &v) in s.q.iter_mut().zip(&b[2..34]) {
                *q = v as i8;
            }
        }
        _ => return false,
    }
    true
}

/// 16 bytes of nibbles (+ optional 5th bits from `qh`) to 32 values: low nibbles are
/// weights 0..16, high nibbles 16..32; bit j of `qh` is the 5th bit of weight j.
fn nibbles(qs: &[u8], qh: &[u8], offset: i8, out: &mut [i8; 32]) {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    for j in 0..16 {
        let h0 = (((qh >> j) & 1) << 4) as u8;
        let h1 = (((qh >> (j + 16)) & 1) << 4) as u8;
        out[j] = ((qs[j] & 0xF) | h0) as i8 + offset;
        out[j + 16] = ((qs[j] >> 4) | h1) as i8 + offset;
    }
}

/// Whether the type is a 256-weight k-quant this module can unpack.
pub fn is_k_quant(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K)
}

/// Whether the type is a 32-weight block type of the Q4_0 family.
pub fn is_small_block(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_k4_scales_agree_with_one_at_a_time() {
        for seed in 0u32..64 {
            let s: Vec<u8> = (0..12).map(|i| (seed.wrapping_mul(2654435761).rotate_left(i * 5) >> 7) as u8).collect();
            let bytes: Vec<u8> = k4_scale_min_bytes(&s).iter().flat_map(|u| u.to_le_bytes()).collect();
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, &s);
                assert_eq!((bytes[j] as i32, bytes[8 + j] as i32), (sc, m), "seed {seed} j {j}");
            }
        }
    }
}
