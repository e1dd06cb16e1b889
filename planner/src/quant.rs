//! Quantizations the planner can price for a catalog model: llama.cpp's GGUF recipes (type
//! per tensor exactly as llama-quant.cpp chooses it) and the safetensors release formats.

use serde::{Deserialize, Serialize};

use crate::arch::{Architecture, Layout, TensorDesc};
use crate::model::{Component, Excluded, ModelSpec};
use crate::wtype::WType;
use crate::PlanError;

/// A named quantization of a whole model.
#[allow(non_camel_case_types)]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Quant {
    Bf16,
    F16,
    Fp8,
    Q8_0,
    Mxfp4,
    Q6_K,
    Q5_K_M,
    Q4_K_M,
    Q3_K_M,
    Q2_K,
}

impl Quant {
    /// Highest quality first: the order `auto` tries.
    pub const BY_QUALITY: [Quant; 10] = [
        Quant::Bf16,
        Quant::F16,
        Quant::Fp8,
        Quant::Q8_0,
        Quant::Mxfp4,
        Quant::Q6_K,
        Quant::Q5_K_M,
        Quant::Q4_K_M,
        Quant::Q3_K_M,
        Quant::Q2_K,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Quant::Bf16 => "bf16",
            Quant::F16 => "f16",
            Quant::Fp8 => "fp8",
            Quant::Q8_0 => "q8_0",
            Quant::Mxfp4 => "mxfp4",
            Quant::Q6_K => "q6_k",
            Quant::Q5_K_M => "q5_k_m",
            Quant::Q4_K_M => "q4_k_m",
            Quant::Q3_K_M => "q3_k_m",
            Quant::Q2_K => "q2_k",
        }
    }

    /// Parses a name case-insensitively ("Q4_K_M", "int4" = q4_k_m, "int8" = q8_0).
    pub fn parse(s: &str) -> Option<Quant> {
        let l = s.trim().to_ascii_lowercase().replace('-', "_");
        let q = match l.as_str() {
            "int4" => Quant::Q4_K_M,
            "int8" => Quant::Q8_0,
            "fp16" => Quant::F16,
            "q4_k" => Quant::Q4_K_M,
            "q5_k" => Quant::Q5_K_M,
            "q3_k" => Quant::Q3_K_M,
            _ => *Self::BY_QUALITY.iter().find(|q| q.name() == l)?,
        };
        Some(q)
    }

    /// Names accepted by `parse`, for error messages.
    pub fn all_names() -> String {
        Self::BY_QUALITY.iter().map(|q| q.name()).collect::<Vec<_>>().join(", ")
    }

    /// Where this quantization is published: a GGUF file or a safetensors release.
    pub fn layout(self) -> Layout {
        match self {
            Quant::Bf16 | Quant::Fp8 | Quant::Mxfp4 => Layout::Safetensors,
            _ => Layout::Gguf,
        }
    }

    /// llama.cpp's default type for the ftype, if this is a GGUF recipe.
    fn gguf_base(self) -> Option<WType> {
        Some(match self {
            Quant::F16 => WType::F16,
            Quant::Q8_0 => WType::Q8_0,
            Quant::Q6_K => WType::Q6_K,
            Quant::Q5_K_M => WType::Q5_K,
            Quant::Q4_K_M => WType::Q4_K,
            Quant::Q3_K_M => WType::Q3_K,
            Quant::Q2_K => WType::Q2_K,
            _ => return None,
        })
    }

    /// The storage type of one tensor under this quantization.
    pub fn type_for(self, t: &TensorDesc, arch: &Architecture) -> WType {
        match self.gguf_base() {
            Some(base) => gguf_type(self, base, t, arch),
            None => release_type(self, t),
        }
    }
}

impl std::fmt::Display for Quant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn is_router_or_vector(t: &TensorDesc) -> bool {
    t.dims.len() < 2 || t.name.contains("ffn_gate_inp") || t.name.ends_with(".bias")
}

/// Safetensors releases: BF16 everywhere; FP8 for linear weights (DeepSeek format) with
/// embeddings, head, norms and router in BF16; MXFP4 for gpt-oss experts.
fn release_type(q: Quant, t: &TensorDesc) -> WType {
    if t.name.contains("exp_probs_b") {
        return WType::F32; // e_score_correction_bias is stored fp32 in the releases
    }
    if is_router_or_vector(t) {
        return WType::BF16;
    }
    let linear = matches!(
        t.component,
        Component::Attention | Component::DenseFfn | Component::SharedExperts | Component::RoutedExperts
    );
    match q {
        Quant::Fp8 if linear => WType::FP8,
        Quant::Mxfp4 if t.component == Component::RoutedExperts => WType::MXFP4,
        _ => WType::BF16,
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of layers and every third between.
fn use_more_bits(i: i64, n: i64) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The type llama-quant.cpp picks for one tensor (Q*_K_M / Q2_K / Q8_0 / F16 branches),
/// then the fallback when the row length is not a whole number of blocks.
fn gguf_type(q: Quant, base: WType, t: &TensorDesc, arch: &Architecture) -> WType {
    if t.dims.len() < 2 || t.name.contains("ffn_gate_inp") {
        return WType::F32; // 1-D tensors and the router are never quantized
    }
    let n_layer = arch.num_layers as i64;
    let i = t.layer.unwrap_or(0) as i64;
    let eight_experts = arch.num_experts == 8;
    let name = t.name.as_str();
    let mut ty = base;
    if name == "output.weight" {
        let bs = base.block_size();
        ty = if !t.dims[0].is_multiple_of(bs) {
            WType::Q8_0
        } else if base != WType::Q8_0 && base != WType::F16 {
            WType::Q6_K
        } else {
            base
        };
    } else if name == "token_embd.weight" {
        ty = base;
    } else if name.contains("attn_v.weight") {
        ty = match q {
            Quant::Q2_K if arch.num_heads / arch.num_kv_heads.max(1) >= 4 => WType::Q4_K,
            Quant::Q2_K => WType::Q3_K,
            Quant::Q3_K_M if i < 2 => WType::Q5_K,
            Quant::Q3_K_M => WType::Q4_K,
            Quant::Q4_K_M | Quant::Q5_K_M if use_more_bits(i, n_layer) => WType::Q6_K,
            _ => base,
        };
        if eight_experts && base != WType::F16 {
            ty = WType::Q8_0;
        }
    } else if name.contains("attn_k.weight") && eight_experts && base != WType::F16 {
        ty = WType::Q8_0;
    } else if name.contains("ffn_down") {
        ty = match q {
            Quant::Q2_K => WType::Q3_K,
            Quant::Q3_K_M if i < n_layer / 16 => WType::Q5_K,
            Quant::Q3_K_M => WType::Q4_K,
            Quant::Q4_K_M | Quant::Q5_K_M if use_more_bits(i, n_layer) => WType::Q6_K,
            _ => base,
        };
    } else if name.contains("attn_output.weight") {
        let k_mix = matches!(q, Quant::Q2_K | Quant::Q3_K_M | Quant::Q4_K_M);
        ty = match q {
            _ if eight_experts && k_mix => WType::Q5_K,
            Quant::Q2_K => WType::Q3_K,
            Quant::Q3_K_M => WType::Q4_K,
            _ => base,
        };
    }
    let row = t.dims[0];
    if !ty.fits_row(row) {
        ty = ty.row_fallback();
        if !ty.fits_row(row) {
            ty = WType::F16;
        }
    }
    ty
}

/// Builds the spec of an architecture at a quantization by pricing every tensor.
pub fn spec_from_architecture(
    name: &str,
    family: &str,
    arch: &Architecture,
    quant: Quant,
    source: &str,
) -> Result<ModelSpec, PlanError> {
    arch.validate().map_err(|e| PlanError::InvalidModel(format!("{name}: {e}")))?;
    let layout = quant.layout();
    let mut spec = ModelSpec::new(name, source, quant.name(), family, arch.clone(), false);
    for t in arch.tensors(layout) {
        let ty = quant.type_for(&t, arch);
        let bytes = price(&t, ty, name)?;
        spec.add_tensor(t.component, t.layer, ty.name(), t.n_elements(), bytes);
    }
    // Releases in safetensors ship the MTP layer(s); GGUF conversions leave them out.
    if layout == Layout::Safetensors && arch.mtp_layers > 0 {
        let mut mtp = 0u64;
        for t in arch.mtp_layer_tensors(layout) {
            mtp += price(&t, quant.type_for(&t, arch), name)?;
        }
        spec.excluded.push(Excluded {
            what: format!(
                "{} multi-token-prediction layer(s): in the download, not loaded (hy does not use MTP)",
                arch.mtp_layers
            ),
            bytes: mtp * arch.mtp_layers,
        });
    }
    Ok(spec)
}

fn price(t: &TensorDesc, ty: WType, model: &str) -> Result<u64, PlanError> {
    ty.bytes_for_dims(&t.dims).ok_or_else(|| {
        PlanError::InvalidModel(format!(
            "{model}: tensor {} with rows of {} cannot be stored as {ty}",
            t.name, t.dims[0]
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::tests::deepseek_v3;

    const GB: f64 = 1e9;

    #[test]
    fn use_more_bits_matches_llama_cpp_for_61_layers() {
        let picked: Vec<i64> = (0..61).filter(|i| use_more_bits(*i, 61)).collect();
        assert_eq!(picked.len(), 30);
        assert_eq!(&picked[..8], &[0, 1, 2, 3, 4, 5, 6, 9]);
        assert!(picked.contains(&53) && picked.contains(&60) && !picked.contains(&52));
    }

    #[test]
    fn deepseek_q4_k_m_is_within_2_percent_of_the_real_file() {
        let s = spec_from_architecture("deepseek-r1", "deepseek", &deepseek_v3(), Quant::Q4_K_M, "t").unwrap();
        let gb = s.total_bytes() as f64 / GB;
        assert!((gb - 404.3).abs() / 404.3 < 0.02, "{gb}");
        // Hand-computed routed-expert bytes: gate+up Q4_K in 58 layers, down Q6_K in the 27
        // MoE layers use_more_bits picks and Q4_K in the other 31.
        let per = 7168u64 * 2048 * 256;
        let want = 58 * 2 * per / 256 * 144 + 27 * per / 256 * 210 + 31 * per / 256 * 144;
        assert_eq!(s.bytes(Component::RoutedExperts), want);
        assert!(s.excluded.is_empty());
    }

    #[test]
    fn deepseek_fp8_matches_the_release_minus_mtp() {
        let s = spec_from_architecture("deepseek-r1", "deepseek", &deepseek_v3(), Quant::Fp8, "t").unwrap();
        let main = s.total_bytes() as f64;
        let mtp = s.excluded[0].bytes as f64;
        // The release is 688.6 GB including the MTP layer.
        assert!(((main + mtp) / GB - 688.6).abs() / 688.6 < 0.005, "{}", (main + mtp) / GB);
        assert!((main / GB - (688.6 - mtp / GB)).abs() / 688.6 < 0.02);
        // Embeddings stay BF16.
        assert_eq!(s.bytes(Component::Embeddings), 7168 * 129280 * 2);
    }

    #[test]
    fn parse_accepts_aliases() {
        assert_eq!(Quant::parse("Q4_K_M"), Some(Quant::Q4_K_M));
        assert_eq!(Quant::parse("int4"), Some(Quant::Q4_K_M));
        assert_eq!(Quant::parse("FP8"), Some(Quant::Fp8));
        assert_eq!(Quant::parse("q9"), None);
    }
}
