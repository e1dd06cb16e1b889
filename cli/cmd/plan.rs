//! `hy plan MODEL [--profile P | --hardware FILE] [--quant Q|auto] [--context N] [--concurrency N]`
//!
//! Decides quantization per component class, placement (GPU/CPU, NUMA policy), memory per
//! device, and predicts decode/prefill speed with stated, overridable efficiencies.
//! Exit codes: 0 fits, 3 does not fit, 2 usage, 6 invalid input file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hy_planner::catalog;
use hy_planner::hardware::HardwareSpec;
use hy_planner::plan::{auto_candidates, plan, ModelInput, NumaChoice, Plan, PlanOptions, QuantChoice};
use hy_planner::topology::parse_hardware_toml;
use hy_planner::{Efficiency, Quant};
use hy_profiles::Profile;

use crate::exit;
use crate::model_source;

mod compare;
pub mod render;

#[derive(clap::Args)]
pub struct Args {
    /// Catalog name (deepseek-r1), HF repo id (deepseek-ai/DeepSeek-R1), local GGUF file
    /// (first shard of a split set) or local HF folder (config.json + safetensors).
    #[arg(required_unless_present = "list_models")]
    pub model: Option<String>,
    /// Plan for a hardware profile's nominal box (HY90, HY70, HY50 or a user profile).
    #[arg(long, conflicts_with = "hardware")]
    pub profile: Option<String>,
    /// Plan for the machine described by a hardware file (`hy probe --save`).
    #[arg(long, value_name = "FILE")]
    pub hardware: Option<PathBuf>,
    /// Quantization (bf16, fp8, q8_0, mxfp4, q6_k, q5_k_m, q4_k_m, q3_k_m, q2_k) or `auto`:
    /// the highest quality that fits. Default: the profile's preference for the model family, else auto.
    #[arg(long)]
    pub quant: Option<String>,
    /// Context length per request, tokens. Default: the profile's, else 32768 (capped at the model's maximum).
    #[arg(long)]
    pub context: Option<u64>,
    /// Concurrent requests. Default: the profile's, else 1.
    #[arg(long)]
    pub concurrency: Option<u64>,
    /// Print the plan as JSON (schema in README).
    #[arg(long)]
    pub json: bool,
    /// Write the plan as TOML for `hy run --plan FILE`.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Print a matrix of profiles × quantizations: fits?, decode tok/s.
    #[arg(long)]
    pub compare: bool,
    /// Efficiency assumptions from a TOML file (`hy bench` writes one).
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// Override: share of measured CPU bandwidth expert kernels achieve (default 0.91; up to 2,
    /// as prefetching kernels can outrun the plain read that measures it).
    #[arg(long, value_name = "F")]
    pub cpu_bandwidth_efficiency: Option<f64>,
    /// Override: share of GPU bandwidth decode kernels achieve (default 0.80).
    #[arg(long, value_name = "F")]
    pub gpu_bandwidth_efficiency: Option<f64>,
    /// Override: measured/theoretical memory bandwidth when not measured (default 0.77).
    #[arg(long, value_name = "F")]
    pub stream_efficiency: Option<f64>,
    /// Override: CPU↔GPU hand-off cost per CPU expert layer, µs (default 160).
    #[arg(long, value_name = "US")]
    pub hybrid_sync_us: Option<f64>,
    /// NUMA policy for CPU experts: auto (replicate when a copy fits each node), replicate, split.
    /// Default: the profile's engine setting, else auto.
    #[arg(long, value_name = "POLICY")]
    pub numa: Option<String>,
    /// Compute threads per NUMA node (default: the profile's, else all physical cores).
    #[arg(long, value_name = "N")]
    pub threads_per_node: Option<u32>,
    /// For an HF folder: price from config.json even when weights are present.
    #[arg(long)]
    pub from_config: bool,
    /// List the built-in model catalog and exit.
    #[arg(long)]
    pub list_models: bool,
}

/// The machine `hy plan` / `hy profiles match` plan for when neither --profile nor
/// --hardware is given: the live probe (without --bench) of this machine.
///
/// LEAD: this is the single hook between the planner commands and `crate::probe`; it is
/// wired to `crate::probe::probe(&ProbeOptions::live())` and can be changed here alone.
/// `HY_PROBE_ROOT` (as for `hy probe`) points it at a fixture tree, without cpuid and NVML.
pub fn local_hardware() -> anyhow::Result<HardwareSpec> {
    use crate::probe::{ProbeOptions, ProbeRoot};
    let opts = match std::env::var_os("HY_PROBE_ROOT").filter(|r| !r.is_empty()) {
        Some(root) => ProbeOptions { root: ProbeRoot::new(root), cpuid: false, gpu: false },
        None => ProbeOptions::live(),
    };
    Ok(crate::probe::probe(&opts).spec)
}

/// The hardware to plan for and how to name it.
pub struct Target {
    pub hw: HardwareSpec,
    pub label: String,
    pub profile: Option<Profile>,
}

/// Reads a hardware file (exit 6 when malformed).
pub fn load_hardware_file(path: &Path) -> anyhow::Result<HardwareSpec> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| exit::coded(exit::INVALID_INPUT, format!("cannot read hardware file {}: {e}", path.display())))?;
    parse_hardware_toml(&text).map_err(|e| {
        exit::coded(
            exit::INVALID_INPUT,
            format!("{}: {e}\n  (write one with `hy probe --save FILE`; see examples/*.toml)", path.display()),
        )
    })
}

/// Finds a profile by name (exit 2 when unknown, 6 when its file is invalid).
pub fn load_profile(name: &str) -> anyhow::Result<Profile> {
    match hy_profiles::find(name) {
        Ok(Some(p)) => Ok(p),
        Ok(None) => {
            let (all, _) = hy_profiles::all();
            let names: Vec<String> = all.into_iter().map(|p| p.name).collect();
            Err(exit::coded(
                exit::USAGE,
                format!("unknown profile '{name}'; available: {} (`hy profiles list`)", names.join(", ")),
            ))
        }
        Err(e) => Err(exit::coded(exit::INVALID_INPUT, e.to_string())),
    }
}

fn target(args: &Args) -> anyhow::Result<Target> {
    if let Some(name) = &args.profile {
        let p = load_profile(name)?;
        return Ok(Target { hw: p.hardware.clone(), label: format!("profile {}", p.name), profile: Some(p) });
    }
    if let Some(path) = &args.hardware {
        let hw = load_hardware_file(path)?;
        return Ok(Target { hw, label: format!("hardware file {}", path.display()), profile: None });
    }
    let hw = local_hardware()?;
    Ok(Target { hw, label: "this machine (probed)".into(), profile: None })
}

fn efficiency(args: &Args) -> anyhow::Result<(Efficiency, String)> {
    let (mut e, mut source) = match &args.calibration {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|err| {
                exit::coded(exit::INVALID_INPUT, format!("cannot read calibration file {}: {err}", path.display()))
            })?;
            let e = Efficiency::from_toml_str(&text)
                .map_err(|err| exit::coded(exit::INVALID_INPUT, format!("{}: {err}", path.display())))?;
            (e, format!("calibration file {}", path.display()))
        }
        None => (Efficiency::default(), "defaults".to_string()),
    };
    let overrides = [
        (args.cpu_bandwidth_efficiency, &mut e.cpu_bandwidth_efficiency),
        (args.gpu_bandwidth_efficiency, &mut e.gpu_bandwidth_efficiency),
        (args.stream_efficiency, &mut e.stream_efficiency),
        (args.hybrid_sync_us, &mut e.hybrid_sync_us),
    ];
    let mut any = false;
    for (flag, slot) in overrides {
        if let Some(v) = flag {
            *slot = v;
            any = true;
        }
    }
    if any {
        source.push_str(" + command-line overrides");
    }
    e.validate().map_err(|err| exit::coded(exit::USAGE, err.to_string()))?;
    Ok((e, source))
}

fn parse_quant(s: Option<&str>) -> anyhow::Result<Option<QuantChoice>> {
    match s {
        None => Ok(None),
        Some(q) if q.eq_ignore_ascii_case("auto") => Ok(Some(QuantChoice::Auto)),
        Some(q) => Quant::parse(q).map(|q| Some(QuantChoice::Fixed(q))).ok_or_else(|| {
            exit::coded(exit::USAGE, format!("unknown quantization '{q}'; use auto or one of: {}", Quant::all_names()))
        }),
    }
}

fn family_and_max(input: &ModelInput) -> (String, u64) {
    match input {
        ModelInput::Catalog(m) => (m.family.clone(), m.architecture.max_context),
        ModelInput::Fixed { spec, .. } => (spec.family.clone(), spec.arch.max_context),
    }
}

/// The quantization for a profile: --quant, else the profile's preference when the model has it, else auto.
fn choose_quant(explicit: Option<QuantChoice>, profile: Option<&Profile>, input: &ModelInput) -> QuantChoice {
    if let Some(q) = explicit {
        return q;
    }
    let (family, _) = family_and_max(input);
    match (profile.and_then(|p| p.preferred_quant(&family)), input) {
        (Some(q), ModelInput::Catalog(m)) if m.quant_list().contains(&q) => QuantChoice::Fixed(q),
        _ => QuantChoice::Auto,
    }
}

fn options(args: &Args, t: &Target, input: &ModelInput, eff: (Efficiency, String)) -> PlanOptions {
    let (_, max) = family_and_max(input);
    let context =
        args.context.unwrap_or_else(|| t.profile.as_ref().map(|p| p.defaults.context).unwrap_or(32768).min(max));
    let concurrency =
        args.concurrency.unwrap_or_else(|| t.profile.as_ref().map(|p| p.defaults.concurrency).unwrap_or(1));
    let mut o = PlanOptions::new(context, concurrency);
    o.efficiency = eff.0;
    o.efficiency_source = eff.1;
    o.hardware_label = t.label.clone();
    o.profile = t.profile.as_ref().map(|p| p.name.clone());
    if let Some(p) = &t.profile {
        o.ubatch = p.defaults.engine.ubatch;
        o.numa = NumaChoice::parse(&p.defaults.engine.numa).unwrap_or_default();
        o.threads_per_node = p.defaults.engine.threads_per_node;
    }
    if let Some(n) = args.threads_per_node {
        o.threads_per_node = n;
    }
    o
}

fn parse_numa(s: Option<&str>) -> anyhow::Result<Option<NumaChoice>> {
    s.map(|v| {
        NumaChoice::parse(v)
            .ok_or_else(|| exit::coded(exit::USAGE, format!("unknown --numa '{v}'; use auto, replicate or split")))
    })
    .transpose()
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    if args.list_models {
        return list_models(args.json);
    }
    if args.context == Some(0) || args.concurrency == Some(0) {
        return Err(exit::coded(exit::USAGE, "--context and --concurrency must be at least 1"));
    }
    let explicit_quant = parse_quant(args.quant.as_deref())?;
    let model = args.model.clone().unwrap_or_default();
    let input = model_source::resolve(&model, explicit_quant.unwrap_or(QuantChoice::Auto), args.from_config)?;
    let eff = efficiency(&args)?;
    if args.compare {
        return compare::run(&args, &input, explicit_quant, &eff);
    }
    let t = target(&args)?;
    let quant = choose_quant(explicit_quant, t.profile.as_ref(), &input);
    let mut opts = options(&args, &t, &input, eff);
    if let Some(n) = parse_numa(args.numa.as_deref())? {
        opts.numa = n;
    }
    let mut p = plan(&input, &t.hw, quant, &opts).map_err(plan_error)?;
    // A profile's preferred quantization is a preference: when it does not fit the asked
    // context and concurrency, the best one that does is taken instead, and said so.
    if !p.fits && explicit_quant.is_none() && quant != QuantChoice::Auto {
        let auto = plan(&input, &t.hw, QuantChoice::Auto, &opts).map_err(plan_error)?;
        if auto.fits {
            let mut auto = auto;
            auto.warnings.push(format!(
                "the profile prefers {} for this model, which does not fit here (short {:.1} GB); auto chose {}",
                p.quant,
                p.shortfall_bytes as f64 / 1e9,
                auto.quant
            ));
            p = auto;
        }
    }
    if !p.fits {
        add_profile_suggestions(&mut p, &input, quant, &opts);
    }
    if let Some(path) = &args.save {
        let text = p.to_toml_string()?;
        std::fs::write(path, text).with_context(|| format!("writing the plan to {}", path.display()))?;
        eprintln!("hy: plan written to {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        print!("{}", render::render(&p));
    }
    if p.fits {
        Ok(exit::OK)
    } else {
        eprintln!(
            "hy: {} at {} does not fit {}: short by {:.1} GB{}",
            p.model,
            p.quant,
            p.hardware,
            p.shortfall_bytes as f64 / 1e9,
            p.suggestions.first().map(|s| format!("; {s}")).unwrap_or_default()
        );
        Ok(exit::DOES_NOT_FIT)
    }
}

/// A planner error with its exit code: bad options are usage errors, bad models input errors.
pub fn plan_error(e: hy_planner::PlanError) -> anyhow::Error {
    use hy_planner::PlanError as E;
    let code = match e {
        E::UnsupportedQuant { .. } | E::InvalidOptions(_) => exit::USAGE,
        E::InvalidModel(_) | E::InvalidHardware(_) | E::InvalidPlan(_) | E::InvalidCalibration(_) => {
            exit::INVALID_INPUT
        }
    };
    exit::coded(code, e.to_string())
}

/// Other profiles on which the same request fits.
fn add_profile_suggestions(p: &mut Plan, input: &ModelInput, quant: QuantChoice, opts: &PlanOptions) {
    let (profiles, _) = hy_profiles::all();
    let mut fit = Vec::new();
    for prof in profiles {
        if Some(&prof.name) == opts.profile.as_ref() {
            continue;
        }
        let o = PlanOptions { profile: Some(prof.name.clone()), ..opts.clone() };
        if let Ok(alt) = plan(input, &prof.hardware, quant, &o) {
            if alt.fits {
                fit.push(format!("{} ({:.1} tok/s)", prof.name, alt.predicted.decode_tokens_per_s));
            }
        }
    }
    if !fit.is_empty() {
        p.suggestions.push(format!("another profile fits as asked: --profile {}", fit.join(", ")));
    }
}

fn list_models(json: bool) -> anyhow::Result<i32> {
    let models = catalog::catalog()?;
    if json {
        let v: Vec<serde_json::Value> = models
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name, "display_name": m.display_name, "family": m.family,
                    "aliases": m.aliases, "native_quant": m.native_quant, "quants": m.quants,
                    "auto_candidates": auto_candidates(m).iter().map(|q| q.name()).collect::<Vec<_>>(),
                    "architecture": m.architecture,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(exit::OK);
    }
    println!("{:<17} {:<10} {:<7} {:>9}  ALIASES", "NAME", "FAMILY", "NATIVE", "PARAMS");
    for m in &models {
        let params = m.spec(m.native().unwrap_or(Quant::Bf16)).map(|s| s.total_params()).unwrap_or(0);
        println!(
            "{:<17} {:<10} {:<7} {:>8.1}B  {}",
            m.name,
            m.family,
            m.native_quant,
            params as f64 / 1e9,
            m.aliases.join(", ")
        );
    }
    Ok(exit::OK)
}
