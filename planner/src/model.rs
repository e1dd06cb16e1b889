//! `ModelSpec`: a model's architecture plus the exact bytes of each component class at one
//! quantization. Built from the catalog (shapes × bits per weight of each type a recipe
//! uses) or from a file's tensor list (sizes summed as stored).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::arch::Architecture;

/// Classes of weights the planner places and quantizes separately.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    RoutedExperts,
    SharedExperts,
    Attention,
    DenseFfn,
    Embeddings,
    LmHead,
    /// Norms, router weights and biases, attention sinks.
    Other,
}

impl Component {
    pub const ALL: [Component; 7] = [
        Component::RoutedExperts,
        Component::SharedExperts,
        Component::Attention,
        Component::DenseFfn,
        Component::Embeddings,
        Component::LmHead,
        Component::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Component::RoutedExperts => "routed_experts",
            Component::SharedExperts => "shared_experts",
            Component::Attention => "attention",
            Component::DenseFfn => "dense_ffn",
            Component::Embeddings => "embeddings",
            Component::LmHead => "lm_head",
            Component::Other => "norms_router_other",
        }
    }
}

/// Bytes, parameter count and storage types of one component class.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ComponentBytes {
    pub bytes: u64,
    pub params: u64,
    /// Storage type name → bytes stored in it, e.g. {"Q4_K": .., "Q6_K": ..}.
    pub types: BTreeMap<String, u64>,
}

impl ComponentBytes {
    /// The type holding most of the bytes, with the bits per weight over the whole class.
    pub fn summary(&self) -> String {
        let main = self.types.iter().max_by_key(|(_, b)| **b).map(|(t, _)| t.as_str()).unwrap_or("-");
        let bpw = if self.params > 0 { self.bytes as f64 * 8.0 / self.params as f64 } else { 0.0 };
        if self.types.len() > 1 {
            format!("{main}+{} ({bpw:.2} bpw)", self.types.len() - 1)
        } else {
            format!("{main} ({bpw:.2} bpw)")
        }
    }
}

/// Something a release ships that the plan leaves out (DeepSeek's MTP layer).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Excluded {
    pub what: String,
    pub bytes: u64,
}

/// A model at one quantization, with exact bytes per component class.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Catalog name or file name.
    pub name: String,
    /// Where the numbers come from: "catalog", "gguf <path>", "safetensors <path>", "config <path>".
    pub source: String,
    /// Quantization label ("q4_k_m", "fp8", or a GGUF file's type).
    pub quant: String,
    /// Model family for profile defaults ("deepseek", "qwen3_moe", ...).
    pub family: String,
    pub arch: Architecture,
    /// True when bytes were summed from a file's tensors, false when computed from shapes.
    pub exact: bool,
    pub components: BTreeMap<Component, ComponentBytes>,
    /// Routed-expert bytes of each MoE layer, in layer order: (layer, bytes).
    pub routed_layers: Vec<(u32, u64)>,
    #[serde(default)]
    pub excluded: Vec<Excluded>,
    /// Bytes of each layer's attention path (everything of the layer but routed experts), in
    /// layer order: (layer, bytes). Lets a plan give the GPU whole layers when not all fit.
    #[serde(default)]
    pub layer_path: Vec<(u32, u64)>,
}

impl ModelSpec {
    /// An empty spec to add tensors to.
    pub fn new(name: &str, source: &str, quant: &str, family: &str, arch: Architecture, exact: bool) -> Self {
        ModelSpec {
            name: name.to_string(),
            source: source.to_string(),
            quant: quant.to_string(),
            family: family.to_string(),
            arch,
            exact,
            components: BTreeMap::new(),
            routed_layers: Vec::new(),
            excluded: Vec::new(),
            layer_path: Vec::new(),
        }
    }

    /// Adds one tensor's bytes to its component (and to its layer's routed total).
    pub fn add_tensor(&mut self, component: Component, layer: Option<u32>, type_name: &str, params: u64, bytes: u64) {
        let c = self.components.entry(component).or_default();
        c.bytes += bytes;
        c.params += params;
        *c.types.entry(type_name.to_string()).or_default() += bytes;
        let per_layer = match (component, layer) {
            (Component::RoutedExperts, l) => Some((&mut self.routed_layers, l.unwrap_or(0))),
            (Component::Embeddings | Component::LmHead, _) | (_, None) => None,
            (_, Some(l)) => Some((&mut self.layer_path, l)),
        };
        if let Some((list, l)) = per_layer {
            match list.iter_mut().find(|(x, _)| *x == l) {
                Some((_, b)) => *b += bytes,
                None => {
                    list.push((l, bytes));
                    list.sort_by_key(|(x, _)| *x);
                }
            }
        }
    }

    pub fn bytes(&self, c: Component) -> u64 {
        self.components.get(&c).map(|x| x.bytes).unwrap_or(0)
    }

    pub fn params(&self, c: Component) -> u64 {
        self.components.get(&c).map(|x| x.params).unwrap_or(0)
    }

    /// All weight bytes of the plan (excluded parts not counted).
    pub fn total_bytes(&self) -> u64 {
        self.components.values().map(|c| c.bytes).sum()
    }

    pub fn total_params(&self) -> u64 {
        self.components.values().map(|c| c.params).sum()
    }

    /// Average bytes of one routed expert (gate+up+down) in MoE layer `idx` of `routed_layers`.
    pub fn expert_bytes(&self, idx: usize) -> f64 {
        let e = self.arch.num_experts.max(1) as f64;
        self.routed_layers.get(idx).map(|(_, b)| *b as f64 / e).unwrap_or(0.0)
    }

    /// Parameters read per token: everything but the routed experts, plus k of E experts,
    /// minus the embedding table (one row is read).
    pub fn active_params(&self) -> f64 {
        let routed = self.params(Component::RoutedExperts) as f64;
        let frac = if self.arch.num_experts > 0 {
            self.arch.experts_per_token as f64 / self.arch.num_experts as f64
        } else {
            0.0
        };
        self.total_params() as f64 - routed - self.params(Component::Embeddings) as f64 + routed * frac
    }
}

/// Component class and layer of a GGUF tensor name ("blk.7.ffn_up_exps.weight").
/// `None` for tensors of MTP ("nextn") layers, which plans leave out.
pub fn classify_gguf(name: &str) -> Option<(Component, Option<u32>)> {
    let (layer, rest) = match name.strip_prefix("blk.") {
        Some(r) => {
            let (num, rest) = r.split_once('.').unwrap_or((r, ""));
            (num.parse::<u32>().ok(), rest)
        }
        None => (None, name),
    };
    if rest.starts_with("nextn.") {
        return None;
    }
    let base = rest.split('.').next().unwrap_or(rest);
    let c = match base {
        "token_embd" | "per_layer_token_embd" => Component::Embeddings,
        "output" => Component::LmHead,
        b if b.ends_with("_exps") => Component::RoutedExperts,
        b if b.ends_with("_shexp") => Component::SharedExperts,
        "ffn_gate" | "ffn_up" | "ffn_down" => Component::DenseFfn,
        b if b.ends_with("norm") || b == "ffn_gate_inp" || b == "exp_probs_b" || b == "attn_sinks" => Component::Other,
        b if b.starts_with("attn_") => {
            if rest.ends_with(".bias") {
                Component::Other
            } else {
                Component::Attention
            }
        }
        _ => Component::Other,
    };
    Some((c, layer))
}

/// Component class and layer of an HF safetensors tensor name
/// ("model.layers.3.mlp.experts.17.down_proj.weight_scale_inv"). Layers at or past
/// `num_layers` are MTP layers and return `None`.
pub fn classify_hf(name: &str, num_layers: u64) -> Option<(Component, Option<u32>)> {
    if name.starts_with("lm_head.") {
        return Some((Component::LmHead, None));
    }
    let Some(r) = name.strip_prefix("model.layers.") else {
        let c = if name.contains("embed_tokens") { Component::Embeddings } else { Component::Other };
        return Some((c, None));
    };
    let (num, rest) = r.split_once('.').unwrap_or((r, ""));
    let layer = num.parse::<u32>().ok();
    if layer.is_some_and(|l| l as u64 >= num_layers) {
        return None;
    }
    let c = if rest.contains("norm") || (rest.ends_with(".bias") && !rest.contains("experts")) {
        Component::Other
    } else if rest.starts_with("mlp.experts.") || rest.starts_with("block_sparse_moe.experts.") {
        Component::RoutedExperts
    } else if rest.starts_with("mlp.shared_expert") {
        Component::SharedExperts
    } else if rest.starts_with("mlp.gate.") || rest.starts_with("mlp.router.") || rest.contains("sinks") {
        Component::Other
    } else if rest.starts_with("mlp.") {
        Component::DenseFfn
    } else if rest.starts_with("self_attn.") {
        Component::Attention
    } else {
        Component::Other
    };
    Some((c, layer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_classes() {
        let cases = [
            ("token_embd.weight", Component::Embeddings, None),
            ("output.weight", Component::LmHead, None),
            ("output_norm.weight", Component::Other, None),
            ("blk.4.ffn_down_exps.weight", Component::RoutedExperts, Some(4)),
            ("blk.4.ffn_up_shexp.weight", Component::SharedExperts, Some(4)),
            ("blk.0.ffn_gate.weight", Component::DenseFfn, Some(0)),
            ("blk.9.ffn_gate_inp.weight", Component::Other, Some(9)),
            ("blk.9.exp_probs_b.bias", Component::Other, Some(9)),
            ("blk.2.attn_kv_a_mqa.weight", Component::Attention, Some(2)),
            ("blk.2.attn_kv_a_norm.weight", Component::Other, Some(2)),
            ("blk.2.attn_q.bias", Component::Other, Some(2)),
            ("blk.2.attn_k_b.weight", Component::Attention, Some(2)),
        ];
        for (n, c, l) in cases {
            assert_eq!(classify_gguf(n), Some((c, l)), "{n}");
        }
        assert_eq!(classify_gguf("blk.92.nextn.eh_proj.weight"), None);
    }

    #[test]
    fn hf_names_map_to_classes() {
        let cases = [
            ("model.embed_tokens.weight", Component::Embeddings, None),
            ("lm_head.weight", Component::LmHead, None),
            ("model.norm.weight", Component::Other, None),
            ("model.layers.3.mlp.experts.17.down_proj.weight", Component::RoutedExperts, Some(3)),
            ("model.layers.3.mlp.experts.17.down_proj.weight_scale_inv", Component::RoutedExperts, Some(3)),
            ("model.layers.3.mlp.shared_experts.up_proj.weight", Component::SharedExperts, Some(3)),
            ("model.layers.3.mlp.gate.weight", Component::Other, Some(3)),
            ("model.layers.3.mlp.gate.e_score_correction_bias", Component::Other, Some(3)),
            ("model.layers.0.mlp.down_proj.weight", Component::DenseFfn, Some(0)),
            ("model.layers.0.self_attn.kv_b_proj.weight", Component::Attention, Some(0)),
            ("model.layers.0.self_attn.kv_a_layernorm.weight", Component::Other, Some(0)),
            ("model.layers.0.input_layernorm.weight", Component::Other, Some(0)),
        ];
        for (n, c, l) in cases {
            assert_eq!(classify_hf(n, 61), Some((c, l)), "{n}");
        }
        assert_eq!(classify_hf("model.layers.61.eh_proj.weight", 61), None);
    }

    #[test]
    fn add_tensor_sums_per_class_and_layer() {
        let mut m = ModelSpec::new("t", "test", "x", "f", crate::arch::tests::deepseek_v3(), true);
        m.add_tensor(Component::RoutedExperts, Some(5), "Q4_K", 512, 288);
        m.add_tensor(Component::RoutedExperts, Some(3), "Q6_K", 256, 210);
        m.add_tensor(Component::RoutedExperts, Some(5), "Q6_K", 256, 210);
        m.add_tensor(Component::Attention, Some(3), "Q4_K", 256, 144);
        assert_eq!(m.bytes(Component::RoutedExperts), 708);
        assert_eq!(m.routed_layers, vec![(3, 210), (5, 498)]);
        assert_eq!(m.total_bytes(), 852);
        assert_eq!(m.components[&Component::RoutedExperts].types["Q6_K"], 420);
    }
}
