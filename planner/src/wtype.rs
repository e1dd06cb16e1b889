//! Weight storage types the planner can price: GGUF block types, the FP8 release format and
//! MXFP4. Sizes are facts of the formats (see DESIGN.md), not estimates.

use serde::{Deserialize, Serialize};

/// One storage type for a weight tensor.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q6_K,
    Q5_K,
    Q5_1,
    Q5_0,
    Q4_K,
    Q4_0,
    IQ4_NL,
    IQ4_XS,
    Q3_K,
    Q2_K,
    /// float8 e4m3 weight plus one f32 `weight_scale_inv` per 128×128 block (DeepSeek release format).
    FP8,
    /// OCP microscaling FP4: 32 weights in 16 bytes plus one E8M0 scale byte.
    MXFP4,
}

/// FP8 releases scale weights per square block of this many rows and columns.
pub const FP8_BLOCK: u64 = 128;

impl WType {
    /// (weights per block, bytes per block) for block-quantized types; FP8 counts its payload only.
    fn block(self) -> (u64, u64) {
        use WType::*;
        match self {
            F32 => (1, 4),
            F16 | BF16 => (1, 2),
            Q8_0 => (32, 34),
            Q6_K => (256, 210),
            Q5_K => (256, 176),
            Q5_1 => (32, 24),
            Q5_0 => (32, 22),
            Q4_K => (256, 144),
            Q4_0 => (32, 18),
            IQ4_NL => (32, 18),
            IQ4_XS => (256, 136),
            Q3_K => (256, 110),
            Q2_K => (256, 84),
            FP8 => (1, 1),
            MXFP4 => (32, 17),
        }
    }

    /// Weights per block: a row length must be a multiple of it.
    pub fn block_size(self) -> u64 {
        self.block().0
    }

    /// Whether a tensor whose rows hold `row_len` weights can be stored in this type.
    pub fn fits_row(self, row_len: u64) -> bool {
        row_len.is_multiple_of(self.block_size())
    }

    /// Exact bytes of a tensor with ggml-order `dims` (dims[0] = row length) in this type,
    /// including FP8 block scales; `None` if the row length is not a whole number of blocks.
    pub fn bytes_for_dims(self, dims: &[u64]) -> Option<u64> {
        let n: u64 = dims.iter().product();
        let (bs, bb) = self.block();
        let row = dims.first().copied().unwrap_or(1);
        if row % bs != 0 {
            return None;
        }
        let payload = n / bs * bb;
        if self != WType::FP8 {
            return Some(payload);
        }
        // One f32 scale per 128×128 block of each 2-D slice (partial edge blocks count whole).
        let rows = dims.get(1).copied().unwrap_or(1);
        let slices: u64 = dims.iter().skip(2).product();
        let blocks = row.div_ceil(FP8_BLOCK) * rows.div_ceil(FP8_BLOCK) * slices;
        Some(payload + blocks * 4)
    }

    /// Bits per weight of the payload (FP8 without its small scale overhead).
    pub fn bits_per_weight(self) -> f64 {
        let (bs, bb) = self.block();
        bb as f64 * 8.0 / bs as f64
    }

    /// The name GGML / the release uses ("Q4_K", "BF16", "FP8", ...).
    pub fn name(self) -> &'static str {
        use WType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            BF16 => "BF16",
            Q8_0 => "Q8_0",
            Q6_K => "Q6_K",
            Q5_K => "Q5_K",
            Q5_1 => "Q5_1",
            Q5_0 => "Q5_0",
            Q4_K => "Q4_K",
            Q4_0 => "Q4_0",
            IQ4_NL => "IQ4_NL",
            IQ4_XS => "IQ4_XS",
            Q3_K => "Q3_K",
            Q2_K => "Q2_K",
            FP8 => "FP8",
            MXFP4 => "MXFP4",
        }
    }

    /// llama.cpp's replacement when a k-quant does not divide a row (llama-quant.cpp).
    pub fn row_fallback(self) -> WType {
        use WType::*;
        match self {
            Q2_K | Q3_K | IQ4_XS => IQ4_NL,
            Q4_K => Q5_0,
            Q5_K => Q5_1,
            Q6_K => Q8_0,
            _ => F16,
        }
    }
}

impl std::fmt::Display for WType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_bytes_match_the_format_facts() {
        assert_eq!(WType::Q4_K.bytes_for_dims(&[256]), Some(144));
        assert_eq!(WType::Q6_K.bytes_for_dims(&[256, 2]), Some(420));
        assert_eq!(WType::Q8_0.bytes_for_dims(&[64]), Some(68));
        assert_eq!(WType::Q2_K.bytes_for_dims(&[512]), Some(168));
        assert_eq!(WType::Q3_K.bytes_for_dims(&[256]), Some(110));
        assert_eq!(WType::Q5_K.bytes_for_dims(&[256]), Some(176));
        assert_eq!(WType::Q4_K.bytes_for_dims(&[64]), None);
        assert_eq!(WType::MXFP4.bytes_for_dims(&[64, 2]), Some(68));
    }

    #[test]
    fn fp8_counts_one_f32_scale_per_128_block_with_partial_edges() {
        // kv_a_proj_with_mqa of the tiny fixture: 320 rows × 256 columns -> 3 × 2 blocks.
        assert_eq!(WType::FP8.bytes_for_dims(&[256, 320]), Some(256 * 320 + 6 * 4));
        // Stacked experts: 16 slices of 64 × 256 (row length 64) -> 1 × 2 blocks each.
        assert_eq!(WType::FP8.bytes_for_dims(&[64, 256, 16]), Some(64 * 256 * 16 + 16 * 2 * 4));
    }

    #[test]
    fn fallbacks_follow_llama_cpp() {
        assert_eq!(WType::Q4_K.row_fallback(), WType::Q5_0);
        assert_eq!(WType::Q6_K.row_fallback(), WType::Q8_0);
        assert_eq!(WType::Q2_K.row_fallback(), WType::IQ4_NL);
    }
}
