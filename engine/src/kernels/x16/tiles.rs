//! Repacked weights × many activation rows on the AMX bf16 tiles: the tokens of a long prompt
//! routed to one expert (about one in 32 of a DeepSeek-V3 prompt's tokens each).
//!
//! The 16-row layout puts one weight of 16 rows in the 16 lanes of a register, which is the
//! column order of a tile's B operand: so the weights are the B tiles here (16 weight rows as
//! the 16 columns, 32 of their weights as 16 bf16 pairs down the rows) and the activations
//! the A tiles (16 tokens × 32 columns, straight from bf16 rows with a row stride); no
//! transposes. A group's weights are decoded to bf16 once, all columns (a few hundred KB, in
//! L2), with every scale and min applied per lane; then each group of up to 64 tokens keeps
//! its four result tiles in the tile registers across the whole row and stores them once.
//!
//! Below [`min_rows`] activation rows the VNNI kernels of [`super`] are faster: decoding to
//! bf16 costs more than their per-token multiplies. Measured on the 16-core Xeon
//! (`kernel_bench --mb 256 --threads 16`, one run, ms; VNNI kernel / these tiles / the
//! row-major layout's tiles): Q4_K 13.8 / 14.5 / 12.1 at 32 rows; 16.9 / 20.7 (row-major) at
//! 48, 25.3 / 26.4 at 64, 45.5 / 33.3 at 128, 98.6 / 58.3 at 256. The time grows with the
//! tokens from 64 rows on where the row-major driver's does not: each A tile here (16 tokens'
//! activations, rows `2·cols` bytes apart, from L3 for a long prompt) is loaded once per 16
//! weight rows, the row-major driver's activation tiles once per 64. Next: four groups of
//! weight rows per pass over packed activation tiles.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::ROWS;
use crate::dtype::GgmlType;
use crate::kernels::amx::{self, Tiles};

/// Tokens per A and C tile.
const TILE: usize = 16;
/// Columns per A tile (B: 16 column pairs).
const SLICE: usize = 32;
/// u32 per B tile (16 rows of 16 bf16 pairs).
const B_WORDS: usize = 256;
/// Token groups whose result tiles stay in the registers (tmm0..3).
const GROUPS: usize = 4;

/// Activation rows from which repacked products use the tiles (`HY_X16_TILES_MIN`, default
/// 48).
pub fn min_rows() -> usize {
    static MIN: OnceLock<usize> = OnceLock::new();
    *MIN.get_or_init(|| std::env::var("HY_X16_TILES_MIN").ok().and_then(|v| v.parse().ok()).unwrap_or(48).max(1))
}

/// Whether this path runs here: AMX bf16 ([`amx::available`]) and the repacked layout's
/// kernels.
pub fn available() -> bool {
    amx::available() && super::supported()
}

/// `n` activation rows of `cols` values as bf16 (round to nearest even), zero rows up to a
/// whole number of tiles: the A tiles' rows.
pub struct Acts {
    pub n: usize,
    pub cols: usize,
    rows: Vec<u16>,
}

impl Acts {
    /// The activations back as f32 (for products that cannot take the tiles).
    pub fn to_f32(&self) -> Vec<f32> {
        self.rows[..self.n * self.cols].iter().map(|&b| crate::kernels::fp::bf16_to_f32(b)).collect()
    }
}

/// Rounds `x` (`n` × `cols`, row-major; `cols` a multiple of 32) to bf16 rows.
pub fn pack(x: &[f32], n: usize, cols: usize) -> Acts {
    assert!(cols.is_multiple_of(SLICE) && x.len() == n * cols, "x16 tiles: {n} × {cols} from {} values", x.len());
    let mut rows = vec![0u16; n.next_multiple_of(TILE) * cols];
    if crate::kernels::simd::bf16_supported() {
        // SAFETY: AVX512_BF16 (with AVX-512 F) detected.
        unsafe { round_avx512(x, &mut rows[..x.len()]) };
    } else {
        for (d, s) in rows.iter_mut().zip(x) {
            *d = crate::kernels::fp::f32_to_bf16(*s);
        }
    }
    Acts { n, cols, rows }
}

/// `out[i] = bf16(x[i])`, 16 at a time (`vcvtneps2bf16`, round to nearest even as
/// `f32_to_bf16`); `x.len()` is a multiple of 32.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn round_avx512(x: &[f32], out: &mut [u16]) {
    for (s, d) in x.chunks_exact(16).zip(out.chunks_exact_mut(16)) {
        // SAFETY: 16 readable f32 and 16 writable u16 (the chunks).
        unsafe {
            let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(s.as_ptr()));
            _mm256_storeu_si256(d.as_mut_ptr().cast(), std::mem::transmute::<__m256bh, __m256i>(v));
        }
    }
}

/// `out[r·n + t] = W[r] · x[t]` for the whole 16-row groups in `data` (weights of `ty` in the
/// 16-row layout, `cols` columns) and every activation row of `acts`.
///
/// # Panics
/// When [`available`] is false, or the lengths do not match.
pub fn matmul_rows(ty: GgmlType, data: &[u8], cols: usize, acts: &Acts, out: &mut [f32]) {
    assert!(available(), "x16 tiles need AMX");
    // SAFETY: AMX, AVX512_BF16 and VNNI (with AVX-512 F/BW/VL) checked above.
    unsafe { run(&mut amx::Hw, ty, data, cols, acts, out) }
}

thread_local! {
    /// One group's weights as B tiles.
    static B_TILES: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The driver (the tile instructions or, in tests, their model).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn run<H: Tiles>(hw: &mut H, ty: GgmlType, data: &[u8], cols: usize, acts: &Acts, out: &mut [f32]) {
    // `decode_group` decodes these two only (`matvec` sends no other type here).
    assert!(matches!(ty, GgmlType::Q4_K | GgmlType::Q6_K) && cols.is_multiple_of(256) && acts.cols == cols);
    let group_bytes = super::group_bytes(ty, cols);
    let groups = data.len() / group_bytes;
    let n = acts.n;
    assert!(data.len() == groups * group_bytes && out.len() == groups * ROWS * n);
    let slices = cols / SLICE;
    let token_groups = n.div_ceil(TILE);
    let mut c = super::super::amx::Aligned([0f32; TILE * TILE]);
    B_TILES.with(|b| {
        let mut b = b.borrow_mut();
        b.resize(slices * B_WORDS + 16, 0);
        // 64-byte aligned start for the tile loads.
        let skip = b.as_ptr().align_offset(64).min(16);
        let tiles = &mut b[skip..skip + slices * B_WORDS];
        // SAFETY (all tile calls): the caller checked the instructions; every pointer is a whole
        // tile inside `tiles`, `acts.rows` (padded to whole tiles) or `c`.
        unsafe {
            hw.configure();
            for (g, grp) in data.chunks_exact(group_bytes).enumerate() {
                decode_group(ty, grp, tiles);
                for g0 in (0..token_groups).step_by(GROUPS) {
                    let gs = GROUPS.min(token_groups - g0);
                    for t in 0..gs {
                        hw.zero(t);
                    }
                    for s in 0..slices {
                        hw.load_b(s % 2, tiles[s * B_WORDS..].as_ptr().cast());
                        for t in 0..gs {
                            let a = acts.rows[(g0 + t) * TILE * cols + s * SLICE..].as_ptr();
                            hw.load_a(t % 2, a, 2 * cols);
                            hw.dot(t, t % 2, s % 2);
                        }
                    }
                    for t in 0..gs {
                        hw.store_c(t, c.0.as_mut_ptr());
                        let t0 = (g0 + t) * TILE;
                        for (m, row) in c.0.chunks_exact(TILE).enumerate().take(n - t0) {
                            for (r, &v) in row.iter().enumerate() {
                                out[(g * ROWS + r) * n + t0 + m] = v;
                            }
                        }
                    }
                }
            }
            hw.release();
        }
    });
}

/// One 16-row group (`cols / 256` blocks of `ty`'s layout) as bf16 B tiles, one per 32
/// columns: tile `s`, row `p`, column `r` holds row r's weights `32s + 2p` and `32s + 2p + 1`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni,avx2,fma,f16c")]
fn decode_group(ty: GgmlType, grp: &[u8], tiles: &mut [u32]) {
    let block = ROWS * ty.type_size();
    for (k, b) in grp.chunks_exact(block).enumerate() {
        let tiles = &mut tiles[k * 8 * B_WORDS..][..8 * B_WORDS];
        match ty {
            GgmlType::Q4_K => decode_q4k(b, tiles),
            _ => decode_q6k(b, tiles),
        }
    }
}

/// Writes B rows `2q`, `2q + 1` of a tile from quad `q` (the u8 quants of weights
/// `4q .. 4q + 4` of 16 rows, one row per lane): `w = scale · quant − offset` per lane, as
/// bf16 pairs.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,fma")]
fn emit_quad(quad: __m512i, scale: __m512, offset: __m512, q: usize, tile: &mut [u32]) {
    let byte = _mm512_set1_epi32(0xFF);
    // Interleaves two 16-lane bf16 halves into per-lane pairs (low half first).
    let pairs = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
        16, 0,
    );
    let weight = |shift: u32| {
        let v = _mm512_and_si512(_mm512_srlv_epi32(quad, _mm512_set1_epi32(shift as i32)), byte);
        _mm512_fmsub_ps(scale, _mm512_cvtepi32_ps(v), offset)
    };
    for half in 0..2 {
        let (w0, w1) = (weight(16 * half as u32), weight(16 * half as u32 + 8));
        // SAFETY: both are 64 bytes of plain bits.
        let bf = unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(w1, w0)) };
        let row = _mm512_permutexvar_epi16(pairs, bf);
        // SAFETY: row 2q + half of the tile: 16 u32 inside `tile` (256 long).
        unsafe { _mm512_storeu_si512(tile[(2 * q + half) * 16..].as_mut_ptr().cast(), row) };
    }
}

/// One repacked Q4_K block (16 rows × 256 weights) as 8 B tiles.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni,avx2,fma,f16c")]
fn decode_q4k(b: &[u8], tiles: &mut [u32]) {
    assert!(b.len() >= ROWS * 144 && tiles.len() >= 8 * B_WORDS);
    let p = b.as_ptr();
    // SAFETY (all three accessors): `p` is a whole 2304-byte block (asserted).
    let (d, dmin, hi) = unsafe { super::q4k::header(p) };
    for j in 0..8 {
        let (sc, mn) = unsafe { super::q4k::scale_min(p, hi, j) };
        let scale = _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc));
        let offset = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(mn));
        let tile = &mut tiles[j * B_WORDS..][..B_WORDS];
        for pair in 0..4 {
            let (w0, w1) = unsafe { super::q4k::quad_pair(p, j, pair) };
            emit_quad(w0, scale, offset, 2 * pair, tile);
            emit_quad(w1, scale, offset, 2 * pair + 1, tile);
        }
    }
}

/// One repacked Q6_K block (16 rows × 256 weights) as 8 B tiles.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni,avx2,fma,f16c")]
fn decode_q6k(b: &[u8], tiles: &mut [u32]) {
    assert!(b.len() >= ROWS * 210 && tiles.len() >= 8 * B_WORDS);
    let p = b.as_ptr();
    // SAFETY (the load and the three accessors): `p` is a whole 3360-byte block (asserted;
    // `d` are its first 32 bytes, see `q6k`'s layout).
    let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p as *const __m256i) });
    for j in 0..8 {
        let tile = &mut tiles[j * B_WORDS..][..B_WORDS];
        for h in 0..2 {
            let sc = unsafe { super::q6k::scales(p, 2 * j + h) };
            let scale = _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc));
            let offset = _mm512_mul_ps(scale, _mm512_set1_ps(32.0));
            let hi = unsafe { super::q6k::high_bits(p, j, h) };
            for pp in 0..2 {
                let pair = 2 * h + pp;
                let (w0, w1) = unsafe { super::q6k::quad_pair(p, j, pair, (hi[2 * pp], hi[2 * pp + 1])) };
                emit_quad(w0, scale, offset, 2 * pair, tile);
                emit_quad(w1, scale, offset, 2 * pair + 1, tile);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::amx::tests::Model;

    /// Activations are rounded as `f32_to_bf16` rounds, and zero rows pad the last tile.
    #[test]
    fn packing_rounds_as_f32_to_bf16() {
        let (n, cols) = (3, 64);
        let x: Vec<f32> = crate::kernels::tests::uniform(n * cols, 12).iter().map(|v| v * 3.7).collect();
        let acts = pack(&x, n, cols);
        assert_eq!(acts.rows.len(), TILE * cols, "zero rows up to a whole tile");
        for (i, (&got, &v)) in acts.rows.iter().zip(&x).enumerate() {
            assert_eq!(got, crate::kernels::fp::f32_to_bf16(v), "value {i}: {v}");
        }
        assert!(acts.rows[n * cols..].iter().all(|&b| b == 0));
    }

    /// The driver against f64 sums of the dequantized rows, on the tiles where the CPU has
    /// them and on the software model everywhere (AVX512_BF16 needed for the decode).
    #[test]
    fn products_match_the_dequantized_reference() {
        if !(super::super::supported() && crate::kernels::simd::bf16_supported()) {
            return eprintln!("skipped: no AVX-512 VNNI/BF16");
        }
        // 16 rows and one token group; 32 rows, 70 tokens (two passes of token groups, the
        // second partial).
        for (ty, rows, cols, n) in [
            (GgmlType::Q4_K, 16, 512, 5),
            (GgmlType::Q6_K, 16, 256, 16),
            (GgmlType::Q4_K, 32, 768, 70),
            (GgmlType::Q6_K, 32, 512, 70),
        ] {
            let rb = cols / 256 * ty.type_size();
            let mut plain = vec![0u8; rows * rb];
            crate::synth::fill_random(ty, &mut plain, 3);
            let mut data = vec![0u8; plain.len()];
            super::super::repack(ty, &plain, cols, &mut data);
            let x = crate::kernels::tests::uniform(n * cols, 41);
            let acts = pack(&x, n, cols);
            let mut runs = vec![];
            let mut model = vec![f32::NAN; rows * n];
            // SAFETY: the features the decode needs were checked above; the model has no tiles.
            unsafe { run(&mut Model::new(), ty, &data, cols, &acts, &mut model) };
            runs.push(("model", model));
            if available() {
                let mut hw = vec![f32::NAN; rows * n];
                matmul_rows(ty, &data, cols, &acts, &mut hw);
                runs.push(("tiles", hw));
            }
            let mut w = vec![0f32; cols];
            for r in 0..rows {
                crate::kernels::dequantize_row(ty, &plain[r * rb..(r + 1) * rb], &mut w).unwrap();
                for t in 0..n {
                    let xs = &x[t * cols..(t + 1) * cols];
                    let want: f64 = w.iter().zip(xs).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let mag: f64 = w.iter().zip(xs).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                    for (name, got) in &runs {
                        let got = got[r * n + t] as f64;
                        assert!(
                            (got - want).abs() <= mag * 2f64.powi(-7) + 1e-6,
                            "{name} {ty:?} {rows}×{cols} n={n} row {r} token {t}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
