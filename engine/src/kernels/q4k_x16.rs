//! Q4_K weights repacked 16 rows at a time, so one AVX-512 register holds the same four
//! weights of 16 rows and `vpdpbusd` multiplies all 16 rows by one broadcast dword of an
//! activation row: no horizontal sums, no per-row scale shuffles, and each weight register
//! serves every activation row of a small batch (a prompt's tokens routed to one expert).
//!
//! The row-major kernels (`gemm::dot_n`) spend two multiply instructions per 64 weights per
//! activation row (`vpmaddubsw` + `vpdpwssd`, both on one port of the Xeon) plus a horizontal
//! reduction per row; here it is one `vpdpbusd` per 64 weights per activation row and one
//! conversion and multiply-add per 32-weight sub-block for 16 rows at once. This is the
//! layout llama.cpp's repacking CPU backend and KTransformers also choose for small batches
//! (their own layouts differ; this one is ours).
//!
//! Layout of one group of 16 rows (the same bytes as the 16 Q4_K rows, reordered): for each
//! 256-weight block `k`, 2304 bytes (16 × 144):
//! ```text
//!   [0, 32)      d[16]     f16, one per row
//!   [32, 64)     dmin[16]  f16
//!   [64, 192)    lo[8][16] per sub-block j and row r: (scale_j & 15) | (min_j & 15) << 4
//!   [192, 256)   hi[16]    u32 per row: bits 4j..4j+2 = scale_j >> 4, bits 4j+2..4j+4 = min_j >> 4
//!   [256, 2304)  qs[8][4][16][4] per sub-block j, pair p of quads and row r: 4 bytes, byte b
//!                holding weight 32j + 8p + b (low nibble) and weight 32j + 8p + 4 + b (high)
//! ```
//! Groups follow each other (group g holds rows 16g..16g+16 and sits where those rows sat),
//! so a row range that starts and ends on multiples of 16 is the same byte range as before.

use super::blocks::scale_min_k4;
use super::quant::BlockQ8K;

/// Rows per group.
pub const ROWS: usize = 16;
/// Bytes of one Q4_K block (one row, 256 weights).
const Q4K_BLOCK: usize = 144;
/// Bytes of one repacked block (16 rows, 256 weights each).
pub const GROUP_BLOCK: usize = ROWS * Q4K_BLOCK;
/// Activation rows per kernel pass over a block (the accumulators fill the registers).
pub const MAX_N: usize = 8;

const LO: usize = 64;
const HI: usize = 192;
const QS: usize = 256;

/// Whether a Q4_K matrix of this shape can be repacked (whole groups of rows).
pub fn fits(rows: usize, cols: usize) -> bool {
    rows > 0 && rows.is_multiple_of(ROWS) && cols > 0 && cols.is_multiple_of(256)
}

/// Repacks Q4_K rows (row-major, `cols` weights each; a whole number of groups) into `out`
/// (same length).
pub fn repack(src: &[u8], cols: usize, out: &mut [u8]) {
    let blocks = cols / 256;
    let group_bytes = blocks * GROUP_BLOCK;
    assert!(src.len().is_multiple_of(group_bytes) && src.len() == out.len(), "repack: not whole groups");
    for (g, o) in src.chunks_exact(group_bytes).zip(out.chunks_exact_mut(group_bytes)) {
        for (k, ob) in o.chunks_exact_mut(GROUP_BLOCK).enumerate() {
            repack_block(|r| &g[(r * blocks + k) * Q4K_BLOCK..][..Q4K_BLOCK], ob);
        }
    }
}

/// Block `k` of 16 rows (`row(r)` gives row r's 144-byte block) into one repacked block.
fn repack_block<'a>(row: impl Fn(usize) -> &'a [u8], ob: &mut [u8]) {
    ob[HI..QS].fill(0);
    for r in 0..ROWS {
        let b = row(r);
        ob[2 * r..2 * r + 2].copy_from_slice(&b[0..2]);
        ob[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&b[2..4]);
        let mut hi = 0u32;
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &b[4..16]);
            ob[LO + 16 * j + r] = (sc as u8 & 15) | ((m as u8 & 15) << 4);
            hi |= ((sc as u32 >> 4) | ((m as u32 >> 4) << 2)) << (4 * j);
        }
        ob[HI + 4 * r..HI + 4 * r + 4].copy_from_slice(&hi.to_le_bytes());
        let q = quants(b);
        for j in 0..8 {
            for p in 0..4 {
                let at = 32 * j + 8 * p;
                let o = QS + 256 * j + 64 * p + 4 * r;
                for byte in 0..4 {
                    ob[o + byte] = q[at + byte] | (q[at + 4 + byte] << 4);
                }
            }
        }
    }
}

/// The 256 4-bit quants of a Q4_K block in weight order: chunk c of 32 bytes holds weights
/// 64c..64c+32 in its low nibbles and the next 32 in its high nibbles.
fn quants(b: &[u8]) -> [u8; 256] {
    let mut q = [0u8; 256];
    for (c, bytes) in b[16..144].chunks_exact(32).enumerate() {
        for (i, &v) in bytes.iter().enumerate() {
            q[64 * c + i] = v & 15;
            q[64 * c + 32 + i] = v >> 4;
        }
    }
    q
}

/// [`repack`] in place, groups in parallel (rayon): for weights copied into memory at load.
pub fn repack_in_place(data: &mut [u8], cols: usize) {
    use rayon::prelude::*;
    let group_bytes = cols / 256 * GROUP_BLOCK;
    data.par_chunks_mut(group_bytes).for_each(|g| {
        let plain = g.to_vec();
        repack(&plain, cols, g);
    });
}

/// The inverse of [`repack`]: Q4_K rows back from repacked groups.
pub fn unpack(src: &[u8], cols: usize, out: &mut [u8]) {
    let blocks = cols / 256;
    let group_bytes = blocks * GROUP_BLOCK;
    assert!(src.len().is_multiple_of(group_bytes) && src.len() == out.len(), "unpack: not whole groups");
    for (g, o) in src.chunks_exact(group_bytes).zip(out.chunks_exact_mut(group_bytes)) {
        for (k, b) in g.chunks_exact(GROUP_BLOCK).enumerate() {
            for r in 0..ROWS {
                unpack_row(b, r, &mut o[(r * blocks + k) * Q4K_BLOCK..][..Q4K_BLOCK]);
            }
        }
    }
}

/// Row `r` of one repacked block as a Q4_K block.
fn unpack_row(b: &[u8], r: usize, out: &mut [u8]) {
    out[0..2].copy_from_slice(&b[2 * r..2 * r + 2]);
    out[2..4].copy_from_slice(&b[32 + 2 * r..32 + 2 * r + 2]);
    let hi = u32::from_le_bytes(b[HI + 4 * r..HI + 4 * r + 4].try_into().expect("4 bytes"));
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        let lo = b[LO + 16 * j + r];
        sc[j] = (lo & 15) | (((hi >> (4 * j)) & 3) as u8) << 4;
        mn[j] = (lo >> 4) | (((hi >> (4 * j + 2)) & 3) as u8) << 4;
    }
    // The 12-byte packing that `scale_min_k4` reads.
    let s = &mut out[4..16];
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4);
    }
    let mut q = [0u8; 256];
    for j in 0..8 {
        for p in 0..4 {
            let at = 32 * j + 8 * p;
            let o = QS + 256 * j + 64 * p + 4 * r;
            for byte in 0..4 {
                q[at + byte] = b[o + byte] & 15;
                q[at + 4 + byte] = b[o + byte] >> 4;
            }
        }
    }
    for (c, bytes) in out[16..144].chunks_exact_mut(32).enumerate() {
        for (i, v) in bytes.iter_mut().enumerate() {
            *v = q[64 * c + i] | (q[64 * c + 32 + i] << 4);
        }
    }
}

/// Whether routed Q4_K experts are repacked when a model's weights are copied into memory:
/// the kernel runs on this CPU and `HY_REPACK=0` does not ask to keep the file's layout.
pub fn enabled() -> bool {
    supported() && std::env::var("HY_REPACK").map_or(true, |v| v != "0")
}

/// Whether [`dot`] runs on this CPU (AVX-512 F/BW/VL and VNNI).
pub fn supported() -> bool {
    cfg!(target_arch = "x86_64") && super::simd::vnni_supported()
}

/// `out[r·n + i] = row r · acts[i]` for the 16 rows of one repacked group (`cols / 256`
/// blocks) and all `n = acts.len()` activation rows, taken [`MAX_N`] at a time over each
/// block while it sits in L1.
///
/// # Panics
/// When [`supported`] is false, or the lengths do not match.
pub fn dot(group: &[u8], acts: &[&[BlockQ8K]], out: &mut [f32]) {
    assert!(supported(), "q4k_x16::dot needs AVX-512 VNNI");
    let n = acts.len();
    let blocks = group.len() / GROUP_BLOCK;
    assert!(group.len() == blocks * GROUP_BLOCK && out.len() == ROWS * n);
    assert!(acts.iter().all(|a| a.len() >= blocks));
    let mut acc = [[0f32; ROWS]; MAX_N];
    for (c, chunk) in acts.chunks(MAX_N).enumerate() {
        let acc = &mut acc[..chunk.len()];
        // SAFETY: VNNI (with AVX-512 F/BW/VL, AVX2, F16C) checked above; lengths checked.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            dot_chunk(group, chunk, acc)
        };
        for (i, a) in acc.iter().enumerate() {
            for (r, &v) in a.iter().enumerate() {
                out[r * n + c * MAX_N + i] = v;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_chunk(group: &[u8], a: &[&[BlockQ8K]], out: &mut [[f32; ROWS]]) {
    // SAFETY (all arms): same features; N = a.len() = out.len() (1..=MAX_N).
    unsafe {
        match a.len() {
            1 => dot_n::<1>(group, a, out),
            2 => dot_n::<2>(group, a, out),
            3 => dot_n::<3>(group, a, out),
            4 => dot_n::<4>(group, a, out),
            5 => dot_n::<5>(group, a, out),
            6 => dot_n::<6>(group, a, out),
            7 => dot_n::<7>(group, a, out),
            _ => dot_n::<8>(group, a, out),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_n<const N: usize>(group: &[u8], acts: &[&[BlockQ8K]], out: &mut [[f32; ROWS]]) {
    use std::arch::x86_64::*;
    let nib = _mm512_set1_epi8(15);
    let three = _mm512_set1_epi32(3);
    let pf = super::simd::prefetch_distance();
    let mut total = [_mm512_setzero_ps(); N];
    let a: [&[BlockQ8K]; N] = std::array::from_fn(|i| acts[i]);
    for (k, b) in group.chunks_exact(GROUP_BLOCK).enumerate() {
        let p = b.as_ptr();
        if pf > 0 {
            for line in (0..GROUP_BLOCK).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(pf + line) as *const i8);
            }
        }
        // SAFETY: `b` is GROUP_BLOCK bytes; every load below stays inside it.
        let (d, dmin, hi) = unsafe {
            (
                _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
                _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32) as *const __m256i)),
                _mm512_loadu_si512(p.add(HI) as *const _),
            )
        };
        let mut fsum = [_mm512_setzero_ps(); N];
        let mut msum = [_mm512_setzero_si512(); N];
        for j in 0..8 {
            // SAFETY: inside the block (see the layout).
            let lo = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(p.add(LO + 16 * j) as *const __m128i) });
            let hij = _mm512_srlv_epi32(hi, _mm512_set1_epi32(4 * j as i32));
            let sc = _mm512_or_si512(
                _mm512_and_si512(lo, _mm512_set1_epi32(15)),
                _mm512_slli_epi32(_mm512_and_si512(hij, three), 4),
            );
            let mn = _mm512_or_si512(
                _mm512_srli_epi32(lo, 4),
                _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hij, 2), three), 4),
            );
            // The min in both i16 halves: one `vpdpwssd` takes the two 16-weight sums of a
            // sub-block (bsums 2j and 2j+1) at once.
            let mn2 = _mm512_or_si512(mn, _mm512_slli_epi32(mn, 16));
            let mut isum = [_mm512_setzero_si512(); N];
            for pair in 0..4 {
                // SAFETY: inside the block.
                let v = unsafe { _mm512_loadu_si512(p.add(QS + 256 * j + 64 * pair) as *const _) };
                let w0 = _mm512_and_si512(v, nib);
                let w1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
                let at = 32 * j + 8 * pair;
                for i in 0..N {
                    let q = &a[i][k].qs;
                    let x0 = i32::from_le_bytes([q[at] as u8, q[at + 1] as u8, q[at + 2] as u8, q[at + 3] as u8]);
                    let x1 = i32::from_le_bytes([q[at + 4] as u8, q[at + 5] as u8, q[at + 6] as u8, q[at + 7] as u8]);
                    isum[i] = _mm512_dpbusd_epi32(isum[i], w0, _mm512_set1_epi32(x0));
                    isum[i] = _mm512_dpbusd_epi32(isum[i], w1, _mm512_set1_epi32(x1));
                }
            }
            let scf = _mm512_cvtepi32_ps(sc);
            for i in 0..N {
                let bs = &a[i][k].bsums;
                let pair = (bs[2 * j] as u16 as u32 | ((bs[2 * j + 1] as u16 as u32) << 16)) as i32;
                fsum[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i]), scf, fsum[i]);
                msum[i] = _mm512_dpwssd_epi32(msum[i], mn2, _mm512_set1_epi32(pair));
            }
        }
        for i in 0..N {
            let da = _mm512_set1_ps(a[i][k].d);
            total[i] = _mm512_fmadd_ps(_mm512_mul_ps(d, da), fsum[i], total[i]);
            total[i] = _mm512_fnmadd_ps(_mm512_mul_ps(dmin, da), _mm512_cvtepi32_ps(msum[i]), total[i]);
        }
    }
    for i in 0..N {
        // SAFETY: out[i] is 16 f32.
        unsafe { _mm512_storeu_ps(out[i].as_mut_ptr(), total[i]) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::GgmlType;
    use crate::kernels::quant::quantize_q8_k;
    use crate::kernels::scalar;

    fn random_rows(rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut data = vec![0u8; rows * cols / 256 * Q4K_BLOCK];
        crate::synth::fill_random(GgmlType::Q4_K, &mut data, seed);
        data
    }

    #[test]
    fn repack_then_unpack_gives_the_rows_back() {
        let (rows, cols) = (32, 512);
        let data = random_rows(rows, cols, 3);
        let mut packed = vec![0u8; data.len()];
        repack(&data, cols, &mut packed);
        assert_ne!(packed, data, "the layout changes");
        let mut back = vec![0u8; data.len()];
        unpack(&packed, cols, &mut back);
        assert_eq!(back, data);
    }

    #[test]
    fn repacking_in_place_equals_repacking_into_a_copy() {
        let (rows, cols) = (48, 512);
        let data = random_rows(rows, cols, 4);
        let mut want = vec![0u8; data.len()];
        repack(&data, cols, &mut want);
        let mut got = data.clone();
        repack_in_place(&mut got, cols);
        assert_eq!(got, want);
    }

    #[test]
    fn products_match_the_scalar_reference_for_every_batch_size() {
        if !supported() {
            eprintln!("skipped: no AVX-512 VNNI");
            return;
        }
        let (rows, cols) = (32, 768);
        let data = random_rows(rows, cols, 5);
        let mut packed = vec![0u8; data.len()];
        repack(&data, cols, &mut packed);
        let rb = cols / 256 * Q4K_BLOCK;
        // 1..=8 in one pass; 9 and 13: a full pass and a tail; 17: three passes.
        for n in [1, 2, 3, 5, 8, 9, 13, 17] {
            let x = crate::kernels::tests::uniform(n * cols, 77 + n as u32);
            let acts = quantize_q8_k(&x);
            let act_rows: Vec<&[BlockQ8K]> = acts.chunks_exact(cols / 256).collect();
            for (g, group) in packed.chunks_exact(ROWS * rb).enumerate() {
                let mut out = vec![0f32; ROWS * n];
                dot(group, &act_rows, &mut out);
                for r in 0..ROWS {
                    let row = &data[(g * ROWS + r) * rb..][..rb];
                    for (i, a) in act_rows.iter().enumerate() {
                        let want = scalar::dot_k_row(GgmlType::Q4_K, row, a);
                        let got = out[r * n + i];
                        assert!(
                            (got - want).abs() <= 1e-4 * want.abs().max(1e-2),
                            "n {n} row {} act {i}: {got} vs {want}",
                            g * ROWS + r
                        );
                    }
                }
            }
        }
    }
}
