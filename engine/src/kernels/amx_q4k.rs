//! Q4_K weights × Q8_K activations on the AMX int8 tiles (`tdpbusd`): prompt prefill, where
//! a routed expert gets a few to a few dozen tokens.
//!
//! The bf16 tile path (`amx.rs`) converts every weight to bf16 before the tiles see it, and
//! that conversion, not the multiplies, sets its speed. Here the weights go to the tiles as
//! they are stored: a Q4_K quant is an unsigned 4-bit integer, so a tile row is the block's
//! nibbles split into bytes (an `and` and a shift per 64 weights), and the activations are
//! the Q8_K quants the VNNI kernels use. What the tiles cannot do is the per-sub-block scale:
//! each 32-weight sub-block has its own 6-bit scale and min, so its integer sum must come out
//! of the tiles on its own. A product takes 64 weights of 16 weight rows (a sub-block pair)
//! against 8 tokens laid out so that the first sub-block's sums land in result columns 0..8
//! and the second's in 8..16 (see [`ActsI8`]): every product is K = 64 and every result column
//! is used. Each result tile (exact i32 sums) is stored and scaled on the vector units, and
//! the mins term `dmin · Σ_s m_s · Σ_{i∈s} x_i` comes from the activations' block sums with
//! `vpdpwssd`. The arithmetic is the VNNI kernels': exact integer sums per sub-block, then f32
//! `d · sc · Σ` and `d_act` per 256-weight block; only the order of the f32 additions differs.
//!
//! `HY_AMX_I8=0` turns the path off (the products then take the bf16 tiles or VNNI).

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::amx::{tile_load, tile_release, tile_store, Aligned};
use super::quant::BlockQ8K;
use crate::dtype::GgmlType;

/// Weight rows per A and result tile; tokens per result tile.
const TILE: usize = 16;
/// Weights per sub-block.
const SUB: usize = 32;
/// Sub-blocks per Q4_K block.
const SUBS: usize = 8;
/// Bytes of one decoded A row: a sub-block pair's 64 weights.
const ROW: usize = 64;
/// Token counts up to this take the paired layout (8-token groups, K = 64 products); more
/// take 16-token groups with one K = 32 product per sub-block. Measured (`kernel_bench`,
/// 512 MB, 16 threads): paired 15.6 ms at 8 tokens against 19.3 unpaired, but 22.6 against
/// 19.6 at 16 tokens (two groups of K = 64 products cost more than one of K = 32).
const PAIRED_MAX: usize = 8;

/// Whether the int8 tiles run here: AMX-TILE and AMX-INT8, Linux granted the tile state
/// (`amx::available` asks), AVX-512 VNNI for the scaling, and `HY_AMX_I8` is not `0`/`off`.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let off = matches!(std::env::var("HY_AMX_I8").as_deref(), Ok("0") | Ok("off"));
        let int8 = __cpuid_count(7, 0).edx & (1 << 25) != 0;
        !off && int8 && super::simd::vnni_supported() && super::amx::available()
    })
}

/// The activation row counts for which Q4_K products take this path: `HY_AMX_I8_MIN` (default
/// 8) up to `HY_AMX_I8_MAX` (default 48, excluded). Measured on the 16-core Xeon
/// (`kernel_bench --types Q4_K --mb 512`, 16 threads, one run, session 6): 16.8 / 16.5 /
/// 16.3 / 18.1 / 19.3 / 28.2 ms at 4 / 6 / 8 / 12 / 16 / 32 rows, against the VNNI kernel's
/// 11.1 / 14.9 / 20.2 / 31.9 ms at 4 / 6 / 8 / 12 rows and the bf16 tiles' 30.6 ms at 16
/// (session 5: the bf16 tiles 32.0 / 39.0 ms at 32 / 64 rows, this path 42.3 at 64).
pub fn rows() -> std::ops::Range<usize> {
    static RANGE: OnceLock<std::ops::Range<usize>> = OnceLock::new();
    RANGE
        .get_or_init(|| {
            let var =
                |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
            var("HY_AMX_I8_MIN", 8).max(1)..var("HY_AMX_I8_MAX", 48)
        })
        .clone()
}

/// Q8_K activation rows packed for the tiles, in groups of tokens, per 256-column block `k`,
/// product `j` of the block and group `g`: the B tile, the tokens' scales `d` and their
/// sub-block sums in i16 pairs (sub-blocks `2p`, `2p + 1` in lane `i` of vector `p`).
///
/// - Unpaired (more than [`PAIRED_MAX`] tokens): groups of 16 tokens, one product per
///   sub-block `j` (K = 32): B row `p`, column `i` holds quants `32j + 4p .. +4` of token
///   `16g + i`.
/// - Paired: groups of 8 tokens, one product per sub-block pair `j` (sub-blocks `2j`,
///   `2j + 1`, K = 64): B rows 0..8 hold the quants of sub-block `2j` in columns 0..8, rows
///   8..16 those of `2j + 1` in columns 8..16, zeros elsewhere. Against an A row of the
///   pair's 64 weights a product leaves `2j`'s sums in result columns 0..8 and `2j + 1`'s in
///   8..16: every result column is used. `d` is stored for both halves, the sums in lanes
///   0..8 only.
///
/// Tokens past `n` are zero.
pub struct ActsI8 {
    pub n: usize,
    pub cols: usize,
    /// Sub-blocks per product: 2 paired, 1 unpaired.
    per: usize,
    groups: usize,
    /// B tiles as 4-quant words: word `p · 16 + i` of a tile is row `p`, column `i`.
    tiles: Vec<u32>,
    d: Vec<f32>,
    sums: Vec<i32>,
}

impl ActsI8 {
    fn paired(&self) -> bool {
        self.per == 2
    }
    /// Tokens per group (a result tile's columns over the sub-blocks sharing them).
    fn group(&self) -> usize {
        TILE / self.per
    }
    /// Products per block.
    fn products(&self) -> usize {
        SUBS / self.per
    }
    /// Rows of a B tile (64 bytes each): K / 4.
    fn b_rows(&self) -> usize {
        self.per * SUB / 4
    }
    fn tile(&self, k: usize, j: usize, g: usize) -> *const u8 {
        let words = self.b_rows() * TILE;
        self.tiles[((k * self.products() + j) * self.groups + g) * words..].as_ptr() as *const u8
    }
    fn d(&self, k: usize, g: usize) -> &[f32] {
        &self.d[(k * self.groups + g) * TILE..][..TILE]
    }
    fn sums(&self, k: usize, g: usize) -> &[i32] {
        &self.sums[(k * self.groups + g) * 4 * TILE..][..4 * TILE]
    }
}

/// Packs `n` rows of Q8_K blocks (`cols / 256` blocks per row, row after row).
pub fn pack(q: &[BlockQ8K], n: usize, cols: usize) -> ActsI8 {
    let kb = cols / 256;
    assert!(q.len() == n * kb, "amx_q4k::pack: {} blocks for {n} rows of {cols}", q.len());
    let per = if n <= PAIRED_MAX { 2 } else { 1 };
    let mut acts =
        ActsI8 { n, cols, per, groups: n.div_ceil(TILE / per), tiles: Vec::new(), d: Vec::new(), sums: Vec::new() };
    let (group, groups, words, products) = (acts.group(), acts.groups, acts.b_rows() * TILE, acts.products());
    acts.tiles = vec![0u32; kb * products * groups * words];
    acts.d = vec![0f32; kb * groups * TILE];
    acts.sums = vec![0i32; kb * groups * 4 * TILE];
    for (row, blocks) in q.chunks_exact(kb.max(1)).enumerate().take(n) {
        let (g, i) = (row / group, row % group);
        for (k, b) in blocks.iter().enumerate() {
            for (s, sub) in b.qs.chunks_exact(SUB).enumerate() {
                let (j, half) = (s / per, s % per);
                let tile = &mut acts.tiles[((k * products + j) * groups + g) * words..][..words];
                for (p, q) in sub.chunks_exact(4).enumerate() {
                    let word = (half * SUB / 4 + p) * TILE + half * group + i;
                    tile[word] = u32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8]);
                }
            }
            for half in 0..per {
                acts.d[(k * groups + g) * TILE + half * group + i] = b.d;
            }
            for p in 0..4 {
                let sub = |s: usize| (b.bsums[2 * s] as i32 + b.bsums[2 * s + 1] as i32) as i16 as u16 as u32;
                acts.sums[((k * groups + g) * 4 + p) * TILE + i] = (sub(2 * p) | sub(2 * p + 1) << 16) as i32;
            }
        }
    }
    acts
}

/// `out[r·n + i] = W[r] · x[i]` for the Q4_K weight rows in `data` (`row_bytes` each) and
/// the packed activation rows, on the calling thread.
///
/// # Panics
/// When [`available`] is false or the shapes disagree.
pub fn matmul_rows(data: &[u8], row_bytes: usize, acts: &ActsI8, out: &mut [f32]) {
    assert!(available(), "amx_q4k::matmul_rows needs AMX-INT8");
    // SAFETY: AMX-INT8 and AVX-512 VNNI (with F/BW/VL) checked above.
    unsafe { run(&mut Hw, data, row_bytes, acts, out) }
}

/// The tile operations: the instructions ([`Hw`]) or, in tests, a software model. Four
/// result registers (C 0..4) and two A and B slots: four products in flight, the product
/// into C `c` taking A and B slot `c % 2`.
trait Tiles {
    /// Tile shapes for the paired layout (A and B 16 rows × 64 bytes) or the unpaired one
    /// (A 16 rows × 32 bytes, B 8 rows × 64 bytes).
    unsafe fn configure(&mut self, paired: bool);
    /// A[slot] ← 16 rows at `p`, 64 bytes apart.
    unsafe fn load_a(&mut self, slot: usize, p: *const u8);
    /// B[slot] ← the configured rows of 64 bytes at `p`, contiguous.
    unsafe fn load_b(&mut self, slot: usize, p: *const u8);
    /// C[c] ← A[c % 2] · B[c % 2] (from zero).
    unsafe fn product(&mut self, c: usize);
    /// C[c] → 16 rows of 16 i32 at `p`.
    unsafe fn store_c(&mut self, c: usize, p: *mut i32);
    unsafe fn release(&mut self);
}

/// One 16-row strip's decoded block: per sub-block pair and row the pair's 64 quants as bytes
/// (an A tile of the paired layout; the unpaired one reads each half, 64 bytes apart), per
/// sub-block and row `d·sc`, per row the mins as i16 pairs (`mins[p / 2][r][p % 2]` holds
/// sub-blocks `2p`, `2p + 1`) and `dmin`.
struct Strip {
    a: Aligned<[[[u8; ROW]; TILE]; SUBS / 2]>,
    dsc: Aligned<[[f32; TILE]; SUBS]>,
    mins: Aligned<[[[i32; 2]; TILE]; 2]>,
    dmin: Aligned<[f32; TILE]>,
}

impl Strip {
    fn zero() -> Self {
        Strip {
            a: Aligned([[[0; ROW]; TILE]; SUBS / 2]),
            dsc: Aligned([[0.0; TILE]; SUBS]),
            mins: Aligned([[[0; 2]; TILE]; 2]),
            dmin: Aligned([0.0; TILE]),
        }
    }
}

/// The result tiles of one (block, group): exact i32 sums, one tile per product.
type Results = Aligned<[[[i32; TILE]; TILE]; SUBS]>;

/// The driver: per strip of 16 weight rows, the strip is decoded first, row after row in
/// storage order (one sequential read, prefetched; 4 KB of A tiles per 256-column block,
/// kept per thread), then every block's products run for every group of tokens; the scaled
/// sums of a group collect in `total` until the strip's end (where the paired layout adds
/// each token's two halves).
///
/// Software-pipelined: a result tile read right after `tilestored` waits for the store, so
/// the products of the next (block, group) are issued before the readout of this one.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn run<H: Tiles>(hw: &mut H, data: &[u8], rb: usize, acts: &ActsI8, out: &mut [f32]) {
    let t = GgmlType::Q4_K;
    let (kb, bytes) = (acts.cols / 256, t.type_size());
    assert_eq!(rb, kb * bytes, "amx_q4k: row bytes do not match {} columns", acts.cols);
    let rows = data.len() / rb.max(1);
    let (n, groups, group, paired) = (acts.n, acts.groups, acts.group(), acts.paired());
    assert!(out.len() >= rows * n);
    let mut c: [Results; 2] = [Aligned([[[0; TILE]; TILE]; SUBS]), Aligned([[[0; TILE]; TILE]; SUBS])];
    let mut total = vec![_mm512_setzero_ps(); groups * TILE];
    STRIPS.with_borrow_mut(|strips| {
        if strips.len() < kb {
            strips.resize_with(kb, Strip::zero);
        }
        // SAFETY (all tile calls): the caller guarantees the instructions; every pointer is a
        // whole tile inside `strips`, `c` or `acts.tiles`.
        unsafe {
            hw.configure(paired);
            let products = |hw: &mut H, strip: &Strip, k: usize, g: usize, c: &mut Results| {
                for j in 0..acts.products() {
                    // Paired: pair j's rows; unpaired: sub-block j, half j % 2 of pair j / 2's rows.
                    let pair = strip.a.0[if paired { j } else { j / 2 }].as_ptr().cast::<u8>();
                    let a = if paired { pair } else { pair.add(SUB * (j % 2)) };
                    hw.load_a(j % 2, a.cast());
                    hw.load_b(j % 2, acts.tile(k, j, g));
                    hw.product(j % 4);
                    hw.store_c(j % 4, c.0[j].as_mut_ptr() as *mut i32);
                }
            };
            for r0 in (0..rows).step_by(TILE) {
                let nr = TILE.min(rows - r0);
                decode_strip(&data[r0 * rb..], rb, nr, &mut strips[..kb]);
                total.fill(_mm512_setzero_ps());
                products(hw, &strips[0], 0, 0, &mut c[0]);
                let mut step = 0;
                for k in 0..kb {
                    for g in 0..groups {
                        let next = if g + 1 < groups { Some((k, g + 1)) } else { (k + 1 < kb).then_some((k + 1, 0)) };
                        if let Some((k2, g2)) = next {
                            products(hw, &strips[k2], k2, g2, &mut c[(step + 1) % 2]);
                        }
                        let (cs, tot) = (&c[step % 2].0, &mut total[g * TILE..][..TILE]);
                        if paired {
                            scale_paired(cs, &strips[k], acts.d(k, g), acts.sums(k, g), tot);
                        } else {
                            scale_unpaired(cs, &strips[k], acts.d(k, g), acts.sums(k, g), tot);
                        }
                        step += 1;
                    }
                }
                for r in 0..nr {
                    for g in 0..groups {
                        let nt = group.min(n - g * group);
                        let mut v = [0f32; TILE];
                        _mm512_storeu_ps(v.as_mut_ptr(), total[g * TILE + r]);
                        for (i, o) in out[(r0 + r) * n + g * group..][..nt].iter_mut().enumerate() {
                            *o = if paired { v[i] + v[group + i] } else { v[i] };
                        }
                    }
                }
            }
            hw.release();
        }
    })
}

thread_local! {
    /// Each thread's decoded strip, one [`Strip`] per 256-column block (grown to the widest
    /// matrix seen: 4.9 KB per block).
    static STRIPS: std::cell::RefCell<Vec<Strip>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Decodes the `nr` (≤ 16) rows at `rows` (`rb` bytes apart, one [`Strip`] per block): first
/// every row's nibbles to bytes in storage order (pair `c` of a block is its quant bytes
/// `32c..32c + 32`: their low nibbles are sub-block `2c`, the high ones `2c + 1`), prefetching
/// [`simd::prefetch_distance`] bytes ahead; then per block the scales, mins, `d` and `dmin` of
/// all rows at once (lane `r` of each vector is row `r`, gathered from the lines just read).
/// Rows past `nr` keep what an earlier strip left there: their results are not read.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn decode_strip(rows: &[u8], rb: usize, nr: usize, strips: &mut [Strip]) {
    let bytes = GgmlType::Q4_K.type_size();
    assert!(nr <= TILE && rows.len() >= nr * rb && rb == strips.len() * bytes);
    let pf = super::simd::prefetch_distance();
    let m4 = _mm512_set1_epi8(0xF);
    for r in 0..nr {
        for (k, strip) in strips.iter_mut().enumerate() {
            let b = &rows[r * rb + k * bytes..][..bytes];
            super::avx512::prefetch_block(b, pf);
            for half in 0..2 {
                // SAFETY: 64 readable quant bytes (pairs 2·half, 2·half + 1); 64 writable bytes
                // per A row.
                unsafe {
                    let v = _mm512_loadu_si512(b[16 + 64 * half..].as_ptr() as *const _);
                    let lo = _mm512_and_si512(v, m4);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
                    // Pair 2·half: low 32 bytes of lo and of hi; pair 2·half + 1: the high ones.
                    let first = _mm512_shuffle_i64x2::<0b01_00_01_00>(lo, hi);
                    let second = _mm512_shuffle_i64x2::<0b11_10_11_10>(lo, hi);
                    _mm512_store_si512(strip.a.0[2 * half][r].as_mut_ptr() as *mut _, first);
                    _mm512_store_si512(strip.a.0[2 * half + 1][r].as_mut_ptr() as *mut _, second);
                }
            }
        }
    }
    assert!(rb * TILE < i32::MAX as usize, "amx_q4k: rows too long to gather");
    let mask: __mmask16 = ((1u32 << nr) - 1) as u16;
    let lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    let idx = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(rb as i32));
    for (k, strip) in strips.iter_mut().enumerate() {
        decode_scales(rows[k * bytes..].as_ptr(), idx, mask, strip);
    }
}

/// The scales, mins, `d` and `dmin` of one block of the strip's rows: lane `r` gathers row
/// `r`'s (at `base + idx[r]`, for the rows in `mask`; the others get zeros).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn decode_scales(base: *const u8, idx: __m512i, mask: __mmask16, strip: &mut Strip) {
    let zero = _mm512_setzero_si512();
    // SAFETY: lane r (in the mask) reads 4 bytes at offset 0/4/8/12 of row r's block, which
    // the caller's strip holds.
    let [dd, u0, u1, u2] =
        [0usize, 4, 8, 12].map(|o| unsafe { _mm512_mask_i32gather_epi32::<1>(zero, mask, idx, base.add(o).cast()) });
    // The 12 scale bytes as in `k4_scale_min_bytes`, 16 rows at once.
    let (k1, k2, k3) = (_mm512_set1_epi32(0x3f3f_3f3f), _mm512_set1_epi32(0x0f0f_0f0f), _mm512_set1_epi32(0x0303_0303));
    let and = _mm512_and_si512;
    let sc_lo = and(u0, k1);
    let sc_hi = _mm512_or_si512(and(u2, k2), _mm512_slli_epi32::<4>(and(_mm512_srli_epi32::<6>(u0), k3)));
    let m_lo = and(u1, k1);
    let m_hi = _mm512_or_si512(
        and(_mm512_srli_epi32::<4>(u2), k2),
        _mm512_slli_epi32::<4>(and(_mm512_srli_epi32::<6>(u1), k3)),
    );
    let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dd));
    let dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(dd)));
    let byte = _mm512_set1_epi32(0xFF);
    // SAFETY: whole 64-byte rows of the strip's aligned arrays.
    unsafe {
        for (s, dst) in strip.dsc.0.iter_mut().enumerate() {
            let v = if s < 4 { sc_lo } else { sc_hi };
            let sc = and(_mm512_srlv_epi32(v, _mm512_set1_epi32(8 * (s as i32 % 4))), byte);
            _mm512_store_ps(dst.as_mut_ptr(), _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc)));
        }
        // Each row's four min bytes become two i32 of i16 pairs: rows 0..8, then 8..16.
        for (h, m) in [m_lo, m_hi].into_iter().enumerate() {
            let dst = strip.mins.0[h].as_mut_ptr() as *mut __m512i;
            _mm512_store_si512(dst, _mm512_cvtepu8_epi16(_mm512_castsi512_si256(m)));
            _mm512_store_si512(dst.add(1), _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64::<1>(m)));
        }
        _mm512_store_ps(strip.dmin.0.as_mut_ptr(), dmin);
    }
}

/// The mins term of row `r` for a group (lane `i`: `Σ_s m_s · sums_s[i]`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
fn mins_term(strip: &Strip, r: usize, sv: &[__m512i; 4]) -> __m512 {
    let mut mi = _mm512_setzero_si512();
    for (p, &s) in sv.iter().enumerate() {
        mi = _mm512_dpwssd_epi32(mi, _mm512_set1_epi32(strip.mins.0[p / 2][r][p % 2]), s);
    }
    _mm512_cvtepi32_ps(mi)
}

/// Adds row `r`'s scaled sums `acc` of one block and group to its total: the mins term taken
/// off, times the tokens' `d` (`dv`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
fn add_to_total(tot: &mut __m512, acc: __m512, strip: &Strip, r: usize, sv: &[__m512i; 4], dv: __m512) {
    let acc = _mm512_fnmadd_ps(mins_term(strip, r, sv), _mm512_set1_ps(strip.dmin.0[r]), acc);
    *tot = _mm512_fmadd_ps(acc, dv, *tot);
}

/// The group's `d` and sum vectors.
#[inline]
#[target_feature(enable = "avx512f")]
fn group_vectors(d: &[f32], sums: &[i32]) -> (__m512, [__m512i; 4]) {
    // SAFETY: 16 readable f32 / i32 per load (slices of 16 and 64).
    unsafe {
        let dv = _mm512_loadu_ps(d[..TILE].as_ptr());
        let sv = [0, 1, 2, 3].map(|p| _mm512_loadu_si512(sums[p * TILE..][..TILE].as_ptr() as *const _));
        (dv, sv)
    }
}

/// Adds one block's contribution for one group of 16 tokens to `total` (one vector per
/// weight row): `d_act ⊙ (Σ_s d·sc_s · C_s − dmin · Σ_s m_s · sums_s)`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn scale_unpaired(c: &[[[i32; TILE]; TILE]; SUBS], strip: &Strip, d: &[f32], sums: &[i32], total: &mut [__m512]) {
    let (dv, sv) = group_vectors(d, sums);
    for (r, tot) in total.iter_mut().enumerate() {
        let mut acc = _mm512_setzero_ps();
        for (s, cs) in c.iter().enumerate() {
            // SAFETY: 16 readable i32 (one row of a result tile).
            let v = unsafe { _mm512_loadu_si512(cs[r].as_ptr() as *const _) };
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(strip.dsc.0[s][r]), acc);
        }
        add_to_total(tot, acc, strip, r, &sv, dv);
    }
}

/// As [`scale_unpaired`] for a paired group of 8 tokens: a token's sums of sub-blocks `2c`
/// and `2c + 1` sit in lanes `i` and `8 + i` of result tile `c`; the mins go to lanes 0..8.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn scale_paired(c: &[[[i32; TILE]; TILE]; SUBS], strip: &Strip, d: &[f32], sums: &[i32], total: &mut [__m512]) {
    let (dv, sv) = group_vectors(d, sums);
    for (r, tot) in total.iter_mut().enumerate() {
        let mut acc = _mm512_setzero_ps();
        for (p, cp) in c[..SUBS / 2].iter().enumerate() {
            // SAFETY: 16 readable i32 (one row of a result tile).
            let v = _mm512_cvtepi32_ps(unsafe { _mm512_loadu_si512(cp[r].as_ptr() as *const _) });
            acc = _mm512_mask3_fmadd_ps(v, _mm512_set1_ps(strip.dsc.0[2 * p][r]), acc, 0x00FF);
            acc = _mm512_mask3_fmadd_ps(v, _mm512_set1_ps(strip.dsc.0[2 * p + 1][r]), acc, 0xFF00);
        }
        add_to_total(tot, acc, strip, r, &sv, dv);
    }
}

/// The AMX instructions: C in tmm0..3, A slots tmm4/tmm5, B slots tmm6/tmm7.
struct Hw;

impl Tiles for Hw {
    unsafe fn configure(&mut self, paired: bool) {
        let (a, b) = if paired { ((16, 64), (16, 64)) } else { ((16, 32), (8, 64)) };
        // SAFETY: the caller checked AMX. C tiles are 16 rows × 64 bytes.
        unsafe { super::amx::configure_tiles(&[(16, 64), (16, 64), (16, 64), (16, 64), a, a, b, b]) }
    }

    unsafe fn load_a(&mut self, slot: usize, p: *const u8) {
        // SAFETY: the caller passes 16 readable rows of the configured width, 64 bytes
        // apart. A: tmm4..5.
        unsafe { tile_load(4 + slot, p, ROW) }
    }

    unsafe fn load_b(&mut self, slot: usize, p: *const u8) {
        // SAFETY: the caller passes a whole B tile (its configured rows of 64 bytes). B: tmm6..7.
        unsafe { tile_load(6 + slot, p, ROW) }
    }

    unsafe fn product(&mut self, c: usize) {
        // SAFETY: tile registers only.
        unsafe {
            match c {
                0 => asm!("tilezero tmm0", "tdpbusd tmm0, tmm4, tmm6", options(nomem, nostack, preserves_flags)),
                1 => asm!("tilezero tmm1", "tdpbusd tmm1, tmm5, tmm7", options(nomem, nostack, preserves_flags)),
                2 => asm!("tilezero tmm2", "tdpbusd tmm2, tmm4, tmm6", options(nomem, nostack, preserves_flags)),
                _ => asm!("tilezero tmm3", "tdpbusd tmm3, tmm5, tmm7", options(nomem, nostack, preserves_flags)),
            }
        }
    }

    unsafe fn store_c(&mut self, c: usize, p: *mut i32) {
        // SAFETY: the caller passes 16 × 16 writable i32.
        unsafe { tile_store(c, p.cast(), 64) }
    }

    unsafe fn release(&mut self) {
        // SAFETY: AMX checked by the caller.
        unsafe { tile_release() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::quantize_q8_k;
    use crate::kernels::{scalar, simd};

    /// `tdpbusd` as the manual defines it (u8 × s8, four products per i32 lane), on tiles of
    /// the configured shapes (A `16 × a_bytes`, B `a_bytes / 4` rows of 64 bytes).
    struct Model {
        a_bytes: usize,
        a: [[[u8; ROW]; TILE]; 2],
        b: [[u8; TILE * ROW]; 2],
        c: [[[i32; TILE]; TILE]; 4],
    }

    impl Model {
        fn new() -> Self {
            Model { a_bytes: 0, a: [[[0; ROW]; TILE]; 2], b: [[0; TILE * ROW]; 2], c: [[[0; TILE]; TILE]; 4] }
        }
    }

    impl Tiles for Model {
        unsafe fn configure(&mut self, paired: bool) {
            self.a_bytes = if paired { ROW } else { SUB };
        }
        unsafe fn load_a(&mut self, slot: usize, p: *const u8) {
            self.a[slot] = [[0; ROW]; TILE];
            for r in 0..TILE {
                // SAFETY: 16 rows of a_bytes, 64 bytes apart.
                let row = unsafe { std::slice::from_raw_parts(p.add(ROW * r), self.a_bytes) };
                self.a[slot][r][..self.a_bytes].copy_from_slice(row);
            }
        }
        unsafe fn load_b(&mut self, slot: usize, p: *const u8) {
            let bytes = self.a_bytes / 4 * ROW;
            self.b[slot] = [0; TILE * ROW];
            // SAFETY: a whole B tile of the configured rows.
            self.b[slot][..bytes].copy_from_slice(unsafe { std::slice::from_raw_parts(p, bytes) });
        }
        unsafe fn product(&mut self, c: usize) {
            let slot = c % 2;
            for m in 0..TILE {
                for n in 0..TILE {
                    let mut sum = 0i32;
                    for k in 0..self.a_bytes / 4 {
                        for i in 0..4 {
                            sum += self.a[slot][m][4 * k + i] as i32 * self.b[slot][ROW * k + 4 * n + i] as i8 as i32;
                        }
                    }
                    self.c[c][m][n] = sum;
                }
            }
        }
        unsafe fn store_c(&mut self, c: usize, p: *mut i32) {
            for m in 0..TILE {
                for n in 0..TILE {
                    // SAFETY: 256 writable i32.
                    unsafe { *p.add(TILE * m + n) = self.c[c][m][n] };
                }
            }
        }
        unsafe fn release(&mut self) {}
    }

    /// Products of random Q4_K rows (a partial strip included) with 1 to 40 activation rows
    /// (the paired layout: a partial group and a full one; the unpaired: one and a half
    /// groups, one and two full ones, two and a half) against the scalar Q4_K × Q8_K kernel:
    /// the same integer sums, so they agree to f32 rounding.
    #[test]
    fn tiles_match_the_scalar_kernel() {
        if !simd::vnni_supported() {
            eprintln!("skipped: no AVX-512 VNNI for the scaling");
            return;
        }
        let (rows, cols) = (19, 512);
        let rb = cols / 256 * GgmlType::Q4_K.type_size();
        let mut data = vec![0u8; rows * rb];
        crate::synth::fill_random(GgmlType::Q4_K, &mut data, 7);
        for n in [1, 5, 8, 9, 16, 32, 40] {
            let x = crate::kernels::tests::uniform(n * cols, 99 + n as u32);
            let q = quantize_q8_k(&x);
            let acts = pack(&q, n, cols);
            let mut got = vec![0f32; rows * n];
            let hw_or_model = |out: &mut [f32]| {
                if available() {
                    // SAFETY: AMX-INT8 and VNNI checked by `available`.
                    unsafe { run(&mut Hw, &data, rb, &acts, out) }
                } else {
                    let mut m = Model::new();
                    // SAFETY: VNNI checked above; the model needs no tiles.
                    unsafe { run(&mut m, &data, rb, &acts, out) }
                }
            };
            hw_or_model(&mut got);
            for r in 0..rows {
                for i in 0..n {
                    let want = scalar::dot_k_row(
                        GgmlType::Q4_K,
                        &data[r * rb..(r + 1) * rb],
                        &q[i * cols / 256..(i + 1) * cols / 256],
                    );
                    let g = got[r * n + i];
                    assert!((g - want).abs() <= 1e-5 * want.abs().max(1.0), "row {r} token {i} of {n}: {g} vs {want}");
                }
            }
        }
    }
}
