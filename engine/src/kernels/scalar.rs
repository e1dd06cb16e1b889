//! Scalar reference row kernels: one weight row against prepared activations.
//! The SIMD variants must agree with these (integer parts exactly, float sums to rounding).

// Index loops mirror the published bit layouts, which reads better than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use super::blocks::{unpack_k, unpack_s, KBlock, SBlock};
use super::dequant::dequantize_unchecked;
use super::fp::fp8_e4m3_to_f32;
use super::quant::{BlockQ8K, BlockQ8_0};
use crate::dtype::GgmlType;

/// k-quant row · Q8_K activations.
pub fn dot_k_row(ty: GgmlType, row: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut k = KBlock::default();
    let mut sum = 0f32;
    for (b, a) in row.chunks_exact(ty.type_size()).zip(a) {
        unpack_k(ty, b, &mut k);
        let (mut isum, mut msum) = (0i32, 0i32);
        for s in 0..16 {
            let d: i32 = k.q[16 * s..16 * s + 16]
                .iter()
                .zip(&a.qs[16 * s..16 * s + 16])
                .map(|(&q, &y)| q as i32 * y as i32)
                .sum();
            isum += k.scales[s] * d;
            msum += k.mins[s] * a.bsums[s] as i32;
        }
        sum += a.d * (k.d * isum as f32 - k.dmin * msum as f32);
    }
    sum
}

/// Q4_0-family row · Q8_0 activations.
pub fn dot_s_row(ty: GgmlType, row: &[u8], a: &[BlockQ8_0]) -> f32 {
    let mut s = SBlock::default();
    let mut sum = 0f32;
    for (b, a) in row.chunks_exact(ty.type_size()).zip(a) {
        unpack_s(ty, b, &mut s);
        let isum: i32 = s.q.iter().zip(&a.qs).map(|(&q, &y)| q as i32 * y as i32).sum();
        sum += s.d * a.d * isum as f32 + s.m * a.s;
    }
    sum
}

/// Any supported GGML row · f32 activations: dequantizes chunk by chunk, sums each chunk in
/// eight f32 lanes and the chunks in f64 (the "Exact" path, also used for float rows).
pub fn dot_exact_row(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    let elems = if ty.block_size() == 1 { 256 } else { ty.block_size() };
    let bytes = elems / ty.block_size() * ty.type_size();
    let mut buf = [0f32; 256];
    let mut total = 0f64;
    for (b, xs) in row.chunks(bytes).zip(x.chunks(elems)) {
        let w = &mut buf[..xs.len()];
        dequantize_unchecked(ty, b, w);
        total += dot_f32(w, xs) as f64;
    }
    total as f32
}

/// FP8 e4m3 row · f32 activations; `scales` holds this row's `scale_inv` per 128 columns.
pub fn dot_fp8_row(row: &[u8], scales: &[f32], x: &[f32]) -> f32 {
    let mut total = 0f64;
    for ((b, xs), &s) in row.chunks(128).zip(x.chunks(128)).zip(scales) {
        let mut acc = [0f32; 8];
        for (i, (&q, &v)) in b.iter().zip(xs).enumerate() {
            acc[i % 8] += fp8_e4m3_to_f32(q) * v;
        }
        total += (acc.iter().sum::<f32>() * s) as f64;
    }
    total as f32
}

/// f32 dot product in eight independent lanes (vectorizes; better rounding than one chain).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
