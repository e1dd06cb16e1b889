//! Hooks into the planner crate: catalog names (model name → repo for a quantization) and
//! `--plan plan.toml` (the model and quantization a saved plan needs).
//!
//! The catalog lists each model's repo ids as aliases; a GGUF quantization (`q4_k_m`, ...)
//! is fetched from the first `*-GGUF` alias, a safetensors one (`fp8`, `bf16`) from the first
//! other repo whose name carries that dtype, else (native quantization) the first plain repo.

use crate::exit;
use anyhow::Result;
use std::path::Path;

/// Where a catalog name points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogHit {
    /// `hf` or `modelscope`.
    pub source: String,
    pub repo: String,
    /// The quantization to select inside the repo (e.g. `q4_k_m`).
    pub quant: Option<String>,
}

/// Looks a model name up in the planner's catalog. `Ok(None)`: not a catalog name.
pub fn resolve(name: &str, quant: Option<&str>) -> Result<Option<CatalogHit>> {
    let model = hy_planner::catalog::find(name).map_err(|e| exit::coded(exit::INVALID_INPUT, e.to_string()))?;
    let Some(model) = model else { return Ok(None) };
    let quant = quant.map(str::to_ascii_lowercase).unwrap_or_else(|| model.native_quant.to_ascii_lowercase());
    let repos: Vec<&str> = model.aliases.iter().map(String::as_str).filter(|a| a.contains('/')).collect();
    match repo_for(&repos, &quant, &model.native_quant) {
        Some(repo) => Ok(Some(CatalogHit { source: "hf".into(), repo: repo.to_string(), quant: Some(quant) })),
        None => Err(exit::coded(
            exit::USAGE,
            format!(
                "the catalog has no repository for {} at {quant} (known repos: {}); pass a repo id instead",
                model.name,
                repos.join(", ")
            ),
        )),
    }
}

fn repo_for<'a>(repos: &[&'a str], quant: &str, native: &str) -> Option<&'a str> {
    let is_gguf = |r: &str| r.to_ascii_lowercase().ends_with("-gguf");
    let q = quant.to_ascii_lowercase();
    let gguf_quant = q.starts_with('q') || q.starts_with("iq") || q.starts_with("ud-");
    if gguf_quant {
        return repos.iter().copied().find(|r| is_gguf(r));
    }
    let plain: Vec<&str> = repos.iter().copied().filter(|r| !is_gguf(r)).collect();
    if let Some(r) = plain.iter().find(|r| super::select::has_token(r, &q)) {
        return Some(r);
    }
    if q.eq_ignore_ascii_case(native) {
        // The base repo: the first plain repo that names no other dtype.
        return plain
            .iter()
            .copied()
            .find(|r| !["fp8", "bf16", "awq", "gptq"].iter().any(|d| super::select::has_token(r, d)));
    }
    None
}

/// What `hy fetch --plan` needs from a plan file.
#[derive(Clone, Debug)]
pub struct PlanFetch {
    pub hit: CatalogHit,
    pub revision: Option<String>,
    pub include: Vec<String>,
}

/// Reads a plan file and returns what to fetch: the plan's model at the plan's quantization.
pub fn from_plan(path: &Path) -> Result<PlanFetch> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| exit::coded(exit::INVALID_INPUT, format!("cannot read plan {}: {e}", path.display())))?;
    let plan = hy_planner::Plan::from_toml_str(&text)
        .map_err(|e| exit::coded(exit::INVALID_INPUT, format!("{}: {e}", path.display())))?;
    let reference = if plan.model_reference.is_empty() { &plan.model } else { &plan.model_reference };
    if Path::new(reference).exists() {
        return Err(exit::coded(
            exit::USAGE,
            format!("plan {} uses local files ({reference}); there is nothing to fetch", path.display()),
        ));
    }
    let hit = if reference.contains('/') {
        Some(CatalogHit { source: "hf".into(), repo: reference.clone(), quant: Some(plan.quant.clone()) })
    } else {
        resolve(reference, Some(&plan.quant))?
    };
    let hit = hit.ok_or_else(|| {
        exit::coded(exit::INVALID_INPUT, format!("plan {}: model {reference:?} is not in the catalog", path.display()))
    })?;
    Ok(PlanFetch { hit, revision: None, include: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_names_map_to_repos_per_quant() {
        let r1 = resolve("deepseek-r1", Some("Q4_K_M")).unwrap().unwrap();
        assert_eq!(r1.repo, "unsloth/DeepSeek-R1-GGUF");
        let r1 = resolve("deepseek-r1", None).unwrap().unwrap();
        assert_eq!((r1.repo.as_str(), r1.quant.as_deref()), ("deepseek-ai/DeepSeek-R1", Some("fp8")));
        let q = resolve("qwen3-30b-a3b", Some("fp8")).unwrap().unwrap();
        assert_eq!(q.repo, "Qwen/Qwen3-30B-A3B-FP8");
        assert!(resolve("no-such-model", None).unwrap().is_none());
    }
}
