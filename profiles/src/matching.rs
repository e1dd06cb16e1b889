//! Scoring a machine against a profile's requirements.

use hy_planner::HardwareSpec;
use serde::Serialize;

use crate::{theoretical_bandwidth, Profile};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// One requirement, checked.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Check {
    pub what: String,
    pub required: String,
    pub actual: String,
    pub ok: bool,
    /// How far along this requirement the box is, 0..=1.
    pub score: f64,
    /// What to change when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

/// A profile matched against a machine.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct MatchResult {
    pub profile: String,
    pub matches: bool,
    /// Mean of the checks' scores, 0..=1.
    pub score: f64,
    pub checks: Vec<Check>,
}

impl MatchResult {
    /// What is missing, one phrase per failed check.
    pub fn missing(&self) -> Vec<String> {
        self.checks.iter().filter_map(|c| c.missing.clone()).collect()
    }
}

fn numeric(what: &str, unit: &str, required: f64, actual: f64, note: &str) -> Check {
    let ok = actual + 1e-9 >= required;
    let score = if required <= 0.0 { 1.0 } else { (actual / required).clamp(0.0, 1.0) };
    Check {
        what: what.into(),
        required: format!(">= {required:.0} {unit}"),
        actual: format!("{actual:.0} {unit}{note}"),
        ok,
        score,
        missing: (!ok).then(|| {
            format!("{what}: {actual:.0} {unit} < {required:.0} {unit} required (short {:.0}){note}", required - actual)
        }),
    }
}

/// Checks every requirement of `p` against `hw`.
pub fn match_profile(p: &Profile, hw: &HardwareSpec) -> MatchResult {
    let r = &p.requirements;
    let mut checks = Vec::new();
    if r.min_memory_gib > 0.0 {
        checks.push(numeric("memory", "GiB", r.min_memory_gib, hw.memory.total_bytes as f64 / GIB, ""));
    }
    if r.min_memory_bandwidth_gbps > 0.0 {
        let (bw, assumed) = theoretical_bandwidth(hw);
        let note = if assumed { " (assumed: channels/speed unknown)" } else { "" };
        checks.push(numeric("memory bandwidth", "GB/s", r.min_memory_bandwidth_gbps, bw, note));
    }
    if r.min_cpu_cores > 0 {
        let cores = hw.cpu.sockets * hw.cpu.cores_per_socket;
        checks.push(numeric("CPU cores", "cores", r.min_cpu_cores as f64, cores as f64, ""));
    }
    if r.min_gpus > 0 {
        checks.push(numeric("GPUs", "GPU(s)", r.min_gpus as f64, hw.gpus.len() as f64, ""));
    }
    if r.min_gpu_vram_gib > 0.0 {
        let vram = hw.gpus.iter().map(|g| g.vram_total_bytes).max().unwrap_or(0) as f64 / GIB;
        checks.push(numeric("GPU VRAM", "GiB", r.min_gpu_vram_gib, vram, ""));
    }
    for f in &r.cpu_features {
        let has = feature(hw, f);
        checks.push(Check {
            what: format!("CPU feature {f}"),
            required: "yes".into(),
            actual: if has { "yes".into() } else { "no".into() },
            ok: has,
            score: if has { 1.0 } else { 0.0 },
            missing: (!has).then(|| format!("CPU feature {f} missing")),
        });
    }
    let score = if checks.is_empty() { 1.0 } else { checks.iter().map(|c| c.score).sum::<f64>() / checks.len() as f64 };
    MatchResult { profile: p.name.clone(), matches: checks.iter().all(|c| c.ok), score, checks }
}

fn feature(hw: &HardwareSpec, name: &str) -> bool {
    let f = &hw.cpu.features;
    match name {
        "avx2" => f.avx2,
        "fma" => f.fma,
        "f16c" => f.f16c,
        "avx512f" => f.avx512f,
        "avx512bw" => f.avx512bw,
        "avx512vl" => f.avx512vl,
        "avx512_vnni" => f.avx512_vnni,
        "avx512_bf16" => f.avx512_bf16,
        "avx_vnni" => f.avx_vnni,
        "amx_tile" => f.amx_tile,
        "amx_int8" => f.amx_int8,
        "amx_bf16" => f.amx_bf16,
        _ => false,
    }
}
