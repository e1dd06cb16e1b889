//! Hooks into the planner crate: catalog names (model name → repo per quantization) and
//! `--plan plan.toml` (the files a plan needs). Kept separate so the wiring is in one place.

use anyhow::Result;
use std::path::Path;

/// Where a catalog name points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogHit {
    /// `hf` or `modelscope`.
    pub source: String,
    pub repo: String,
    /// The quantization to select inside the repo (e.g. `Q4_K_M`), if the catalog names one.
    pub quant: Option<String>,
}

/// Looks a model name up in the planner's catalog. `Ok(None)`: not a catalog name.
pub fn resolve(name: &str, quant: Option<&str>) -> Result<Option<CatalogHit>> {
    let _ = (name, quant);
    Ok(None)
}

/// What `hy fetch --plan` needs from a plan file.
#[derive(Clone, Debug)]
pub struct PlanFetch {
    pub hit: CatalogHit,
    pub revision: Option<String>,
    pub include: Vec<String>,
}

/// Reads a plan file and returns what to fetch.
pub fn from_plan(path: &Path) -> Result<PlanFetch> {
    Err(crate::exit::coded(
        crate::exit::INVALID_INPUT,
        format!("cannot read plan {}: plan files are not wired into `hy fetch` yet; run `hy fetch REPO --quant Q` instead", path.display()),
    ))
}
