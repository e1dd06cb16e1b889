//! Quantized weights × many activation rows on AMX tiles (Intel Advanced Matrix Extensions,
//! Sapphire Rapids and later): prompt prefill, experts that many tokens chose, large decode
//! batches.
//!
//! With many activation rows a product is arithmetic, not bandwidth: the AVX-512 VNNI kernel
//! (`gemm.rs`) reaches about 20 multiply-adds per cycle and core, while one `tdpbf16ps`
//! does 16 × 16 × 32 of them. So the weights are decoded to bf16 (64 rows × 256 columns at a
//! time, 32 KB that stay in L1) and multiplied on the tiles with the activations, which
//! [`pack`] rounds to bf16 once per product input.
//!
//! # Tiles
//! - A (`tmm4`, `tmm5`): 16 weight rows × 32 columns, bf16, row-major (rows of the decode
//!   buffer).
//! - B (`tmm6`, `tmm7`): 16 column pairs × 16 activation rows: row `p` holds, for each
//!   activation row `t`, its columns `2p` and `2p + 1` (the pair layout `tdpbf16ps` expects).
//! - C (`tmm0..3`): 16 weight rows × 16 activation rows, f32: the four 16-row strips of a
//!   64-row block against one group of 16 activation rows, so each B tile is loaded once for
//!   four products.
//!
//! # Precision
//! Weights are `d·sc·q − dmin·m` (k-quants) or `d·q + m` (32-weight blocks) rounded once to
//! bf16 (8 significant bits, as the activations): each product errs by at most about 2^−8
//! relative, and `tdpbf16ps` sums in f32. That is the error of the Q8 activations of the
//! VNNI kernels (8 bits per value) in a different place. Subnormal bf16 inputs count as
//! zero; the values of a layer are nowhere near 2^−126. `tests` checks products against f32
//! dequantized references, with the instructions where the CPU has them and with a software
//! model of the tiles everywhere else.
//!
//! # Use
//! [`available`] says whether this CPU and kernel allow AMX (it asks Linux for the tile
//! state once per process); `HY_AMX=0` turns the path off. `matvec::prepare` picks it in
//! Fast precision for quantized weights with at least [`min_rows`] activation rows
//! (`HY_AMX_MIN`, default 16: below that, decoding the weights costs more than the VNNI
//! kernel's per-row work), except in llama.cpp-order mode.

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::avx512::k_chunks512;
use super::blocks::{is_k_quant, is_small_block};
use super::fp::{f16_at, f32_to_bf16};
pub use super::matvec::Split;
use super::unpack::ty;
use crate::dtype::GgmlType;

/// Activation rows per B/C tile, and weight rows per A tile.
const TILE: usize = 16;
/// Columns per A tile (and per B tile, as 16 pairs).
const TILE_COLS: usize = 32;
/// u16 values per B tile.
const B_TILE: usize = TILE * TILE_COLS;
/// 16-row strips per weight-row block: one C tile each (tmm0..3).
const STRIPS: usize = 4;
/// Weights per k-quant block (columns the decode buffer holds per weight row).
const BLOCK: usize = 256;

/// Whether AMX bf16 tiles can run here: the CPU has AMX-TILE, AMX-BF16 and AVX512_BF16, Linux
/// granted this process the tile state, and `HY_AMX` is not `0`/`off`. Checked once.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let off = matches!(std::env::var("HY_AMX").as_deref(), Ok("0") | Ok("off"));
        !off && cpu_has_amx() && super::simd::bf16_supported() && request_tile_state()
    })
}

/// Activation rows from which quantized products use the tiles (`HY_AMX_MIN`, default 16).
pub fn min_rows() -> usize {
    static MIN: OnceLock<usize> = OnceLock::new();
    *MIN.get_or_init(|| std::env::var("HY_AMX_MIN").ok().and_then(|v| v.parse().ok()).unwrap_or(16).max(1))
}

fn cpu_has_amx() -> bool {
    let leaf7 = __cpuid_count(7, 0);
    let (bf16, tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
    bf16 && tile
}

/// Linux hands out the 8 KB tile register state only on request (`ARCH_REQ_XCOMP_PERM`);
/// without it the first tile instruction is a SIGILL.
/// (Other systems: the tiles are not used.)
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permission bits.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// Whether the tile path computes products of quantized type `t` (the k-quants Q2_K … Q6_K
/// and the 32-weight block types Q4_0 … Q8_0).
pub fn suits(t: GgmlType) -> bool {
    is_k_quant(t) || is_small_block(t)
}

/// Columns decoded at a time: a k-quant block, or up to eight 32-weight blocks.
fn unit(t: GgmlType, cols: usize) -> usize {
    if is_k_quant(t) {
        return BLOCK;
    }
    [BLOCK, 128, 64, TILE_COLS].into_iter().find(|u| cols.is_multiple_of(*u)).unwrap_or(TILE_COLS)
}

/// `n` activation rows of `cols` values as bf16 B tiles: tile `(c, g)` (column chunk `c` of
/// 32, row group `g` of 16) at `(c · groups + g) · 512`, rows past `n` zero.
pub struct Acts {
    pub n: usize,
    pub cols: usize,
    groups: usize,
    /// bf16 pairs, one u32 per (tile row, activation row).
    tiles: Vec<u32>,
}

impl Acts {
    fn tile(&self, chunk: usize, group: usize) -> *const u16 {
        self.tiles[(chunk * self.groups + group) * B_TILE / 2..].as_ptr() as *const u16
    }
}

/// Packs `x` (`n` × `cols`, row-major; `cols` a multiple of 32) into B tiles, rounding to
/// nearest-even bf16; inputs of [`PARALLEL_PACK_VALUES`] or more are split as `split` says.
pub fn pack(x: &[f32], n: usize, cols: usize, split: Split) -> Acts {
    pack_with(x, n, cols, if n * cols >= PARALLEL_PACK_VALUES { split } else { Split::One })
}

/// [`pack`], split as `split` says whatever the size.
fn pack_with(x: &[f32], n: usize, cols: usize, split: Split) -> Acts {
    assert!(cols.is_multiple_of(TILE_COLS) && x.len() == n * cols, "amx::pack: {n} × {cols} from {} values", x.len());
    let groups = n.div_ceil(TILE);
    let chunks = cols / TILE_COLS;
    let mut tiles = vec![0u32; chunks * groups * B_TILE / 2];
    if super::simd::bf16_supported() {
        let per_chunk = groups * B_TILE / 2;
        let pack_chunk = |(c, t): (usize, &mut [u32])| {
            // SAFETY: AVX512_BF16 (and with it AVX-512 F) checked.
            unsafe { pack_avx512(x, n, cols, c, t) }
        };
        match split {
            Split::One => tiles.chunks_mut(per_chunk).enumerate().for_each(pack_chunk),
            Split::Rayon => {
                use rayon::prelude::*;
                tiles.par_chunks_mut(per_chunk).enumerate().for_each(pack_chunk)
            }
            Split::Pool(pool) => pool.chunks_mut(&mut tiles, per_chunk, &|first, part| {
                part.chunks_mut(per_chunk).enumerate().for_each(|(i, t)| pack_chunk((first + i, t)))
            }),
        }
    } else {
        for (t, row) in x.chunks_exact(cols).enumerate() {
            for (c, v) in row.chunks_exact(TILE_COLS).enumerate() {
                let tile = &mut tiles[(c * groups + t / TILE) * B_TILE / 2..][..B_TILE / 2];
                for (p, pair) in v.chunks_exact(2).enumerate() {
                    tile[p * TILE + t % TILE] = f32_to_bf16(pair[0]) as u32 | (f32_to_bf16(pair[1]) as u32) << 16;
                }
            }
        }
    }
    Acts { n, cols, groups, tiles }
}

/// Inputs from this many values up are packed on several threads (about 55 µs on one). A
/// 64-token prompt's 7168-wide inputs (0.2 ms each on one thread) are above it: packed on
/// one thread, they added about 5 ms to a 64-token prefill of the 5-layer file on the 16-core
/// Xeon (`HY_PROFILE`'s `pool_matmul_prepare` outside its pool job).
const PARALLEL_PACK_VALUES: usize = 1 << 17;

/// [`pack`] of column chunk `c` (the tiles of all row groups) in registers: per tile, 16
/// rows' 32 columns become 16 vectors of bf16 pairs (`vcvtne2ps2bf16`, the same rounding),
/// transposed 16 × 16 and stored as the tile's rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
fn pack_avx512(x: &[f32], n: usize, cols: usize, c: usize, tiles: &mut [u32]) {
    for (g, dst) in tiles.chunks_exact_mut(B_TILE / 2).enumerate() {
        let rows = TILE.min(n - g * TILE);
        let mut r = [_mm512_setzero_si512(); TILE];
        for (lane, v) in r.iter_mut().enumerate().take(rows) {
            let src = &x[(g * TILE + lane) * cols + c * TILE_COLS..][..TILE_COLS];
            // SAFETY: 32 readable f32 (sliced above); unaligned loads.
            *v = unsafe {
                let lo = _mm512_loadu_ps(src.as_ptr());
                let hi = _mm512_loadu_ps(src.as_ptr().add(16));
                std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
            };
        }
        let t = transpose16(r);
        for (p, v) in t.iter().enumerate() {
            // SAFETY: 16 writable u32 at dst[16p..] (sliced above).
            unsafe { _mm512_storeu_si512(dst[p * TILE..].as_mut_ptr() as *mut _, *v) };
        }
    }
}

/// 16 × 16 u32 transpose: result `p` holds lane `p` of every input, in input order.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    let mut a = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // b[4i + j], 128-bit lane L: rows 4i..4i+4 at column 4L + j.
    let mut b = [_mm512_setzero_si512(); 16];
    for i in 0..4 {
        b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
        b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
    }
    let mut out = [_mm512_setzero_si512(); 16];
    for j in 0..4 {
        let e0 = _mm512_shuffle_i32x4::<0x44>(b[j], b[4 + j]);
        let e1 = _mm512_shuffle_i32x4::<0xEE>(b[j], b[4 + j]);
        let e2 = _mm512_shuffle_i32x4::<0x44>(b[8 + j], b[12 + j]);
        let e3 = _mm512_shuffle_i32x4::<0xEE>(b[8 + j], b[12 + j]);
        out[j] = _mm512_shuffle_i32x4::<0x88>(e0, e2);
        out[4 + j] = _mm512_shuffle_i32x4::<0xDD>(e0, e2);
        out[8 + j] = _mm512_shuffle_i32x4::<0x88>(e1, e3);
        out[12 + j] = _mm512_shuffle_i32x4::<0xDD>(e1, e3);
    }
    out
}

/// `out[r·n + i] = W[r] · x[i]` for the weight rows in `data` (rows of `row_bytes` bytes,
/// k-quant type `t`) and the `acts.n` packed activation rows, on the calling thread.
///
/// # Panics
/// When [`available`] is false, `t` is not a k-quant or the shapes disagree.
pub fn matmul_rows(t: GgmlType, data: &[u8], row_bytes: usize, acts: &Acts, out: &mut [f32]) {
    assert!(available(), "amx::matmul_rows needs AMX");
    // SAFETY: AMX and AVX512_BF16 (and with it AVX-512 F/BW/VL) checked above.
    unsafe { run(&mut Hw, t, data, row_bytes, acts, out) }
}

/// The tile operations the driver uses: the instructions ([`Hw`]), or a software model of
/// them for tests on CPUs without AMX. Registers: C tiles `c` 0..4, A slots 0..2, B slots 0..2.
pub(crate) trait Tiles {
    unsafe fn configure(&mut self);
    unsafe fn zero(&mut self, c: usize);
    /// C[c] ← 16 rows of 16 f32 at `p` (64 bytes apart).
    unsafe fn load_c(&mut self, c: usize, p: *const f32);
    /// C[c] → 16 rows of 16 f32 at `p`.
    unsafe fn store_c(&mut self, c: usize, p: *mut f32);
    /// A[slot] ← 16 rows of 32 bf16 at `p`, `stride` bytes apart.
    unsafe fn load_a(&mut self, slot: usize, p: *const u16, stride: usize);
    /// B[slot] ← the tile at `p` (16 rows of 64 bytes, contiguous).
    unsafe fn load_b(&mut self, slot: usize, p: *const u16);
    /// C[c] += A[a] · B[b].
    unsafe fn dot(&mut self, c: usize, a: usize, b: usize);
    unsafe fn release(&mut self);
}

/// Weight rows per row block: one C tile per 16 of them.
const BLOCK_ROWS: usize = STRIPS * TILE;

/// How many units ahead of the one being decoded each weight row is prefetched. The driver
/// reads 64 rows side by side, more streams than the hardware prefetchers follow; without
/// the hint every unit waited on memory (16-core Xeon, 64 activation rows, 16 threads: Q4_K
/// 24.9 → 20.1 ms and Q6_K 20.4 → 17.0 ms per 256 MB, `kernel_bench`, same run).
const PREFETCH_UNITS: usize = 2;

/// The driver. Per block of 64 weight rows and per 256 columns, the rows are decoded to bf16
/// once (32 KB, in L1; the same rows' next units prefetched), then every 16 activation rows
/// run over them: each B tile is loaded once for four A tiles (the four 16-row strips), so
/// the activations stream from L2 once per 64 weight rows. The four C tiles of an activation
/// group are kept in `acc` between blocks, or stay in the tiles when there is one group (a
/// few tokens: experts, decode).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
unsafe fn run<H: Tiles>(hw: &mut H, t: GgmlType, data: &[u8], rb: usize, acts: &Acts, out: &mut [f32]) {
    assert!(suits(t), "amx: {t:?} is not a quantized type the tiles take");
    let unit = unit(t, acts.cols);
    let (units, unit_bytes) = (acts.cols / unit, unit / t.block_size() * t.type_size());
    assert_eq!(rb, units * unit_bytes, "amx: row bytes do not match {} columns", acts.cols);
    let rows = data.len() / rb.max(1);
    let (n, groups) = (acts.n, acts.groups);
    assert!(out.len() >= rows * n);
    let mut a = Aligned([0u16; BLOCK_ROWS * BLOCK]);
    let mut acc = vec![0f32; STRIPS * groups * TILE * TILE];
    let resident = groups == 1;
    // SAFETY (all tile calls): the caller guarantees the instructions exist; every pointer
    // handed over addresses a whole tile inside `a`, `acc` or `acts.tiles`.
    unsafe {
        hw.configure();
        for r0 in (0..rows).step_by(BLOCK_ROWS) {
            let nr = BLOCK_ROWS.min(rows - r0);
            let strips = nr.div_ceil(TILE);
            if !nr.is_multiple_of(TILE) {
                a.0.fill(0);
            }
            for k in 0..units {
                for r in 0..nr {
                    let b = &data[(r0 + r) * rb + k * unit_bytes..][..unit_bytes];
                    super::avx512::prefetch_block(b, PREFETCH_UNITS * unit_bytes);
                    decode_unit(t, b, &mut a.0[r * unit..(r + 1) * unit]);
                }
                for g in 0..groups {
                    let c_at = |st: usize| (st * groups + g) * TILE * TILE;
                    for st in 0..strips {
                        if k == 0 {
                            hw.zero(st);
                        } else if !resident {
                            hw.load_c(st, acc[c_at(st)..].as_ptr());
                        }
                    }
                    for s in 0..unit / TILE_COLS {
                        hw.load_b(s % 2, acts.tile(k * (unit / TILE_COLS) + s, g));
                        for st in 0..strips {
                            hw.load_a(st % 2, a.0[st * TILE * unit + s * TILE_COLS..].as_ptr(), unit * 2);
                            hw.dot(st, st % 2, s % 2);
                        }
                    }
                    if !resident || k + 1 == units {
                        for st in 0..strips {
                            hw.store_c(st, acc[c_at(st)..].as_mut_ptr());
                        }
                    }
                }
            }
            for r in 0..nr {
                let (st, rr) = (r / TILE, r % TILE);
                for g in 0..groups {
                    let t0 = g * TILE;
                    let nt = TILE.min(n - t0);
                    let c = &acc[(st * groups + g) * TILE * TILE + rr * TILE..][..nt];
                    out[(r0 + r) * n + t0..][..nt].copy_from_slice(c);
                }
            }
        }
        hw.release();
    }
}

/// A value on a 64-byte boundary (tile rows, L1 lines).
#[repr(C, align(64))]
pub(super) struct Aligned<T>(pub(super) T);

/// The weights of `b` (one k-quant block, or 32-weight blocks) as bf16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
fn decode_unit(t: GgmlType, b: &[u8], out: &mut [u16]) {
    if is_small_block(t) {
        for (blk, o) in b.chunks_exact(t.type_size()).zip(out.chunks_exact_mut(TILE_COLS)) {
            decode_small(t, blk, o);
        }
        return;
    }
    match t {
        GgmlType::Q4_K => decode_lut::<{ GgmlType::Q4_K as u32 }>(b, out),
        GgmlType::Q5_K => decode_lut::<{ GgmlType::Q5_K as u32 }>(b, out),
        GgmlType::Q2_K => decode::<{ GgmlType::Q2_K as u32 }>(b, out),
        GgmlType::Q3_K => decode::<{ GgmlType::Q3_K as u32 }>(b, out),
        _ => decode::<{ GgmlType::Q6_K as u32 }>(b, out),
    }
}

/// A k-quant block's quants (four 64-weight chunks, weight order) and its 16 group factors
/// as f32: `d·sc` and `dmin·m` (the implicit offsets of Q6_K/Q3_K included), lane g = group g.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
fn quants_and_factors<const T: u32>(b: &[u8]) -> ([__m512i; 4], __m512, __m512) {
    let s = super::avx512::k_scales::<T>(b);
    let sc = _mm512_mul_ps(_mm512_set1_ps(s.d), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(s.sc8)));
    let mn = _mm512_mul_ps(_mm512_set1_ps(s.dmin), _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(s.mn)));
    (k_chunks512::<T>(b), sc, mn)
}

/// One k-quant block as bf16, `w = d·sc·q − dmin·m` per 16-weight group. The group factors
/// stay in registers and are broadcast by permutes: written to the stack and read back as
/// scalars, they wait on store forwarding (about 2× slower on Sapphire Rapids).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
fn decode<const T: u32>(b: &[u8], out: &mut [u16]) {
    assert!(b.len() == ty(T).type_size() && out.len() == BLOCK);
    let (q, sc, mn) = quants_and_factors::<T>(b);
    let group = |v: __m128i, g: i32| {
        let qf = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v));
        let i = _mm512_set1_epi32(g);
        _mm512_fmsub_ps(qf, _mm512_permutexvar_ps(i, sc), _mm512_permutexvar_ps(i, mn))
    };
    for (c, &v) in q.iter().enumerate() {
        let g = 4 * c as i32;
        let w0 = group(_mm512_castsi512_si128(v), g);
        let w1 = group(_mm512_extracti32x4_epi32::<1>(v), g + 1);
        let w2 = group(_mm512_extracti32x4_epi32::<2>(v), g + 2);
        let w3 = group(_mm512_extracti32x4_epi32::<3>(v), g + 3);
        for (h, pair) in [_mm512_cvtne2ps_pbh(w1, w0), _mm512_cvtne2ps_pbh(w3, w2)].into_iter().enumerate() {
            let dst = out[64 * c + 32 * h..][..32].as_mut_ptr();
            // SAFETY: 32 writable u16 at `dst` (sliced above).
            unsafe { _mm512_storeu_si512(dst as *mut _, std::mem::transmute::<__m512bh, __m512i>(pair)) };
        }
    }
}

/// One 32-weight block of the Q4_0 family as bf16, `w = d·q + m`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
fn decode_small(t: GgmlType, b: &[u8], out: &mut [u16]) {
    assert!(b.len() == t.type_size() && out.len() == TILE_COLS);
    let d = f16_at(b, 0);
    let (q, m) = match t {
        // SAFETY: 32 readable bytes at b[2..34] (length asserted).
        GgmlType::Q8_0 => (unsafe { _mm256_loadu_si256(b[2..].as_ptr() as *const __m256i) }, 0.0),
        GgmlType::Q4_0 => (nibbles(&b[2..18], 0, 8), 0.0),
        GgmlType::Q4_1 => (nibbles(&b[4..20], 0, 0), f16_at(b, 2)),
        GgmlType::Q5_0 => (nibbles(&b[6..22], le32(&b[2..6]), 16), 0.0),
        _ => (nibbles(&b[8..24], le32(&b[4..8]), 0), f16_at(b, 2)),
    };
    let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
    let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(q)));
    let (dv, mv) = (_mm512_set1_ps(d), _mm512_set1_ps(m));
    let w = _mm512_cvtne2ps_pbh(_mm512_fmadd_ps(hi, dv, mv), _mm512_fmadd_ps(lo, dv, mv));
    // SAFETY: 32 writable u16 (asserted); the bf16 vector is reinterpreted, not changed.
    unsafe { _mm512_storeu_si512(out.as_mut_ptr() as *mut _, std::mem::transmute::<__m512bh, __m512i>(w)) };
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// 16 bytes of nibbles as 32 signed quants: low nibbles are weights 0..16, high nibbles
/// 16..32, bit j of `qh` adds 16 to weight j (the 5-bit types), minus `offset`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn nibbles(qs: &[u8], qh: u32, offset: i8) -> __m256i {
    assert!(qs.len() >= 16);
    // SAFETY: 16 readable bytes (asserted).
    let v = unsafe { _mm_loadu_si128(qs.as_ptr() as *const __m128i) };
    let m4 = _mm_set1_epi8(0xF);
    let lo = _mm_and_si128(v, m4);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), m4);
    let q = _mm256_or_si256(_mm256_set_m128i(hi, lo), _mm256_maskz_mov_epi8(qh, _mm256_set1_epi8(16)));
    _mm256_sub_epi8(q, _mm256_set1_epi8(offset))
}

/// [`decode`] for Q4_K/Q5_K, whose 32-weight sub-blocks share one scale and min: the 32
/// possible weights of a sub-block are computed once, as a bf16 table, and `vpermw` looks
/// the quants up in it (32 weights per table, against two conversions and multiplies per 16).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
fn decode_lut<const T: u32>(b: &[u8], out: &mut [u16]) {
    assert!(b.len() == ty(T).type_size() && out.len() == BLOCK);
    let (q, sc, mn) = quants_and_factors::<T>(b);
    let iota_lo = _mm512_setr_ps(0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15.);
    let iota_hi = _mm512_add_ps(iota_lo, _mm512_set1_ps(16.0));
    let q5 = ty(T) == GgmlType::Q5_K;
    for (c, &v) in q.iter().enumerate() {
        for h in 0..2 {
            // Sub-block 2c + h = 16-weight groups 4c + 2h and 4c + 2h + 1 (same scale).
            let g = _mm512_set1_epi32((4 * c + 2 * h) as i32);
            let (sj, mj) = (_mm512_permutexvar_ps(g, sc), _mm512_permutexvar_ps(g, mn));
            let lo = _mm512_fmsub_ps(iota_lo, sj, mj);
            let hi = if q5 { _mm512_fmsub_ps(iota_hi, sj, mj) } else { lo };
            // SAFETY: both are 512-bit vectors; the bits are reinterpreted, not changed.
            let table: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo)) };
            let quants = if h == 0 { _mm512_castsi512_si256(v) } else { _mm512_extracti64x4_epi64::<1>(v) };
            let w = _mm512_permutexvar_epi16(_mm512_cvtepu8_epi16(quants), table);
            // SAFETY: 32 writable u16 at out[64c + 32h..] (out has 256).
            unsafe { _mm512_storeu_si512(out[64 * c + 32 * h..][..32].as_mut_ptr() as *mut _, w) };
        }
    }
}

/// The AMX instructions. Tile registers: C in tmm0..3, A in tmm4..5, B in tmm6..7.
pub(crate) struct Hw;

/// Loads the tile configuration: palette 1, tile `t` with `shapes[t]` = (rows, bytes per row)
/// (`ldtilecfg`; for this module's and `amx_q4k`'s drivers).
///
/// # Safety
/// The CPU must have AMX and the process the tile state ([`available`]).
pub(super) unsafe fn configure_tiles(shapes: &[(u8, u16); 8]) {
    let cfg = TileConfig(tile_config(shapes));
    // SAFETY: reads the 64-byte config; the caller checked AMX.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly, preserves_flags)) };
}

/// `ldtilecfg` operand (64-byte aligned).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

/// The bytes of a palette-1 tile configuration: byte 0 the palette, bytes 16 + 2t (u16 LE)
/// tile t's bytes per row, byte 48 + t its rows.
fn tile_config(shapes: &[(u8, u16); 8]) -> [u8; 64] {
    let mut c = [0u8; 64];
    c[0] = 1;
    for (t, &(rows, bytes)) in shapes.iter().enumerate() {
        c[16 + 2 * t..18 + 2 * t].copy_from_slice(&bytes.to_le_bytes());
        c[48 + t] = rows;
    }
    c
}

/// Runs `$m!("tmmN")` for the runtime tile index `$t` (0..8).
macro_rules! per_tile {
    ($t:expr, $m:ident) => {
        match $t {
            0 => $m!("tmm0"),
            1 => $m!("tmm1"),
            2 => $m!("tmm2"),
            3 => $m!("tmm3"),
            4 => $m!("tmm4"),
            5 => $m!("tmm5"),
            6 => $m!("tmm6"),
            _ => $m!("tmm7"),
        }
    };
}

/// `tileloadd`: tile register `t` (0..8) ← its configured rows from `p`, `stride` bytes apart.
///
/// # Safety
/// AMX with the tiles configured ([`configure_tiles`]); `p` addresses the tile's rows.
#[inline(always)]
pub(super) unsafe fn tile_load(t: usize, p: *const u8, stride: usize) {
    macro_rules! ld {
        ($r:literal) => {
            // SAFETY: the caller passes readable rows for the configured shape.
            unsafe {
                asm!(concat!("tileloadd ", $r, ", [{p} + {s} * 1]"), p = in(reg) p, s = in(reg) stride,
                    options(nostack, readonly, preserves_flags))
            }
        };
    }
    per_tile!(t, ld)
}

/// `tilestored`: tile register `t` (0..8) → its configured rows at `p`, `stride` bytes apart.
///
/// # Safety
/// As [`tile_load`], with `p` writable.
#[inline(always)]
pub(super) unsafe fn tile_store(t: usize, p: *mut u8, stride: usize) {
    macro_rules! st {
        ($r:literal) => {
            // SAFETY: the caller passes writable rows for the configured shape.
            unsafe {
                asm!(concat!("tilestored [{p} + {s} * 1], ", $r), p = in(reg) p, s = in(reg) stride,
                    options(nostack, preserves_flags))
            }
        };
    }
    per_tile!(t, st)
}

/// `tilezero` of tile register `t` (0..8).
///
/// # Safety
/// AMX with the tiles configured.
#[inline(always)]
pub(super) unsafe fn tile_zero(t: usize) {
    macro_rules! z {
        ($r:literal) => {
            // SAFETY: tile register only.
            unsafe { asm!(concat!("tilezero ", $r), options(nomem, nostack, preserves_flags)) }
        };
    }
    per_tile!(t, z)
}

/// `tilerelease`: drops this thread's tile state (set again by the next [`configure_tiles`]).
///
/// # Safety
/// AMX available.
pub(super) unsafe fn tile_release() {
    // SAFETY: tile state only.
    unsafe { asm!("tilerelease", options(nomem, nostack, preserves_flags)) }
}

impl Tiles for Hw {
    unsafe fn configure(&mut self) {
        // SAFETY: the caller checked AMX. Every tile 16 rows × 64 bytes.
        unsafe { configure_tiles(&[(16, 64); 8]) }
    }

    unsafe fn zero(&mut self, c: usize) {
        // SAFETY: configured by the driver.
        unsafe { tile_zero(c) }
    }

    unsafe fn load_c(&mut self, c: usize, p: *const f32) {
        // SAFETY: the caller passes 16 readable rows of 64 bytes.
        unsafe { tile_load(c, p.cast(), 4 * TILE) }
    }

    unsafe fn store_c(&mut self, c: usize, p: *mut f32) {
        // SAFETY: the caller passes 16 × 16 writable f32.
        unsafe { tile_store(c, p.cast(), 4 * TILE) }
    }

    unsafe fn load_a(&mut self, slot: usize, p: *const u16, stride: usize) {
        // SAFETY: the caller passes 16 readable rows of 64 bytes, `stride` apart. A: tmm4..5.
        unsafe { tile_load(4 + slot, p.cast(), stride) }
    }

    unsafe fn load_b(&mut self, slot: usize, p: *const u16) {
        // SAFETY: the caller passes a whole B tile (1 KB). B: tmm6..7.
        unsafe { tile_load(6 + slot, p.cast(), 2 * TILE_COLS) }
    }

    unsafe fn dot(&mut self, c: usize, a: usize, b: usize) {
        macro_rules! d {
            ($c:literal, $a:literal, $b:literal) => {
                // SAFETY: tile registers only.
                unsafe { asm!(concat!("tdpbf16ps ", $c, ", ", $a, ", ", $b), options(nomem, nostack, preserves_flags)) }
            };
        }
        macro_rules! with_ab {
            ($c:literal) => {
                match (a, b) {
                    (0, 0) => d!($c, "tmm4", "tmm6"),
                    (0, _) => d!($c, "tmm4", "tmm7"),
                    (_, 0) => d!($c, "tmm5", "tmm6"),
                    _ => d!($c, "tmm5", "tmm7"),
                }
            };
        }
        match c {
            0 => with_ab!("tmm0"),
            1 => with_ab!("tmm1"),
            2 => with_ab!("tmm2"),
            _ => with_ab!("tmm3"),
        }
    }

    unsafe fn release(&mut self) {
        // SAFETY: AMX checked by the caller.
        unsafe { tile_release() }
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // the tile model indexes as the instruction manual does
pub(crate) mod tests {
    use super::*;
    use crate::kernels::fp::bf16_to_f32;
    use crate::kernels::tests::uniform;

    #[test]
    fn tile_config_bytes_follow_the_manual() {
        let c = tile_config(&[(16, 64), (16, 64), (16, 64), (16, 64), (16, 32), (16, 32), (8, 64), (8, 64)]);
        assert_eq!(c[0], 1, "palette 1");
        assert!(c[1..16].iter().all(|&b| b == 0), "start_row and reserved bytes zero");
        let colsb: Vec<u16> = (0..8).map(|t| u16::from_le_bytes([c[16 + 2 * t], c[17 + 2 * t]])).collect();
        assert_eq!(colsb, [64, 64, 64, 64, 32, 32, 64, 64]);
        assert_eq!(&c[48..56], &[16, 16, 16, 16, 16, 16, 8, 8]);
        assert!(c[32..48].iter().chain(&c[56..]).all(|&b| b == 0), "tiles 8..15 unused");
    }

    /// A software model of the tile instructions (f32 sums of bf16 products), so the driver
    /// and the layouts are tested on CPUs without AMX.
    pub(crate) struct Model {
        a: [[[f32; TILE_COLS]; TILE]; 2],
        b: [[u16; B_TILE]; 2],
        c: [[[f32; TILE]; TILE]; STRIPS],
    }

    impl Model {
        pub(crate) fn new() -> Self {
            Model { a: [[[0.0; TILE_COLS]; TILE]; 2], b: [[0; B_TILE]; 2], c: [[[0.0; TILE]; TILE]; STRIPS] }
        }
    }

    impl Tiles for Model {
        unsafe fn configure(&mut self) {}
        unsafe fn zero(&mut self, c: usize) {
            self.c[c] = [[0.0; TILE]; TILE];
        }
        unsafe fn load_c(&mut self, c: usize, p: *const f32) {
            for m in 0..TILE {
                for n in 0..TILE {
                    // SAFETY: 256 readable f32.
                    self.c[c][m][n] = unsafe { *p.add(m * TILE + n) };
                }
            }
        }
        unsafe fn store_c(&mut self, c: usize, p: *mut f32) {
            for m in 0..TILE {
                for n in 0..TILE {
                    // SAFETY: 256 writable f32.
                    unsafe { *p.add(m * TILE + n) = self.c[c][m][n] };
                }
            }
        }
        unsafe fn load_a(&mut self, slot: usize, p: *const u16, stride: usize) {
            for r in 0..TILE {
                for k in 0..TILE_COLS {
                    // SAFETY: the driver passes 16 rows of 32 u16, `stride` bytes apart.
                    self.a[slot][r][k] = bf16_to_f32(unsafe { *p.byte_add(r * stride).add(k) });
                }
            }
        }
        unsafe fn load_b(&mut self, slot: usize, p: *const u16) {
            // SAFETY: a whole B tile.
            self.b[slot].copy_from_slice(unsafe { std::slice::from_raw_parts(p, B_TILE) });
        }
        unsafe fn dot(&mut self, c: usize, a: usize, b: usize) {
            let (a, b) = (&self.a[a], &self.b[b]);
            for m in 0..TILE {
                for n in 0..TILE {
                    let mut s = self.c[c][m][n];
                    for p in 0..TILE {
                        s += a[m][2 * p] * bf16_to_f32(b[p * 32 + 2 * n])
                            + a[m][2 * p + 1] * bf16_to_f32(b[p * 32 + 2 * n + 1]);
                    }
                    self.c[c][m][n] = s;
                }
            }
        }
        unsafe fn release(&mut self) {}
    }

    /// f32 reference: weights dequantized in f32, activations in f32, f64 sums.
    fn reference(t: GgmlType, data: &[u8], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f64> {
        let rb = data.len() / rows;
        let mut w = vec![0f32; cols];
        let mut out = vec![0f64; rows * n];
        for r in 0..rows {
            crate::kernels::dequantize_row(t, &data[r * rb..(r + 1) * rb], &mut w).unwrap();
            for i in 0..n {
                out[r * n + i] = w.iter().zip(&x[i * cols..]).map(|(&a, &b)| a as f64 * b as f64).sum();
            }
        }
        out
    }

    fn check(t: GgmlType, rows: usize, cols: usize, n: usize, hw: bool) {
        let rb = cols / t.block_size() * t.type_size();
        let mut data = vec![0u8; rows * rb];
        crate::synth::fill_random(t, &mut data, 7);
        let x = uniform(n * cols, 99);
        let acts = pack(&x, n, cols, Split::One);
        let mut out = vec![f32::NAN; rows * n];
        if hw {
            matmul_rows(t, &data, rb, &acts, &mut out);
        } else {
            let mut m = Model::new();
            // SAFETY: the model needs AVX512_BF16 only for the decode (checked by the caller).
            unsafe { run(&mut m, t, &data, rb, &acts, &mut out) };
        }
        let want = reference(t, &data, rows, cols, &x, n);
        // Error scale: bf16 rounding of both operands, 2^-8 relative per product.
        let mut w = vec![0f32; cols];
        for r in 0..rows {
            crate::kernels::dequantize_row(t, &data[r * rb..(r + 1) * rb], &mut w).unwrap();
            for i in 0..n {
                let mag: f64 = w.iter().zip(&x[i * cols..]).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                let (got, want) = (out[r * n + i] as f64, want[r * n + i]);
                assert!(
                    (got - want).abs() <= mag * 2f64.powi(-7) + 1e-6,
                    "{t:?} {rows}×{cols} n={n} row {r} act {i}: {got} vs {want} (Σ|w·x| {mag})"
                );
            }
        }
    }

    /// (rows, columns, activation rows): one group and several, partial strips and groups; the
    /// last has three 64-row blocks, the third partial.
    const SHAPES: [(usize, usize, usize); 6] =
        [(16, 256, 16), (37, 512, 5), (20, 256, 70), (3, 768, 33), (70, 512, 20), (140, 768, 40)];
    /// Rows of 128 and 96 columns (MLA's `attn_k_b` has 128) for the 32-weight block types.
    const SMALL_SHAPES: [(usize, usize, usize); 2] = [(20, 128, 17), (37, 96, 5)];
    const ALL_TYPES: [GgmlType; 10] = [
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
    ];

    /// Every type at every shape (the 32-weight block types also at short rows).
    fn check_all(hw: bool) {
        for t in ALL_TYPES {
            let small = if is_small_block(t) { &SMALL_SHAPES[..] } else { &[] };
            for &(rows, cols, n) in SHAPES.iter().chain(small) {
                check(t, rows, cols, n, hw);
            }
        }
    }

    #[test]
    fn tile_driver_matches_f32_reference_in_the_model() {
        if !crate::kernels::simd::bf16_supported() {
            eprintln!("skipped: no AVX512_BF16 for the bf16 decode");
            return;
        }
        check_all(false);
    }

    #[test]
    fn amx_tiles_match_f32_reference() {
        if !available() {
            eprintln!("skipped: no AMX here");
            return;
        }
        check_all(true);
    }

    /// Packing split over rayon's or a pool's threads gives the tiles of packing on one thread.
    #[test]
    fn pool_pack_equals_one_thread_pack() {
        use crate::runtime::pool::{Pool, ThreadLayout};
        let pool = Pool::new(ThreadLayout::unpinned(3));
        for (n, cols) in [(37, 512), (16, 96), (3, 64)] {
            let x = crate::kernels::tests::uniform(n * cols, 21);
            let one = pack_with(&x, n, cols, Split::One);
            for split in [Split::Rayon, Split::Pool(&pool)] {
                assert_eq!(one.tiles, pack_with(&x, n, cols, split).tiles, "{n} × {cols}");
            }
        }
    }

    #[test]
    fn decode_matches_dequantize_row() {
        if !crate::kernels::simd::bf16_supported() {
            eprintln!("skipped: no AVX512_BF16");
            return;
        }
        for t in ALL_TYPES {
            // One k-quant block or eight 32-weight blocks: 256 weights.
            let mut b = vec![0u8; BLOCK / t.block_size() * t.type_size()];
            crate::synth::fill_random(t, &mut b, 3);
            let mut want = vec![0f32; BLOCK];
            crate::kernels::dequantize_row(t, &b, &mut want).unwrap();
            let mut got = vec![0u16; BLOCK];
            // SAFETY: AVX512_BF16 checked above.
            unsafe { decode_unit(t, &b, &mut got) };
            if matches!(t, GgmlType::Q4_K | GgmlType::Q5_K) {
                let mut generic = vec![0u16; BLOCK];
                // SAFETY: as above.
                unsafe {
                    if t == GgmlType::Q4_K {
                        decode::<{ GgmlType::Q4_K as u32 }>(&b, &mut generic)
                    } else {
                        decode::<{ GgmlType::Q5_K as u32 }>(&b, &mut generic)
                    }
                };
                assert!(generic == got, "{t:?}: table decode differs from the generic decode");
            }
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                let g = bf16_to_f32(g);
                assert!((g - w).abs() <= w.abs() * 2f32.powi(-8) + 1e-9, "{t:?} weight {i}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn vector_pack_equals_scalar_pack() {
        if !crate::kernels::simd::bf16_supported() {
            return;
        }
        let (n, cols) = (21, 512);
        let x = uniform(n * cols, 5);
        let v = pack(&x, n, cols, Split::One);
        let mut s = vec![0u16; 2 * v.tiles.len()];
        for (t, row) in x.chunks_exact(cols).enumerate() {
            for (c, w) in row.chunks_exact(TILE_COLS).enumerate() {
                for p in 0..2 * TILE {
                    s[(c * v.groups + t / TILE) * B_TILE + (p / 2) * 2 * TILE + 2 * (t % TILE) + p % 2] =
                        f32_to_bf16(w[p]);
                }
            }
        }
        let got: Vec<u16> = v.tiles.iter().flat_map(|&p| [p as u16, (p >> 16) as u16]).collect();
        assert!(got == s);
    }

    #[test]
    fn pack_layout_puts_column_pairs_of_each_row_in_its_lane() {
        let (n, cols) = (18, 256);
        let x: Vec<f32> = (0..n * cols).map(|i| i as f32).collect();
        let a = pack(&x, n, cols, Split::One);
        assert_eq!(a.groups, 2);
        // Row 17 = group 1, lane 1; column 71 = chunk 2, pair 3, second of the pair.
        // SAFETY: tile() points inside `a.tiles`.
        let tile = unsafe { std::slice::from_raw_parts(a.tile(2, 1), B_TILE) };
        assert_eq!(bf16_to_f32(tile[3 * 32 + 2 + 1]), bf16_to_f32(f32_to_bf16((17 * cols + 71) as f32)));
        assert_eq!(bf16_to_f32(tile[3 * 32 + 2]), bf16_to_f32(f32_to_bf16((17 * cols + 70) as f32)));
        // Rows past n are zero.
        assert_eq!(tile[3 * 32 + 2 * 5], 0);
    }
}

/// Timings of the pieces on one thread (pack, decode, tile products, the driver), printed, not
/// asserted: `cargo test --release -p hy-engine --lib amx_speed -- --ignored --nocapture`.
#[cfg(test)]
mod speed {
    // SAFETY (the whole module): the tile instructions run only after `available()`, on
    // buffers of whole tiles; the decode calls only with AVX512_BF16 (checked by `pack`'s
    // callers on the machines this is run on).
    use super::*;
    use std::time::Instant;

    fn per(label: &str, count: usize, f: impl FnOnce()) {
        let s = Instant::now();
        f();
        eprintln!("{label}: {:.2} ns each", s.elapsed().as_nanos() as f64 / count as f64);
    }

    #[test]
    #[ignore = "prints timings; run by hand"]
    fn amx_speed() {
        if !crate::kernels::simd::bf16_supported() {
            return;
        }
        let t = GgmlType::Q4_K;
        let blocks = 4096;
        let mut data = vec![0u8; blocks * t.type_size()];
        crate::synth::fill_random(t, &mut data, 7);
        let mut out = vec![0u16; BLOCK];
        let x = vec![0.25f32; 64 * 16384];
        per("pack, per value", 10 * x.len(), || {
            for _ in 0..10 {
                std::hint::black_box(pack(&x, 64, 16384, Split::Rayon));
            }
        });
        per("decode generic 256 weights", 20 * blocks, || {
            for _ in 0..20 {
                for b in data.chunks_exact(t.type_size()) {
                    unsafe { decode::<{ GgmlType::Q4_K as u32 }>(b, &mut out) };
                    std::hint::black_box(&out);
                }
            }
        });
        per("decode 256 weights", 20 * blocks, || {
            for _ in 0..20 {
                for b in data.chunks_exact(t.type_size()) {
                    unsafe { decode_unit(t, b, &mut out) };
                    std::hint::black_box(&out);
                }
            }
        });
        if !available() {
            return;
        }
        let a = Aligned([0x3c00u16; TILE * BLOCK]);
        let b = Aligned([0x3c00u16; 4 * B_TILE]);
        let mut c = Aligned([0f32; 256]);
        let reps = 1_000_000;
        unsafe {
            let mut hw = Hw;
            hw.configure();
            for i in 0..4 {
                hw.zero(i);
            }
            hw.load_a(0, a.0.as_ptr(), 512);
            hw.load_a(1, a.0.as_ptr(), 512);
            hw.load_b(0, b.0.as_ptr());
            hw.load_b(1, b.0.as_ptr());
            per("tdp, four C", reps, || {
                for _ in 0..reps / 4 {
                    for g in 0..4 {
                        hw.dot(g, g % 2, 0);
                    }
                }
            });
            per("load A + tdp, four C", reps, || {
                for i in 0..reps / 4 {
                    for g in 0..4 {
                        hw.load_a(g % 2, a.0[(i % 8) * 32..].as_ptr(), 512);
                        hw.dot(g, g % 2, 0);
                    }
                }
            });
            hw.store_c(0, c.0.as_mut_ptr());
            hw.release();
        }
        std::hint::black_box(&c);
        for n in [16, 64, 256] {
            let rows = 256;
            let cols = 7168;
            let rb = cols / BLOCK * t.type_size();
            let mut w = vec![0u8; rows * rb];
            crate::synth::fill_random(t, &mut w, 1);
            let x = vec![0.5f32; n * cols];
            let acts = pack(&x, n, cols, Split::One);
            let mut o = vec![0f32; rows * n];
            matmul_rows(t, &w, rb, &acts, &mut o);
            let s = Instant::now();
            for _ in 0..10 {
                matmul_rows(t, &w, rb, &acts, &mut o);
            }
            let secs = s.elapsed().as_secs_f64() / 10.0;
            eprintln!(
                "matmul_rows n={n}: {:.1} GMAC/s one thread, {:.2} ns/weight",
                (rows * cols * n) as f64 / secs / 1e9,
                secs * 1e9 / (rows * cols) as f64
            );
        }
    }
}
