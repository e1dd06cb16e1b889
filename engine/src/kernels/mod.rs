//! Compute kernels. Every kernel has a scalar reference; SIMD variants (AVX2, AVX-512) are
//! picked at run time from CPU features and tested against the reference.
//!
//! CONTRACT (used by models/, do not change signatures without updating callers):
//! - [`QMatrix`]: a row-major weight matrix view (`rows` × `cols`) in some [`WeightType`].
//! - [`matvec`]: `y = W · x` (x has `cols` values, y has `rows`).
//! - [`matmul`]: `Y = X · Wᵀ` for `n` input rows (X is n × cols, Y is n × rows), reading W once.
//! - [`dequantize_row`]: one row of a GGML type to f32.
//! - [`set_precision`]: `Exact` computes with f32 activations (for `hy logits`), `Fast` quantizes
//!   activations to Q8 where the weight format is meant to be used that way (as llama.cpp).

use crate::dtype::GgmlType;

/// Storage format of a weight matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightType {
    Ggml(GgmlType),
    /// float8 e4m3 weights with an f32 `scale_inv` per 128×128 block (DeepSeek FP8 release).
    Fp8E4M3Block128,
}

/// A row-major weight matrix view.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub ty: WeightType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    /// FP8 only: little-endian f32 `scale_inv`, shape [ceil(rows/128), ceil(cols/128)].
    pub block_scales: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fast,
    Exact,
}
