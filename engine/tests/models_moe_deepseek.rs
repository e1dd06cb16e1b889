//! tiny-deepseek-v3 (MLA + sigmoid group-limited MoE) against the fixture references, in
//! every form present: HF BF16, HF FP8 (DeepSeek block format), GGUF Q8_0 / Q4_K_M (split
//! `attn_k_b`/`attn_v_b`), and GGUF F16 where the fixture copy has it.

mod models_moe_support;
use models_moe_support::*;

const MODEL: &str = "tiny-deepseek-v3";

#[test]
fn logits_and_greedy_match_references() {
    // hf, hf-fp8, gguf-Q8_0, gguf-Q4_K_M are in the repository copy.
    assert!(check_logits_and_greedy(MODEL) >= 4);
}

#[test]
fn forward_batch_equals_per_sequence() {
    let ps = prompts(MODEL);
    check_forward_batch(&source_path(MODEL, "hf").unwrap(), &ps);
    check_forward_batch(&source_path(MODEL, "gguf-Q4_K_M").unwrap(), &ps);
}

#[test]
fn bad_inputs_are_errors() {
    check_errors(&source_path(MODEL, "hf-fp8").unwrap());
}

/// Token-by-token decoding through the latent cache reproduces the reference's full-prompt
/// logits at every position (f32 cache), and an f16 cache stays close.
#[test]
fn decode_through_cache_matches_prefill_reference() {
    use hy_engine::models::common::KvDtype;
    use hy_engine::models::hf::HfConfig;
    use hy_engine::models::{deepseek2, Logits};
    let dir = source_path(MODEL, "hf").unwrap();
    let cfg = HfConfig::load(&dir).unwrap();
    let exact = load(&dir);
    let half = deepseek2::load_hf(&dir, &cfg, KvDtype::F16).unwrap();
    let p = &prompts(MODEL)[2];
    let want = ref_logits(MODEL, "hf", 2);
    let vocab = want.len() / p.len();
    let mut a = exact.new_state(64);
    let mut b = half.new_state(64);
    for (t, &tok) in p.iter().enumerate() {
        let la = exact.forward(&mut a, &[tok], Logits::Last).unwrap();
        let lb = half.forward(&mut b, &[tok], Logits::Last).unwrap();
        let d = max_abs_diff(&la, &want[t * vocab..(t + 1) * vocab]);
        assert!(d <= FLOAT_TOL, "position {t}: decode vs reference {d}");
        // f16 keeps 11 significant bits (≈5e-4 relative) of latents of size O(1).
        let d16 = max_abs_diff(&la, &lb);
        assert!(d16 < 5e-2, "position {t}: f16 latent cache moved logits by {d16}");
    }
}

/// The older GGUF layout with one `attn_kv_b` per layer (before llama.cpp split it into
/// `attn_k_b`/`attn_v_b`): rebuilt here from the split tensors of the Q8_0 file, as the
/// converter's inverse (per head `concat(attn_k_bᵀ, attn_v_b)`), it must give the same logits.
#[test]
fn unsplit_attn_kv_b_layout_gives_the_same_logits() {
    use std::sync::Arc;

    use hy_engine::dtype::GgmlType;
    use hy_engine::formats::{GgufFile, TensorBytes};
    use hy_engine::kernels::{self, Precision, WeightType};
    use hy_engine::models::common::KvDtype;
    use hy_engine::models::deepseek2::{Deepseek2, DeepseekConfig};
    use hy_engine::models::weights::{GgufSource, Weight, WeightSource};
    use hy_engine::models::{Logits, Model, ModelError};

    struct Unsplit {
        inner: GgufSource,
        cfg: DeepseekConfig,
    }

    impl WeightSource for Unsplit {
        fn weight(&self, name: &str) -> Result<Option<Weight>, ModelError> {
            if name.ends_with(".attn_k_b.weight") || name.ends_with(".attn_v_b.weight") {
                return Ok(None);
            }
            let Some(prefix) = name.strip_suffix(".attn_kv_b.weight") else {
                return self.inner.weight(name);
            };
            let c = &self.cfg;
            let (nh, nope, vh, lora) = (c.n_heads, c.qk_nope, c.v_head, c.kv_lora_rank);
            let kb = self.inner.weight(&format!("{prefix}.attn_k_b.weight"))?.unwrap().to_f32()?;
            let vb = self.inner.weight(&format!("{prefix}.attn_v_b.weight"))?.unwrap().to_f32()?;
            let mut kv = vec![0.0f32; nh * (nope + vh) * lora];
            for h in 0..nh {
                for j in 0..lora {
                    for i in 0..nope {
                        kv[(h * (nope + vh) + i) * lora + j] = kb[(h * lora + j) * nope + i];
                    }
                }
                for i in 0..vh {
                    let dst = (h * (nope + vh) + nope + i) * lora;
                    kv[dst..dst + lora].copy_from_slice(&vb[(h * vh + i) * lora..][..lora]);
                }
            }
            let bytes = TensorBytes::Owned(Arc::new(kv.iter().flat_map(|v| v.to_le_bytes()).collect()));
            Weight::new(name, bytes, WeightType::Ggml(GgmlType::F32), nh * (nope + vh), lora).map(Some)
        }

        fn describe(&self) -> String {
            self.inner.describe()
        }
    }

    kernels::set_precision(Precision::Exact);
    let file = Arc::new(GgufFile::open(&source_path(MODEL, "gguf-Q8_0").unwrap()).unwrap());
    let cfg = DeepseekConfig::from_gguf(&file).unwrap();
    let src = Unsplit { inner: GgufSource::new(file), cfg: cfg.clone() };
    let m = Deepseek2::load(cfg, &src, KvDtype::F32).unwrap();
    for (i, p) in prompts(MODEL).iter().enumerate() {
        let mut st = m.new_state(64);
        let got = m.forward(&mut st, p, Logits::All).unwrap();
        let d = max_abs_diff(&got, &ref_logits(MODEL, "hf-dequant-gguf-Q8_0", i));
        assert!(d <= FLOAT_TOL, "prompt {i}: {d}");
    }
}
