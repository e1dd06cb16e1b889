//! Block unpacking and small vector helpers shared by the AVX2 and AVX-512 kernels.
//!
//! A macro defines them once per feature set: helpers compiled for fewer features than their
//! caller are not always inlined, and a call per block costs more than the work it does.
//! Each module adds its own `bit_to` and `bits_to_bytes` (AVX-512 has mask registers for them).

/// Defines the helpers in the invoking module, compiled for `$features`.
macro_rules! unpack_fns {
    ($features:literal) => {
        /// f16 at byte offset `off` to f32 with F16C (no library call in the hot loop).
        #[inline]
        #[target_feature(enable = $features)]
        pub(crate) fn f16c_at(b: &[u8], off: usize) -> f32 {
            let bits = u16::from_le_bytes([b[off], b[off + 1]]);
// `vmovd` writes the whole vector register. From intrinsics LLVM emits a 16-bit insert
            // into whatever register is free (often the accumulator), which chained every block
            // to the previous block's sum and halved the speed of the Q8_0-family kernels.
            let v: __m128i;
            // SAFETY: `vmovd` only copies a general register into a vector register (AVX is
            // enabled here); no memory, stack or flags are touched.
            unsafe {
                std::arch::asm!(
                    "vmovd {v}, {g:e}",
                    v = lateout(xmm_reg) v,
                    g = in(reg) bits as u32,
                    options(pure, nomem, nostack, preserves_flags)
                )
            };
            _mm_cvtss_f32(_mm_cvtph_ps(v))
        }

        #[inline]
        #[target_feature(enable = $features)]
        pub(crate) fn hsum256(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }

        /// Duplicates each of the first (`hi` = false) or last 8 bytes of `v` (8 → 16 groups).
        #[inline]
        #[target_feature(enable = $features)]
        fn dup8(v: __m128i, hi: bool) -> __m128i {
            let idx = if hi {
                _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15)
            } else {
                _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7)
            };
            _mm_shuffle_epi8(v, idx)
        }

        /// The scales of 32-weight chunk `c` as 16 i16 lanes: 8 × group 2c, then 8 × group 2c+1.
        #[inline]
        #[target_feature(enable = $features)]
        #[allow(dead_code)] // the AVX-512 kernels permute instead
        pub(crate) fn chunk_scales(sc8: __m128i, c: usize) -> __m256i {
            let (a, b) = ((2 * c) as i8, (2 * c + 1) as i8);
            let idx = _mm_setr_epi8(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b);
            _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, idx))
        }

        #[inline]
        #[target_feature(enable = $features)]
        fn load32(b: &[u8]) -> __m256i {
            assert!(b.len() >= 32);
            // SAFETY: at least 32 readable bytes (checked above); unaligned load.
            unsafe { _mm256_loadu_si256(b.as_ptr() as *const __m256i) }
        }

        #[inline]
        #[target_feature(enable = $features)]
        fn load16(b: &[u8]) -> __m128i {
            assert!(b.len() >= 16);
            // SAFETY: at least 16 readable bytes (checked above); unaligned load.
            unsafe { _mm_loadu_si128(b.as_ptr() as *const __m128i) }
        }

        #[inline]
        #[target_feature(enable = $features)]
        fn u32x4_to_m128(u: [u32; 4]) -> __m128i {
            _mm_setr_epi32(u[0] as i32, u[1] as i32, u[2] as i32, u[3] as i32)
        }

        #[inline]
        #[target_feature(enable = $features)]
        #[allow(dead_code)] // AVX-512 unpacks 64 bytes at a time (avx512::k_chunks512)
        fn srl16(v: __m256i, n: u32) -> __m256i {
            _mm256_srl_epi16(v, _mm_cvtsi32_si128(n as i32))
        }

        #[inline]
        #[target_feature(enable = $features)]
        pub(crate) fn k_scales<const T: u32>(b: &[u8]) -> KScales {
            match super::unpack::ty(T) {
                GgmlType::Q4_K | GgmlType::Q5_K => {
                    let v = u32x4_to_m128(k4_scale_min_bytes(&b[4..16]));
                    let mn = _mm256_cvtepu8_epi16(dup8(v, true));
                    KScales { sc8: dup8(v, false), mn, d: f16c_at(b, 0), dmin: f16c_at(b, 2) }
                }
                GgmlType::Q6_K => {
                    let sc8 = load16(&b[192..208]);
                    let d = f16c_at(b, 208);
                    KScales { sc8, mn: _mm256_slli_epi16(_mm256_cvtepi8_epi16(sc8), 5), d, dmin: d }
                }
                GgmlType::Q3_K => {
                    let raw = u32x4_to_m128(q3k_scale_bytes(&b[96..108]));
                    let sc8 = _mm_sub_epi8(raw, _mm_set1_epi8(32));
                    let d = f16c_at(b, 108);
                    KScales { sc8, mn: _mm256_slli_epi16(_mm256_cvtepi8_epi16(sc8), 2), d, dmin: d }
                }
                _ => {
                    // Q2_K: low nibble scale, high nibble min.
                    let v = load16(&b[0..16]);
                    let m4 = _mm_set1_epi8(0xF);
                    let mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(v, 4), m4));
                    KScales { sc8: _mm_and_si128(v, m4), mn, d: f16c_at(b, 80), dmin: f16c_at(b, 82) }
                }
            }
        }

        /// The 256 unsigned quants of a k-quant block as eight 32-byte vectors, in weight order.
        #[inline]
        #[target_feature(enable = $features)]
        #[allow(dead_code)] // AVX-512 unpacks 64 bytes at a time (avx512::k_chunks512)
        pub(crate) fn k_chunks<const T: u32>(b: &[u8]) -> [__m256i; 8] {
            let t = super::unpack::ty(T);
            let m4 = _mm256_set1_epi8(0xF);
            let mut ch = [_mm256_setzero_si256(); 8];
            match t {
                GgmlType::Q4_K => {
                    for j in 0..4 {
                        let q = load32(&b[16 + 32 * j..]);
                        ch[2 * j] = _mm256_and_si256(q, m4);
                        ch[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                    }
                }
                GgmlType::Q5_K => {
                    let qh = load32(&b[16..48]);
                    for j in 0..4 {
                        let q = load32(&b[48 + 32 * j..]);
                        let lo = _mm256_and_si256(q, m4);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                        ch[2 * j] = _mm256_or_si256(lo, bit_to(qh, 2 * j as u32, 16));
                        ch[2 * j + 1] = _mm256_or_si256(hi, bit_to(qh, 2 * j as u32 + 1, 16));
                    }
                }
                GgmlType::Q6_K => {
                    let m30 = _mm256_set1_epi8(0x30);
                    for n in 0..2 {
                        let ql0 = load32(&b[64 * n..]);
                        let ql1 = load32(&b[64 * n + 32..]);
                        let qh = load32(&b[128 + 32 * n..]);
                        ch[4 * n] =
                            _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
                        ch[4 * n + 1] =
                            _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
                        ch[4 * n + 2] =
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m30));
                        ch[4 * n + 3] = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                            _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
                        );
                    }
                }
                GgmlType::Q3_K => {
                    let m3 = _mm256_set1_epi8(3);
                    let hm = load32(&b[0..32]);
                    for n in 0..2 {
                        let q = load32(&b[32 + 32 * n..]);
                        for j in 0..4 {
                            let low = _mm256_and_si256(srl16(q, 2 * j as u32), m3);
                            ch[4 * n + j] = _mm256_or_si256(low, bit_to(hm, (4 * n + j) as u32, 4));
                        }
                    }
                }
                _ => {
                    // Q2_K
                    let m3 = _mm256_set1_epi8(3);
                    for n in 0..2 {
                        let q = load32(&b[16 + 32 * n..]);
                        for j in 0..4 {
                            ch[4 * n + j] = _mm256_and_si256(srl16(q, 2 * j as u32), m3);
                        }
                    }
                }
            }
            ch
        }

        /// Hints the cache to fetch the line at `p` (never faults, any address is fine).
        #[inline]
        #[target_feature(enable = $features)]
        pub(crate) fn prefetch(p: *const u8) {
            // A hint only: it never faults, whatever the address.
            _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
        }

        /// Prefetches the lines of one block `dist` bytes ahead of `b` (0 disables).
        #[inline]
        #[target_feature(enable = $features)]
        pub(crate) fn prefetch_block(b: &[u8], dist: usize) {
            // One prefetch per cache line of the stream: the lines that start inside this
            // block, `dist` bytes ahead (small blocks often start none and issue nothing).
            if dist > 0 {
                let start = b.as_ptr() as usize;
                let mut line = (start + 63) & !63;
                while line < start + b.len() {
                    prefetch((line + dist) as *const u8);
                    line += 64;
                }
            }
        }

        /// 16 bytes of nibbles to 32 bytes: low nibbles first, then high nibbles.
        #[inline]
        #[target_feature(enable = $features)]
        fn nib(x: __m128i) -> __m256i {
            let m4 = _mm_set1_epi8(0xF);
            _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(x, 4), m4), _mm_and_si128(x, m4))
        }

        /// The 32 quants of a Q4_0-family block and whether they are signed (`d·q`) or offset (`d·q + m`).
        #[inline]
        #[target_feature(enable = $features)]
        pub(crate) fn s_quants<const T: u32>(b: &[u8]) -> __m256i {
            let t = super::unpack::ty(T);
            let qh = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
            match t {
                GgmlType::Q8_0 => load32(&b[2..34]),
                GgmlType::Q4_0 => _mm256_sub_epi8(nib(load16(&b[2..18])), _mm256_set1_epi8(8)),
                GgmlType::Q4_1 => nib(load16(&b[4..20])),
                GgmlType::Q5_0 => {
                    let q = _mm256_or_si256(nib(load16(&b[6..22])), bits_to_bytes(qh(2), 16));
                    _mm256_sub_epi8(q, _mm256_set1_epi8(16))
                }
                _ => _mm256_or_si256(nib(load16(&b[8..24])), bits_to_bytes(qh(4), 16)), // Q5_1
            }
        }
    };
}

pub(crate) use unpack_fns;

use crate::dtype::GgmlType;

/// The GGML type a kernel was monomorphized for (`T` = the GGML type number). Making the type
/// a constant lets each helper shrink to one arm, so the compiler inlines it and the unpacked
/// vectors stay in registers.
pub(crate) const fn ty(v: u32) -> GgmlType {
    match v {
        2 => GgmlType::Q4_0,
        3 => GgmlType::Q4_1,
        6 => GgmlType::Q5_0,
        7 => GgmlType::Q5_1,
        10 => GgmlType::Q2_K,
        11 => GgmlType::Q3_K,
        12 => GgmlType::Q4_K,
        13 => GgmlType::Q5_K,
        14 => GgmlType::Q6_K,
        _ => GgmlType::Q8_0,
    }
}

/// Calls `$f::<T, N>($args)` for the runtime type `$t` (one of `$types`) and `N` = `$n` (1..=4).
macro_rules! dispatch {
    ($f:ident, $t:expr, $n:expr, [$($ty:ident),*], $args:tt) => {
        match ($t, $n) {
            $(
                (GgmlType::$ty, 1) => $f::<{ GgmlType::$ty as u32 }, 1>$args,
                (GgmlType::$ty, 2) => $f::<{ GgmlType::$ty as u32 }, 2>$args,
                (GgmlType::$ty, 3) => $f::<{ GgmlType::$ty as u32 }, 3>$args,
                (GgmlType::$ty, _) => $f::<{ GgmlType::$ty as u32 }, 4>$args,
            )*
            _ => {}
        }
    };
}

/// Calls `$f::<T>($args)` for the runtime type `$t` (one of `$types`).
macro_rules! dispatch_type {
    ($f:ident, $t:expr, [$($ty:ident),*], $args:tt) => {
        match $t {
            $(GgmlType::$ty => $f::<{ GgmlType::$ty as u32 }>$args,)*
            _ => {}
        }
    };
}

/// Calls `$f::<N>($args)` for `N` = `$n` (1..=4).
macro_rules! dispatch_rows {
    ($f:ident, $n:expr, $args:tt) => {
        match $n {
            1 => $f::<1>$args,
            2 => $f::<2>$args,
            3 => $f::<3>$args,
            _ => $f::<4>$args,
        }
    };
}

pub(crate) use {dispatch, dispatch_rows, dispatch_type};
