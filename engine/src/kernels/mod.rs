//! Compute kernels. Every kernel has a scalar reference; SIMD variants (AVX2, AVX-512) are
//! picked at run time from CPU features and tested against the reference.
//!
//! CONTRACT (used by models/, do not change signatures without updating callers):
//! - [`QMatrix`]: a row-major weight matrix view (`rows` × `cols`) in some [`WeightType`].
//! - [`matvec()`]: `y = W · x` (x has `cols` values, y has `rows`).
//! - [`matmul`]: `Y = X · Wᵀ` for `n` input rows (X is n × cols, Y is n × rows), reading W once.
//! - [`dequantize_row`]: one row of a GGML type to f32.
//! - [`set_precision`]: `Exact` computes with f32 activations (for `hy logits`), `Fast` quantizes
//!   activations to Q8 where the weight format is meant to be used that way (as llama.cpp), and
//!   rounds them to bf16 for FP8 weights on AVX512_BF16 CPUs ([`fp8`]).
//!
//! Shapes come from model code: validate each matrix once at load with [`QMatrix::new`] /
//! [`QMatrix::validate`]; the products then only `debug_assert` shapes (slicing stays
//! bounds-checked, so a wrong shape can never read out of bounds).
//!
//! Supported weights: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K,
//! Q6_K, and FP8 e4m3 with 128×128 block `scale_inv`. Fast mode quantizes activations to
//! Q8_0 (32-weight block types) or Q8_K (k-quants), and for FP8 rounds them to bf16 where the
//! CPU has AVX512_BF16 (`vdpbf16ps`; f32 otherwise); float weights always use f32 activations.
//! Exact mode dequantizes block by block and sums in f32 lanes + f64.
//!
//! Running on your own threads (per-NUMA pools): call [`prepare`] once per layer input, then
//! on each thread [`matmul_rows`]`(Isa::best(), &w, &prepared, rows, out)` for the contiguous
//! rows it owns (`out` is rows.len() × n, one weight row's n outputs together). With n > 1
//! each weight block is unpacked once for up to four activation rows and read from memory
//! once for all n.
//!
//! On CPUs with AMX, Fast products of quantized weights with 16 or more activation rows run
//! on the tiles in bf16 ([`amx`]), and Q4_K products with 8 to 47 rows on the int8 tiles
//! ([`amx_q4k`]).
//!
//! Routed experts in Q4_K or Q6_K are repacked at load, 16 rows interleaved
//! ([`WeightType::X16`], [`x16`]), when the model is copied into memory on an AVX-512 VNNI
//! CPU in Fast precision: their products run on the 16-row VNNI kernels, which serve the few
//! tokens a prompt gives each expert better than the row-major kernels and the tiles, and
//! from 48 activation rows on the AMX bf16 tiles (`x16::tiles`). On CPUs without AMX the
//! layer matrices used only in products, and Q4_0/Q5_0/Q8_0 too, take the layout (the
//! loader decides, `models::loader`). Exact precision and other ISAs unpack the rows they
//! need.
//!
//! Environment: `HY_ISA=scalar|avx2|avx512|avx512vnni` caps the instruction set ([`Isa::best`]);
//! `HY_AMX=0` turns the AMX paths off and `HY_AMX_MIN=<rows>` moves the bf16 threshold;
//! `HY_AMX_I8=0` turns the int8 path off, `HY_AMX_I8_MIN`/`HY_AMX_I8_MAX` move its range;
//! `HY_REPACK=0` keeps routed experts in the file's layout, `HY_X16_TILES_MIN=<rows>` moves the
//! threshold of the repacked layout's AMX tiles (default 48);
//! `HY_PREFETCH=<bytes>` sets the software prefetch distance of the quantized kernels
//! (default 2048, 0 = off); `HY_FP8_ACT=f32` keeps Fast-mode FP8 on f32 activations (the
//! f16-decoding kernel) instead of bf16, for comparisons. Speed: `cargo run --release -p
//! hy-engine --example kernel_bench`.

#[cfg(target_arch = "x86_64")]
pub mod amx;
#[cfg(target_arch = "x86_64")]
pub mod amx_q4k;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod bench;
pub mod blocks;
pub mod dequant;
pub mod fp;
pub mod fp8;
#[cfg(target_arch = "x86_64")]
pub mod gemm;
pub mod matvec;
pub mod quant;
pub mod scalar;
pub mod simd;
#[cfg(target_arch = "x86_64")]
mod unpack;
pub mod x16;

use crate::dtype::GgmlType;

pub use dequant::{dequantize_fp8_e4m3, dequantize_row};
pub use fp::{bf16_to_f32, f16_to_f32, fp8_e4m3_to_f32};
pub use matvec::{
    dequantize_matrix, matmul, matmul_rows, matmul_with, matvec, matvec_rows, matvec_with, precision, prepare,
    prepare_on_pool, prepare_with, runs_on_amx, set_precision, Isa, Prepared,
};
pub use scalar::dot_f32;

/// Storage format of a weight matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightType {
    Ggml(GgmlType),
    /// float8 e4m3 weights with an f32 `scale_inv` per 128×128 block (DeepSeek FP8 release).
    Fp8E4M3Block128,
    /// Rows of a GGML type repacked 16 at a time for the 16-row kernels ([`x16`]: Q4_K, Q6_K,
    /// Q4_0, Q5_0, Q8_0), as the loader repacks matrices copied into memory in Fast precision
    /// on AVX-512 VNNI CPUs. Same bytes per row as the type.
    X16(GgmlType),
}

impl WeightType {
    /// The file's storage type of a repacked layout (itself otherwise).
    pub fn unpacked(self) -> WeightType {
        match self {
            WeightType::X16(t) => WeightType::Ggml(t),
            other => other,
        }
    }
}

/// A weight matrix view: `rows` × `cols`, row-major (or, for [`WeightType::X16`], in groups of
/// 16 rows interleaved, each group where its rows would be).
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

/// Why a kernel input was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("tensor type {0} is not supported by the kernels (supported: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K, FP8 e4m3)")]
    Unsupported(&'static str),
    #[error("{n} values is not a whole number of {ty} blocks")]
    NotBlockMultiple { ty: &'static str, n: usize },
    #[error("{what}: expected {expected}, got {got}")]
    Length { what: &'static str, expected: usize, got: usize },
}

impl<'a> QMatrix<'a> {
    /// A validated view of a GGML-typed matrix.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, KernelError> {
        let m = QMatrix { ty: WeightType::Ggml(ty), rows, cols, data, block_scales: &[] };
        m.validate()?;
        Ok(m)
    }

    /// A validated view of an FP8 e4m3 matrix with 128×128 block `scale_inv` (f32 LE bytes).
    pub fn new_fp8(rows: usize, cols: usize, data: &'a [u8], block_scales: &'a [u8]) -> Result<Self, KernelError> {
        let m = QMatrix { ty: WeightType::Fp8E4M3Block128, rows, cols, data, block_scales };
        m.validate()?;
        Ok(m)
    }

    /// Checks the type is supported and the byte lengths match the shape.
    pub fn validate(&self) -> Result<(), KernelError> {
        match self.ty {
            WeightType::Ggml(t) => {
                dequant::check_row(t, self.row_bytes(), self.cols)?;
                expect_len("matrix bytes", self.rows * self.row_bytes(), self.data.len())
            }
            WeightType::X16(t) => {
                dequant::check_row(t, self.row_bytes(), self.cols)?;
                if !x16::fits(t, self.rows, self.cols) {
                    return Err(KernelError::NotBlockMultiple { ty: "16-row repacked", n: self.rows });
                }
                expect_len("matrix bytes", self.rows * self.row_bytes(), self.data.len())
            }
            WeightType::Fp8E4M3Block128 => {
                expect_len("fp8 matrix bytes", self.rows * self.cols, self.data.len())?;
                let blocks = self.rows.div_ceil(128) * self.cols.div_ceil(128);
                expect_len("fp8 scale_inv bytes", blocks * 4, self.block_scales.len())
            }
        }
    }

    /// Bytes of one row (0 when `cols` is not a whole number of blocks; `validate` says so).
    pub fn row_bytes(&self) -> usize {
        match self.ty {
            WeightType::Ggml(t) | WeightType::X16(t) => t.bytes_for(self.cols as u64).unwrap_or(0) as usize,
            WeightType::Fp8E4M3Block128 => self.cols,
        }
    }
}

fn expect_len(what: &'static str, expected: usize, got: usize) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::Length { what, expected, got })
    }
}

/// `y += a · x`.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

#[cfg(test)]
pub(crate) mod tests;
