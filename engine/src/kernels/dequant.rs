//! Dequantization of GGML rows to f32 (scalar reference).

// Index loops mirror the published bit layouts, which reads better than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use super::blocks::{is_k_quant, is_small_block, unpack_k, unpack_s, KBlock, SBlock};
use super::fp::{bf16_to_f32, f16_to_f32, fp8_e4m3_to_f32};
use super::KernelError;
use crate::dtype::GgmlType;

/// Types [`dequantize_row`] and the matrix kernels support.
pub fn is_supported(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) || is_k_quant(ty) || is_small_block(ty)
}

/// Checks that `n_bytes` hold exactly `n` weights of `ty`.
pub fn check_row(ty: GgmlType, n_bytes: usize, n: usize) -> Result<(), KernelError> {
    if !is_supported(ty) {
        return Err(KernelError::Unsupported(ty.name()));
    }
    let want = ty.bytes_for(n as u64).ok_or(KernelError::NotBlockMultiple { ty: ty.name(), n })?;
    if want != n_bytes as u64 {
        return Err(KernelError::Length { what: "row bytes", expected: want as usize, got: n_bytes });
    }
    Ok(())
}

/// Dequantizes one row: `src` holds exactly `dst.len()` weights of type `ty`.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
    check_row(ty, src.len(), dst.len())?;
    dequantize_unchecked(ty, src, dst);
    Ok(())
}

/// Dequantizes whole blocks; the caller guarantees matching lengths of a supported type
/// (extra bytes or values beyond the last whole block are ignored, never read past).
pub(crate) fn dequantize_unchecked(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        GgmlType::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        _ if is_k_quant(ty) => {
            let mut k = KBlock::default();
            for (b, y) in src.chunks_exact(ty.type_size()).zip(dst.chunks_exact_mut(256)) {
                unpack_k(ty, b, &mut k);
                dequant_kblock(&k, y);
            }
        }
        _ => {
            let mut s = SBlock::default();
            for (b, y) in src.chunks_exact(ty.type_size()).zip(dst.chunks_exact_mut(32)) {
                unpack_s(ty, b, &mut s);
                for (o, &q) in y.iter_mut().zip(&s.q) {
                    *o = q as f32 * s.d + s.m;
                }
            }
        }
    }
}

/// Same arithmetic order as ggml: `(d·scale)·q − dmin·min`.
pub(crate) fn dequant_kblock(k: &KBlock, y: &mut [f32]) {
    for (sub, ys) in y.chunks_exact_mut(16).enumerate() {
        let dl = k.d * k.scales[sub] as f32;
        let ml = k.dmin * k.mins[sub] as f32;
        for (o, &q) in ys.iter_mut().zip(&k.q[16 * sub..16 * sub + 16]) {
            *o = dl * q as f32 - ml;
        }
    }
}

/// float8 e4m3 bytes to f32.
pub fn dequantize_fp8_e4m3(src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
    if src.len() != dst.len() {
        return Err(KernelError::Length { what: "fp8 bytes", expected: dst.len(), got: src.len() });
    }
    for (d, &b) in dst.iter_mut().zip(src) {
        *d = fp8_e4m3_to_f32(b);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(v: f32) -> [u8; 2] {
        half::f16::from_f32(v).to_bits().to_le_bytes()
    }

    #[test]
    fn rejects_bad_lengths_and_types() {
        let mut out = [0f32; 32];
        assert!(dequantize_row(GgmlType::Q8_0, &[0u8; 33], &mut out).is_err());
        assert!(dequantize_row(GgmlType::Q4_K, &[0u8; 144], &mut out).is_err());
        assert!(dequantize_row(GgmlType::IQ2_XXS, &[0u8; 66], &mut [0f32; 256]).is_err());
        assert!(dequantize_row(GgmlType::Q8_0, &[0u8; 34], &mut out).is_ok());
    }

    #[test]
    fn q8_0_by_hand() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16b(0.5));
        for i in 0..32 {
            b[2 + i] = (i as i8 - 16) as u8;
        }
        let mut out = [0f32; 32];
        dequantize_row(GgmlType::Q8_0, &b, &mut out).unwrap();
        for (i, &o) in out.iter().enumerate() {
            assert_eq!(o, 0.5 * (i as f32 - 16.0));
        }
    }

    #[test]
    fn q4_0_and_q5_0_by_hand() {
        // Q4_0: byte j holds weight j (low nibble) and weight j+16 (high nibble), minus 8.
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16b(2.0));
        b[2] = 0xF3; // w0 = 3-8, w16 = 15-8
        let mut out = [0f32; 32];
        dequantize_row(GgmlType::Q4_0, &b, &mut out).unwrap();
        assert_eq!((out[0], out[16], out[1]), (-10.0, 14.0, -16.0));
        // Q5_0: bit 16 of qh is the 5th bit of weight 16.
        let mut b = vec![0u8; 22];
        b[..2].copy_from_slice(&f16b(1.0));
        b[2..6].copy_from_slice(&(1u32 << 16 | 1).to_le_bytes());
        b[6] = 0x21; // w0 = 1|16 - 16 = 1, w16 = 2|16 - 16 = 2
        dequantize_row(GgmlType::Q5_0, &b, &mut out).unwrap();
        assert_eq!((out[0], out[16], out[1], out[17]), (1.0, 2.0, -16.0, -16.0));
    }

    #[test]
    fn q4_k_by_hand() {
        // d = 1, dmin = 0.5; scale/min j<4 in low 6 bits of bytes j / j+4; j>=4 split.
        let mut b = vec![0u8; 144];
        b[..2].copy_from_slice(&f16b(1.0));
        b[2..4].copy_from_slice(&f16b(0.5));
        b[4] = 3; // scale 0 = 3
        b[8] = 2; // min 0 = 2
        b[12] = 0x45; // scale 4 low nibble 5, min 4 low nibble 4
        b[4] |= 0x40; // scale 4 high bits = 1 -> scale 4 = 5 | 16 = 21
        b[16] = 0x97; // w0 = 7 (chunk 0 low), w32 = 9 (chunk 0 high)
        let mut out = [0f32; 256];
        dequantize_row(GgmlType::Q4_K, &b, &mut out).unwrap();
        assert_eq!(out[0], 3.0 * 7.0 - 0.5 * 2.0);
        // weight 128 is chunk 2 low nibbles: scale index 4 = 21, min 4 = 4, q = 0.
        assert_eq!(out[128], -0.5 * 4.0);
        let (s, m) = crate::kernels::blocks::scale_min_k4(4, &b[4..16]);
        assert_eq!((s, m), (21, 4));
    }

    #[test]
    fn q6_k_by_hand() {
        let mut b = vec![0u8; 210];
        b[208..210].copy_from_slice(&f16b(0.25));
        b[192] = (-2i8) as u8; // scale of weights 0..16
        b[0] = 0x0F; // w0 low 4 bits = 15
        b[128] = 0x03; // w0 high 2 bits = 3 -> q = 63 - 32 = 31
        let mut out = [0f32; 256];
        dequantize_row(GgmlType::Q6_K, &b, &mut out).unwrap();
        assert_eq!(out[0], 0.25 * -2.0 * 31.0);
        assert_eq!(out[1], 0.25 * -2.0 * -32.0);
    }
}
