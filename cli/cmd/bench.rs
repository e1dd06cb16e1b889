//! `hy bench`: measure the box and the engine, as ratios to the hardware limit.
//!
//! - `memory`: read and triad bandwidth per NUMA node and in total (the probe's benchmark).
//! - `moe`: the routed-expert pass of a DeepSeek-V3-shape layer (synthetic weights in RAM,
//!   placed on the NUMA node of the threads that read them), timed per layer and per token,
//!   next to a plain read of the same memory by the same threads, measured in the same run,
//!   and the same read with the kernels' software prefetch (a higher ceiling on some CPUs).

use std::time::Instant;

use anyhow::Context;
use hy_engine::dtype::GgmlType;
use hy_engine::kernels::{x16, QMatrix, WeightType};
use hy_engine::runtime::experts::{self, ExpertMats};
use hy_engine::runtime::pool::{share, share_aligned, Pool, SyncPtr, ThreadLayout};
use hy_engine::synth;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::exit;
use crate::probe::{self, bandwidth};

#[derive(clap::Args)]
#[command(about = "Measure memory bandwidth and engine speed (ratios to the hardware limit)")]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(clap::Subcommand)]
pub enum What {
    /// Read and triad bandwidth per NUMA node and for the whole machine (pinned threads).
    Memory(MemoryArgs),
    /// Time the routed-expert (MoE) pass per layer and per token against the read bandwidth
    /// of the same threads (plain, and with the kernels' software prefetch), on synthetic
    /// weights with a real model's shapes.
    Moe(MoeArgs),
    /// End-to-end prefill and decode tok/s of a model (batch 1 and N) next to the planner's
    /// prediction for this box; `--save` writes a calibration file for `hy plan`.
    Decode(DecodeArgs),
}

#[derive(clap::Args)]
pub struct DecodeArgs {
    /// A local GGUF file or HF folder.
    pub model: std::path::PathBuf,
    /// Prompt tokens for the prefill measurement (timed after one untimed warm-up prefill).
    #[arg(long, default_value_t = 64)]
    pub prompt: usize,
    /// Tokens generated per sequence for the decode measurement.
    #[arg(long, default_value_t = 32)]
    pub gen: usize,
    /// Batch sizes (sequences decoded together), comma-separated.
    #[arg(long, default_value = "1,4", value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Compute threads (default: all CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write a calibration file (TOML) with the efficiencies these measurements imply; pass
    /// it to `hy plan --calibration FILE`.
    #[arg(long, value_name = "FILE")]
    pub save: Option<std::path::PathBuf>,
    /// Efficiencies the prediction starts from (default: the planner's defaults).
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<std::path::PathBuf>,
    /// Run routed experts through the generic kernels instead of the pinned expert pool
    /// (for comparison).
    #[arg(long)]
    pub no_expert_pool: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct MemoryArgs {
    /// Threads per NUMA node (default: every CPU of the node).
    #[arg(long)]
    pub threads_per_node: Option<usize>,
    /// Bytes per thread array in MiB (default: several times the last-level cache).
    #[arg(long)]
    pub mib_per_thread: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct MoeArgs {
    /// Model shape: deepseek-v3 (= deepseek-r1) or kimi-k2. Weights are synthetic (random).
    #[arg(long, default_value = "deepseek-v3")]
    pub synth: String,
    /// Expert weight format: q4_k, q8_0, q6_k, q5_k, q3_k, q2_k, fp8 (e4m3, 128×128 block scales).
    /// Repacked 16 rows at a time where the engine's loader would repack them (Q4_K, Q6_K on
    /// AVX-512 VNNI CPUs; without AMX also Q8_0, Q5_0, Q4_0; `HY_REPACK=0` keeps the file
    /// layout).
    #[arg(long, default_value = "q4_k")]
    pub quant: String,
    /// Sequences decoded together; each step reads the experts any of them selects once.
    /// A comma-separated list runs several batch sizes.
    #[arg(long, default_value = "1", value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Worker threads (default: all CPUs this process may use), pinned one per CPU.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Split the threads into this many simulated NUMA nodes (default: the real nodes).
    #[arg(long)]
    pub simulate_nodes: Option<usize>,
    /// Distinct MoE layers of weights held in RAM (each DeepSeek-V3 Q4_K layer is 6.3 GB);
    /// default: as many as fit in a quarter of free memory, at most 4, at least 1.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Experts per layer to allocate (default: the model's count); fewer saves memory, but
    /// the set must stay much larger than the caches.
    #[arg(long)]
    pub experts: Option<usize>,
    /// Timed decode steps (each runs every held layer once).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    match args.what {
        What::Memory(a) => memory(a),
        What::Moe(a) => moe(a),
        What::Decode(a) => super::bench_decode::run(a),
    }
}

fn memory(args: MemoryArgs) -> anyhow::Result<i32> {
    let probed = probe::probe(&probe::ProbeOptions { gpu: false, ..probe::ProbeOptions::live() });
    let llc: Option<u64> = probed.spec.cpu.caches.iter().filter(|c| c.level >= 3).map(|c| c.size_bytes).max();
    let threads = probed.spec.numa_nodes.iter().map(|n| n.cpus.len()).sum::<usize>().max(1);
    let cfg = bandwidth::BenchConfig {
        bytes_per_thread: args
            .mib_per_thread
            .map(|m| m << 20)
            .unwrap_or_else(|| bandwidth::default_bytes_per_thread(llc, threads, Some(probed.spec.memory.total_bytes))),
        repetitions: 5,
        threads_per_node: args.threads_per_node,
    };
    let m = bandwidth::measure(&probed.spec.numa_nodes, &cfg, &mut |_| {}).context("measuring memory bandwidth")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&m.bandwidth)?);
        return Ok(exit::OK);
    }
    println!("{:<10} {:>8} {:>12} {:>12}", "scope", "threads", "read GB/s", "triad GB/s");
    for n in &m.bandwidth.per_node {
        println!("{:<10} {:>8} {:>12.1} {:>12.1}", format!("node {}", n.node), n.threads, n.read_gbps, n.triad_gbps);
    }
    println!(
        "{:<10} {:>8} {:>12.1} {:>12.1}",
        "total", m.bandwidth.threads, m.bandwidth.read_gbps, m.bandwidth.triad_gbps
    );
    if let Some(t) = probed.spec.memory.theoretical_bandwidth_gbps {
        println!("theoretical: {t:.1} GB/s (read = {:.0}% of it)", 100.0 * m.bandwidth.read_gbps / t);
    }
    for n in m.notes {
        eprintln!("note: {n}");
    }
    Ok(exit::OK)
}

/// One row of the `bench moe` report.
#[derive(Serialize)]
struct MoeRow {
    model: String,
    quant: String,
    /// How the experts are stored: `16-row` (repacked as the engine's loader repacks them) or
    /// `row-major` (the file's layout).
    layout: &'static str,
    batch: usize,
    threads: usize,
    nodes: usize,
    layers_held: usize,
    experts_per_layer: usize,
    /// Mean distinct experts read per layer per step.
    distinct_experts: f64,
    /// Routed-expert pass time per layer per step, microseconds.
    layer_us: f64,
    /// Weight bytes read per layer per step.
    layer_bytes: f64,
    achieved_gbps: f64,
    /// Plain read of the same weight memory by the same threads, same run.
    read_gbps: f64,
    ratio_to_read: f64,
    /// The same read with the kernels' software prefetch: the higher ceiling where cores
    /// stream faster with prefetches.
    prefetched_read_gbps: f64,
    ratio_to_prefetched_read: f64,
    /// MoE time per decode step for all MoE layers of the full model, milliseconds.
    full_model_moe_ms_per_step: f64,
    /// Aggregate tokens per second that the MoE part alone allows (batch / step time).
    moe_tokens_per_s: f64,
    synthetic_weights: bool,
}

fn moe(args: MoeArgs) -> anyhow::Result<i32> {
    let shape = super::synth::shape_for(&args.synth)?;
    let fmt = ExpertFormat::parse(&args.quant).ok_or_else(|| {
        exit::coded(
            exit::USAGE,
            format!("unknown expert format '{}': use q4_k, q8_0, q6_k, q5_k, q3_k, q2_k or fp8", args.quant),
        )
    })?;
    if args.batch.contains(&0) || args.steps == 0 {
        return Err(exit::coded(exit::USAGE, "--batch and --steps must be at least 1"));
    }
    let layout = thread_layout(args.threads, args.simulate_nodes);
    let pool = Pool::new(layout.clone());
    let n_experts =
        args.experts.unwrap_or(shape.n_experts as usize).clamp(shape.n_experts_used as usize, shape.n_experts as usize);
    let (hidden, n_ff) = (shape.hidden as usize, shape.moe_intermediate as usize);
    let layer_bytes = n_experts * fmt.expert_bytes(hidden, n_ff);
    let layers = args.layers.unwrap_or_else(|| default_layers(layer_bytes)).max(1);
    let storage = if fmt.repacked(hidden, n_ff) { "16-row" } else { "row-major" };
    eprintln!(
        "bench moe: {} experts × {} layers of {} in the {storage} layout ({:.1} GB, synthetic weights), {} threads on {} node(s)",
        n_experts,
        layers,
        args.quant,
        (layers * layer_bytes) as f64 / 1e9,
        pool.threads(),
        layout.nodes.len()
    );
    let held: Vec<LayerWeights> = (0..layers)
        .map(|l| LayerWeights::place(&pool, fmt, n_experts, hidden, n_ff, l as u64))
        .collect::<anyhow::Result<_>>()?;
    let views: Vec<Vec<ExpertMats>> = held.iter().map(|l| l.views(fmt, hidden, n_ff)).collect::<anyhow::Result<_>>()?;

    // Ceiling: the same threads reading the same bytes they own.
    let buffers: Vec<&[u8]> = held.iter().flat_map(|l| l.buffers()).collect();
    let total: usize = buffers.iter().map(|b| b.len()).sum();
    let best_of_3 = |read: &dyn Fn() -> u64| {
        read();
        (0..3)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(read());
                total as f64 / t.elapsed().as_secs_f64() / 1e9
            })
            .fold(0.0, f64::max)
    };
    let read_gbps = best_of_3(&|| experts::read_all(&pool, &buffers));
    let pf = hy_engine::kernels::simd::prefetch_distance();
    let prefetched_read_gbps = best_of_3(&|| experts::read_all_prefetched(&pool, &buffers, pf));

    let n_moe_layers = (shape.n_layers - shape.n_dense_layers) as f64;
    let mut rows = Vec::new();
    for &batch in &args.batch {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let x: Vec<f32> = (0..batch * hidden).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut out = vec![0f32; batch * hidden];
        let mut run_step = |rng: &mut rand::rngs::StdRng| {
            let mut bytes = 0usize;
            let mut distinct = 0usize;
            for layer in &views {
                let routes = random_routes(rng, batch, n_experts, shape.n_experts_used as usize);
                let d = experts::distinct_experts(&routes);
                distinct += d;
                bytes += d * layer[0].bytes();
                experts::expert_pass(&pool, layer, &x, &routes, &mut out);
            }
            (bytes, distinct)
        };
        run_step(&mut rng); // warm-up
        let t = Instant::now();
        let (mut bytes, mut distinct) = (0usize, 0usize);
        for _ in 0..args.steps {
            let (b, d) = run_step(&mut rng);
            bytes += b;
            distinct += d;
        }
        let secs = t.elapsed().as_secs_f64();
        let passes = (args.steps * layers) as f64;
        let layer_us = secs / passes * 1e6;
        let achieved = bytes as f64 / secs / 1e9;
        rows.push(MoeRow {
            model: shape.name.clone(),
            quant: args.quant.to_ascii_uppercase(),
            layout: storage,
            batch,
            threads: pool.threads(),
            nodes: layout.nodes.len(),
            layers_held: layers,
            experts_per_layer: n_experts,
            distinct_experts: distinct as f64 / passes,
            layer_us,
            layer_bytes: bytes as f64 / passes,
            achieved_gbps: achieved,
            read_gbps,
            ratio_to_read: achieved / read_gbps,
            prefetched_read_gbps,
            ratio_to_prefetched_read: achieved / prefetched_read_gbps,
            full_model_moe_ms_per_step: layer_us * n_moe_layers / 1e3,
            moe_tokens_per_s: batch as f64 / (layer_us * n_moe_layers / 1e6),
            synthetic_weights: true,
        });
    }
    print_moe(&rows, args.json)?;
    Ok(exit::OK)
}

fn print_moe(rows: &[MoeRow], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    println!(
        "{:<6} {:>5} {:>7} {:>9} {:>10} {:>10} {:>10} {:>10} {:>7} {:>10} {:>7} {:>12} {:>10}",
        "quant",
        "batch",
        "threads",
        "experts",
        "layer µs",
        "MB/layer",
        "GB/s",
        "read GB/s",
        "ratio",
        "pf GB/s",
        "ratio",
        "58-layer ms",
        "MoE tok/s"
    );
    for r in rows {
        println!(
            "{:<6} {:>5} {:>7} {:>9.1} {:>10.0} {:>10.1} {:>10.1} {:>10.1} {:>6.0}% {:>10.1} {:>6.0}% {:>12.1} {:>10.1}",
            r.quant,
            r.batch,
            r.threads,
            r.distinct_experts,
            r.layer_us,
            r.layer_bytes / 1e6,
            r.achieved_gbps,
            r.read_gbps,
            100.0 * r.ratio_to_read,
            r.prefetched_read_gbps,
            100.0 * r.ratio_to_prefetched_read,
            r.full_model_moe_ms_per_step,
            r.moe_tokens_per_s
        );
    }
    println!(
        "({}; 'read GB/s' is a plain read of the same memory by the same threads in this run, \
         'pf GB/s' the same read with the kernels' software prefetch)",
        rows.first().map(|r| r.model.as_str()).unwrap_or("?")
    );
    Ok(())
}

/// Uniformly random distinct experts per token with weights summing to 1.
fn random_routes(rng: &mut impl Rng, batch: usize, n_experts: usize, k: usize) -> Vec<Vec<(usize, f32)>> {
    (0..batch)
        .map(|_| {
            let mut chosen: Vec<usize> = Vec::with_capacity(k);
            while chosen.len() < k {
                let e = rng.gen_range(0..n_experts);
                if !chosen.contains(&e) {
                    chosen.push(e);
                }
            }
            chosen.into_iter().map(|e| (e, 1.0 / k as f32)).collect()
        })
        .collect()
}

/// Threads pinned one per allowed CPU, grouped by NUMA node (or split into simulated nodes).
pub(super) fn thread_layout(threads: Option<usize>, simulate: Option<usize>) -> ThreadLayout {
    let probed = probe::probe(&probe::ProbeOptions { gpu: false, cpuid: false, ..probe::ProbeOptions::live() });
    let allowed = allowed_cpus();
    let mut nodes: Vec<Vec<usize>> = probed
        .spec
        .numa_nodes
        .iter()
        .map(|n| {
            n.cpus.iter().map(|&c| c as usize).filter(|c| allowed.as_ref().is_none_or(|a| a.contains(c))).collect()
        })
        .filter(|v: &Vec<usize>| !v.is_empty())
        .collect();
    if nodes.is_empty() {
        nodes = vec![allowed.clone().unwrap_or_else(|| (0..num_cpus()).collect())];
    }
    if let Some(t) = threads {
        // Take threads round-robin over nodes so each node contributes equally.
        let mut picked = vec![Vec::new(); nodes.len()];
        let mut i = 0;
        while picked.iter().map(Vec::len).sum::<usize>() < t.min(nodes.iter().map(Vec::len).sum()) {
            let n = i % nodes.len();
            if let Some(&c) = nodes[n].get(picked[n].len()) {
                picked[n].push(c);
            }
            i += 1;
        }
        nodes = picked.into_iter().filter(|v| !v.is_empty()).collect();
    }
    if let Some(k) = simulate {
        let all: Vec<usize> = nodes.concat();
        let k = k.clamp(1, all.len());
        nodes = (0..k).map(|i| all[share(all.len(), k, i)].to_vec()).collect();
    }
    ThreadLayout { nodes, pin: true }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// CPUs this process may run on (Linux affinity mask), as the probe reads them.
fn allowed_cpus() -> Option<Vec<usize>> {
    bandwidth::allowed_cpus().map(|v| v.into_iter().map(|c| c as usize).collect())
}

fn default_layers(layer_bytes: usize) -> usize {
    let avail = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(8 << 30);
    (avail / 4 / layer_bytes.max(1)).clamp(1, 4)
}

#[derive(Clone, Copy)]
enum ExpertFormat {
    Ggml(GgmlType),
    Fp8,
}

impl ExpertFormat {
    fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "fp8" | "fp8_e4m3" => ExpertFormat::Fp8,
            "q4_k" | "q4_k_m" => ExpertFormat::Ggml(GgmlType::Q4_K),
            "q8_0" => ExpertFormat::Ggml(GgmlType::Q8_0),
            "q6_k" => ExpertFormat::Ggml(GgmlType::Q6_K),
            "q5_k" => ExpertFormat::Ggml(GgmlType::Q5_K),
            "q3_k" => ExpertFormat::Ggml(GgmlType::Q3_K),
            "q2_k" => ExpertFormat::Ggml(GgmlType::Q2_K),
            _ => return None,
        })
    }

    /// Bytes of a `rows × cols` matrix (data only).
    fn matrix_bytes(self, rows: usize, cols: usize) -> usize {
        match self {
            ExpertFormat::Ggml(t) => rows * t.bytes_for(cols as u64).unwrap_or(0) as usize,
            ExpertFormat::Fp8 => rows * cols,
        }
    }

    fn scale_bytes(self, rows: usize, cols: usize) -> usize {
        match self {
            ExpertFormat::Ggml(_) => 0,
            ExpertFormat::Fp8 => rows.div_ceil(128) * cols.div_ceil(128) * 4,
        }
    }

    fn expert_bytes(self, hidden: usize, n_ff: usize) -> usize {
        2 * (self.matrix_bytes(n_ff, hidden) + self.scale_bytes(n_ff, hidden))
            + self.matrix_bytes(hidden, n_ff)
            + self.scale_bytes(hidden, n_ff)
    }

    /// Random valid weights (finite block scales, FP8 bytes that are never NaN) on the
    /// calling thread, which places the pages on its NUMA node.
    fn fill(self, buf: &mut [u8], seed: u64) {
        match self {
            ExpertFormat::Ggml(t) => synth::fill_random_serial(t, buf, seed),
            ExpertFormat::Fp8 => synth::fill_fp8_serial(buf, seed),
        }
    }

    fn row_bytes(self, cols: usize) -> usize {
        self.matrix_bytes(1, cols)
    }

    /// Whether experts of this format are repacked 16 rows at a time, as the engine's loader
    /// repacks routed experts (`x16::repacks_experts`).
    fn repacked(self, hidden: usize, n_ff: usize) -> bool {
        let ExpertFormat::Ggml(t) = self else { return false };
        x16::repacks_experts(t) && x16::fits(t, n_ff, hidden) && x16::fits(t, hidden, n_ff)
    }
}

/// One MoE layer's expert weights in anonymous memory, first touched by the threads that will
/// read them (thread t writes rows `share_aligned(rows, T, t, 16)` of every expert), so with
/// pinned threads each row range lives on its reader's NUMA node. Layout: [gate | up | down],
/// each `n_experts` matrices back to back, plus FP8 scale buffers. Q4_K and Q6_K are repacked
/// into the 16-row layout where the engine would repack them at load (`kernels::x16`).
struct LayerWeights {
    gate: memmap2::MmapMut,
    up: memmap2::MmapMut,
    down: memmap2::MmapMut,
    scales: Vec<Vec<u8>>,
    repacked: bool,
}

impl LayerWeights {
    fn place(
        pool: &Pool,
        fmt: ExpertFormat,
        n_experts: usize,
        hidden: usize,
        n_ff: usize,
        layer: u64,
    ) -> anyhow::Result<Self> {
        let gu = fmt.matrix_bytes(n_ff, hidden);
        let dn = fmt.matrix_bytes(hidden, n_ff);
        let anon =
            |n: usize| memmap2::MmapMut::map_anon(n).with_context(|| format!("allocating {n} bytes of expert weights"));
        let (mut gate, mut up, mut down) = (anon(n_experts * gu)?, anon(n_experts * gu)?, anon(n_experts * dn)?);
        let repacked = fmt.repacked(hidden, n_ff);
        let bases = [
            (SyncPtr(gate.as_mut_ptr()), gu, n_ff, hidden),
            (SyncPtr(up.as_mut_ptr()), gu, n_ff, hidden),
            (SyncPtr(down.as_mut_ptr()), dn, hidden, n_ff),
        ];
        pool.run(&|t| {
            for (k, &(base, mat_bytes, rows, cols)) in bases.iter().enumerate() {
                let rb = fmt.row_bytes(cols);
                let mine = share_aligned(rows, pool.threads(), t, x16::ROWS);
                for e in 0..n_experts {
                    let start = e * mat_bytes + mine.start * rb;
                    let len = mine.len() * rb;
                    // SAFETY: [start, start+len) lies inside this buffer (row range of expert
                    // e) and no other thread writes it.
                    let slice = unsafe { std::slice::from_raw_parts_mut(base.ptr().add(start), len) };
                    fmt.fill(slice, layer * 1_000_003 + (k * n_experts + e) as u64 * 7919 + t as u64);
                    if let (true, ExpertFormat::Ggml(ty)) = (repacked, fmt) {
                        let plain = slice.to_vec();
                        x16::repack(ty, &plain, cols, slice);
                    }
                }
            }
        });
        let scales = match fmt {
            ExpertFormat::Ggml(_) => Vec::new(),
            ExpertFormat::Fp8 => {
                let mk = |rows: usize, cols: usize| {
                    let n = fmt.scale_bytes(rows, cols) / 4 * n_experts;
                    (0..n).flat_map(|i| (1e-3f32 * (1.0 + (i % 7) as f32 / 7.0)).to_le_bytes()).collect::<Vec<u8>>()
                };
                vec![mk(n_ff, hidden), mk(n_ff, hidden), mk(hidden, n_ff)]
            }
        };
        Ok(LayerWeights { gate, up, down, scales, repacked })
    }

    fn buffers(&self) -> Vec<&[u8]> {
        vec![&self.gate[..], &self.up[..], &self.down[..]]
    }

    fn views<'w>(&'w self, fmt: ExpertFormat, hidden: usize, n_ff: usize) -> anyhow::Result<Vec<ExpertMats<'w>>> {
        let gu = fmt.matrix_bytes(n_ff, hidden);
        let dn = fmt.matrix_bytes(hidden, n_ff);
        let n_experts = self.gate.len() / gu.max(1);
        let mat = |buf: &'w [u8], scales: Option<&'w [u8]>, e: usize, rows: usize, cols: usize, bytes: usize| {
            let m = expert_matrix(fmt, buf, scales, e, rows, cols, bytes)?;
            Ok::<_, anyhow::Error>(match (self.repacked, m.ty) {
                (true, WeightType::Ggml(t)) => QMatrix { ty: WeightType::X16(t), ..m },
                _ => m,
            })
        };
        let sc = |k: usize| self.scales.get(k).map(|v| v.as_slice());
        (0..n_experts)
            .map(|e| {
                Ok(ExpertMats {
                    gate: mat(&self.gate, sc(0), e, n_ff, hidden, gu)?,
                    up: mat(&self.up, sc(1), e, n_ff, hidden, gu)?,
                    down: mat(&self.down, sc(2), e, hidden, n_ff, dn)?,
                })
            })
            .collect()
    }
}

/// Expert `e`'s matrix view inside a buffer of back-to-back matrices of `bytes` each.
fn expert_matrix<'w>(
    fmt: ExpertFormat,
    buf: &'w [u8],
    scales: Option<&'w [u8]>,
    e: usize,
    rows: usize,
    cols: usize,
    bytes: usize,
) -> anyhow::Result<QMatrix<'w>> {
    let data = &buf[e * bytes..(e + 1) * bytes];
    Ok(match (fmt, scales) {
        (ExpertFormat::Ggml(t), _) => QMatrix::new(t, rows, cols, data)?,
        (ExpertFormat::Fp8, Some(s)) => {
            let sb = fmt.scale_bytes(rows, cols);
            QMatrix::new_fp8(rows, cols, data, &s[e * sb..(e + 1) * sb])?
        }
        (ExpertFormat::Fp8, None) => anyhow::bail!("FP8 weights without scales"),
    })
}
