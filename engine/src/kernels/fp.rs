//! Scalar conversions of the small float formats (f16, bf16, float8 e4m3) to f32, and f32 to
//! bf16.

/// IEEE half (binary16) bits to f32.
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// bfloat16 bits to f32 (exact: bf16 is the top half of an f32).
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// f32 to bfloat16 bits, rounded to nearest even (the rounding of `vcvtne2ps2bf16`).
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// float8 e4m3 "fn" (OCP FP8, as in DeepSeek's FP8 release) to f32: 1 sign bit, 4 exponent
/// bits (bias 7), 3 mantissa bits; no infinities, `S.1111.111` is NaN, largest finite 448.
#[inline]
pub fn fp8_e4m3_to_f32(b: u8) -> f32 {
    FP8_E4M3_LUT[b as usize]
}

/// All 256 e4m3 values, computed at compile time from the format definition.
static FP8_E4M3_LUT: [f32; 256] = build_fp8_lut();

const fn fp8_e4m3_decode(b: u8) -> f32 {
    let exp = ((b >> 3) & 0xF) as i32;
    let man = (b & 7) as f32;
    let mag = if exp == 15 && (b & 7) == 7 {
        f32::NAN
    } else if exp == 0 {
        // Subnormal: m/8 * 2^(1-7).
        man * (1.0 / 512.0)
    } else {
        let mut scale = 1.0f32;
        let mut e = exp - 7;
        while e > 0 {
            scale *= 2.0;
            e -= 1;
        }
        while e < 0 {
            scale *= 0.5;
            e += 1;
        }
        (1.0 + man / 8.0) * scale
    };
    if b & 0x80 != 0 {
        -mag
    } else {
        mag
    }
}

const fn build_fp8_lut() -> [f32; 256] {
    let mut lut = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        lut[i] = fp8_e4m3_decode(i as u8);
        i += 1;
    }
    lut
}

/// Reads a little-endian f16 at byte offset `off` as f32.
#[inline]
pub(crate) fn f16_at(b: &[u8], off: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[off], b[off + 1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_known_values() {
        // Values from the OCP FP8 specification (E4M3 table).
        assert_eq!(fp8_e4m3_to_f32(0x00), 0.0);
        assert_eq!(fp8_e4m3_to_f32(0x38), 1.0);
        assert_eq!(fp8_e4m3_to_f32(0xB8), -1.0);
        assert_eq!(fp8_e4m3_to_f32(0x7E), 448.0);
        assert_eq!(fp8_e4m3_to_f32(0xFE), -448.0);
        assert_eq!(fp8_e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(fp8_e4m3_to_f32(0x07), 7.0 * 2f32.powi(-9));
        assert_eq!(fp8_e4m3_to_f32(0x08), 2f32.powi(-6));
        assert_eq!(fp8_e4m3_to_f32(0x3C), 1.5);
        assert_eq!(fp8_e4m3_to_f32(0x40), 2.0);
        assert!(fp8_e4m3_to_f32(0x7F).is_nan());
        assert!(fp8_e4m3_to_f32(0xFF).is_nan());
    }

    #[test]
    fn fp8_matches_half_bit_trick() {
        // Independent derivation: e4m3 bits shifted into an f16 (exponent bias 15) are the
        // value scaled by 2^-8, subnormals included. The SIMD paths rely on this identity.
        for b in 0u16..256 {
            if b & 0x7F == 0x7F {
                continue;
            }
            let h = ((b & 0x80) << 8) | ((b & 0x7F) << 7);
            let v = f16_to_f32(h) * 256.0;
            assert_eq!(v, fp8_e4m3_to_f32(b as u8), "byte {b:#x}");
        }
    }

    #[test]
    fn bf16_and_f16() {
        assert_eq!(bf16_to_f32(0x3F80), 1.0);
        assert_eq!(bf16_to_f32(0xC000), -2.0);
        assert_eq!(f16_to_f32(0x3C00), 1.0);
        assert_eq!(f16_to_f32(0x7BFF), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
    }
}
