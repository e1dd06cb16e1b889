//! MODEL → local files for `hy run` and `hy chat`: a local path is used as is; a catalog name
//! is planned for this box (to pick the quantization the engine can hold) and fetched; a repo
//! id is fetched with the quantization given. Fetching is the same code as `hy fetch`, so an
//! earlier download (or one made by Python tools in the HF cache) is reused, verified.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hy_planner::plan::{plan, ModelInput, PlanOptions, QuantChoice};

use crate::exit;
use crate::fetch::{self, select::Selector, Request, SourceKind};

/// How to find a model that is not a local path.
#[derive(Clone, Debug, Default)]
pub struct Remote {
    /// Quantization to fetch (`q4_k_m`, `fp8`, ...); default: what the plan for this box picks.
    pub quant: Option<String>,
    pub revision: Option<String>,
    /// Context the plan must fit (tokens).
    pub context: Option<u64>,
}

/// Resolves MODEL to a GGUF file (first shard) or an HF folder on this machine.
pub fn resolve_model(model: &str, remote: &Remote) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(model);
    if path.exists() {
        return Ok(path);
    }
    let (repo, quant) = match fetch::catalog::resolve(model, None)? {
        Some(_) => {
            let quant = match &remote.quant {
                Some(q) => q.to_ascii_lowercase(),
                None => quant_for_this_box(model, remote.context.unwrap_or(4096))?,
            };
            let hit = fetch::catalog::resolve(model, Some(&quant))?
                .ok_or_else(|| exit::coded(exit::USAGE, format!("{model}: not in the catalog")))?;
            (hit.repo, Some(quant))
        }
        None if model.contains('/') && !model.starts_with('.') && !model.starts_with('/') => {
            fetch::validate_repo_id(model)?;
            (model.to_string(), remote.quant.clone())
        }
        None => {
            return Err(exit::coded(
                exit::USAGE,
                format!(
                    "model `{model}` is not a local file or folder, a catalog name (`hy plan --list-models`) \
                     or a repo id (org/name)"
                ),
            ))
        }
    };
    eprintln!("hy: fetching {repo}{} (resumable; reuses what is already downloaded)", quant_note(&quant));
    let req = Request {
        model: repo.clone(),
        source: SourceKind::Hf,
        revision: remote.revision.clone(),
        selector: Selector { quant: quant.clone(), include: Vec::new(), exclude: Vec::new() },
        dir: None,
        jobs: 4,
        verify: false,
    };
    let dir = fetch::run(req, fetch::progress::reporter(false)).with_context(|| format!("fetching {repo}"))?;
    model_in(&dir, quant.as_deref())
}

fn quant_note(q: &Option<String>) -> String {
    q.as_deref().map(|q| format!(" at {q}")).unwrap_or_default()
}

/// The quantization the planner picks for `model` on this machine as the engine runs it
/// (CPU only), at `context` tokens; exits 3 (does not fit) with the planner's reasons.
fn quant_for_this_box(model: &str, context: u64) -> anyhow::Result<String> {
    let Some(m) = hy_planner::catalog::find(model)? else {
        return Err(exit::coded(exit::USAGE, format!("{model}: not in the catalog")));
    };
    let mut hw = super::plan::local_hardware()?;
    hw.gpus.clear();
    let mut opts = PlanOptions::new(context, 1);
    opts.hardware_label = "this machine, CPU only".into();
    let p = plan(&ModelInput::Catalog(Box::new(m)), &hw, QuantChoice::Auto, &opts)?;
    if !p.fits {
        return Err(exit::coded(
            exit::DOES_NOT_FIT,
            format!(
                "{model} does not fit this machine at any quantization for {context} tokens of context \
                 (CPU-only engine); see `hy plan {model}` for what would fit"
            ),
        ));
    }
    eprintln!("hy: planned {model} at {} for this machine (`hy plan {model}` explains)", p.quant);
    Ok(p.quant.to_ascii_lowercase())
}

/// The model inside a downloaded folder: the first shard of the GGUF for `quant` (or the only
/// GGUF), else the folder itself when it holds config.json.
pub fn model_in(dir: &Path, quant: Option<&str>) -> anyhow::Result<PathBuf> {
    let mut ggufs = Vec::new();
    collect_ggufs(dir, &mut ggufs, 0);
    ggufs.sort();
    let wanted = |p: &PathBuf| {
        let name = p.to_string_lossy().to_ascii_lowercase();
        quant.is_none_or(|q| name.contains(&q.to_ascii_lowercase()))
    };
    let first_shard = |p: &PathBuf| hy_engine::formats::gguf::parse_split_name(p).is_none_or(|(_, no, _)| no == 1);
    if let Some(p) = ggufs.iter().find(|p| wanted(p) && first_shard(p)) {
        return Ok(p.clone());
    }
    if dir.join("config.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    Err(exit::coded(
        exit::INVALID_INPUT,
        format!(
            "{}: no GGUF file{} and no config.json after the download",
            dir.display(),
            quant_note(&quant.map(String::from))
        ),
    ))
}

fn collect_ggufs(dir: &Path, out: &mut Vec<PathBuf>, depth: u32) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() && depth < 3 {
            collect_ggufs(&p, out, depth + 1);
        } else if p.extension().is_some_and(|x| x == "gguf") {
            out.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_shard_of_the_wanted_quant() {
        let d = tempfile::tempdir().unwrap();
        let q = d.path().join("Q4_K_M");
        std::fs::create_dir(&q).unwrap();
        for n in ["m-Q4_K_M-00002-of-00002.gguf", "m-Q4_K_M-00001-of-00002.gguf"] {
            std::fs::write(q.join(n), b"").unwrap();
        }
        std::fs::write(d.path().join("m-Q8_0.gguf"), b"").unwrap();
        assert_eq!(model_in(d.path(), Some("q4_k_m")).unwrap(), q.join("m-Q4_K_M-00001-of-00002.gguf"));
        assert_eq!(model_in(d.path(), Some("Q8_0")).unwrap(), d.path().join("m-Q8_0.gguf"));
        assert!(model_in(d.path(), Some("q2_k")).is_err());
    }

    #[test]
    fn hf_folder_without_gguf() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), b"{}").unwrap();
        assert_eq!(model_in(d.path(), Some("fp8")).unwrap(), d.path());
    }
}
