//! Run-time selection of row kernels per ISA and weight type.

use super::matvec::{reference, Isa};
use super::quant::{BlockQ8K, BlockQ8_0};
use crate::dtype::GgmlType;

/// k-quant row · Q8_K activations.
pub type KFn = fn(GgmlType, &[u8], &[BlockQ8K]) -> f32;
/// Q4_0-family row · Q8_0 activations.
pub type SFn = fn(GgmlType, &[u8], &[BlockQ8_0]) -> f32;
/// Any row · f32 activations.
pub type FFn = fn(GgmlType, &[u8], &[f32]) -> f32;
/// FP8 row, per-128-column scales, f32 activations.
pub type Fp8Fn = fn(&[u8], &[f32], &[f32]) -> f32;

pub fn avx2_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub fn avx512_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2_supported()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub fn k_kernel(_isa: Isa, _t: GgmlType) -> KFn {
    reference::k
}

pub fn s_kernel(_isa: Isa, _t: GgmlType) -> SFn {
    reference::s
}

pub fn f_kernel(_isa: Isa, _t: GgmlType) -> FFn {
    reference::f
}

pub fn fp8_kernel(_isa: Isa) -> Fp8Fn {
    reference::fp8
}
