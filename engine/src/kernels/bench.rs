//! A plain read loop for bandwidth baselines: the bytes/s the calling thread can stream with
//! the widest loads this CPU has. Kernels are judged against it on the same bytes and threads.

/// Wrapping sum of `data` as u64 words (tail bytes ignored); the result only defeats dead-code
/// elimination.
pub fn read_stream(data: &[u8]) -> u64 {
    read_stream_with(data, 0)
}

/// [`read_stream`] with a software prefetch `dist` bytes ahead of every 256 bytes read, as the
/// quantized kernels prefetch ([`super::simd::prefetch_distance`]); 0 = none. Where the
/// hardware prefetchers alone leave each core short of outstanding misses (a 16-core Xeon VM
/// read 95 GB/s plain, 128 GB/s with a 2 KB prefetch), this is the higher ceiling.
pub fn read_stream_with(data: &[u8], dist: usize) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd::avx512_supported() {
            // SAFETY: AVX-512 F detected.
            return unsafe { x86::read_avx512(data, dist) };
        }
        if super::simd::avx2_supported() {
            // SAFETY: AVX2 detected.
            return unsafe { x86::read_avx2(data) };
        }
    }
    data.chunks_exact(8)
        .fold(0u64, |s, c| s.wrapping_add(u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn read_avx512(data: &[u8], dist: usize) -> u64 {
        let mut acc = [_mm512_setzero_si512(); 4];
        for c in data.chunks_exact(256) {
            if dist > 0 {
                let ahead = c.as_ptr().wrapping_add(dist) as *const i8;
                for line in 0..4 {
                    // A hint only: it never faults, whatever the address.
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
                }
            }
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: 64 readable bytes at offset 64k of a 256-byte chunk.
                *a = _mm512_add_epi64(*a, unsafe { _mm512_loadu_si512(c.as_ptr().add(64 * k) as *const _) });
            }
        }
        let s = _mm512_add_epi64(_mm512_add_epi64(acc[0], acc[1]), _mm512_add_epi64(acc[2], acc[3]));
        _mm512_reduce_add_epi64(s) as u64
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn read_avx2(data: &[u8]) -> u64 {
        let mut acc = [_mm256_setzero_si256(); 4];
        for c in data.chunks_exact(128) {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: 32 readable bytes at offset 32k of a 128-byte chunk.
                *a = _mm256_add_epi64(*a, unsafe { _mm256_loadu_si256(c.as_ptr().add(32 * k) as *const __m256i) });
            }
        }
        let s = _mm256_add_epi64(_mm256_add_epi64(acc[0], acc[1]), _mm256_add_epi64(acc[2], acc[3]));
        let mut out = [0u64; 4];
        // SAFETY: 32 writable bytes.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, s) };
        out.iter().fold(0u64, |a, &b| a.wrapping_add(b))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn read_stream_sums_words() {
        let data: Vec<u8> = (0..4096u32).flat_map(|i| (i as u64 * 0x0101_0101).to_le_bytes()).collect();
        let want = (0..4096u64).fold(0u64, |s, i| s.wrapping_add(i * 0x0101_0101));
        assert_eq!(super::read_stream(&data), want);
        assert_eq!(super::read_stream_with(&data, 2048), want);
    }
}
