//! Architecture values of a transformer and the list of weight tensors they imply.
//!
//! The tensor list uses GGUF names and ggml dimension order (dims[0] = row length), which
//! lets one list serve both the GGUF quantization recipes (llama.cpp picks types by name)
//! and the safetensors release formats (which price the same shapes differently).

use serde::{Deserialize, Serialize};

use crate::model::Component;

/// Which tensor layout a family uses.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ArchKind {
    /// DeepSeek-V3/R1, Kimi-K2: MLA attention, leading dense layers, routed + shared experts.
    DeepseekV3,
    /// Qwen3 MoE: GQA with QK-norm, every layer MoE, no shared expert.
    Qwen3Moe,
    /// GLM-4.5: GQA with QKV bias, leading dense layers, routed + shared experts.
    Glm4Moe,
    /// gpt-oss: GQA with biases and attention sinks, alternating sliding-window layers.
    GptOss,
    /// A dense Llama-style model (no experts).
    Llama,
}

/// Multi-head latent attention dimensions (DeepSeek).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mla {
    /// 0 when queries are not low-rank (DeepSeek-V2-Lite).
    pub q_lora_rank: u64,
    pub kv_lora_rank: u64,
    pub qk_nope_head_dim: u64,
    pub qk_rope_head_dim: u64,
    pub v_head_dim: u64,
}

/// The architecture values the planner needs, as in the model's config.json.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    pub kind: ArchKind,
    pub hidden_size: u64,
    pub num_layers: u64,
    pub vocab_size: u64,
    pub num_heads: u64,
    pub num_kv_heads: u64,
    /// Per-head dimension for GQA attention (ignored with MLA).
    #[serde(default)]
    pub head_dim: u64,
    /// Dense FFN width (leading dense layers, or every layer of a dense model).
    #[serde(default)]
    pub intermediate_size: u64,
    /// Number of leading layers with a dense FFN instead of experts.
    #[serde(default)]
    pub first_dense_layers: u64,
    #[serde(default)]
    pub num_experts: u64,
    #[serde(default)]
    pub experts_per_token: u64,
    #[serde(default)]
    pub moe_intermediate_size: u64,
    #[serde(default)]
    pub num_shared_experts: u64,
    #[serde(default)]
    pub mla: Option<Mla>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Sliding-window size for the windowed layers (gpt-oss: 128), if any.
    #[serde(default)]
    pub sliding_window: Option<u64>,
    /// Longest context the model supports.
    pub max_context: u64,
    /// Multi-token-prediction layers shipped in the release (DeepSeek: 1). Excluded from plans.
    #[serde(default)]
    pub mtp_layers: u64,
}

/// Which file layout the tensor list follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// llama.cpp names; DeepSeek's kv_b is split into attn_k_b / attn_v_b.
    Gguf,
    /// The HF release: kv_b is one matrix.
    Safetensors,
}

/// One weight tensor implied by the architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDesc {
    /// GGUF-style name, e.g. "blk.3.ffn_down_exps.weight".
    pub name: String,
    /// ggml order: dims[0] is the row length.
    pub dims: Vec<u64>,
    pub component: Component,
    pub layer: Option<u32>,
}

impl TensorDesc {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

impl Architecture {
    /// Whether layer `l` has routed experts.
    pub fn is_moe_layer(&self, l: u64) -> bool {
        self.num_experts > 1 && l >= self.first_dense_layers
    }

    pub fn moe_layers(&self) -> u64 {
        if self.num_experts > 1 {
            self.num_layers.saturating_sub(self.first_dense_layers)
        } else {
            0
        }
    }

    /// Whether layer `l` uses the sliding window (gpt-oss: even layers).
    pub fn is_sliding_layer(&self, l: u64) -> bool {
        self.sliding_window.is_some() && l.is_multiple_of(2)
    }

    /// Layers whose KV cache grows with the context.
    pub fn full_attention_layers(&self) -> u64 {
        (0..self.num_layers).filter(|l| !self.is_sliding_layer(*l)).count() as u64
    }

    /// 16-bit KV-cache bytes per token of context: the MLA latent (kv_lora + rope) per layer,
    /// or K and V of every KV head per full-attention layer.
    pub fn kv_bytes_per_token(&self) -> u64 {
        match &self.mla {
            Some(m) => (m.kv_lora_rank + m.qk_rope_head_dim) * 2 * self.num_layers,
            None => 2 * self.num_kv_heads * self.head_dim * 2 * self.full_attention_layers(),
        }
    }

    /// KV bytes per sequence that do not grow with the context (sliding-window layers).
    pub fn kv_fixed_bytes_per_sequence(&self) -> u64 {
        let window = self.sliding_window.unwrap_or(0);
        let sliding = self.num_layers - self.full_attention_layers();
        sliding * window * 2 * self.num_kv_heads * self.head_dim * 2
    }

    /// Query-key and value widths per head (for attention FLOPs).
    pub fn attention_dims(&self) -> (u64, u64) {
        match &self.mla {
            Some(m) => (m.qk_nope_head_dim + m.qk_rope_head_dim, m.v_head_dim),
            None => (self.head_dim, self.head_dim),
        }
    }

    /// Checks every dimension is within what any real model uses, so that sizes computed
    /// from them cannot overflow (a corrupt file or config must not panic the planner).
    pub fn check_bounds(&self) -> Result<(), String> {
        let mla = self.mla.clone().unwrap_or(Mla {
            q_lora_rank: 0,
            kv_lora_rank: 0,
            qk_nope_head_dim: 0,
            qk_rope_head_dim: 0,
            v_head_dim: 0,
        });
        let limits = [
            ("hidden_size", self.hidden_size, 1u64 << 20),
            ("num_layers", self.num_layers, 1 << 12),
            ("vocab_size", self.vocab_size, 1 << 24),
            ("num_heads", self.num_heads, 1 << 14),
            ("num_kv_heads", self.num_kv_heads, 1 << 14),
            ("head_dim", self.head_dim, 1 << 14),
            ("intermediate_size", self.intermediate_size, 1 << 22),
            ("first_dense_layers", self.first_dense_layers, 1 << 12),
            ("num_experts", self.num_experts, 1 << 16),
            ("experts_per_token", self.experts_per_token, 1 << 16),
            ("moe_intermediate_size", self.moe_intermediate_size, 1 << 22),
            ("num_shared_experts", self.num_shared_experts, 1 << 8),
            ("max_context", self.max_context, 1 << 32),
            ("sliding_window", self.sliding_window.unwrap_or(0), 1 << 32),
            ("mtp_layers", self.mtp_layers, 1 << 8),
            ("q_lora_rank", mla.q_lora_rank, 1 << 16),
            ("kv_lora_rank", mla.kv_lora_rank, 1 << 16),
            ("qk_nope_head_dim", mla.qk_nope_head_dim, 1 << 16),
            ("qk_rope_head_dim", mla.qk_rope_head_dim, 1 << 16),
            ("v_head_dim", mla.v_head_dim, 1 << 16),
        ];
        for (k, v, max) in limits {
            if v > max {
                return Err(format!("{k} = {v} is larger than any model uses (at most {max})"));
            }
        }
        Ok(())
    }

    /// Checks the values make a model; returns what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        self.check_bounds()?;
        let need = [
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
            ("vocab_size", self.vocab_size),
            ("num_heads", self.num_heads),
            ("max_context", self.max_context),
        ];
        for (k, v) in need {
            if v == 0 {
                return Err(format!("{k} must be greater than 0"));
            }
        }
        if self.mla.is_none() && (self.head_dim == 0 || self.num_kv_heads == 0) {
            return Err("head_dim and num_kv_heads must be greater than 0 without MLA".into());
        }
        if self.num_experts > 1 {
            if self.experts_per_token == 0 || self.experts_per_token > self.num_experts {
                return Err(format!("experts_per_token must be between 1 and num_experts ({})", self.num_experts));
            }
            if self.moe_intermediate_size == 0 {
                return Err("moe_intermediate_size must be greater than 0 with experts".into());
            }
        }
        if self.first_dense_layers > self.num_layers {
            return Err("first_dense_layers exceeds num_layers".into());
        }
        if (self.first_dense_layers > 0 || self.num_experts <= 1) && self.intermediate_size == 0 {
            return Err("intermediate_size must be greater than 0 for dense FFN layers".into());
        }
        Ok(())
    }

    /// Every weight tensor of the main model (MTP layers excluded) in `layout`.
    pub fn tensors(&self, layout: Layout) -> Vec<TensorDesc> {
        let mut out = Vec::new();
        let h = self.hidden_size;
        let mut push = |name: String, dims: Vec<u64>, c: Component, layer: Option<u32>| {
            out.push(TensorDesc { name, dims, component: c, layer })
        };
        push("token_embd.weight".into(), vec![h, self.vocab_size], Component::Embeddings, None);
        push("output_norm.weight".into(), vec![h], Component::Other, None);
        if !self.tie_word_embeddings {
            push("output.weight".into(), vec![h, self.vocab_size], Component::LmHead, None);
        }
        for l in 0..self.num_layers {
            self.layer_tensors(l, layout, &mut push);
        }
        out
    }

    /// Tensors of one extra MTP layer (as in DeepSeek's release), for reporting what is excluded.
    pub fn mtp_layer_tensors(&self, layout: Layout) -> Vec<TensorDesc> {
        let mut out = Vec::new();
        let h = self.hidden_size;
        let l = self.num_layers;
        let mut push = |name: String, dims: Vec<u64>, c: Component, layer: Option<u32>| {
            out.push(TensorDesc { name, dims, component: c, layer })
        };
        self.layer_tensors(l, layout, &mut push);
        // eh_proj, enorm, hnorm, and the release's own copies of embeddings and head.
        push(format!("blk.{l}.nextn.eh_proj.weight"), vec![2 * h, h], Component::Attention, Some(l as u32));
        push(format!("blk.{l}.nextn.enorm.weight"), vec![h], Component::Other, Some(l as u32));
        push(format!("blk.{l}.nextn.hnorm.weight"), vec![h], Component::Other, Some(l as u32));
        push(
            format!("blk.{l}.nextn.embed_tokens.weight"),
            vec![h, self.vocab_size],
            Component::Embeddings,
            Some(l as u32),
        );
        push(
            format!("blk.{l}.nextn.shared_head_head.weight"),
            vec![h, self.vocab_size],
            Component::LmHead,
            Some(l as u32),
        );
        push(format!("blk.{l}.nextn.shared_head_norm.weight"), vec![h], Component::Other, Some(l as u32));
        out
    }

    fn layer_tensors(&self, l: u64, layout: Layout, push: &mut impl FnMut(String, Vec<u64>, Component, Option<u32>)) {
        let h = self.hidden_size;
        let li = Some(l as u32);
        let n = |s: &str| format!("blk.{l}.{s}");
        push(n("attn_norm.weight"), vec![h], Component::Other, li);
        push(n("ffn_norm.weight"), vec![h], Component::Other, li);
        match &self.mla {
            Some(m) => self.mla_tensors(m, l, layout, push),
            None => self.gqa_tensors(l, push),
        }
        if !self.is_moe_layer(l) {
            let i = self.intermediate_size;
            push(n("ffn_gate.weight"), vec![h, i], Component::DenseFfn, li);
            push(n("ffn_up.weight"), vec![h, i], Component::DenseFfn, li);
            push(n("ffn_down.weight"), vec![i, h], Component::DenseFfn, li);
            return;
        }
        let (e, mi) = (self.num_experts, self.moe_intermediate_size);
        push(n("ffn_gate_inp.weight"), vec![h, e], Component::Other, li);
        match self.kind {
            ArchKind::DeepseekV3 | ArchKind::Glm4Moe => push(n("exp_probs_b.bias"), vec![e], Component::Other, li),
            ArchKind::GptOss => {
                push(n("ffn_gate_inp.bias"), vec![e], Component::Other, li);
                push(n("ffn_gate_exps.bias"), vec![mi, e], Component::RoutedExperts, li);
                push(n("ffn_up_exps.bias"), vec![mi, e], Component::RoutedExperts, li);
                push(n("ffn_down_exps.bias"), vec![h, e], Component::RoutedExperts, li);
            }
            _ => {}
        }
        push(n("ffn_gate_exps.weight"), vec![h, mi, e], Component::RoutedExperts, li);
        push(n("ffn_up_exps.weight"), vec![h, mi, e], Component::RoutedExperts, li);
        push(n("ffn_down_exps.weight"), vec![mi, h, e], Component::RoutedExperts, li);
        if self.num_shared_experts > 0 {
            let si = mi * self.num_shared_experts;
            push(n("ffn_gate_shexp.weight"), vec![h, si], Component::SharedExperts, li);
            push(n("ffn_up_shexp.weight"), vec![h, si], Component::SharedExperts, li);
            push(n("ffn_down_shexp.weight"), vec![si, h], Component::SharedExperts, li);
        }
    }

    fn mla_tensors(
        &self,
        m: &Mla,
        l: u64,
        layout: Layout,
        push: &mut impl FnMut(String, Vec<u64>, Component, Option<u32>),
    ) {
        let (h, heads) = (self.hidden_size, self.num_heads);
        let li = Some(l as u32);
        let n = |s: &str| format!("blk.{l}.{s}");
        let q_out = heads * (m.qk_nope_head_dim + m.qk_rope_head_dim);
        if m.q_lora_rank > 0 {
            push(n("attn_q_a.weight"), vec![h, m.q_lora_rank], Component::Attention, li);
            push(n("attn_q_a_norm.weight"), vec![m.q_lora_rank], Component::Other, li);
            push(n("attn_q_b.weight"), vec![m.q_lora_rank, q_out], Component::Attention, li);
        } else {
            push(n("attn_q.weight"), vec![h, q_out], Component::Attention, li);
        }
        push(n("attn_kv_a_mqa.weight"), vec![h, m.kv_lora_rank + m.qk_rope_head_dim], Component::Attention, li);
        push(n("attn_kv_a_norm.weight"), vec![m.kv_lora_rank], Component::Other, li);
        match layout {
            Layout::Gguf => {
                push(n("attn_k_b.weight"), vec![m.qk_nope_head_dim, m.kv_lora_rank, heads], Component::Attention, li);
                push(n("attn_v_b.weight"), vec![m.kv_lora_rank, m.v_head_dim, heads], Component::Attention, li);
            }
            Layout::Safetensors => push(
                n("attn_kv_b.weight"),
                vec![m.kv_lora_rank, heads * (m.qk_nope_head_dim + m.v_head_dim)],
                Component::Attention,
                li,
            ),
        }
        push(n("attn_output.weight"), vec![heads * m.v_head_dim, h], Component::Attention, li);
    }

    fn gqa_tensors(&self, l: u64, push: &mut impl FnMut(String, Vec<u64>, Component, Option<u32>)) {
        let h = self.hidden_size;
        let (q, kv) = (self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim);
        let li = Some(l as u32);
        let n = |s: &str| format!("blk.{l}.{s}");
        push(n("attn_q.weight"), vec![h, q], Component::Attention, li);
        push(n("attn_k.weight"), vec![h, kv], Component::Attention, li);
        push(n("attn_v.weight"), vec![h, kv], Component::Attention, li);
        push(n("attn_output.weight"), vec![q, h], Component::Attention, li);
        match self.kind {
            ArchKind::Qwen3Moe => {
                push(n("attn_q_norm.weight"), vec![self.head_dim], Component::Other, li);
                push(n("attn_k_norm.weight"), vec![self.head_dim], Component::Other, li);
            }
            ArchKind::Glm4Moe => {
                push(n("attn_q.bias"), vec![q], Component::Other, li);
                push(n("attn_k.bias"), vec![kv], Component::Other, li);
                push(n("attn_v.bias"), vec![kv], Component::Other, li);
            }
            ArchKind::GptOss => {
                push(n("attn_q.bias"), vec![q], Component::Other, li);
                push(n("attn_k.bias"), vec![kv], Component::Other, li);
                push(n("attn_v.bias"), vec![kv], Component::Other, li);
                push(n("attn_output.bias"), vec![h], Component::Other, li);
                push(n("attn_sinks.weight"), vec![self.num_heads], Component::Other, li);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// DeepSeek-V3 values from DESIGN.md.
    pub fn deepseek_v3() -> Architecture {
        Architecture {
            kind: ArchKind::DeepseekV3,
            hidden_size: 7168,
            num_layers: 61,
            vocab_size: 129280,
            num_heads: 128,
            num_kv_heads: 128,
            head_dim: 0,
            intermediate_size: 18432,
            first_dense_layers: 3,
            num_experts: 256,
            experts_per_token: 8,
            moe_intermediate_size: 2048,
            num_shared_experts: 1,
            mla: Some(Mla {
                q_lora_rank: 1536,
                kv_lora_rank: 512,
                qk_nope_head_dim: 128,
                qk_rope_head_dim: 64,
                v_head_dim: 128,
            }),
            tie_word_embeddings: false,
            sliding_window: None,
            max_context: 163840,
            mtp_layers: 1,
        }
    }

    #[test]
    fn deepseek_mla_kv_cache_is_70272_bytes_per_token() {
        assert_eq!(deepseek_v3().kv_bytes_per_token(), 70272);
    }

    #[test]
    fn deepseek_parameter_count_is_671b() {
        let params: u64 = deepseek_v3().tensors(Layout::Safetensors).iter().map(|t| t.n_elements()).sum();
        // 671B main-model parameters (the 685B release adds the 14B MTP layer).
        assert!((670.0e9..672.5e9).contains(&(params as f64)), "{params}");
    }

    #[test]
    fn gqa_kv_cache_counts_k_and_v_of_each_kv_head() {
        let mut a = deepseek_v3();
        a.mla = None;
        a.kind = ArchKind::Qwen3Moe;
        a.num_layers = 94;
        a.num_kv_heads = 4;
        a.head_dim = 128;
        // Qwen3-235B-A22B: 2 (K,V) × 4 heads × 128 × 2 B × 94 layers.
        assert_eq!(a.kv_bytes_per_token(), 192_512);
    }
}
