//! Placement, memory per device, fit, predicted speed, and the saved `Plan`.
//!
//! Policy, in order:
//! 1. No GPU: everything on the CPU.
//! 2. The whole model, KV cache and buffers fit in VRAM: everything on the GPU.
//! 3. Attention, shared experts, dense FFN, lm_head, norms/router, KV cache and compute
//!    buffers fit in VRAM: they go there, routed experts stay in CPU RAM, and spare VRAM
//!    takes whole expert layers (the last ones first).
//! 4. Otherwise the GPU takes the attention path and KV cache of as many leading layers as
//!    fit ("partial"); the other layers run attention on the CPU.
//! 5. No room even for one layer: everything on the CPU.
//!
//! On the CPU the routed experts are replicated on every NUMA node when each node can hold
//! a full copy (every thread then reads local memory), else split across nodes.

use serde::{Deserialize, Serialize};

use crate::catalog::CatalogModel;
use crate::cost::{distinct_experts, Efficiency};
use crate::hardware::HardwareSpec;
use crate::model::{Component, ModelSpec};
use crate::quant::Quant;
use crate::topology::{gpu_reserve_bytes, os_reserve_bytes, topology, Topology};
use crate::PlanError;

/// Version of the plan-file format (`format_version`).
pub const PLAN_FORMAT_VERSION: u32 = 1;

/// Largest context the planner accepts (tokens): far beyond any model, small enough that
/// sizes computed from it stay exact in u64.
pub const MAX_CONTEXT: u64 = 1 << 32;
/// Largest number of concurrent requests the planner accepts.
pub const MAX_CONCURRENCY: u64 = 1 << 16;
/// Largest prefill micro-batch the planner accepts (tokens).
pub const MAX_UBATCH: u64 = 1 << 20;

/// Decode speed is predicted at this many tokens of context (or the context, if shorter).
pub const DECODE_POSITION: u64 = 4096;
/// Prefill speed is predicted for a prompt of this many tokens (or the context, if shorter).
pub const PREFILL_TOKENS: u64 = 8192;

/// `--quant`: a fixed quantization or the best that fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantChoice {
    Auto,
    Fixed(Quant),
}

/// What to plan for.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanOptions {
    pub context: u64,
    pub concurrency: u64,
    /// Tokens per prefill micro-batch (sizes compute buffers).
    pub ubatch: u64,
    pub efficiency: Efficiency,
    /// Where the efficiencies come from ("defaults", a calibration file, flags).
    pub efficiency_source: String,
    /// Hardware description for the output ("profile HY90", "hardware file x.toml").
    pub hardware_label: String,
    pub profile: Option<String>,
    /// NUMA policy for the CPU experts: `Auto` decides by memory.
    pub numa: NumaChoice,
    /// Compute threads per NUMA node; 0 = all physical cores of the node.
    pub threads_per_node: u32,
}

/// `--numa` / a profile's `defaults.engine.numa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NumaChoice {
    #[default]
    Auto,
    Replicate,
    Split,
}

impl NumaChoice {
    pub fn parse(s: &str) -> Option<NumaChoice> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Some(NumaChoice::Auto),
            "replicate" => Some(NumaChoice::Replicate),
            "split" => Some(NumaChoice::Split),
            _ => None,
        }
    }
}

impl PlanOptions {
    pub fn new(context: u64, concurrency: u64) -> Self {
        PlanOptions {
            context,
            concurrency,
            ubatch: 512,
            efficiency: Efficiency::default(),
            efficiency_source: "defaults".into(),
            hardware_label: String::new(),
            profile: None,
            numa: NumaChoice::Auto,
            threads_per_node: 0,
        }
    }
}

/// The model to plan: a catalog entry (any of its quantizations) or a fixed file.
#[derive(Clone, Debug)]
pub enum ModelInput {
    Catalog(Box<CatalogModel>),
    /// A local file's spec; `reference` is what `hy run` should load (the path).
    Fixed {
        spec: Box<ModelSpec>,
        reference: String,
    },
}

/// One device's memory.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DevicePlan {
    /// "cpu0", "cpu1", ... (one per NUMA node) or "gpu0", ...
    pub name: String,
    /// "cpu" or "gpu".
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<u32>,
    pub capacity_bytes: u64,
    /// Kept free for the OS / driver.
    pub reserved_bytes: u64,
    pub weights_bytes: u64,
    pub kv_bytes: u64,
    /// Compute buffers.
    pub other_bytes: u64,
    /// capacity − reserved − weights − kv − other (negative: short by that much).
    pub free_bytes: i64,
    /// Compute threads (CPU nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// Effective bandwidth the cost model uses, GB/s.
    pub bandwidth_gbps: f64,
}

/// Where one component lives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Placement {
    pub component: String,
    /// Device name, or several joined with '+' when split or replicated.
    pub device: String,
    /// "replicated" / "split" across NUMA nodes, or "whole" on one device.
    pub policy: String,
    /// Layers on this device (routed experts may be divided between GPU and CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<String>,
    pub bytes: u64,
}

/// Storage types of one component class.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ComponentQuant {
    pub component: String,
    /// e.g. "Q4_K+1 (4.85 bpw)".
    pub summary: String,
    pub bytes: u64,
    pub params: u64,
    /// Type name → bytes.
    pub types: std::collections::BTreeMap<String, u64>,
}

/// NUMA decision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NumaPlan {
    /// "replicate", "split" or "single".
    pub policy: String,
    pub nodes: u32,
    pub threads_per_node: Vec<u32>,
    pub reason: String,
}

/// Milliseconds of one decode step, by part.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct StepBreakdown {
    pub cpu_experts_ms: f64,
    /// The same expert reads at the full (measured or stream-derived) bandwidth: the bound
    /// that `cpu_bandwidth_efficiency` is measured against.
    #[serde(default)]
    pub cpu_experts_bound_ms: f64,
    pub gpu_ms: f64,
    pub cpu_other_ms: f64,
    pub sync_ms: f64,
    /// Time saved by running shared experts on the GPU while the CPU runs routed experts.
    pub overlap_ms: f64,
    pub total_ms: f64,
    /// Bytes read from CPU memory per step.
    pub cpu_bytes_per_step: u64,
    /// Of which routed experts.
    #[serde(default)]
    pub cpu_expert_bytes_per_step: u64,
    /// Bytes read from VRAM per step.
    pub gpu_bytes_per_step: u64,
}

/// Predicted speed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Predicted {
    /// Tokens/s of one request at `decode_position` tokens of context.
    pub decode_tokens_per_s: f64,
    /// Tokens/s summed over `concurrency` requests.
    pub decode_tokens_per_s_total: f64,
    /// Tokens/s of one request with the full context filled.
    pub decode_tokens_per_s_at_full_context: f64,
    pub decode_position: u64,
    pub prefill_tokens_per_s: f64,
    pub prefill_tokens: u64,
    /// How prefill runs the routed experts: "cpu" or "gpu-stream" (weights over PCIe).
    pub prefill_method: String,
    pub bottleneck: String,
    pub step: StepBreakdown,
}

/// The plan: what `hy plan --save` writes and `hy run --plan` reads.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Plan {
    pub format_version: u32,
    pub fits: bool,
    pub model: String,
    /// What `hy run` loads: a catalog name or a local path.
    pub model_reference: String,
    /// "catalog" (computed from shapes) or the file the bytes were summed from.
    pub model_source: String,
    /// Whether weight bytes are exact sums of a file's tensors.
    pub exact_sizes: bool,
    pub quant: String,
    /// How the quantization was chosen: "fixed", "auto", "file".
    pub quant_choice: String,
    pub context: u64,
    pub concurrency: u64,
    pub ubatch: u64,
    pub weights_bytes: u64,
    pub kv_bytes_per_token: u64,
    pub kv_bytes: u64,
    /// "hybrid", "gpu", "partial" (the GPU runs the leading layers' attention) or "cpu".
    pub mode: String,
    pub hardware: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// By how many bytes the most over-committed devices are short (0 when it fits).
    pub shortfall_bytes: u64,
    pub numa: NumaPlan,
    /// MoE layers whose routed experts live on the GPU.
    pub gpu_expert_layers: Vec<u32>,
    pub devices: Vec<DevicePlan>,
    pub placement: Vec<Placement>,
    pub components: Vec<ComponentQuant>,
    pub predicted: Predicted,
    pub assumptions: Efficiency,
    pub assumptions_source: String,
    pub excluded: Vec<crate::model::Excluded>,
    pub warnings: Vec<String>,
    pub suggestions: Vec<String>,
}

impl Plan {
    /// Writes the plan as TOML.
    pub fn to_toml_string(&self) -> Result<String, PlanError> {
        toml::to_string(self).map_err(|e| PlanError::InvalidPlan(e.to_string()))
    }

    /// Reads a plan file, checking its version.
    pub fn from_toml_str(text: &str) -> Result<Plan, PlanError> {
        #[derive(Deserialize)]
        struct Version {
            format_version: Option<u32>,
        }
        let v: Version = toml::from_str(text).map_err(|e| PlanError::InvalidPlan(e.to_string()))?;
        match v.format_version {
            Some(PLAN_FORMAT_VERSION) => {}
            Some(other) => {
                return Err(PlanError::InvalidPlan(format!(
                    "format_version = {other}: this hy reads version {PLAN_FORMAT_VERSION}; re-run `hy plan --save`"
                )))
            }
            None => return Err(PlanError::InvalidPlan("missing format_version".into())),
        }
        toml::from_str(text).map_err(|e| PlanError::InvalidPlan(e.to_string()))
    }
}

/// Plans `model` on `hw`. With `QuantChoice::Auto` the highest-quality quantization that
/// fits is chosen; when none fits, the plan of the smallest one is returned (`fits` false).
pub fn plan(model: &ModelInput, hw: &HardwareSpec, quant: QuantChoice, opts: &PlanOptions) -> Result<Plan, PlanError> {
    opts.efficiency.validate()?;
    if opts.context == 0 || opts.concurrency == 0 || opts.ubatch == 0 {
        return Err(PlanError::InvalidOptions("context, concurrency and ubatch must be at least 1".into()));
    }
    if opts.context > MAX_CONTEXT || opts.concurrency > MAX_CONCURRENCY || opts.ubatch > MAX_UBATCH {
        return Err(PlanError::InvalidOptions(format!(
            "context at most {MAX_CONTEXT} tokens, concurrency at most {MAX_CONCURRENCY}, ubatch at most {MAX_UBATCH}"
        )));
    }
    if let ModelInput::Fixed { spec, .. } = model {
        spec.arch.check_bounds().map_err(|e| PlanError::InvalidModel(format!("{}: {e}", spec.name)))?;
    }
    let topo = topology(hw, &opts.efficiency);
    let mut out = match (model, quant) {
        (ModelInput::Fixed { spec, reference }, _) => {
            let mut p = place(spec, reference, &topo, opts);
            p.quant_choice = "file".into();
            if let QuantChoice::Fixed(q) = quant {
                if !spec.quant.eq_ignore_ascii_case(q.name()) {
                    p.warnings.push(format!("--quant {q} ignored: a local file is planned as stored ({})", spec.quant));
                }
            }
            p
        }
        (ModelInput::Catalog(m), QuantChoice::Fixed(q)) => {
            let mut p = place(&m.spec(q)?, &m.name, &topo, opts);
            p.quant_choice = "fixed".into();
            p
        }
        (ModelInput::Catalog(m), QuantChoice::Auto) => plan_auto(m, &topo, opts)?,
    };
    if opts.context > out_max_context(model) {
        out.warnings.push(format!(
            "context {} exceeds the model's maximum of {} tokens",
            opts.context,
            out_max_context(model)
        ));
    }
    if !out.fits {
        out.suggestions = suggestions(model, &topo, opts, &out);
    }
    Ok(out)
}

fn out_max_context(model: &ModelInput) -> u64 {
    match model {
        ModelInput::Catalog(m) => m.architecture.max_context,
        ModelInput::Fixed { spec, .. } => spec.arch.max_context,
    }
}

/// Quantizations `auto` considers, best first: upcasting a release (bf16 of an FP8 model)
/// gains nothing, so nothing above the native format is tried.
pub fn auto_candidates(m: &CatalogModel) -> Vec<Quant> {
    let available = m.quant_list();
    let native_rank = m.native().and_then(|n| Quant::BY_QUALITY.iter().position(|q| *q == n)).unwrap_or(0);
    Quant::BY_QUALITY
        .iter()
        .enumerate()
        .filter(|(i, q)| *i >= native_rank && available.contains(q))
        .map(|(_, q)| *q)
        .collect()
}

fn plan_auto(m: &CatalogModel, topo: &Topology, opts: &PlanOptions) -> Result<Plan, PlanError> {
    let mut last = None;
    let mut rejected = Vec::new();
    for q in auto_candidates(m) {
        let mut p = place(&m.spec(q)?, &m.name, topo, opts);
        p.quant_choice = "auto".into();
        if p.fits {
            if !rejected.is_empty() {
                p.warnings.push(format!(
                    "auto chose {q}: the highest quality that fits; {} need more memory",
                    rejected.join(", ")
                ));
            }
            return Ok(p);
        }
        rejected.push(format!("{q} (short {:.1} GB)", p.shortfall_bytes as f64 / 1e9));
        last = Some(p);
    }
    last.ok_or_else(|| PlanError::InvalidModel(format!("{}: no quantization listed", m.name)))
}

/// Alternatives that fit when the plan does not: smaller quantizations, a shorter context,
/// fewer concurrent requests. (Other profiles are suggested by the CLI, which knows them.)
fn suggestions(model: &ModelInput, topo: &Topology, opts: &PlanOptions, failed: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    let fits = |spec: &ModelSpec, ctx: u64, n: u64| {
        let o = PlanOptions { context: ctx, concurrency: n, ..opts.clone() };
        place(spec, "", topo, &o).fits
    };
    let spec = match model {
        ModelInput::Catalog(m) => {
            let current = Quant::parse(&failed.quant);
            let smaller: Vec<String> = auto_candidates(m)
                .into_iter()
                .filter(|q| Some(*q) != current)
                .filter_map(|q| m.spec(q).ok().map(|s| (q, s)))
                .filter(|(_, s)| s.total_bytes() < failed.weights_bytes && fits(s, opts.context, opts.concurrency))
                .map(|(q, s)| format!("{q} ({:.1} GB)", s.total_bytes() as f64 / 1e9))
                .collect();
            if !smaller.is_empty() {
                out.push(format!("a smaller quantization fits: --quant {}", smaller.join(", ")));
            }
            current.and_then(|q| m.spec(q).ok())
        }
        ModelInput::Fixed { spec, .. } => Some((**spec).clone()),
    };
    let Some(spec) = spec else { return out };
    if let Some(ctx) = largest(1024, opts.context - 1, |c| fits(&spec, c, opts.concurrency)) {
        out.push(format!("a shorter context fits: --context {ctx} (at --concurrency {})", opts.concurrency));
    }
    if opts.concurrency > 1 {
        if let Some(n) = largest(1, opts.concurrency - 1, |n| fits(&spec, opts.context, n)) {
            out.push(format!("fewer concurrent requests fit: --concurrency {n}"));
        }
    }
    out
}

/// The largest value in [lo, hi] for which `ok` holds, assuming `ok` is monotone.
fn largest(lo: u64, hi: u64, ok: impl Fn(u64) -> bool) -> Option<u64> {
    if hi < lo || !ok(lo) {
        return None;
    }
    let (mut good, mut bad) = (lo, hi + 1);
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if ok(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Some(good)
}

/// Sizes every part of the plan for one spec.
struct Sizes {
    kv_per_token: u64,
    kv_total: u64,
    gpu_buffer: u64,
    cpu_buffer: u64,
    /// Attention path: everything but routed experts and embeddings.
    attention_path: u64,
}

fn sizes(spec: &ModelSpec, opts: &PlanOptions) -> Sizes {
    let a = &spec.arch;
    let kv_per_token = a.kv_bytes_per_token();
    // Saturating: an absurd request must come out as "does not fit", not as an overflow.
    let kv_total = kv_per_token
        .saturating_mul(opts.context)
        .saturating_mul(opts.concurrency)
        .saturating_add(a.kv_fixed_bytes_per_sequence().saturating_mul(opts.concurrency));
    // Logits, activations and a flash-attention tile per micro-batch token, in f32.
    let per_token = a.vocab_size + 16 * a.hidden_size;
    let gpu_buffer = (4 * opts.ubatch).saturating_mul(per_token + a.num_heads * 512);
    let cpu_buffer = (4 * opts.ubatch)
        .saturating_mul(per_token + 3 * a.experts_per_token * a.moe_intermediate_size)
        .saturating_add(1 << 30);
    let attention_path = spec.total_bytes() - spec.bytes(Component::RoutedExperts) - spec.bytes(Component::Embeddings);
    Sizes { kv_per_token, kv_total, gpu_buffer, cpu_buffer, attention_path }
}

/// Decides placement and memory for one spec and predicts its speed.
pub fn place(spec: &ModelSpec, reference: &str, topo: &Topology, opts: &PlanOptions) -> Plan {
    let eff = &opts.efficiency;
    let s = sizes(spec, opts);
    let mut warnings: Vec<String> = topo.notes.clone();
    let gpu = topo.gpus.iter().max_by_key(|g| g.vram_bytes);
    if topo.gpus.len() > 1 {
        warnings.push(format!("{} GPUs present: this plan uses only the largest one", topo.gpus.len()));
    }
    let gpu_usable = gpu.map(|g| g.vram_bytes.saturating_sub(gpu_reserve_bytes(eff))).unwrap_or(0);
    let routed = spec.bytes(Component::RoutedExperts);
    let embeddings = spec.bytes(Component::Embeddings);
    let all_on_gpu = spec.total_bytes().saturating_add(s.kv_total).saturating_add(s.gpu_buffer);
    let hybrid_gpu = s.attention_path.saturating_add(s.kv_total).saturating_add(s.gpu_buffer);
    let layers = spec.arch.num_layers.max(1);
    let kv_per_layer = s.kv_total / layers;
    let layer_path_total: u64 = spec.layer_path.iter().map(|(_, b)| *b).sum();
    // lm_head and the output norm: on the GPU whenever the GPU runs any attention.
    let global_path = s.attention_path.saturating_sub(layer_path_total);
    let mut gpu_attn = GpuAttention { layers, path_fraction: 1.0, path_bytes: s.attention_path, kv_bytes: s.kv_total };
    let mode = match gpu {
        None => "cpu",
        Some(_) if all_on_gpu <= gpu_usable => "gpu",
        Some(_) if hybrid_gpu <= gpu_usable => "hybrid",
        Some(g) => {
            let fixed = global_path.saturating_add(s.gpu_buffer);
            let (n, path) = leading_layers(&spec.layer_path, gpu_usable.saturating_sub(fixed), kv_per_layer);
            let needed = format!("{:.1} GB needed, {:.1} GB usable", hybrid_gpu as f64 / 1e9, gpu_usable as f64 / 1e9);
            if n > 0 && fixed <= gpu_usable {
                gpu_attn = GpuAttention {
                    layers: n,
                    path_fraction: path as f64 / layer_path_total.max(1) as f64,
                    path_bytes: global_path + path,
                    kv_bytes: n * kv_per_layer,
                };
                warnings.push(format!(
                    "{} cannot hold the attention path and KV cache of every layer ({needed}): layers 0-{} run attention on the GPU, the other {} on the CPU",
                    g.name,
                    n - 1,
                    layers - n
                ));
                "partial"
            } else {
                warnings.push(format!(
                    "{} cannot hold the attention path and KV cache ({needed}): everything runs on the CPU",
                    g.name
                ));
                "cpu"
            }
        }
    };
    if mode == "cpu" {
        gpu_attn = GpuAttention { layers: 0, path_fraction: 0.0, path_bytes: 0, kv_bytes: 0 };
    }
    // Whole expert layers into spare VRAM, last layers first.
    let mut gpu_layers: Vec<u32> = Vec::new();
    let mut gpu_expert_bytes = 0u64;
    if mode == "hybrid" {
        let mut spare = gpu_usable - hybrid_gpu;
        for (layer, bytes) in spec.routed_layers.iter().rev() {
            if *bytes <= spare {
                spare -= bytes;
                gpu_expert_bytes += bytes;
                gpu_layers.push(*layer);
            }
        }
        gpu_layers.sort_unstable();
    }
    // What the CPU holds.
    let (cpu_routed, cpu_other_weights, cpu_kv) = match mode {
        "gpu" => (0, 0, 0),
        "hybrid" => (routed - gpu_expert_bytes, embeddings, 0),
        "partial" => (routed, embeddings + s.attention_path - gpu_attn.path_bytes, s.kv_total - gpu_attn.kv_bytes),
        _ => (routed, spec.total_bytes() - routed, s.kv_total),
    };
    let cpu_buffer = if mode == "gpu" { 0 } else { s.cpu_buffer };
    let n_nodes = topo.nodes.len().max(1) as u64;
    let reserve_total = os_reserve_bytes(topo.memory_total_bytes, eff);
    let shared_per_node = cpu_other_weights.saturating_add(cpu_kv).saturating_add(cpu_buffer) / n_nodes;
    let min_node_usable =
        topo.nodes.iter().map(|n| n.memory_bytes.saturating_sub(reserve_total / n_nodes)).min().unwrap_or(0);
    let replicate = n_nodes > 1
        && cpu_routed > 0
        && match opts.numa {
            NumaChoice::Auto => cpu_routed.saturating_add(shared_per_node) <= min_node_usable,
            NumaChoice::Replicate => true,
            NumaChoice::Split => false,
        };
    let threads = |cores: u32| if opts.threads_per_node > 0 { opts.threads_per_node.min(cores) } else { cores };
    let numa_policy = if n_nodes == 1 {
        "single"
    } else if replicate {
        "replicate"
    } else {
        "split"
    };
    let routed_per_node = if replicate { cpu_routed } else { cpu_routed / n_nodes };

    let mut devices = Vec::new();
    for n in &topo.nodes {
        let reserved = reserve_total / n_nodes;
        let weights = routed_per_node + cpu_other_weights / n_nodes;
        let kv = cpu_kv / n_nodes;
        let other = cpu_buffer / n_nodes;
        devices.push(DevicePlan {
            name: format!("cpu{}", n.id),
            kind: "cpu".into(),
            numa_node: Some(n.id),
            capacity_bytes: n.memory_bytes,
            reserved_bytes: reserved,
            weights_bytes: weights,
            kv_bytes: kv,
            other_bytes: other,
            free_bytes: free(n.memory_bytes, &[reserved, weights, kv, other]),
            threads: Some(threads(n.cores)),
            bandwidth_gbps: n.bandwidth_gbps * eff.cpu_bandwidth_efficiency,
        });
    }
    if let Some(g) = gpu {
        let (weights, kv, other) = match mode {
            "gpu" => (spec.total_bytes(), s.kv_total, s.gpu_buffer),
            "hybrid" => (s.attention_path + gpu_expert_bytes, s.kv_total, s.gpu_buffer),
            "partial" => (gpu_attn.path_bytes, gpu_attn.kv_bytes, s.gpu_buffer),
            _ => (0, 0, 0),
        };
        let reserved = gpu_reserve_bytes(eff).min(g.vram_bytes);
        devices.push(DevicePlan {
            name: format!("gpu{}", g.index),
            kind: "gpu".into(),
            numa_node: None,
            capacity_bytes: g.vram_bytes,
            reserved_bytes: reserved,
            weights_bytes: weights,
            kv_bytes: kv,
            other_bytes: other,
            free_bytes: free(g.vram_bytes, &[reserved, weights, kv, other]),
            threads: None,
            bandwidth_gbps: g.bandwidth_gbps * eff.gpu_bandwidth_efficiency,
        });
    }
    let shortfall: u64 = devices.iter().fold(0u64, |acc, d| acc.saturating_add(d.free_bytes.min(0).unsigned_abs()));
    let fits = shortfall == 0;

    let cpu_names: Vec<String> = topo.nodes.iter().map(|n| format!("cpu{}", n.id)).collect();
    let gpu_name = gpu.map(|g| format!("gpu{}", g.index)).unwrap_or_default();
    let placement = placements(
        spec,
        &Where { mode, numa_policy, cpu_names: &cpu_names, gpu: &gpu_name, gpu_attn: &gpu_attn },
        &gpu_layers,
        gpu_expert_bytes,
        &s,
    );
    let numa = NumaPlan {
        policy: numa_policy.into(),
        nodes: n_nodes as u32,
        threads_per_node: topo.nodes.iter().map(|n| threads(n.cores)).collect(),
        reason: match numa_policy {
            "single" => "one NUMA node".into(),
            "replicate" if opts.numa == NumaChoice::Replicate => {
                format!(
                    "replication asked for: each node holds a copy of the CPU experts ({:.1} GB)",
                    cpu_routed as f64 / 1e9
                )
            }
            "replicate" => format!(
                "each node holds a full copy of the CPU experts ({:.1} GB), so every thread reads local memory",
                cpu_routed as f64 / 1e9
            ),
            _ if opts.numa == NumaChoice::Split => "split asked for: each node holds 1/N of every expert".into(),
            _ if cpu_routed == 0 => "no experts on the CPU".into(),
            _ => format!(
                "a copy per node ({:.1} GB) does not fit in a node's {:.1} GB, so each node holds 1/{} of every expert",
                (cpu_routed + shared_per_node) as f64 / 1e9,
                min_node_usable as f64 / 1e9,
                n_nodes
            ),
        },
    };
    let gpu_spare = match mode {
        "hybrid" => gpu_usable.saturating_sub(hybrid_gpu),
        _ => 0,
    };
    let placed = Placed { spec, topo, eff, mode, numa_policy, gpu_layers: &gpu_layers, gpu_attn: &gpu_attn };
    let predicted = predict(&placed, opts, gpu_spare);
    if !fits {
        warnings.push(format!("does not fit: short by {:.1} GB", shortfall as f64 / 1e9));
    }
    Plan {
        format_version: PLAN_FORMAT_VERSION,
        fits,
        model: spec.name.clone(),
        model_reference: reference.to_string(),
        model_source: spec.source.clone(),
        exact_sizes: spec.exact,
        quant: spec.quant.clone(),
        quant_choice: "fixed".into(),
        context: opts.context,
        concurrency: opts.concurrency,
        ubatch: opts.ubatch,
        weights_bytes: spec.total_bytes(),
        kv_bytes_per_token: s.kv_per_token,
        kv_bytes: s.kv_total,
        mode: mode.into(),
        hardware: opts.hardware_label.clone(),
        profile: opts.profile.clone(),
        shortfall_bytes: shortfall,
        numa,
        gpu_expert_layers: gpu_layers,
        devices,
        placement,
        components: Component::ALL
            .iter()
            .filter_map(|c| spec.components.get(c).map(|b| (c, b)))
            .map(|(c, b)| ComponentQuant {
                component: c.name().into(),
                summary: b.summary(),
                bytes: b.bytes,
                params: b.params,
                types: b.types.clone(),
            })
            .collect(),
        predicted,
        assumptions: eff.clone(),
        assumptions_source: opts.efficiency_source.clone(),
        excluded: spec.excluded.clone(),
        warnings,
        suggestions: Vec::new(),
    }
}

/// Which layers' attention path the GPU runs: all of them (`gpu`, `hybrid`), the first
/// `layers` (`partial`), or none (`cpu`).
#[derive(Clone, Debug, PartialEq)]
struct GpuAttention {
    layers: u64,
    /// Share of the per-layer attention-path bytes on the GPU.
    path_fraction: f64,
    /// Attention-path bytes on the GPU (with lm_head and output norm).
    path_bytes: u64,
    kv_bytes: u64,
}

/// The leading layers whose attention path plus KV cache fit `budget` bytes: (count, path bytes).
fn leading_layers(layer_path: &[(u32, u64)], budget: u64, kv_per_layer: u64) -> (u64, u64) {
    let (mut used, mut path, mut n) = (0u64, 0u64, 0u64);
    for (_, bytes) in layer_path {
        let next = used.saturating_add(*bytes).saturating_add(kv_per_layer);
        if next > budget {
            break;
        }
        used = next;
        path += bytes;
        n += 1;
    }
    (n, path)
}

/// Device names and the decisions placements are rendered from.
struct Where<'a> {
    mode: &'a str,
    numa_policy: &'a str,
    cpu_names: &'a [String],
    gpu: &'a str,
    gpu_attn: &'a GpuAttention,
}

fn placements(spec: &ModelSpec, w: &Where, gpu_layers: &[u32], gpu_expert_bytes: u64, s: &Sizes) -> Vec<Placement> {
    let (mode, gpu) = (w.mode, w.gpu);
    let cpu_all = w.cpu_names.join("+");
    let cpu_policy = if w.cpu_names.len() > 1 { "split" } else { "whole" };
    let on = |c: Component| -> (&str, &str) {
        match (mode, c) {
            ("gpu", _) => (gpu, "whole"),
            ("hybrid" | "partial", Component::RoutedExperts) => (cpu_all.as_str(), w.numa_policy),
            ("hybrid" | "partial", Component::Embeddings) => (cpu_all.as_str(), cpu_policy),
            ("hybrid" | "partial", _) => (gpu, "whole"),
            _ => (cpu_all.as_str(), cpu_policy),
        }
    };
    let n = w.gpu_attn.layers;
    let last = spec.arch.num_layers.max(1) - 1;
    let gpu_range = if n > 0 { format!("0-{}", n - 1) } else { String::new() };
    let cpu_range = if n <= last { format!("{n}-{last}") } else { String::new() };
    let row = |c: &str, dev: &str, policy: &str, layers: Option<String>, bytes: u64| Placement {
        component: c.into(),
        device: dev.into(),
        policy: policy.into(),
        layers,
        bytes,
    };
    let mut out = Vec::new();
    for c in Component::ALL {
        let bytes = spec.bytes(c);
        if bytes == 0 {
            continue;
        }
        let (dev, policy) = on(c);
        if c == Component::RoutedExperts && !gpu_layers.is_empty() {
            out.push(row(c.name(), gpu, "whole", Some(layer_ranges(gpu_layers)), gpu_expert_bytes));
            let cpu_layers: Vec<u32> =
                spec.routed_layers.iter().map(|(l, _)| *l).filter(|l| !gpu_layers.contains(l)).collect();
            if !cpu_layers.is_empty() {
                out.push(row(c.name(), dev, policy, Some(layer_ranges(&cpu_layers)), bytes - gpu_expert_bytes));
            }
            continue;
        }
        let per_layer = !matches!(c, Component::RoutedExperts | Component::Embeddings | Component::LmHead);
        if mode == "partial" && per_layer {
            // Split by the layer range; the share follows the attention-path bytes per layer.
            let on_gpu = (bytes as f64 * w.gpu_attn.path_fraction).round() as u64;
            out.push(row(c.name(), gpu, "whole", Some(gpu_range.clone()), on_gpu));
            out.push(row(c.name(), &cpu_all, cpu_policy, Some(cpu_range.clone()), bytes - on_gpu));
            continue;
        }
        out.push(row(c.name(), dev, policy, None, bytes));
    }
    match mode {
        "cpu" => out.push(row("kv_cache", &cpu_all, cpu_policy, None, s.kv_total)),
        "partial" => {
            out.push(row("kv_cache", gpu, "whole", Some(gpu_range), w.gpu_attn.kv_bytes));
            out.push(row("kv_cache", &cpu_all, cpu_policy, Some(cpu_range), s.kv_total - w.gpu_attn.kv_bytes));
        }
        _ => out.push(row("kv_cache", gpu, "whole", None, s.kv_total)),
    }
    out
}

/// capacity − Σ uses, clamped to the i64 range.
fn free(capacity: u64, uses: &[u64]) -> i64 {
    let used = uses.iter().fold(0u64, |a, b| a.saturating_add(*b));
    let diff = capacity as i128 - used as i128;
    diff.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// "3-10,12,40-60".
fn layer_ranges(layers: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < layers.len() {
        let start = layers[i];
        let mut end = start;
        while i + 1 < layers.len() && layers[i + 1] == end + 1 {
            i += 1;
            end = layers[i];
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    parts.join(",")
}

/// A decided placement, as the speed model needs it.
struct Placed<'a> {
    spec: &'a ModelSpec,
    topo: &'a Topology,
    eff: &'a Efficiency,
    mode: &'a str,
    numa_policy: &'a str,
    gpu_layers: &'a [u32],
    gpu_attn: &'a GpuAttention,
}

/// Per-step decode cost at `position` tokens of context for `n` concurrent requests.
fn decode_step(pl: &Placed, position: u64, n: u64) -> StepBreakdown {
    let Placed { spec, topo, eff, mode, numa_policy, gpu_layers, gpu_attn } = *pl;
    let a = &spec.arch;
    let distinct = distinct_experts(a.num_experts, a.experts_per_token, n);
    let mut cpu_expert_bytes = 0.0;
    let mut gpu_expert_bytes = 0.0;
    let mut cpu_moe_layers = 0u64;
    for (idx, (layer, _)) in spec.routed_layers.iter().enumerate() {
        let b = distinct * spec.expert_bytes(idx);
        if mode == "gpu" || gpu_layers.contains(layer) {
            gpu_expert_bytes += b;
        } else {
            cpu_moe_layers += 1;
            cpu_expert_bytes += b;
        }
    }
    let expert_params = if a.num_experts > 0 && a.moe_layers() > 0 {
        spec.params(Component::RoutedExperts) as f64 / (a.num_experts * a.moe_layers()) as f64
    } else {
        0.0
    };
    let cpu_bw = topo.cpu_bandwidth_gbps() * 1e9 * eff.cpu_bandwidth_efficiency;
    let cpu_flops = topo.cpu_tflops * 1e12 * eff.cpu_compute_efficiency;
    let cpu_expert_flops = 2.0 * (n * a.experts_per_token) as f64 * expert_params * cpu_moe_layers as f64;
    // The experts' streaming and arithmetic add up rather than overlap (as for the GPU below):
    // the CPU kernels decode the weights they stream on the same cores, and a roofline maximum
    // over-predicted the middle of a batch sweep (device, batch 1 / 4 / 16 calibrated at 1 and
    // 16: batch 4 +18% and +22% in two runs; the sum: +2% and +7%).
    let cpu_experts = cpu_expert_bytes / cpu_bw + cpu_expert_flops / cpu_flops;
    let cpu_experts_bound_ms = 1e3 * cpu_expert_bytes / (topo.cpu_bandwidth_gbps() * 1e9);

    // The attention path (and embeddings row) is read once per step; KV per request.
    let path = (spec.total_bytes() - spec.bytes(Component::RoutedExperts) - spec.bytes(Component::Embeddings)) as f64;
    let shared = spec.bytes(Component::SharedExperts) as f64;
    let kv_read = n as f64 * position.min(a.max_context.max(1)) as f64 * a.kv_bytes_per_token() as f64
        + n as f64 * a.kv_fixed_bytes_per_sequence() as f64;
    let attn_flops = attention_flops_per_position(spec) * (n * position) as f64;
    let dense_flops =
        2.0 * n as f64 * (spec.active_params() - expert_params * a.experts_per_token as f64 * a.moe_layers() as f64);
    // The CPU's share of the attention path: the streaming of its `bytes` (weights and KV
    // cache) and `flops_share` of the path's arithmetic. Products of matrices in
    // the 16-row layout overlap their streaming (a few tokens cost the kernels barely more
    // than one: on the 2-core EPYC VM batch 4 streamed in the time of its bytes), row-major
    // ones add to it (the Xeon, whose row-major matrices turn compute-bound at a few
    // tokens); the prompt-length attention itself always adds.
    let cpu_path_ms = |bytes: f64, flops_share: f64| {
        let (stream, products) = (bytes / cpu_bw, dense_flops * flops_share / cpu_flops);
        let matrices = if topo.cpu_layer_matrices_repacked { stream.max(products) } else { stream + products };
        1e3 * (matrices + attn_flops * flops_share / cpu_flops)
    };
    let mut out = StepBreakdown {
        cpu_experts_bound_ms,
        cpu_expert_bytes_per_step: cpu_expert_bytes as u64,
        ..StepBreakdown::default()
    };
    match (mode, topo.gpus.iter().max_by_key(|g| g.vram_bytes)) {
        ("cpu", _) | (_, None) => {
            let bytes = path + kv_read;
            out.cpu_other_ms = cpu_path_ms(bytes, 1.0);
            out.cpu_experts_ms = 1e3 * cpu_experts;
            out.sync_ms = a.num_layers as f64 * eff.cpu_layer_overhead_us / 1e3;
            out.cpu_bytes_per_step = (bytes + cpu_expert_bytes) as u64;
        }
        (_, Some(g)) => {
            // The GPU runs the attention path of its layers (all of them unless `partial`);
            // the CPU runs the rest, layer by layer.
            let layers = a.num_layers.max(1) as f64;
            let on_gpu = gpu_attn.layers as f64 / layers;
            let layer_path: f64 = spec.layer_path.iter().map(|(_, b)| *b as f64).sum();
            let global = path - layer_path;
            let gpu_path = global + layer_path * gpu_attn.path_fraction;
            let gpu_bw = g.bandwidth_gbps * 1e9 * eff.gpu_bandwidth_efficiency;
            let gpu_flops = eff.gpu_tflops.unwrap_or(g.tflops) * 1e12 * eff.gpu_compute_efficiency;
            let gpu_bytes = gpu_path + kv_read * on_gpu + gpu_expert_bytes;
            out.gpu_ms = 1e3 * (gpu_bytes / gpu_bw + (attn_flops + dense_flops) * on_gpu / gpu_flops)
                + gpu_attn.layers as f64 * eff.gpu_layer_overhead_us / 1e3;
            let cpu_path = (path - gpu_path) + kv_read * (1.0 - on_gpu);
            if gpu_attn.layers < a.num_layers {
                out.cpu_other_ms = cpu_path_ms(cpu_path, 1.0 - on_gpu);
            }
            out.cpu_experts_ms = 1e3 * cpu_experts;
            let pcie = g.pcie_gbps * 1e9 * eff.pcie_efficiency;
            let hidden_bytes = (2 * n * a.hidden_size * 4) as f64;
            // A hand-off for every MoE layer whose attention is on the GPU and experts on the
            // CPU, one where the GPU layers end, and barriers for the CPU-run layers.
            let handoffs = spec
                .routed_layers
                .iter()
                .filter(|(l, _)| (*l as u64) < gpu_attn.layers && mode != "gpu" && !gpu_layers.contains(l))
                .count() as f64
                + f64::from(u8::from(gpu_attn.layers < a.num_layers));
            out.sync_ms = handoffs * (eff.hybrid_sync_us / 1e3 + 1e3 * hidden_bytes / pcie)
                + (a.num_layers - gpu_attn.layers) as f64 * eff.cpu_layer_overhead_us / 1e3;
            // Shared experts run on the GPU while the CPU runs the routed ones.
            if cpu_moe_layers > 0 {
                out.overlap_ms = (1e3 * shared * gpu_attn.path_fraction / gpu_bw).min(out.cpu_experts_ms);
            }
            out.gpu_bytes_per_step = gpu_bytes as u64;
            out.cpu_bytes_per_step = (cpu_expert_bytes + cpu_path) as u64;
        }
    }
    if numa_policy == "split" && cpu_moe_layers > 0 {
        out.sync_ms += cpu_moe_layers as f64 * eff.numa_sync_us / 1e3;
    }
    out.total_ms = out.cpu_experts_ms + out.gpu_ms + out.cpu_other_ms + out.sync_ms - out.overlap_ms;
    out
}

/// FLOPs of attention per token per position of context, over all layers.
fn attention_flops_per_position(spec: &ModelSpec) -> f64 {
    let a = &spec.arch;
    let per_layer = match &a.mla {
        // Absorbed MLA decode: scores against the 576-wide latent, output from the 512-wide one.
        Some(m) => 2.0 * a.num_heads as f64 * (2 * m.kv_lora_rank + m.qk_rope_head_dim) as f64,
        None => 2.0 * a.num_heads as f64 * 2.0 * a.head_dim as f64,
    };
    per_layer * a.full_attention_layers() as f64
}

fn predict(pl: &Placed, opts: &PlanOptions, gpu_spare: u64) -> Predicted {
    let (spec, topo, eff, mode) = (pl.spec, pl.topo, &opts.efficiency, pl.mode);
    let pos = DECODE_POSITION.min(opts.context);
    let step = decode_step(pl, pos, opts.concurrency);
    let single = decode_step(pl, pos, 1);
    let full = decode_step(pl, opts.context, 1);
    let (prefill, method) = prefill(pl, opts, gpu_spare);
    let decode_tokens_per_s = if opts.concurrency == 1 { 1e3 / single.total_ms } else { 1e3 / step.total_ms };
    Predicted {
        decode_tokens_per_s,
        decode_tokens_per_s_total: opts.concurrency as f64 * 1e3 / step.total_ms,
        decode_tokens_per_s_at_full_context: 1e3 / full.total_ms,
        decode_position: pos,
        prefill_tokens_per_s: prefill,
        prefill_tokens: PREFILL_TOKENS.min(opts.context),
        prefill_method: method,
        bottleneck: bottleneck(spec, topo, eff, &step, mode),
        step,
    }
}

/// Prefill of one prompt: GPU work at its FLOP rate; routed experts either computed on the
/// CPU (FLOP- or bandwidth-bound) or streamed over PCIe to the GPU, whichever is faster.
fn prefill(pl: &Placed, opts: &PlanOptions, gpu_spare: u64) -> (f64, String) {
    let (spec, topo, mode, gpu_layers) = (pl.spec, pl.topo, pl.mode, pl.gpu_layers);
    let eff = &opts.efficiency;
    let a = &spec.arch;
    let p = PREFILL_TOKENS.min(opts.context) as f64;
    let expert_params = if a.num_experts > 0 && a.moe_layers() > 0 {
        spec.params(Component::RoutedExperts) as f64 / (a.num_experts * a.moe_layers()) as f64
    } else {
        0.0
    };
    let moe_layers = a.moe_layers() as f64;
    let gpu_moe = if mode == "gpu" { moe_layers } else { gpu_layers.len() as f64 };
    let cpu_moe = moe_layers - gpu_moe;
    let expert_flops_per_layer = 2.0 * p * a.experts_per_token as f64 * expert_params;
    let dense_flops = 2.0 * p * (spec.active_params() - expert_params * a.experts_per_token as f64 * moe_layers);
    // Prefill attention is not absorbed: per position qk + v dims per head; average position p/2.
    let (qk, v) = a.attention_dims();
    let attn_flops = 2.0 * a.num_heads as f64 * (qk + v) as f64 * (p * p / 2.0) * a.full_attention_layers() as f64;
    let cpu_flops = topo.cpu_tflops * 1e12 * eff.cpu_compute_efficiency;
    let cpu_bw = topo.cpu_bandwidth_gbps() * 1e9 * eff.cpu_bandwidth_efficiency;
    let cpu_routed_bytes: f64 = spec
        .routed_layers
        .iter()
        .filter(|(l, _)| mode != "gpu" && !gpu_layers.contains(l))
        .map(|(_, b)| *b as f64)
        .sum();
    let ubatches = (p / opts.ubatch as f64).ceil();
    let Some(g) = topo.gpus.iter().max_by_key(|g| g.vram_bytes).filter(|_| mode != "cpu") else {
        let t = (dense_flops + attn_flops + cpu_moe * expert_flops_per_layer) / cpu_flops;
        let t = t.max(ubatches * cpu_routed_bytes / cpu_bw);
        return (p / t, "cpu".into());
    };
    let gpu_flops = eff.gpu_tflops.unwrap_or(g.tflops) * 1e12 * eff.gpu_compute_efficiency;
    // Attention and dense work of the layers the GPU runs; the rest on the CPU.
    let on_gpu = pl.gpu_attn.layers as f64 / a.num_layers.max(1) as f64;
    let gpu_part = ((dense_flops + attn_flops) * on_gpu + gpu_moe * expert_flops_per_layer) / gpu_flops
        + (dense_flops + attn_flops) * (1.0 - on_gpu) / cpu_flops;
    let on_cpu = (cpu_moe * expert_flops_per_layer / cpu_flops).max(ubatches * cpu_routed_bytes / cpu_bw);
    let largest_layer = spec.routed_layers.iter().map(|(_, b)| *b).max().unwrap_or(0);
    let streamed = (cpu_moe > 0.0 && largest_layer <= gpu_spare).then(|| {
        // The whole prompt is one streaming batch: each CPU layer's experts cross PCIe once.
        cpu_routed_bytes / (g.pcie_gbps * 1e9 * eff.pcie_efficiency) + cpu_moe * expert_flops_per_layer / gpu_flops
    });
    match streamed {
        Some(s) if s < on_cpu => (p / (gpu_part + s), "gpu-stream".into()),
        _ => (p / (gpu_part + on_cpu), if cpu_moe > 0.0 { "cpu".into() } else { "gpu".into() }),
    }
}

/// One sentence naming the largest part of the decode step.
fn bottleneck(spec: &ModelSpec, topo: &Topology, eff: &Efficiency, s: &StepBreakdown, mode: &str) -> String {
    let share = |ms: f64| 100.0 * ms / s.total_ms.max(1e-9);
    let parts = [
        ("cpu_experts", s.cpu_experts_ms - s.overlap_ms),
        ("gpu", s.gpu_ms),
        ("cpu_other", s.cpu_other_ms),
        ("sync", s.sync_ms),
    ];
    let (name, ms) = parts.iter().cloned().fold(("gpu", f64::MIN), |a, b| if b.1 > a.1 { b } else { a });
    let cpu_bw = topo.cpu_bandwidth_gbps() * eff.cpu_bandwidth_efficiency;
    match name {
        "cpu_experts" => format!(
            "CPU memory bandwidth: each step reads {:.1} GB of routed experts from RAM at {:.0} GB/s effective ({:.0}% of the {:.1} ms step).",
            s.cpu_expert_bytes_per_step as f64 / 1e9,
            cpu_bw,
            share(ms),
            s.total_ms
        ),
        "cpu_other" => format!(
            "CPU memory bandwidth: with {}, attention, dense layers and KV cache are read from RAM at {:.0} GB/s effective ({:.0}% of the {:.1} ms step).",
            if mode == "cpu" { "no usable GPU" } else { "this placement" },
            cpu_bw,
            share(ms),
            s.total_ms
        ),
        "sync" if mode == "cpu" => format!(
            "Per-layer synchronisation: thread barriers and cross-node reductions cost {:.1} ms ({:.0}% of the {:.1} ms step).",
            ms,
            share(ms),
            s.total_ms
        ),
        "sync" => format!(
            "CPU-GPU hand-offs: {} per-layer synchronisations cost {:.1} ms ({:.0}% of the {:.1} ms step); fewer CPU expert layers or a calibrated hybrid_sync_us would change this.",
            spec.arch.moe_layers(),
            ms,
            share(ms),
            s.total_ms
        ),
        _ => format!(
            "GPU memory bandwidth: {:.1} GB read from VRAM per step ({:.0}% of the {:.1} ms step).",
            s.gpu_bytes_per_step as f64 / 1e9,
            share(ms),
            s.total_ms
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{ArchKind, Architecture};
    use crate::topology::{CpuNode, GpuInfo};

    const MB: u64 = 1_000_000;

    /// 2 MoE layers of 4 experts (top-2), `expert_mb` MB per expert; attention 50 MB,
    /// lm_head 30 MB, embeddings 20 MB; GQA with 2 KV heads of 128 (2048 B/token).
    fn toy(expert_mb: u64) -> ModelSpec {
        let arch = Architecture {
            kind: ArchKind::Qwen3Moe,
            hidden_size: 1024,
            num_layers: 2,
            vocab_size: 1000,
            num_heads: 8,
            num_kv_heads: 2,
            head_dim: 128,
            intermediate_size: 0,
            first_dense_layers: 0,
            num_experts: 4,
            experts_per_token: 2,
            moe_intermediate_size: 512,
            num_shared_experts: 0,
            mla: None,
            tie_word_embeddings: false,
            sliding_window: None,
            max_context: 8192,
            mtp_layers: 0,
        };
        let mut s = ModelSpec::new("toy", "test", "q8_0", "qwen3_moe", arch, true);
        for l in 0..2 {
            s.add_tensor(Component::RoutedExperts, Some(l), "Q8_0", 1000, 4 * expert_mb * MB);
        }
        s.add_tensor(Component::Attention, Some(0), "Q8_0", 1000, 50 * MB);
        s.add_tensor(Component::LmHead, None, "Q8_0", 1000, 30 * MB);
        s.add_tensor(Component::Embeddings, None, "Q8_0", 1000, 20 * MB);
        s
    }

    fn topo(nodes: u32, node_gb: u64, node_gbps: f64, gpu: Option<(u64, f64)>) -> Topology {
        Topology {
            nodes: (0..nodes)
                .map(|id| CpuNode {
                    id,
                    memory_bytes: node_gb * 1000 * MB,
                    cores: 8,
                    theoretical_gbps: node_gbps,
                    bandwidth_gbps: node_gbps,
                })
                .collect(),
            gpus: gpu
                .map(|(vram, bw)| GpuInfo {
                    index: 0,
                    name: "test GPU".into(),
                    vram_bytes: vram,
                    bandwidth_gbps: bw,
                    pcie_gbps: 32.0,
                    tflops: 100.0,
                })
                .into_iter()
                .collect(),
            memory_total_bytes: nodes as u64 * node_gb * 1000 * MB,
            theoretical_gbps: node_gbps * nodes as f64,
            bandwidth_measured: true,
            // Compute is made free so the hand-computed cases are pure bandwidth.
            cpu_tflops: 1e9,
            cpu_layer_matrices_repacked: false,
            notes: vec![],
        }
    }

    fn opts(context: u64, concurrency: u64) -> PlanOptions {
        let mut o = PlanOptions::new(context, concurrency);
        o.efficiency.gpu_tflops = Some(1e9);
        o.efficiency.gpu_reserve_gib = 0.0;
        o
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    /// The default `cpu_bandwidth_efficiency`.
    const BW_EFF: f64 = 0.91;

    #[test]
    fn default_bandwidth_efficiency_is_the_one_the_tests_use() {
        assert_eq!(Efficiency::default().cpu_bandwidth_efficiency, BW_EFF);
    }

    /// Products of the attention path's matrices add to their streaming when the matrices are
    /// row-major and overlap it in the 16-row layout: with the arithmetic far longer than the
    /// streaming, the two differ by exactly the streaming time.
    #[test]
    fn repacked_layer_matrices_overlap_their_products_with_streaming() {
        let other = |repacked: bool, tflops: f64| {
            let t = Topology { cpu_tflops: tflops, cpu_layer_matrices_repacked: repacked, ..topo(1, 64, 100.0, None) };
            let p = place(&toy(100), "toy", &t, &opts(4096, 1));
            assert_eq!(p.mode, "cpu");
            p.predicted.step.cpu_other_ms
        };
        let stream_ms = 1e3 * (80e6 + 4096.0 * 2048.0) / (100e9 * BW_EFF);
        let (row_major, repacked) = (other(false, 1e-6), other(true, 1e-6));
        assert!(repacked > 10.0 * stream_ms, "arithmetic-bound: {repacked} vs {stream_ms}");
        assert!(close(row_major - repacked, stream_ms), "{row_major} − {repacked} vs {stream_ms}");
        // With free arithmetic both are the streaming alone.
        assert!(close(other(true, 1e9), other(false, 1e9)));
        assert!((other(true, 1e9) - stream_ms).abs() < 1e-6);
    }

    #[test]
    fn cpu_only_decode_step_is_bytes_over_bandwidth() {
        let p = place(&toy(100), "toy", &topo(1, 64, 100.0, None), &opts(4096, 1));
        assert_eq!(p.mode, "cpu");
        let bw = 100e9 * BW_EFF; // measured bandwidth × cpu_bandwidth_efficiency
                                 // 2 layers × 2 experts × 100 MB.
        let experts_ms = 1e3 * 400e6 / bw;
        // attention + lm_head, plus 4096 tokens × 2048 B of KV cache.
        let other_ms = 1e3 * (80e6 + 4096.0 * 2048.0) / bw;
        let st = &p.predicted.step;
        assert!(close(st.cpu_experts_ms, experts_ms), "{} {experts_ms}", st.cpu_experts_ms);
        assert!(close(st.cpu_other_ms, other_ms));
        // 2 layers × 100 µs of thread barriers.
        assert!(close(st.sync_ms, 0.2));
        assert!(close(st.total_ms, experts_ms + other_ms + 0.2));
        assert!(close(p.predicted.decode_tokens_per_s, 1e3 / (experts_ms + other_ms + 0.2)));
    }

    #[test]
    fn concurrency_reads_the_expected_distinct_experts_once_per_step() {
        let p = place(&toy(100), "toy", &topo(1, 64, 100.0, None), &opts(4096, 2));
        let bw = 100e9 * BW_EFF;
        // Two tokens touch 4·(1 − (1 − 2/4)²) = 3 distinct experts per layer.
        let experts_ms = 1e3 * (2.0 * 3.0 * 100e6) / bw;
        let other_ms = 1e3 * (80e6 + 2.0 * 4096.0 * 2048.0) / bw;
        let st = &p.predicted.step;
        assert!(close(st.cpu_experts_ms, experts_ms));
        assert!(close(p.predicted.decode_tokens_per_s_total, 2e3 / (experts_ms + other_ms + 0.2)));
    }

    #[test]
    fn hybrid_step_adds_gpu_time_and_per_layer_hand_offs() {
        // 200 MB of VRAM holds attention + lm_head + KV + buffers, not a 400 MB expert layer.
        let p = place(&toy(100), "toy", &topo(1, 64, 100.0, Some((200 * MB, 1000.0))), &opts(4096, 1));
        assert_eq!(p.mode, "hybrid");
        assert!(p.gpu_expert_layers.is_empty());
        let st = &p.predicted.step;
        let gpu_ms = 1e3 * (80e6 + 4096.0 * 2048.0) / (1000e9 * 0.8) + 2.0 * 0.020;
        // 160 µs per CPU expert layer + the hidden state (2 × 1024 × 4 B) over 32 GB/s × 0.8.
        let sync_ms = 2.0 * (0.160 + 1e3 * 8192.0 / (32e9 * 0.8));
        assert!(close(st.gpu_ms, gpu_ms), "{} {gpu_ms}", st.gpu_ms);
        assert!(close(st.sync_ms, sync_ms), "{} {sync_ms}", st.sync_ms);
        assert!(close(st.cpu_experts_ms, 1e3 * 400e6 / (100e9 * BW_EFF)));
        assert!(close(st.total_ms, st.cpu_experts_ms + gpu_ms + sync_ms));
    }

    #[test]
    fn spare_vram_takes_whole_layers_and_small_models_go_to_the_gpu() {
        // 700 MB: the attention path (~130 MB) plus one 400 MB layer.
        let p = place(&toy(100), "toy", &topo(1, 64, 100.0, Some((700 * MB, 1000.0))), &opts(4096, 1));
        assert_eq!(p.gpu_expert_layers, vec![1]);
        let gpu = p.devices.iter().find(|d| d.kind == "gpu").unwrap();
        assert_eq!(gpu.weights_bytes, 80 * MB + 400 * MB);
        assert!(gpu.free_bytes >= 0);
        let p = place(&toy(100), "toy", &topo(1, 64, 100.0, Some((2000 * MB, 1000.0))), &opts(4096, 1));
        assert_eq!(p.mode, "gpu");
        assert!(p.devices.iter().filter(|d| d.kind == "cpu").all(|d| d.weights_bytes == 0));
    }

    #[test]
    fn numa_replicates_when_a_copy_fits_each_node_else_splits() {
        // Nodes of 10 GB keep 4 GiB / 2 for the OS: ~7.85 GB usable each.
        let small = place(&toy(500), "toy", &topo(2, 10, 100.0, None), &opts(1024, 1));
        assert_eq!(small.numa.policy, "replicate");
        assert_eq!(small.devices[0].weights_bytes, 4000 * MB + 50 * MB);
        let big = place(&toy(1000), "toy", &topo(2, 10, 100.0, None), &opts(1024, 1));
        assert_eq!(big.numa.policy, "split");
        assert_eq!(big.devices[0].weights_bytes, 4000 * MB + 50 * MB);
        assert!(big.fits && small.fits);
        // Split adds a cross-node sync per CPU expert layer.
        let bw = 200e9 * BW_EFF;
        let expect = 1e3 * 4.0 * 1000e6 / bw;
        assert!(close(big.predicted.step.cpu_experts_ms, expect));
        assert!(close(big.predicted.step.sync_ms, 2.0 * 0.100 + 2.0 * 0.010));
    }

    #[test]
    fn a_small_gpu_takes_the_leading_layers_attention_and_kv() {
        // Attention split over both layers (25 MB each).
        let mut spec = toy(100);
        spec.components.remove(&Component::Attention);
        spec.layer_path.clear();
        spec.add_tensor(Component::Attention, Some(0), "Q8_0", 500, 25 * MB);
        spec.add_tensor(Component::Attention, Some(1), "Q8_0", 500, 25 * MB);
        // 110 MB: lm_head (30 MB) + buffers (44 MB) + layer 0 (25 MB + 4.2 MB of KV), not layer 1.
        let p = place(&spec, "toy", &topo(1, 64, 100.0, Some((110 * MB, 1000.0))), &opts(4096, 1));
        assert_eq!(p.mode, "partial");
        let kv_layer = 4096 * 2048 / 2;
        let gpu = p.devices.iter().find(|d| d.kind == "gpu").unwrap();
        assert_eq!((gpu.weights_bytes, gpu.kv_bytes), (55 * MB, kv_layer));
        let cpu = &p.devices[0];
        assert_eq!((cpu.weights_bytes, cpu.kv_bytes), (800 * MB + 20 * MB + 25 * MB, kv_layer));
        let attn: Vec<_> = p.placement.iter().filter(|x| x.component == "attention").collect();
        assert_eq!(attn[0].layers.as_deref(), Some("0-0"));
        assert_eq!((attn[0].bytes, attn[1].bytes), (25 * MB, 25 * MB));
        let st = &p.predicted.step;
        let kv_read = 4096.0 * 2048.0;
        let gpu_ms = 1e3 * (55e6 + kv_read / 2.0) / 800e9 + 0.020;
        let cpu_other_ms = 1e3 * (25e6 + kv_read / 2.0) / (100e9 * BW_EFF);
        // Layer 0's experts hand off from the GPU, plus the GPU→CPU boundary; layer 1 barriers.
        let sync_ms = 2.0 * (0.160 + 1e3 * 8192.0 / (32e9 * 0.8)) + 0.100;
        assert!(close(st.gpu_ms, gpu_ms), "{} {gpu_ms}", st.gpu_ms);
        assert!(close(st.cpu_other_ms, cpu_other_ms), "{} {cpu_other_ms}", st.cpu_other_ms);
        assert!(close(st.sync_ms, sync_ms), "{} {sync_ms}", st.sync_ms);
        assert!(p.fits);
    }

    #[test]
    fn numa_and_threads_can_be_forced() {
        let mut o = opts(1024, 1);
        o.numa = NumaChoice::Split;
        o.threads_per_node = 6;
        let p = place(&toy(500), "toy", &topo(2, 10, 100.0, None), &o);
        assert_eq!(p.numa.policy, "split");
        assert_eq!(p.numa.threads_per_node, vec![6, 6]);
        o.numa = NumaChoice::Replicate;
        let p = place(&toy(1000), "toy", &topo(2, 10, 100.0, None), &o);
        assert_eq!(p.numa.policy, "replicate");
        assert!(!p.fits, "a copy per node does not fit 10 GB nodes");
    }

    #[test]
    fn shortfall_is_the_bytes_missing() {
        let p = place(&toy(1000), "toy", &topo(1, 8, 100.0, None), &opts(1024, 1));
        assert!(!p.fits);
        let d = &p.devices[0];
        let need = d.reserved_bytes + d.weights_bytes + d.kv_bytes + d.other_bytes;
        assert_eq!(p.shortfall_bytes, need - d.capacity_bytes);
    }

    #[test]
    fn plan_toml_round_trips() {
        let p = place(&toy(100), "toy", &topo(2, 64, 100.0, Some((700 * MB, 1000.0))), &opts(4096, 2));
        let back = Plan::from_toml_str(&p.to_toml_string().unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn layer_ranges_compress_runs() {
        assert_eq!(layer_ranges(&[3, 4, 5, 7, 9, 10]), "3-5,7,9-10");
        assert_eq!(layer_ranges(&[]), "");
    }

    #[test]
    fn largest_finds_the_boundary() {
        assert_eq!(largest(1, 100, |x| x <= 37), Some(37));
        assert_eq!(largest(1, 100, |_| false), None);
        assert_eq!(largest(1, 100, |_| true), Some(100));
    }
}
