//! Weights repacked 16 rows at a time (Q4_K and Q6_K, the types of a Q4_K_M file's routed
//! experts; Q4_0, Q5_0 and Q8_0 in [`small`]), so one AVX-512 register holds the same four
//! weights of 16 rows and
//! `vpdpbusd` multiplies all 16 rows by one broadcast dword of an activation row: no
//! horizontal sums, no per-row scale shuffles, and each weight register serves every
//! activation row of a small batch (the few tokens of a prompt routed to one expert).
//!
//! The row-major kernels (`gemm::dot_n`) spend two multiply instructions per 64 weights per
//! activation row (`vpmaddubsw` + `vpdpwssd`, both on one port of the Xeon) plus a horizontal
//! reduction per row; here it is one `vpdpbusd` per 64 weights per activation row, and one
//! conversion and multiply-add per sub-block for 16 rows at once. llama.cpp's repacking CPU
//! backend and KTransformers interleave rows for the same reason (their layouts differ; these
//! are ours, described in [`q4k`] and [`q6k`]).
//!
//! Measured on the 16-core Xeon (`kernel_bench --mb 512 --threads 16`, same run, ms per
//! 512 MB of Q4_K): 6.7 against 8.8 at 2 activation rows, 8.1 against 13.6 at 4, 10.5 against
//! 16.1 (int8 tiles) at 8, 17.8 against 22.3 at 16; at one row 96% of the plain read. From
//! [`tiles::min_rows`] (48) activation rows the products take the AMX bf16 tiles ([`tiles`]):
//! per 256 MB of Q4_K, 16.9 against the row-major layout's 20.7 ms at 48 rows, 25.3 against
//! 26.4 at 64, but 45.5 against 33.3 at 128 and 98.6 against 58.3 at 256 (Q6_K: 16.0 / 21.0 /
//! 32.0 / 64.6 against 17.9 / 20.0 / 26.6 / 42.2). A prompt of more than ~3000 tokens gives
//! DeepSeek-V3's experts 100 and more rows each, and there this layout is slower.
//!
//! The 32-weight block types on this 2-core AVX-512 VM (no AMX; `kernel_bench --mb 64
//! --threads 2`, ms per 64 MB, 16-row layout against row-major): Q8_0 1.27 / 1.93 at 1 row,
//! 1.71 / 3.45 at 4, 8.5 / 34.1 at 64; Q5_0 1.48 / 1.82, 2.69 / 3.77, 14.2 / 60.3; Q4_0
//! 1.49 / 1.81, 2.57 / 3.97, 15.3 / 62.4.
//!
//! Groups follow each other (group g holds rows 16g..16g+16 and sits where those rows sat,
//! in the same number of bytes), so a row range that starts and ends on multiples of 16 is
//! the same byte range as before.

/// `$f::<N>(args…)` with N = `$n`, the activation rows of one kernel pass (1..=[`MAX_N`]):
/// the kernels keep one accumulator per row in registers, so N is a constant. `$f<C>` calls
/// `$f::<C, N>` (a kernel with one more constant ahead of N).
macro_rules! by_count {
    ($f:ident<$lead:tt>, $n:expr, ($($arg:expr),*)) => {
        match $n {
            1 => $f::<$lead, 1>($($arg),*),
            2 => $f::<$lead, 2>($($arg),*),
            3 => $f::<$lead, 3>($($arg),*),
            4 => $f::<$lead, 4>($($arg),*),
            5 => $f::<$lead, 5>($($arg),*),
            6 => $f::<$lead, 6>($($arg),*),
            7 => $f::<$lead, 7>($($arg),*),
            _ => $f::<$lead, { MAX_N }>($($arg),*),
        }
    };
    ($f:ident, $n:expr, ($($arg:expr),*)) => {
        match $n {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            _ => $f::<{ MAX_N }>($($arg),*),
        }
    };
}

pub mod q4k;
pub mod q6k;
pub mod small;
#[cfg(target_arch = "x86_64")]
pub mod tiles;

use super::quant::{BlockQ8K, BlockQ8_0};
use crate::dtype::GgmlType;

/// Rows per group.
pub const ROWS: usize = 16;
/// Activation rows per kernel pass over a block (the accumulators fill the registers).
pub const MAX_N: usize = 8;

/// Whether `ty` has a 16-row layout.
pub fn has_layout(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_K | GgmlType::Q6_K) || is_small(ty)
}

/// Whether `ty` is one of the 32-weight block types with a layout ([`small`]).
pub fn is_small(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0)
}

/// Whether a `rows × cols` matrix of `ty` can be repacked (whole groups of rows and blocks).
pub fn fits(ty: GgmlType, rows: usize, cols: usize) -> bool {
    has_layout(ty) && rows > 0 && rows.is_multiple_of(ROWS) && cols > 0 && cols.is_multiple_of(ty.block_size())
}

/// Whether routed experts are repacked when a model's weights are copied into memory: the
/// kernels run on this CPU and `HY_REPACK=0` does not ask to keep the file's layout.
pub fn enabled() -> bool {
    supported() && std::env::var("HY_REPACK").map_or(true, |v| v != "0")
}

/// Whether routed experts of `ty` take the 16-row layout at load (`models::loader`; `hy bench
/// moe` places its experts the same way): Q4_K and Q6_K wherever the kernels run; the
/// 32-weight block types only where a prompt's products have no AMX tiles, because their
/// layout has been measured only on such a CPU.
pub fn repacks_experts(ty: GgmlType) -> bool {
    enabled() && has_layout(ty) && (!is_small(ty) || !prompt_tiles())
}

/// Whether a prompt's products with row-major weights run on AMX tiles here (the loader then
/// repacks only the routed k-quant experts).
pub fn prompt_tiles() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether [`dot`] runs on this CPU (AVX-512 F/BW/VL and VNNI).
pub fn supported() -> bool {
    cfg!(target_arch = "x86_64") && super::simd::vnni_supported()
}

/// Bytes of one 16-row group of `cols` columns of `ty`.
pub(super) fn group_bytes(ty: GgmlType, cols: usize) -> usize {
    cols / ty.block_size() * ROWS * ty.type_size()
}

/// Repacks rows of `ty` (row-major, `cols` weights each; a whole number of groups) into `out`
/// (same length).
///
/// # Panics
/// When `ty` has no 16-row layout or the length is not whole groups.
pub fn repack(ty: GgmlType, src: &[u8], cols: usize, out: &mut [u8]) {
    assert!(has_layout(ty), "repack: {ty:?} has no 16-row layout");
    let (rb, blocks, gb) = (ty.type_size(), cols / ty.block_size(), group_bytes(ty, cols));
    assert!(src.len().is_multiple_of(gb) && src.len() == out.len(), "repack: not whole groups");
    for (g, o) in src.chunks_exact(gb).zip(out.chunks_exact_mut(gb)) {
        for (k, ob) in o.chunks_exact_mut(ROWS * rb).enumerate() {
            let row = |r: usize| &g[(r * blocks + k) * rb..][..rb];
            match ty {
                GgmlType::Q4_K => q4k::repack_block(row, ob),
                GgmlType::Q6_K => q6k::repack_block(row, ob),
                _ => small::repack_block(ty, row, ob),
            }
        }
    }
}

/// [`repack`] in place, groups in parallel (rayon): for weights copied into memory at load.
pub fn repack_in_place(ty: GgmlType, data: &mut [u8], cols: usize) {
    use rayon::prelude::*;
    data.par_chunks_mut(group_bytes(ty, cols)).for_each(|g| {
        let plain = g.to_vec();
        repack(ty, &plain, cols, g);
    });
}

/// The inverse of [`repack`]: rows of `ty` back from repacked groups.
pub fn unpack(ty: GgmlType, src: &[u8], cols: usize, out: &mut [u8]) {
    assert!(has_layout(ty), "unpack: {ty:?} has no 16-row layout");
    let (rb, blocks, gb) = (ty.type_size(), cols / ty.block_size(), group_bytes(ty, cols));
    assert!(src.len().is_multiple_of(gb) && src.len() == out.len(), "unpack: not whole groups");
    for (g, o) in src.chunks_exact(gb).zip(out.chunks_exact_mut(gb)) {
        for (k, b) in g.chunks_exact(ROWS * rb).enumerate() {
            for r in 0..ROWS {
                let row = &mut o[(r * blocks + k) * rb..][..rb];
                match ty {
                    GgmlType::Q4_K => q4k::unpack_row(b, r, row),
                    GgmlType::Q6_K => q6k::unpack_row(b, r, row),
                    _ => small::unpack_row(ty, b, r, row),
                }
            }
        }
    }
}

/// `out[r·n + i] = row r · acts[i]` for the 16 rows of one repacked group of a k-quant `ty`
/// and all `n = acts.len()` Q8_K activation rows, taken [`MAX_N`] at a time over each block
/// while it sits in L1.
///
/// # Panics
/// When [`supported`] is false, `ty` is not Q4_K or Q6_K, or the lengths do not match.
pub fn dot(ty: GgmlType, group: &[u8], acts: &[&[BlockQ8K]], out: &mut [f32]) {
    assert!(matches!(ty, GgmlType::Q4_K | GgmlType::Q6_K), "x16::dot: {ty:?} is not a k-quant with a layout");
    by_chunks(ty, group, acts, out, |chunk, acc| {
        // SAFETY: VNNI (with AVX-512 F/BW/VL, AVX2, F16C) checked by `by_chunks`; lengths too.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            use q4k::dot_n as q4k_dot;
            use q6k::dot_n as q6k_dot;
            match ty {
                GgmlType::Q4_K => by_count!(q4k_dot, chunk.len(), (group, chunk, acc)),
                _ => by_count!(q6k_dot, chunk.len(), (group, chunk, acc)),
            }
        }
    })
}

/// [`dot`] for the 32-weight block types (Q4_0, Q5_0, Q8_0) with Q8_0 activation rows.
///
/// # Panics
/// As [`dot`], for a type that [`is_small`] does not name.
pub fn dot_small(ty: GgmlType, group: &[u8], acts: &[&[BlockQ8_0]], out: &mut [f32]) {
    assert!(is_small(ty), "x16::dot_small: {ty:?} is not a 32-weight block type with a layout");
    by_chunks(ty, group, acts, out, |chunk, acc| {
        // SAFETY: as in `dot`.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            small::dot_chunk(ty, group, chunk, acc)
        }
    })
}

/// Runs `kernel` over the activation rows [`MAX_N`] at a time and scatters its 16-row results
/// into `out` (`16 × n`, row-major).
fn by_chunks<A>(
    ty: GgmlType,
    group: &[u8],
    acts: &[&[A]],
    out: &mut [f32],
    kernel: impl Fn(&[&[A]], &mut [[f32; ROWS]]),
) {
    assert!(supported(), "x16 kernels need AVX-512 VNNI");
    let n = acts.len();
    let block = ROWS * ty.type_size();
    let blocks = group.len() / block;
    assert!(group.len() == blocks * block && out.len() == ROWS * n);
    assert!(acts.iter().all(|a| a.len() >= blocks));
    let mut acc = [[0f32; ROWS]; MAX_N];
    for (c, chunk) in acts.chunks(MAX_N).enumerate() {
        let acc = &mut acc[..chunk.len()];
        kernel(chunk, acc);
        for (i, a) in acc.iter().enumerate() {
            for (r, &v) in a.iter().enumerate() {
                out[r * n + c * MAX_N + i] = v;
            }
        }
    }
}

/// Pieces the three kernels share: an activation row's quants and sums as broadcast
/// `vpdpbusd`/`vpdpwssd` operands, and the per-row totals out.
#[cfg(target_arch = "x86_64")]
mod lanes {
    use std::arch::x86_64::*;

    use super::ROWS;

    /// Activation quants `at .. at + 4` as one dword in every lane.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn quad(q: &[i8], at: usize) -> __m512i {
        _mm512_set1_epi32(i32::from_le_bytes([q[at] as u8, q[at + 1] as u8, q[at + 2] as u8, q[at + 3] as u8]))
    }

    /// A Q8_K block's 16-weight sums `2j` and `2j + 1` as the i16 halves of every lane (the
    /// two sub-blocks' sums for one `vpdpwssd`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn sum_pair(bsums: &[i16; 16], j: usize) -> __m512i {
        _mm512_set1_epi32((bsums[2 * j] as u16 as u32 | (bsums[2 * j + 1] as u16 as u32) << 16) as i32)
    }

    /// Each activation row's 16 row totals into `out`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn store<const N: usize>(total: &[__m512; N], out: &mut [[f32; ROWS]]) {
        for (t, o) in total.iter().zip(out) {
            // SAFETY: `o` is 16 writable f32.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *t) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::quantize_q8_k;
    use crate::kernels::scalar;

    const TYPES: [GgmlType; 5] = [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0];

    fn random_rows(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut data = vec![0u8; rows * cols / ty.block_size() * ty.type_size()];
        crate::synth::fill_random(ty, &mut data, seed);
        data
    }

    #[test]
    fn repack_then_unpack_gives_the_rows_back() {
        let (rows, cols) = (32, 512);
        for ty in TYPES {
            let data = random_rows(ty, rows, cols, 3);
            let mut packed = vec![0u8; data.len()];
            repack(ty, &data, cols, &mut packed);
            assert_ne!(packed, data, "{ty:?}: the layout changes");
            let mut back = vec![0u8; data.len()];
            unpack(ty, &packed, cols, &mut back);
            assert_eq!(back, data, "{ty:?}");
        }
    }

    #[test]
    fn repacking_in_place_equals_repacking_into_a_copy() {
        let (rows, cols) = (48, 512);
        for ty in TYPES {
            let data = random_rows(ty, rows, cols, 4);
            let mut want = vec![0u8; data.len()];
            repack(ty, &data, cols, &mut want);
            let mut got = data.clone();
            repack_in_place(ty, &mut got, cols);
            assert_eq!(got, want, "{ty:?}");
        }
    }

    /// What the kernels cannot take (f32 activations of Exact precision, another ISA, a row
    /// range that splits a group) runs on the rows unpacked back: the same numbers as the
    /// file's layout.
    #[test]
    fn products_the_kernels_cannot_take_equal_the_file_layout() {
        use crate::kernels::{matmul_rows, prepare_with, Isa, Precision, QMatrix, WeightType};
        let (rows, cols, n) = (48, 512, 3);
        for ty in TYPES {
            let plain = random_rows(ty, rows, cols, 6);
            let mut packed = vec![0u8; plain.len()];
            repack(ty, &plain, cols, &mut packed);
            let file = QMatrix::new(ty, rows, cols, &plain).unwrap();
            let x16 = QMatrix { ty: WeightType::X16(ty), data: &packed, ..file };
            let x = crate::kernels::tests::uniform(n * cols, 8);
            for (precision, isa, range) in [
                (Precision::Exact, Isa::best(), 0..48),
                (Precision::Fast, Isa::best(), 5..21),
                (Precision::Fast, Isa::Scalar, 16..48),
            ] {
                let p = prepare_with(file.ty, cols, &x, n, precision);
                let px = prepare_with(x16.ty, cols, &x, n, precision);
                let (mut want, mut got) = (vec![0f32; range.len() * n], vec![0f32; range.len() * n]);
                matmul_rows(isa, &file, &p, range.clone(), &mut want);
                matmul_rows(isa, &x16, &px, range.clone(), &mut got);
                assert_eq!(got, want, "{ty:?} {precision:?} {isa:?} rows {range:?}");
            }
        }
    }

    #[test]
    fn small_block_products_match_the_scalar_reference() {
        use crate::kernels::quant::quantize_q8_0;
        if !supported() {
            eprintln!("skipped: no AVX-512 VNNI");
            return;
        }
        let (rows, cols) = (32, 160);
        for ty in [GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0] {
            let data = random_rows(ty, rows, cols, 9);
            let mut packed = vec![0u8; data.len()];
            repack(ty, &data, cols, &mut packed);
            let rb = cols / 32 * ty.type_size();
            for n in [1, 2, 5, 8, 11] {
                let x = crate::kernels::tests::uniform(n * cols, 31 + n as u32);
                let acts = quantize_q8_0(&x);
                let act_rows: Vec<&[BlockQ8_0]> = acts.chunks_exact(cols / 32).collect();
                for (g, group) in packed.chunks_exact(ROWS * rb).enumerate() {
                    let mut out = vec![0f32; ROWS * n];
                    dot_small(ty, group, &act_rows, &mut out);
                    for r in 0..ROWS {
                        let row = &data[(g * ROWS + r) * rb..][..rb];
                        for (i, a) in act_rows.iter().enumerate() {
                            let want = scalar::dot_s_row(ty, row, a);
                            let got = out[r * n + i];
                            assert!(
                                (got - want).abs() <= 1e-4 * want.abs().max(1e-1),
                                "{ty:?} n {n} row {} act {i}: {got} vs {want}",
                                g * ROWS + r
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn products_match_the_scalar_reference_for_every_batch_size() {
        if !supported() {
            eprintln!("skipped: no AVX-512 VNNI");
            return;
        }
        let (rows, cols) = (32, 768);
        for ty in [GgmlType::Q4_K, GgmlType::Q6_K] {
            let data = random_rows(ty, rows, cols, 5);
            let mut packed = vec![0u8; data.len()];
            repack(ty, &data, cols, &mut packed);
            let rb = cols / 256 * ty.type_size();
            // 1..=8 in one pass; 9 and 13: a full pass and a tail; 17: three passes.
            for n in [1, 2, 3, 5, 8, 9, 13, 17] {
                let x = crate::kernels::tests::uniform(n * cols, 77 + n as u32);
                let acts = quantize_q8_k(&x);
                let act_rows: Vec<&[BlockQ8K]> = acts.chunks_exact(cols / 256).collect();
                for (g, group) in packed.chunks_exact(ROWS * rb).enumerate() {
                    let mut out = vec![0f32; ROWS * n];
                    dot(ty, group, &act_rows, &mut out);
                    for r in 0..ROWS {
                        let row = &data[(g * ROWS + r) * rb..][..rb];
                        for (i, a) in act_rows.iter().enumerate() {
                            let want = scalar::dot_k_row(ty, row, a);
                            let got = out[r * n + i];
                            assert!(
                                (got - want).abs() <= 1e-4 * want.abs().max(1e-2),
                                "{ty:?} n {n} row {} act {i}: {got} vs {want}",
                                g * ROWS + r
                            );
                        }
                    }
                }
            }
        }
    }
}
