//! The built-in model catalog: data files under planner/catalog/, embedded at build time.

use serde::{Deserialize, Serialize};

use crate::arch::Architecture;
use crate::model::ModelSpec;
use crate::quant::{spec_from_architecture, Quant};
use crate::PlanError;

const FILES: [(&str, &str); 8] = [
    ("deepseek-v3.toml", include_str!("../catalog/deepseek-v3.toml")),
    ("deepseek-r1.toml", include_str!("../catalog/deepseek-r1.toml")),
    ("kimi-k2.toml", include_str!("../catalog/kimi-k2.toml")),
    ("qwen3-235b-a22b.toml", include_str!("../catalog/qwen3-235b-a22b.toml")),
    ("qwen3-30b-a3b.toml", include_str!("../catalog/qwen3-30b-a3b.toml")),
    ("glm-4.5.toml", include_str!("../catalog/glm-4.5.toml")),
    ("glm-4.5-air.toml", include_str!("../catalog/glm-4.5-air.toml")),
    ("gpt-oss-120b.toml", include_str!("../catalog/gpt-oss-120b.toml")),
];

/// One catalog entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CatalogModel {
    pub name: String,
    pub display_name: String,
    /// Key for a profile's preferred quantization ("deepseek", "qwen3_moe", ...).
    pub family: String,
    pub description: String,
    /// HF repo ids (and short names) that resolve to this entry.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The format the weights are released in.
    pub native_quant: String,
    /// Quantizations that exist for this model (native first).
    pub quants: Vec<String>,
    pub architecture: Architecture,
}

impl CatalogModel {
    /// The quantizations as values; unknown names are rejected by the catalog test.
    pub fn quant_list(&self) -> Vec<Quant> {
        self.quants.iter().filter_map(|q| Quant::parse(q)).collect()
    }

    pub fn native(&self) -> Option<Quant> {
        Quant::parse(&self.native_quant)
    }

    /// The spec at `quant`, with bytes computed from shapes.
    pub fn spec(&self, quant: Quant) -> Result<ModelSpec, PlanError> {
        if !self.quant_list().contains(&quant) {
            return Err(PlanError::UnsupportedQuant {
                model: self.name.clone(),
                quant: quant.name().to_string(),
                available: self.quants.join(", "),
            });
        }
        spec_from_architecture(&self.name, &self.family, &self.architecture, quant, "catalog")
    }
}

/// Every catalog entry, parsed.
pub fn catalog() -> Result<Vec<CatalogModel>, PlanError> {
    FILES
        .iter()
        .map(|(file, text)| {
            toml::from_str::<CatalogModel>(text).map_err(|e| PlanError::InvalidModel(format!("catalog/{file}: {e}")))
        })
        .collect()
}

/// Finds a model by name or alias (case-insensitive; an "hf:" prefix is ignored).
pub fn find(name: &str) -> Result<Option<CatalogModel>, PlanError> {
    let key = name.trim().trim_start_matches("hf:").to_ascii_lowercase();
    Ok(catalog()?.into_iter().find(|m| {
        m.name.eq_ignore_ascii_case(&key)
            || m.display_name.eq_ignore_ascii_case(&key)
            || m.aliases.iter().any(|a| a.eq_ignore_ascii_case(&key))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Component;

    #[test]
    fn every_entry_parses_validates_and_prices_every_quant() {
        for m in catalog().unwrap() {
            m.architecture.validate().unwrap();
            assert_eq!(m.quant_list().len(), m.quants.len(), "{}: unknown quant name", m.name);
            assert!(m.native().is_some(), "{}", m.name);
            for q in m.quant_list() {
                let s = m.spec(q).unwrap();
                assert!(s.total_bytes() > 0);
            }
        }
    }

    #[test]
    fn parameter_counts_match_the_published_totals() {
        // (name, published total parameters in billions, tolerance)
        let cases = [
            ("deepseek-v3", 671.0),
            ("kimi-k2", 1026.0),
            ("qwen3-235b-a22b", 235.1),
            ("qwen3-30b-a3b", 30.5),
            ("glm-4.5", 352.8),
            ("glm-4.5-air", 106.9),
            ("gpt-oss-120b", 116.8),
        ];
        for (name, billions) in cases {
            let m = find(name).unwrap().unwrap();
            let p = m.spec(m.native().unwrap()).unwrap().total_params() as f64 / 1e9;
            assert!((p - billions).abs() / billions < 0.02, "{name}: {p}B vs {billions}B");
        }
    }

    #[test]
    fn aliases_resolve() {
        assert_eq!(find("deepseek-ai/DeepSeek-R1").unwrap().unwrap().name, "deepseek-r1");
        assert_eq!(find("DEEPSEEK-V3").unwrap().unwrap().name, "deepseek-v3");
        assert_eq!(find("hf:Qwen/Qwen3-30B-A3B").unwrap().unwrap().name, "qwen3-30b-a3b");
        assert!(find("no-such-model").unwrap().is_none());
    }

    #[test]
    fn gpt_oss_experts_are_mxfp4() {
        let m = find("gpt-oss-120b").unwrap().unwrap();
        let s = m.spec(Quant::Mxfp4).unwrap();
        let routed = &s.components[&Component::RoutedExperts];
        assert!(routed.types["MXFP4"] > routed.bytes * 99 / 100);
    }
}
