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

#[test]
fn fp8_block_scaled_matrix() {
    let mut rng = StdRng::seed_from_u64(5);
    let (rows, cols): (usize, usize) = (200, 300); // partial 128-blocks on both axes
    let data: Vec<u8> = (0..rows * cols).map(|_| rng.gen::<u8>() & 0xF7).collect(); // no NaN
    let nb = rows.div_ceil(128) * cols.div_ceil(128);
    let scales: Vec<f32> = (0..nb).map(|_| rng.gen_range(0.001..0.01)).collect();
    let sb: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
    let w = QMatrix::new_fp8(rows, cols, &data, &sb).unwrap();
    let dq = dequantize_matrix(&w);
    let (r, c) = (150, 260);
    assert_eq!(dq[r * cols + c], fp8_e4m3_to_f32(data[r * cols + c]) * scales[3 + 2]);
    let x = random_x(cols, &mut rng);
    let (yr, tol) = reference(&w, &x, false);
    for isa in Isa::all_supported() {
        let mut y = vec![0f32; rows];
        matvec_with(isa, &w, &x, &mut y);
        for r in 0..rows {
            assert!((y[r] as f64 - yr[r]).abs() <= tol[r], "{isa:?} row {r}");
        }
    }
    // Batches (decoded once per group of 4 activation rows) agree with one row at a time.
    let n = 6;
    let xn = random_x(cols * n, &mut rng);
    for isa in Isa::all_supported() {
        let mut y = vec![0f32; rows * n];
        matmul_with(isa, &w, &xn, n, &mut y);
        for i in 0..n {
            let mut yi = vec![0f32; rows];
            matvec_with(Isa::Scalar, &w, &xn[i * cols..(i + 1) * cols], &mut yi);
            for r in 0..rows {
                let (a, b) = (y[i * rows + r], yi[r]);
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{isa:?} input {i} row {r}: {a} vs {b}");
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
