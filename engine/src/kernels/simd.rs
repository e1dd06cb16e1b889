//! Run-time selection of row kernels per ISA and weight type.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use super::matvec::{reference, Isa};
use super::quant::{BlockQ8K, BlockQ8_0};
use crate::dtype::GgmlType;

/// Most activation rows one call of a [`KFn`]/[`SFn`] takes (each weight block is unpacked
/// once for all of them).
pub const MAX_ACTS: usize = 4;

/// k-quant row · up to [`MAX_ACTS`] rows of Q8_K activations: `out[i] = row · acts[i]`.
pub type KFn = fn(GgmlType, &[u8], &[&[BlockQ8K]], &mut [f32]);
/// Q4_0-family row · up to [`MAX_ACTS`] rows of Q8_0 activations.
pub type SFn = fn(GgmlType, &[u8], &[&[BlockQ8_0]], &mut [f32]);
/// Any row · f32 activations.
pub type FFn = fn(GgmlType, &[u8], &[f32]) -> f32;
/// FP8 row, per-128-column scales, up to [`MAX_ACTS`] rows of activations of type `A`.
pub type Fp8RowFn<A> = fn(&[u8], &[f32], &[&[A]], &mut [f32]);
/// FP8 row · f32 activations.
pub type Fp8Fn = Fp8RowFn<f32>;
/// FP8 row · scaled bf16 activations (see `fp8.rs`).
pub type Fp8Bf16Fn = Fp8RowFn<u16>;

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

pub fn vnni_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512_supported() && is_x86_feature_detected!("avx512vnni")
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

/// AVX-512 F/BW/VL plus AVX512_BF16 (`vdpbf16ps`, used by the FP8 kernel in Fast precision).
pub fn bf16_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512_supported() && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether Fast precision prepares FP8 activations as bf16 for the AVX512_BF16 kernel: the
/// CPU has it, `HY_ISA` allows AVX-512, and `HY_FP8_ACT=f32` does not ask for the f32/f16
/// kernel instead (for comparisons). Decided once per process.
pub fn fp8_bf16_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        bf16_supported()
            && matches!(Isa::best(), Isa::Avx512 | Isa::Avx512Vnni)
            && std::env::var("HY_FP8_ACT").as_deref() != Ok("f32")
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! Safe wrappers: only reachable through the tables below, which hand them out only for an
    //! ISA that `Isa::supported` confirmed on this CPU.
    use super::super::{avx2, avx512, fp8};
    use super::*;

    pub fn k_avx2(t: GgmlType, row: &[u8], a: &[&[BlockQ8K]], out: &mut [f32]) {
        assert!((1..=MAX_ACTS).contains(&a.len()) && out.len() >= a.len());
        // SAFETY: handed out only when AVX2/FMA/F16C were detected; t is a k-quant.
        unsafe { avx2::dot_k(t, row, a, out) }
    }
    pub fn s_avx2(t: GgmlType, row: &[u8], a: &[&[BlockQ8_0]], out: &mut [f32]) {
        assert!((1..=MAX_ACTS).contains(&a.len()) && out.len() >= a.len());
        // SAFETY: as above; t is a Q4_0-family type.
        unsafe { avx2::dot_s(t, row, a, out) }
    }
    pub fn f_avx2(t: GgmlType, row: &[u8], x: &[f32]) -> f32 {
        // SAFETY: as above; t is F32/F16/BF16.
        unsafe { avx2::dot_float(t, row, x) }
    }
    pub fn fp8_avx2(row: &[u8], scales: &[f32], xs: &[&[f32]], out: &mut [f32]) {
        for (o, x) in out.iter_mut().zip(xs) {
            // SAFETY: as above.
            *o = unsafe { avx2::dot_fp8(row, scales, x) };
        }
    }
    pub fn k_avx512(t: GgmlType, row: &[u8], a: &[&[BlockQ8K]], out: &mut [f32]) {
        assert!((1..=MAX_ACTS).contains(&a.len()) && out.len() >= a.len());
        // SAFETY: handed out only when AVX-512 F/BW/VL (and AVX2/FMA/F16C) were detected.
        unsafe { avx512::dot_k(t, row, a, out, false) }
    }
    pub fn k_avx512vnni(t: GgmlType, row: &[u8], a: &[&[BlockQ8K]], out: &mut [f32]) {
        assert!((1..=MAX_ACTS).contains(&a.len()) && out.len() >= a.len());
        // SAFETY: handed out only when AVX-512 F/BW/VL/VNNI (and AVX2/FMA/F16C) were detected.
        unsafe { avx512::dot_k(t, row, a, out, true) }
    }
    pub fn s_avx512(t: GgmlType, row: &[u8], a: &[&[BlockQ8_0]], out: &mut [f32]) {
        assert!((1..=MAX_ACTS).contains(&a.len()) && out.len() >= a.len());
        // SAFETY: as above.
        unsafe { avx512::dot_s(t, row, a, out) }
    }
    pub fn f_avx512(t: GgmlType, row: &[u8], x: &[f32]) -> f32 {
        // SAFETY: as above.
        unsafe { avx512::dot_float(t, row, x) }
    }
    pub fn fp8_avx512(row: &[u8], scales: &[f32], xs: &[&[f32]], out: &mut [f32]) {
        assert!((1..=MAX_ACTS).contains(&xs.len()) && out.len() >= xs.len());
        // SAFETY: as above.
        unsafe { avx512::dot_fp8(row, scales, xs, out) }
    }
    pub fn fp8_bf16(row: &[u8], scales: &[f32], xs: &[&[u16]], out: &mut [f32]) {
        // SAFETY: handed out only when AVX-512 F/BW/VL and AVX512_BF16 were detected; the
        // kernel checks the lengths.
        unsafe { fp8::x86::dot(row, scales, xs, out) }
    }
}

/// Software prefetch distance in bytes for the quantized kernels (0 = off). Set from the
/// `HY_PREFETCH` environment variable once per process; default 2048 (the best of 0, 512,
/// 1024, 2048 and 4096 on a 16-core Xeon at batch 1: Q4_K 65 → 85 GB/s).
pub fn prefetch_distance() -> usize {
    static DIST: AtomicUsize = AtomicUsize::new(usize::MAX);
    let d = DIST.load(Ordering::Relaxed);
    if d != usize::MAX {
        return d;
    }
    let d = std::env::var("HY_PREFETCH").ok().and_then(|v| v.parse().ok()).unwrap_or(2048);
    DIST.store(d, Ordering::Relaxed);
    d
}

fn is_float(t: GgmlType) -> bool {
    matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

pub fn k_kernel(isa: Isa, _t: GgmlType) -> KFn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::k_avx2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::k_avx512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => x86::k_avx512vnni,
        _ => reference::k,
    }
}

pub fn s_kernel(isa: Isa, _t: GgmlType) -> SFn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::s_avx2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vnni => x86::s_avx512,
        _ => reference::s,
    }
}

/// f32-activation kernels: SIMD for float rows; quantized rows in Exact mode keep the scalar
/// dequantize-and-dot path (used for reference logits, not for speed).
pub fn f_kernel(isa: Isa, t: GgmlType) -> FFn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if is_float(t) => x86::f_avx2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vnni if is_float(t) => x86::f_avx512,
        _ => reference::f,
    }
}

pub fn fp8_kernel(isa: Isa) -> Fp8Fn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::fp8_avx2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vnni => x86::fp8_avx512,
        _ => reference::fp8,
    }
}

/// Kernel for bf16-prepared FP8 activations: AVX512_BF16 where the ISA is AVX-512 and the CPU
/// has it, else the scalar model of the same arithmetic.
pub fn fp8_bf16_kernel(isa: Isa) -> Fp8Bf16Fn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vnni if bf16_supported() => x86::fp8_bf16,
        _ => reference::fp8_bf16,
    }
}
