//! k-quant weights × several rows of Q8_K activations (prompt prefill, decode batches),
//! AVX-512.
//!
//! The row kernels (`avx512::dot_k`) unpack a weight block once for up to four activation
//! rows and, for Q4_K, sum each block horizontally (llama.cpp's order). Here a block is
//! unpacked once for up to eight, and every product is accumulated in vector form: per block and activation row, `acc += (d·d_a) · Σ` over sixteen i32 lanes, and one
//! horizontal sum at the end of the weight row. With many rows the work is arithmetic, not
//! bandwidth: horizontal sums per block (which the row kernels do for Q4_K, to follow
//! llama.cpp's order) and unpacking cost as much as the multiplies themselves.
//!
//! Tried and measured on the 16-core Xeon (session 4, `kernel_bench --batch 2,3,4,8,16`):
//! `vpdpbusd` on the quants (64 products per instruction) with `vpackssdw` to i16 and one
//! `vpdpwssd` per two chunks for the group scales, and the mins as one f32 multiply-add per
//! block from precomputed `Σx · d` per group. Fewer multiply instructions, but at 16 threads
//! it was within ±7% of this kernel and on one thread 1.1–1.7× slower (the packs and scale
//! permutes all go to one port there, while the i16/i32 multiplies issue on two).
//!
use std::arch::x86_64::*;

use super::avx2::{as_bytes, as_bytes_i16};
use super::avx512::{k_block512, load64, prefetch_block, SCALE_IDX};
use super::quant::BlockQ8K;
use super::unpack::ty;
use crate::dtype::GgmlType;

/// Activation rows per kernel call.
pub const GROUP: usize = 8;

/// Whether [`dot`] runs on this CPU (AVX-512 F/BW/VL and VNNI).
pub fn supported() -> bool {
    super::simd::vnni_supported()
}

/// `out[i] = row · acts[i]` for one weight row of k-quant type `t` and up to [`GROUP`]
/// activation rows (the matmul driver, `matvec::matmul_rows`, cache-blocks the calls).
///
/// # Panics
/// When [`supported`] is false, `t` is not a k-quant or `acts` is empty or longer than
/// [`GROUP`] (callers check all three).
pub fn dot(t: GgmlType, row: &[u8], acts: &[&[BlockQ8K]], out: &mut [f32]) {
    assert!(supported(), "gemm::dot needs AVX-512 VNNI");
    assert!((1..=GROUP).contains(&acts.len()) && out.len() >= acts.len());
    // SAFETY: VNNI (and with it AVX-512 F/BW/VL; AVX2/FMA/F16C) checked above.
    unsafe { dot_group(t, row, acts, out) }
}

/// One weight row · up to [`GROUP`] activation rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_group(t: GgmlType, row: &[u8], a: &[&[BlockQ8K]], out: &mut [f32]) {
    macro_rules! by_n {
        ($T:expr) => {
            // SAFETY (all arms): same features; N = a.len() (1..=GROUP).
            unsafe {
                match a.len() {
                    1 => dot_n::<{ $T }, 1>(row, a, out),
                    2 => dot_n::<{ $T }, 2>(row, a, out),
                    3 => dot_n::<{ $T }, 3>(row, a, out),
                    4 => dot_n::<{ $T }, 4>(row, a, out),
                    5 => dot_n::<{ $T }, 5>(row, a, out),
                    6 => dot_n::<{ $T }, 6>(row, a, out),
                    7 => dot_n::<{ $T }, 7>(row, a, out),
                    _ => dot_n::<{ $T }, 8>(row, a, out),
                }
            }
        };
    }
    match t {
        GgmlType::Q2_K => by_n!(GgmlType::Q2_K as u32),
        GgmlType::Q3_K => by_n!(GgmlType::Q3_K as u32),
        GgmlType::Q4_K => by_n!(GgmlType::Q4_K as u32),
        GgmlType::Q5_K => by_n!(GgmlType::Q5_K as u32),
        GgmlType::Q6_K => by_n!(GgmlType::Q6_K as u32),
        _ => panic!("gemm::dot: {t:?} is not a k-quant"),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_n<const T: u32, const N: usize>(row: &[u8], acts: &[&[BlockQ8K]], out: &mut [f32]) {
    let t = ty(T);
    let idx0 = load64(as_bytes_i16(&SCALE_IDX));
    let mut acc = [_mm512_setzero_ps(); N];
    let mut accm = [_mm256_setzero_ps(); N];
    // With a few activation rows (a decode batch) the weights stream from memory, as in the
    // row kernels; prefetch as they do.
    let pf = if N < GROUP { super::simd::prefetch_distance() } else { 0 };
    for (k, b) in row.chunks_exact(t.type_size()).enumerate() {
        prefetch_block(b, pf);
        let (s, q, scv) = k_block512::<T>(b, idx0);
        for i in 0..N {
            let a = &acts[i][k];
            let mut isum = _mm512_setzero_si512();
            for c in 0..4 {
                let y = load64(as_bytes(&a.qs[64 * c..64 * c + 64]));
                isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(q[c], y), scv[c]);
            }
            // SAFETY: 32 readable bytes (16 i16 bsums).
            let bs = unsafe { _mm256_loadu_si256(a.bsums.as_ptr() as *const __m256i) };
            let msum = _mm256_madd_epi16(bs, s.mn);
            acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(s.d * a.d), _mm512_cvtepi32_ps(isum), acc[i]);
            accm[i] = _mm256_fmadd_ps(_mm256_set1_ps(s.dmin * a.d), _mm256_cvtepi32_ps(msum), accm[i]);
        }
    }
    for i in 0..N {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(accm[i]), _mm256_extractf128_ps(accm[i], 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
        out[i] = _mm512_reduce_add_ps(acc[i]) - _mm_cvtss_f32(s1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::quantize_q8_k;
    use crate::kernels::scalar;

    #[test]
    fn many_rows_match_the_scalar_reference() {
        if !supported() {
            eprintln!("skipped: no AVX-512 VNNI");
            return;
        }
        for n in [2, 3, 13] {
            // 13: one full group of 8 and a tail of 5.
            check_rows(n);
        }
    }

    fn check_rows(n: usize) {
        let cols = 512;
        let x = crate::kernels::tests::uniform(n * cols, 12345);
        let acts = quantize_q8_k(&x);
        for t in [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
            let rows = 3;
            let rb = cols / 256 * t.type_size();
            let mut data = vec![0u8; rows * rb];
            crate::synth::fill_random(t, &mut data, 9);
            let mut out = vec![0f32; rows * n];
            let act_rows: Vec<&[BlockQ8K]> = acts.chunks_exact(cols / 256).collect();
            for (row, o) in data.chunks_exact(rb).zip(out.chunks_exact_mut(n)) {
                for (a, og) in act_rows.chunks(GROUP).zip(o.chunks_mut(GROUP)) {
                    dot(t, row, a, og);
                }
            }
            for r in 0..rows {
                for i in 0..n {
                    let want = scalar::dot_k_row(t, &data[r * rb..(r + 1) * rb], &acts[i * 2..(i + 1) * 2]);
                    let got = out[r * n + i];
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1e-3),
                        "{t:?} row {r} act {i}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
