//! Q4_K weights × Q8_K activations on the AMX int8 tiles (`tdpbusd`): prompt prefill, where
//! a routed expert gets a few to a few dozen tokens.
//!
//! The bf16 tile path (`amx.rs`) converts every weight to bf16 before the tiles see it, and
//! that conversion, not the multiplies, sets its speed. Here the weights go to the tiles as
//! they are stored: a Q4_K quant is an unsigned 4-bit integer, so a tile row is the block's
//! nibbles split into bytes (an `and` and a shift per 64 weights), and the activations are
//! the Q8_K quants the VNNI kernels use. What the tiles cannot do is the per-sub-block scale:
//! each 32-weight sub-block has its own 6-bit scale and min. So the tiles run one sub-block at
//! a time (K = 32: A is 16 rows × 32 bytes, B is 8 rows × 64 bytes), each result tile (16
//! weight rows × 16 tokens, exact i32 sums) is stored and scaled on the vector units, and the
//! mins term `dmin · Σ_s m_s · Σ_{i∈s} x_i` comes from the activations' block sums with
//! `vpdpwssd`. The arithmetic is the VNNI kernels': exact integer sums per sub-block, then f32
//! `d · sc · Σ` and `d_act` per 256-weight block; only the order of the f32 additions differs.
//!
//! `HY_AMX_I8=0` turns the path off (the products then take the bf16 tiles or VNNI).

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::amx::{tile_load, tile_release, tile_store, Aligned};
use super::blocks::k4_scale_min_bytes;
use super::quant::BlockQ8K;
use crate::dtype::GgmlType;

/// Tokens per result tile (and weight rows per A tile).
const TILE: usize = 16;
/// Weights per sub-block: the K of one tile product.
const SUB: usize = 32;
/// Sub-blocks per Q4_K block.
const SUBS: usize = 8;
/// Bytes of one B tile: 8 rows of 16 tokens × 4 quants.
const B_BYTES: usize = 512;

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
/// (`kernel_bench --types Q4_K --mb 512`, 16 threads): 15.6 / 15.4 / 16.3 / 26.1 / 42.3 ms at
/// 8 / 12 / 16 / 32 / 64 rows, against the VNNI kernel's 14.2 / 18.5 / 27.9 ms at 6 / 8 / 12
/// rows and the bf16 tiles' 29.0 / 32.0 / 39.0 ms at 16 / 32 / 64.
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

/// Q8_K activation rows packed for the tiles, per 256-column block `k`, sub-block `s` and
/// group `g` of 16 rows: the B tile (row `p`, token `i`: quants `32s + 4p .. +4` of token
/// `16g + i`), the tokens' scales `d` and their sub-block sums in i16 pairs (sub-blocks
/// `2p`, `2p + 1` in lane `i` of vector `p`). Rows past `n` are zero.
pub struct ActsI8 {
    pub n: usize,
    pub cols: usize,
    groups: usize,
    /// B tiles as 4-quant words: word `p · 16 + i` of a tile is row `p`, token `i`.
    tiles: Vec<u32>,
    d: Vec<f32>,
    sums: Vec<i32>,
}

impl ActsI8 {
    fn tile(&self, k: usize, s: usize, g: usize) -> *const u8 {
        self.tiles[((k * SUBS + s) * self.groups + g) * B_BYTES / 4..].as_ptr() as *const u8
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
    let groups = n.div_ceil(TILE);
    let mut tiles = vec![0u32; kb * SUBS * groups * B_BYTES / 4];
    let mut d = vec![0f32; kb * groups * TILE];
    let mut sums = vec![0i32; kb * groups * 4 * TILE];
    for (row, blocks) in q.chunks_exact(kb.max(1)).enumerate().take(n) {
        let (g, i) = (row / TILE, row % TILE);
        for (k, b) in blocks.iter().enumerate() {
            for (s, sub) in b.qs.chunks_exact(SUB).enumerate() {
                let tile = &mut tiles[((k * SUBS + s) * groups + g) * B_BYTES / 4..][..B_BYTES / 4];
                for (p, q) in sub.chunks_exact(4).enumerate() {
                    tile[p * TILE + i] = u32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8]);
                }
            }
            d[(k * groups + g) * TILE + i] = b.d;
            for p in 0..4 {
                let sub = |s: usize| (b.bsums[2 * s] as i32 + b.bsums[2 * s + 1] as i32) as i16 as u16 as u32;
                sums[((k * groups + g) * 4 + p) * TILE + i] = (sub(2 * p) | sub(2 * p + 1) << 16) as i32;
            }
        }
    }
    ActsI8 { n, cols, groups, tiles, d, sums }
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
/// result registers (C 0..4) and two A and B slots: four sub-block products in flight, the
/// product into C `c` taking A and B slot `c % 2`.
trait Tiles {
    unsafe fn configure(&mut self);
    /// A[slot] ← 16 rows of 32 bytes at `p`, 32 bytes apart.
    unsafe fn load_a(&mut self, slot: usize, p: *const u8);
    /// B[slot] ← 8 rows of 64 bytes at `p`, contiguous.
    unsafe fn load_b(&mut self, slot: usize, p: *const u8);
    /// C[c] ← A[c % 2] · B[c % 2] (from zero).
    unsafe fn product(&mut self, c: usize);
    /// C[c] → 16 rows of 16 i32 at `p`.
    unsafe fn store_c(&mut self, c: usize, p: *mut i32);
    unsafe fn release(&mut self);
}

/// One 16-row strip's decoded block: the quants per sub-block (A tiles), `d·sc` per row and
/// sub-block, the mins as i16 pairs per row, `dmin` per row.
struct Strip {
    a: Aligned<[[[u8; SUB]; TILE]; SUBS]>,
    dsc: [[f32; SUBS]; TILE],
    mins: [[i32; 4]; TILE],
    dmin: [f32; TILE],
}

impl Strip {
    fn zero() -> Self {
        Strip {
            a: Aligned([[[0; SUB]; TILE]; SUBS]),
            dsc: [[0.0; SUBS]; TILE],
            mins: [[0; 4]; TILE],
            dmin: [0.0; TILE],
        }
    }
}

/// The eight result tiles of one (block, group): exact i32 sums per sub-block.
type Results = Aligned<[[[i32; TILE]; TILE]; SUBS]>;

/// The driver: per strip of 16 weight rows and per 256-column block, the block is decoded
/// once (4 KB of A tiles) and every group of 16 tokens runs its eight sub-block products
/// over it; the scaled sums of a group collect in `total` until the strip's end.
///
/// Software-pipelined: a result tile read right after `tilestored`, or an A tile loaded right
/// after the vector stores that decoded it, waits for the store. So the tiles of group
/// `g + 1` are issued before the readout of group `g`, and the next block is decoded (into
/// the other buffer) before the readout of the last group.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn run<H: Tiles>(hw: &mut H, data: &[u8], rb: usize, acts: &ActsI8, out: &mut [f32]) {
    let t = GgmlType::Q4_K;
    let (kb, bytes) = (acts.cols / 256, t.type_size());
    assert_eq!(rb, kb * bytes, "amx_q4k: row bytes do not match {} columns", acts.cols);
    let rows = data.len() / rb.max(1);
    let (n, groups) = (acts.n, acts.groups);
    assert!(out.len() >= rows * n);
    let mut strips = [Strip::zero(), Strip::zero()];
    let mut c: [Results; 2] = [Aligned([[[0; TILE]; TILE]; SUBS]), Aligned([[[0; TILE]; TILE]; SUBS])];
    let mut total = vec![_mm512_setzero_ps(); groups * TILE];
    let decode = |strip: &mut Strip, r0: usize, nr: usize, k: usize| {
        for r in 0..nr {
            decode_row(&data[(r0 + r) * rb + k * bytes..][..bytes], r, strip);
        }
    };
    // SAFETY (all tile calls): the caller guarantees the instructions; every pointer is a
    // whole tile inside `strips`, `c` or `acts.tiles`.
    unsafe {
        hw.configure();
        let products = |hw: &mut H, strip: &Strip, k: usize, g: usize, c: &mut Results| {
            for s in 0..SUBS {
                hw.load_a(s % 2, strip.a.0[s].as_ptr() as *const u8);
                hw.load_b(s % 2, acts.tile(k, s, g));
                hw.product(s % 4);
                hw.store_c(s % 4, c.0[s].as_mut_ptr() as *mut i32);
            }
        };
        for r0 in (0..rows).step_by(TILE) {
            let nr = TILE.min(rows - r0);
            if nr < TILE {
                strips = [Strip::zero(), Strip::zero()];
            }
            total.fill(_mm512_setzero_ps());
            decode(&mut strips[0], r0, nr, 0);
            for k in 0..kb {
                let [s0, s1] = &mut strips;
                let (cur, next) = if k % 2 == 0 { (s0, s1) } else { (s1, s0) };
                products(hw, cur, k, 0, &mut c[0]);
                for g in 0..groups {
                    if g + 1 < groups {
                        products(hw, cur, k, g + 1, &mut c[(g + 1) % 2]);
                    } else if k + 1 < kb {
                        decode(next, r0, nr, k + 1);
                    }
                    scale_into(&c[g % 2].0, cur, acts.d(k, g), acts.sums(k, g), &mut total[g * TILE..][..TILE]);
                }
            }
            for r in 0..nr {
                for g in 0..groups {
                    let nt = TILE.min(n - g * TILE);
                    let mut v = [0f32; TILE];
                    _mm512_storeu_ps(v.as_mut_ptr(), total[g * TILE + r]);
                    out[(r0 + r) * n + g * TILE..][..nt].copy_from_slice(&v[..nt]);
                }
            }
        }
        hw.release();
    }
}

/// Row `r` of a strip from its Q4_K block `b`: nibbles to bytes (sub-block `2c` is the low
/// nibbles of quant bytes `32c..32c + 32`, `2c + 1` the high ones), the scales and mins.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn decode_row(b: &[u8], r: usize, strip: &mut Strip) {
    // d and dmin: two f16 side by side.
    let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([b[0], b[1], b[2], b[3]])));
    let sm = k4_scale_min_bytes(&b[4..16]);
    let scales = _mm_set_epi32(0, 0, sm[1] as i32, sm[0] as i32);
    let mins = _mm_set_epi32(0, 0, sm[3] as i32, sm[2] as i32);
    let sc = _mm256_mul_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(scales)));
    // SAFETY: 8 writable f32 and 4 writable i32 (16 bytes) in the strip's arrays.
    unsafe {
        _mm256_storeu_ps(strip.dsc[r].as_mut_ptr(), sc);
        _mm_storeu_si128(strip.mins[r].as_mut_ptr() as *mut __m128i, _mm_cvtepu8_epi16(mins));
    }
    strip.dmin[r] = _mm_cvtss_f32(_mm_movehdup_ps(dd));
    let m4 = _mm256_set1_epi8(0xF);
    for ch in 0..4 {
        // SAFETY: 32 readable bytes of quants (a Q4_K block is 144 bytes); 32 writable bytes
        // per A row.
        unsafe {
            let v = _mm256_loadu_si256(b[16 + 32 * ch..].as_ptr() as *const __m256i);
            let lo = _mm256_and_si256(v, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
            _mm256_storeu_si256(strip.a.0[2 * ch][r].as_mut_ptr() as *mut __m256i, lo);
            _mm256_storeu_si256(strip.a.0[2 * ch + 1][r].as_mut_ptr() as *mut __m256i, hi);
        }
    }
}

/// Adds one block's contribution for one group of 16 tokens to `total` (one vector per
/// weight row): `d_act ⊙ (Σ_s d·sc_s · C_s − dmin · Σ_s m_s · sums_s)`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn scale_into(c: &[[[i32; TILE]; TILE]; SUBS], strip: &Strip, d: &[f32], sums: &[i32], total: &mut [__m512]) {
    // SAFETY: 16 readable f32 / i32 per load (slices of that length).
    let (dv, sv) = unsafe {
        let dv = _mm512_loadu_ps(d.as_ptr());
        let sv = [0, 1, 2, 3].map(|p| _mm512_loadu_si512(sums[p * TILE..].as_ptr() as *const _));
        (dv, sv)
    };
    for (r, tot) in total.iter_mut().enumerate() {
        let mut acc = _mm512_setzero_ps();
        for (s, cs) in c.iter().enumerate() {
            // SAFETY: 16 readable i32 (one row of a result tile).
            let v = unsafe { _mm512_loadu_si512(cs[r].as_ptr() as *const _) };
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(strip.dsc[r][s]), acc);
        }
        let mut mi = _mm512_setzero_si512();
        for (p, &s) in sv.iter().enumerate() {
            mi = _mm512_dpwssd_epi32(mi, _mm512_set1_epi32(strip.mins[r][p]), s);
        }
        acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mi), _mm512_set1_ps(strip.dmin[r]), acc);
        *tot = _mm512_fmadd_ps(acc, dv, *tot);
    }
}

/// The AMX instructions: C in tmm0..3, A slots tmm4/tmm5, B slots tmm6/tmm7.
struct Hw;

impl Tiles for Hw {
    unsafe fn configure(&mut self) {
        // SAFETY: the caller checked AMX. C tiles 16 × 64 bytes, A 16 × 32, B 8 × 64.
        unsafe {
            super::amx::configure_tiles(&[(16, 64), (16, 64), (16, 64), (16, 64), (16, 32), (16, 32), (8, 64), (8, 64)])
        }
    }

    unsafe fn load_a(&mut self, slot: usize, p: *const u8) {
        // SAFETY: the caller passes 16 readable rows of 32 bytes, 32 bytes apart. A: tmm4..5.
        unsafe { tile_load(4 + slot, p, SUB) }
    }

    unsafe fn load_b(&mut self, slot: usize, p: *const u8) {
        // SAFETY: the caller passes a whole B tile (8 rows of 64 bytes). B: tmm6..7.
        unsafe { tile_load(6 + slot, p, 64) }
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

    /// `tdpbusd` as the manual defines it (u8 × s8, four products per i32 lane).
    struct Model {
        a: [[[u8; SUB]; TILE]; 2],
        b: [[u8; B_BYTES]; 2],
        c: [[[i32; TILE]; TILE]; 4],
    }

    impl Tiles for Model {
        unsafe fn configure(&mut self) {}
        unsafe fn load_a(&mut self, slot: usize, p: *const u8) {
            for r in 0..TILE {
                // SAFETY: 16 rows of 32 bytes.
                self.a[slot][r].copy_from_slice(unsafe { std::slice::from_raw_parts(p.add(SUB * r), SUB) });
            }
        }
        unsafe fn load_b(&mut self, slot: usize, p: *const u8) {
            // SAFETY: a whole B tile.
            self.b[slot].copy_from_slice(unsafe { std::slice::from_raw_parts(p, B_BYTES) });
        }
        unsafe fn product(&mut self, c: usize) {
            let slot = c % 2;
            for m in 0..TILE {
                for n in 0..TILE {
                    let mut sum = 0i32;
                    for k in 0..SUB / 4 {
                        for i in 0..4 {
                            sum += self.a[slot][m][4 * k + i] as i32 * self.b[slot][64 * k + 4 * n + i] as i8 as i32;
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

    /// Products of random Q4_K rows (a partial strip included) with 1, 5 and 21 activation
    /// rows (one full group and a partial one) against the scalar Q4_K × Q8_K kernel: the
    /// same integer sums, so they agree to f32 rounding.
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
        for n in [1, 5, 21] {
            let x = crate::kernels::tests::uniform(n * cols, 99 + n as u32);
            let q = quantize_q8_k(&x);
            let acts = pack(&q, n, cols);
            let mut got = vec![0f32; rows * n];
            let hw_or_model = |out: &mut [f32]| {
                if available() {
                    // SAFETY: AMX-INT8 and VNNI checked by `available`.
                    unsafe { run(&mut Hw, &data, rb, &acts, out) }
                } else {
                    let mut m = Model { a: [[[0; SUB]; TILE]; 2], b: [[0; B_BYTES]; 2], c: [[[0; TILE]; TILE]; 4] };
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
