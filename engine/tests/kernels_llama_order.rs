//! llama.cpp's summation order (`quant::set_llama_order`) against the default order. In a test
//! binary of its own: the order is a process-wide switch, and flipping it while the library's
//! other tests run on parallel threads could change their results between two computations
//! they compare.

use hy_engine::kernels::quant::set_llama_order;
use hy_engine::kernels::{matmul, QMatrix};
use hy_engine::synth::fill_random;
use hy_engine::GgmlType;

#[test]
fn llama_order_agrees_with_the_default_order() {
    let (rows, cols) = (24, 512);
    // Activations of ±64 at most put the outputs at a few units, where the tolerance below
    // is relative.
    let mut raw = vec![0u8; 9 * cols * 4];
    fill_random(GgmlType::F32, &mut raw, 12345);
    let x: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * 3200.0).collect();
    for ty in [GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        let mut data = vec![0u8; rows * cols / ty.block_size() * ty.type_size()];
        fill_random(ty, &mut data, 7);
        let w = QMatrix::new(ty, rows, cols, &data).unwrap();
        for n in [1, 2, 4, 9] {
            let (mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows]);
            set_llama_order(false);
            matmul(&w, &x[..n * cols], n, &mut a);
            set_llama_order(true);
            matmul(&w, &x[..n * cols], n, &mut b);
            set_llama_order(false);
            assert!(a.iter().any(|v| v.abs() > 0.5), "{ty:?} n={n}: outputs too small to compare");
            for (u, v) in a.iter().zip(&b) {
                assert!((u - v).abs() <= 1e-4 * u.abs().max(1.0), "{ty:?} n={n}: {u} vs {v}");
            }
        }
    }
}
