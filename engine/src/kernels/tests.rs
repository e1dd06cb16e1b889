//! Kernel tests on random data: every ISA and precision against an f64 reference built from
//! the scalar dequantization, and every SIMD variant against the scalar kernels.

// Index loops mirror the published bit layouts, which reads better than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::dtype::GgmlType::{self, *};

const TYPES: [GgmlType; 13] = [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K];

fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

/// Offsets of the f16 scale fields in one block (random bytes there could be inf/NaN).
fn scale_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        Q4_0 | Q5_0 | Q8_0 => &[0],
        Q3_K => &[108],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q6_K => &[208],
        _ => &[],
    }
}

/// Random row bytes of `cols` weights with sane scales.
pub(super) fn random_row(ty: GgmlType, cols: usize, rng: &mut StdRng) -> Vec<u8> {
    let n = ty.bytes_for(cols as u64).unwrap() as usize;
    let mut b: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
    match ty {
        F32 => {
            for c in b.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.gen_range(-1.0f32..1.0).to_le_bytes());
            }
        }
        F16 => {
            for c in b.chunks_exact_mut(2) {
                c.copy_from_slice(&f16_bytes(rng.gen_range(-1.0..1.0)));
            }
        }
        BF16 => {
            for c in b.chunks_exact_mut(2) {
                let v: f32 = rng.gen_range(-1.0..1.0);
                c.copy_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
            }
        }
        _ => {
            for blk in b.chunks_exact_mut(ty.type_size()) {
                for &o in scale_offsets(ty) {
                    blk[o..o + 2].copy_from_slice(&f16_bytes(rng.gen_range(0.001..0.05)));
                }
            }
        }
    }
    b
}

/// `n` deterministic values in [−1, 1] (xorshift from `seed`): test inputs for kernels and
/// models that need no RNG state.
pub(crate) fn uniform(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn random_x(n: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect()
}

/// f64 reference from the scalar dequantization, plus a tolerance: f32 rounding of the sum,
/// and in Fast mode the Q8 rounding of x (at most half a step of amax/127 per value).
fn reference(w: &QMatrix, x: &[f32], fast: bool) -> (Vec<f64>, Vec<f64>) {
    let dq = dequantize_matrix(w);
    let block = match w.ty {
        WeightType::Ggml(t) if fast && blocks::is_k_quant(t) => 256,
        WeightType::Ggml(t) if fast && blocks::is_small_block(t) => 32,
        _ => 0,
    };
    let step: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, _)| {
            if block == 0 {
                return 0.0;
            }
            let b = &x[i / block * block..(i / block + 1) * block];
            b.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0
        })
        .collect();
    let mut y = vec![0f64; w.rows];
    let mut tol = vec![0f64; w.rows];
    for r in 0..w.rows {
        let row = &dq[r * w.cols..(r + 1) * w.cols];
        for c in 0..w.cols {
            y[r] += row[c] as f64 * x[c] as f64;
            tol[r] += (row[c] as f64).abs() * (x[c].abs() as f64 * 2e-5 + step[c] * 0.5);
        }
        tol[r] += 1e-6;
    }
    (y, tol)
}

fn check_against_reference(ty: GgmlType, rows: usize, cols: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let data: Vec<u8> = (0..rows).flat_map(|_| random_row(ty, cols, &mut rng)).collect();
    let w = QMatrix::new(ty, rows, cols, &data).unwrap();
    let x = random_x(cols, &mut rng);
    for p in [Precision::Exact, Precision::Fast] {
        let (yr, tol) = reference(&w, &x, p == Precision::Fast);
        for isa in Isa::all_supported() {
            let prep = prepare_with(w.ty, cols, &x, 1, p);
            let mut y = vec![0f32; rows];
            matmul_rows(isa, &w, &prep, 0..rows, &mut y);
            for r in 0..rows {
                let err = (y[r] as f64 - yr[r]).abs();
                assert!(err <= tol[r], "{ty} {isa:?} {p:?} row {r}: got {} want {} (tol {})", y[r], yr[r], tol[r]);
            }
        }
    }
}

#[test]
fn every_type_every_isa_matches_f64_reference() {
    for (i, &ty) in TYPES.iter().enumerate() {
        check_against_reference(ty, 7, 512, i as u64);
        check_against_reference(ty, 3, 256 * 3, 100 + i as u64);
    }
}

#[test]
fn simd_variants_equal_scalar_on_same_activations() {
    // With the same quantized activations the integer parts are exact, so only the order of
    // the float sums may differ. Batches of 1..=6 rows cover the 4-at-a-time kernels, their
    // remainders, and odd block counts (Q8_0 family pairs blocks on AVX-512).
    let mut rng = StdRng::seed_from_u64(7);
    for &ty in &TYPES {
        let mut shapes = vec![(1, 1024), (2, 768), (3, 1024), (4, 256 * 3), (5, 1024), (6, 256)];
        if blocks::is_small_block(ty) {
            shapes.extend([(1, 96), (3, 96), (5, 32)]); // odd block counts
        }
        for (n, cols) in shapes {
            let rows = 5;
            let data: Vec<u8> = (0..rows).flat_map(|_| random_row(ty, cols, &mut rng)).collect();
            let w = QMatrix::new(ty, rows, cols, &data).unwrap();
            let x = random_x(cols * n, &mut rng);
            for p in [Precision::Exact, Precision::Fast] {
                let prep = prepare_with(w.ty, cols, &x, n, p);
                let mut ys = vec![0f32; rows * n];
                matmul_rows(Isa::Scalar, &w, &prep, 0..rows, &mut ys);
                for isa in Isa::all_supported() {
                    let mut y = vec![f32::NAN; rows * n];
                    matmul_rows(isa, &w, &prep, 0..rows, &mut y);
                    for (i, (&a, &b)) in y.iter().zip(&ys).enumerate() {
                        let scale = b.abs().max(1.0);
                        assert!((a - b).abs() <= 1e-4 * scale, "{ty} {isa:?} {p:?} n {n} out {i}: {a} vs {b}");
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_equals_matvec_per_row_and_threads_agree() {
    let mut rng = StdRng::seed_from_u64(11);
    // Big enough (> PAR_MIN_BYTES) to take the parallel path.
    for &ty in &[Q8_0, Q4_K, F16] {
        let (rows, cols, n) = (300, 1024, 3);
        let data: Vec<u8> = (0..rows).flat_map(|_| random_row(ty, cols, &mut rng)).collect();
        let w = QMatrix::new(ty, rows, cols, &data).unwrap();
        let x = random_x(cols * n, &mut rng);
        let mut y = vec![0f32; rows * n];
        matmul(&w, &x, n, &mut y);
        for i in 0..n {
            let mut yi = vec![0f32; rows];
            matvec(&w, &x[i * cols..(i + 1) * cols], &mut yi);
            assert_eq!(&y[i * rows..(i + 1) * rows], &yi[..], "{ty} input row {i}");
            // A caller-chosen row range gives the same values.
            let mut part = vec![0f32; 50];
            matvec_rows(&w, &x[i * cols..(i + 1) * cols], 123..173, &mut part);
            assert_eq!(&part[..], &yi[123..173]);
        }
    }
}

/// FP8 test matrix: random bytes (NaN `S.1111.111` replaced by ±448) with one in eight taken
/// from the extremes (zeros, subnormals, the smallest normals, ±448), and random `scale_inv`
/// per 128×128 block.
fn random_fp8(rows: usize, cols: usize, rng: &mut StdRng) -> (Vec<u8>, Vec<f32>, Vec<u8>) {
    const SPECIAL: [u8; 12] = [0x00, 0x80, 0x01, 0x81, 0x07, 0x87, 0x08, 0x88, 0x7E, 0xFE, 0x77, 0xF7];
    let byte = |rng: &mut StdRng| match rng.gen::<u8>() {
        _ if rng.gen_range(0..8) == 0 => SPECIAL[rng.gen_range(0..SPECIAL.len())],
        b if b & 0x7F == 0x7F => b - 1,
        b => b,
    };
    let data: Vec<u8> = (0..rows * cols).map(|_| byte(rng)).collect();
    let nb = rows.div_ceil(128) * cols.div_ceil(128);
    let scales: Vec<f32> = (0..nb).map(|_| rng.gen_range(0.001..0.01)).collect();
    let sb: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
    (data, scales, sb)
}

/// Activations over a wide range of magnitudes (2^−20 … 2^12, both signs).
fn wide_x(n: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let sign = if rng.gen::<bool>() { 1.0 } else { -1.0 };
            sign * rng.gen_range(1.0f32..2.0) * 2f32.powi(rng.gen_range(-20..12))
        })
        .collect()
}

/// f64 reference of an FP8 matrix product with the tolerance of each precision. Exact (f32
/// activations): f32 rounding, 2·10^−5 of Σ|w·x| (as [`reference`]). Fast (bf16 activations,
/// `fp8.rs`): each x is rounded to bf16, 8 significant bits, round to nearest: |x̃ − x| ≤
/// 2^−8·|x| (half an ulp of 2^−7), so |Σw·x̃ − Σw·x| ≤ 2^−8·Σ|w·x|; plus the e4m3 subnormal weights the kernel counts
/// as zero (their whole |w·x|) and the same f32 rounding term.
fn fp8_reference(w: &QMatrix, x: &[f32], fast: bool) -> (Vec<f64>, Vec<f64>) {
    let dq = dequantize_matrix(w);
    let (mut y, mut tol) = (vec![0f64; w.rows], vec![1e-6f64; w.rows]);
    for r in 0..w.rows {
        for c in 0..w.cols {
            let p = dq[r * w.cols + c] as f64 * x[c] as f64;
            y[r] += p;
            tol[r] += p.abs() * 2e-5;
            if fast {
                tol[r] += p.abs() * if fp8::is_subnormal(w.data[r * w.cols + c]) { 1.0 } else { 2f64.powi(-8) };
            }
        }
    }
    (y, tol)
}

#[test]
fn fp8_block_scaled_matrix() {
    let mut rng = StdRng::seed_from_u64(5);
    let (rows, cols): (usize, usize) = (200, 300); // partial 128-blocks on both axes
    let (data, scales, sb) = random_fp8(rows, cols, &mut rng);
    let w = QMatrix::new_fp8(rows, cols, &data, &sb).unwrap();
    let dq = dequantize_matrix(&w);
    let (r, c) = (150, 260);
    assert_eq!(dq[r * cols + c], fp8_e4m3_to_f32(data[r * cols + c]) * scales[3 + 2]);
    let x = random_x(cols, &mut rng);
    for p in [Precision::Exact, Precision::Fast] {
        let (yr, tol) = fp8_reference(&w, &x, p == Precision::Fast);
        let prep = prepare_with(w.ty, cols, &x, 1, p);
        for isa in Isa::all_supported() {
            let mut y = vec![0f32; rows];
            matmul_rows(isa, &w, &prep, 0..rows, &mut y);
            for r in 0..rows {
                assert!((y[r] as f64 - yr[r]).abs() <= tol[r], "{isa:?} {p:?} row {r}: {} vs {}", y[r], yr[r]);
            }
        }
    }
    // Batches (decoded once per group of 4 activation rows) agree with one row at a time on the
    // same prepared activations, and with the scalar kernels (the same arithmetic up to the f32
    // sum order), in both precisions; the second shape is large enough for more than one cache
    // block of weight rows (rows × cols > 192 KB), with a row range not starting at 0.
    for (rows, cols, range) in [(200, 300, 0..200), (300, 1000, 5..290)] {
        let (data, _, sb) = random_fp8(rows, cols, &mut rng);
        let w = QMatrix::new_fp8(rows, cols, &data, &sb).unwrap();
        let n = 6;
        let xn = random_x(cols * n, &mut rng);
        for p in [Precision::Exact, Precision::Fast] {
            let prep = prepare_with(w.ty, cols, &xn, n, p);
            let mut ys = vec![0f32; range.len() * n];
            matmul_rows(Isa::Scalar, &w, &prep, range.clone(), &mut ys);
            for isa in Isa::all_supported() {
                let mut y = vec![f32::NAN; range.len() * n];
                matmul_rows(isa, &w, &prep, range.clone(), &mut y);
                for (i, (&a, &b)) in y.iter().zip(&ys).enumerate() {
                    assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{isa:?} {p:?} out {i}: {a} vs {b}");
                }
            }
            for i in 0..n {
                let pi = prepare_with(w.ty, cols, &xn[i * cols..(i + 1) * cols], 1, p);
                let mut yi = vec![0f32; rows];
                matmul_rows(Isa::best(), &w, &pi, 0..rows, &mut yi);
                for (k, r) in range.clone().enumerate() {
                    let b = ys[k * n + i];
                    assert!((yi[r] - b).abs() <= 1e-4 * b.abs().max(1.0), "{p:?} input {i} row {r}");
                }
            }
        }
    }
}

#[test]
fn fp8_bf16_kernel_matches_f32_reference() {
    // The bf16-activation kernel (AVX512_BF16 where the CPU has it, else its scalar model) on
    // random FP8 rows with extremes mixed in, column counts with partial 32- and 128-column
    // tails, 1–4 activation rows per call, activations over a wide range of magnitudes.
    let mut rng = StdRng::seed_from_u64(21);
    for cols in [32, 100, 128, 160, 300, 1024, 2048 + 64 + 17] {
        let rows = 9;
        let (data, _, sb) = random_fp8(rows, cols, &mut rng);
        let cb = cols.div_ceil(128);
        let scales: Vec<f32> =
            sb.chunks_exact(4).take(cb).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        for n in 1..=4 {
            let x = wide_x(cols * n, &mut rng);
            let xb = fp8::prepare_bf16(&x);
            let xs: Vec<&[u16]> = xb.chunks_exact(cols).collect();
            for isa in Isa::all_supported() {
                let f = simd::fp8_bf16_kernel(isa);
                for r in 0..rows {
                    let row = &data[r * cols..(r + 1) * cols];
                    let mut out = [f32::NAN; 4];
                    f(row, &scales, &xs, &mut out[..n]);
                    for i in 0..n {
                        let xi = &x[i * cols..(i + 1) * cols];
                        let one = QMatrix::new_fp8(1, cols, row, &sb[..4 * cb]).unwrap();
                        let (yr, tol) = fp8_reference(&one, xi, true);
                        let err = (out[i] as f64 - yr[0]).abs();
                        assert!(err <= tol[0], "{isa:?} cols {cols} n {n} row {r} act {i}: {} vs {}", out[i], yr[0]);
                        // And the scalar model of the same arithmetic, to the f32 sum order.
                        let m = fp8::dot_row_ref(row, &scales, xs[i]);
                        let mag: f64 = row
                            .iter()
                            .zip(xi)
                            .map(|(&q, &v)| (fp8_e4m3_to_f32(q) as f64 * v as f64).abs())
                            .sum::<f64>()
                            * scales.iter().fold(0f32, |a, &b| a.max(b)) as f64;
                        assert!(
                            (out[i] as f64 - m as f64).abs() <= 1e-5 * mag + 1e-30,
                            "{isa:?} cols {cols} n {n} row {r} act {i}: {} vs model {m}",
                            out[i]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn fp8_bf16_extremes() {
    // All-subnormal rows count as zero; the smallest normals (2^−6, bf16 2^−126 in the kernel)
    // with small activations are not flushed; ±448 with large activations do not overflow.
    let cols = 256;
    let scales = [0.5f32, 0.25];
    let cases: [(u8, f32); 4] = [(0x07, 1.0), (0x08, 2f32.powi(-40)), (0x88, 3e-3), (0x7E, 6e4)];
    for (byte, xv) in cases {
        let row = vec![byte; cols];
        let x: Vec<f32> = (0..cols).map(|c| if c.is_multiple_of(3) { -xv } else { xv }).collect();
        let want: f64 = if fp8::is_subnormal(byte) {
            0.0
        } else {
            (0..cols).map(|c| fp8_e4m3_to_f32(byte) as f64 * scales[c / 128] as f64 * x[c] as f64).sum()
        };
        let xb = fp8::prepare_bf16(&x);
        for isa in Isa::all_supported() {
            let mut out = [f32::NAN];
            simd::fp8_bf16_kernel(isa)(&row, &scales, &[&xb], &mut out);
            // x is exact in bf16 here except 3e-3 (relative error ≤ 2^−8).
            assert!(
                (out[0] as f64 - want).abs() <= want.abs() * 2f64.powi(-8) + 1e-30 && out[0].is_finite(),
                "{isa:?} byte {byte:#x} x {xv}: {} vs {want}",
                out[0]
            );
            if want != 0.0 {
                assert!(out[0] != 0.0, "{isa:?} byte {byte:#x} flushed");
            }
        }
    }
}

#[test]
fn validation_rejects_wrong_shapes() {
    let data = vec![0u8; 144 * 2];
    assert!(QMatrix::new(Q4_K, 2, 256, &data).is_ok());
    assert!(QMatrix::new(Q4_K, 3, 256, &data).is_err());
    assert!(QMatrix::new(Q4_K, 1, 512 + 32, &data).is_err());
    assert!(QMatrix::new(IQ2_XXS, 1, 256, &data[..66]).is_err());
    assert!(QMatrix::new_fp8(2, 2, &[0; 4], &[0; 4]).is_ok());
    assert!(QMatrix::new_fp8(2, 2, &[0; 4], &[0; 8]).is_err());
}

#[test]
fn activations_prepared_for_another_family_are_refused() {
    let mut rng = StdRng::seed_from_u64(3);
    let x = random_x(256, &mut rng);
    let p = prepare_with(WeightType::Ggml(Q4_K), 256, &x, 1, Precision::Fast);
    assert!(p.suits(WeightType::Ggml(Q6_K)));
    assert!(!p.suits(WeightType::Ggml(Q8_0)));
    assert!(!p.suits(WeightType::Fp8E4M3Block128));
    let exact = prepare_with(WeightType::Ggml(Q4_K), 256, &x, 1, Precision::Exact);
    assert!(exact.suits(WeightType::Ggml(Q8_0)) && exact.suits(WeightType::Fp8E4M3Block128));
}

/// Single-thread compute throughput of the FP8 kernels on cache-resident weights (GB/s of
/// weight bytes), next to Q8_0 and Q4_K on the same thread: FP8 with bf16 activations (Fast
/// on AVX512_BF16 CPUs), FP8 with f32 activations (the f16-decoding kernel), per batch size.
/// `cargo test -p hy-engine --release fp8_compute_throughput -- --ignored --nocapture`
#[test]
#[ignore]
fn fp8_compute_throughput() {
    use std::time::Instant;
    let cols = 7168;
    let kb: usize = std::env::var("HY_BENCH_KB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let mut rng = StdRng::seed_from_u64(1);
    let isa = Isa::best();
    let time = |w: &QMatrix, p: &Prepared| {
        let mut out = vec![0f32; w.rows * p.n];
        let mut best = f64::MAX;
        for _ in 0..7 {
            let t = Instant::now();
            let mut reps = 0;
            while t.elapsed().as_secs_f64() < 0.05 {
                matmul_rows(isa, w, p, 0..w.rows, &mut out);
                reps += 1;
            }
            best = best.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        w.data.len() as f64 / best / 1e9
    };
    println!("isa {isa:?}, {kb} KB of weights, cols {cols}, GB/s of weights on one thread");
    for n in [1, 2, 4, 8] {
        let x = random_x(cols * n, &mut rng);
        let rows = kb * 1024 / cols;
        let (data, _, sb) = random_fp8(rows, cols, &mut rng);
        let w = QMatrix::new_fp8(rows, cols, &data, &sb).unwrap();
        let bf = time(&w, &prepare_with(w.ty, cols, &x, n, Precision::Fast));
        let f32a = time(&w, &prepare_with(w.ty, cols, &x, n, Precision::Exact));
        let mut line = format!("n {n}: fp8 bf16-act {bf:6.1}  fp8 f32-act {f32a:6.1}");
        for ty in [Q8_0, Q4_K] {
            let rows = kb * 1024 / ty.bytes_for(cols as u64).unwrap() as usize;
            let data: Vec<u8> = (0..rows).flat_map(|_| random_row(ty, cols, &mut rng)).collect();
            let w = QMatrix::new(ty, rows, cols, &data).unwrap();
            line += &format!("  {ty} {:6.1}", time(&w, &prepare_with(w.ty, cols, &x, n, Precision::Fast)));
        }
        println!("{line}");
    }
}
