//! `hy bench decode MODEL`: end-to-end prefill and decode speed of the engine on this box,
//! next to what the planner predicts for the same model, box (CPU only, as the engine runs
//! today) and memory bandwidth measured in the same run. `--save` writes the efficiencies
//! that make the prediction match, as a calibration file for `hy plan --calibration`.

use std::time::Instant;

use anyhow::Context;
use hy_engine::models::loader::{self, LoadOptions};
use hy_engine::models::{Logits, Model};
use hy_planner::hardware::HardwareSpec;
use hy_planner::plan::{plan, ModelInput, PlanOptions, QuantChoice};
use hy_planner::{Efficiency, MAX_CPU_BANDWIDTH_EFFICIENCY};
use serde::Serialize;

use super::bench::DecodeArgs;
use crate::exit;
use crate::model_source;
use crate::probe::bandwidth;

#[derive(Serialize)]
struct Row {
    batch: usize,
    prefill_tokens: usize,
    prefill_tokens_per_s: f64,
    /// Aggregate over the batch.
    decode_tokens_per_s: f64,
    predicted_decode_tokens_per_s: f64,
    predicted_prefill_tokens_per_s: f64,
    /// Prediction after calibrating on batch 1 (the efficiencies written by `--save`).
    calibrated_decode_tokens_per_s: f64,
    calibrated_prefill_tokens_per_s: f64,
}

#[derive(Serialize)]
struct Report {
    model: String,
    threads: usize,
    read_gbps: f64,
    rows: Vec<Row>,
    calibration: Efficiency,
}

pub fn run(args: DecodeArgs) -> anyhow::Result<i32> {
    if args.batch.contains(&0) || args.gen == 0 || args.prompt == 0 {
        return Err(exit::coded(exit::USAGE, "--batch, --gen and --prompt must be at least 1"));
    }
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().context("starting compute threads")?;
    let model = loader::load(&args.model, &LoadOptions::default())
        .with_context(|| format!("loading {}", args.model.display()))?;
    // Measure before the expert pool exists: its pinned workers would compete with the benchmark.
    let hw = measured_cpu_box(threads)?;
    if !args.no_expert_pool {
        // Routed experts run on pinned threads that claim row ranges of their node (runtime::experts).
        let layout = super::bench::thread_layout(Some(threads), None);
        hy_engine::models::moe::set_expert_pool(Some(hy_engine::runtime::pool::Pool::new(layout)));
    }
    let read_gbps = hw.measured.as_ref().map(|m| m.read_gbps).unwrap_or(0.0);
    let input = model_source::resolve(&args.model.to_string_lossy(), QuantChoice::Auto, false)?;
    let base = match &args.calibration {
        Some(p) => {
            Efficiency::from_toml_str(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
                .map_err(|e| exit::coded(exit::INVALID_INPUT, format!("{}: {e}", p.display())))?
        }
        None => Efficiency::default(),
    };

    warm_up(model.as_ref(), args.prompt)?;
    let mut measured = Vec::new();
    for &b in &args.batch {
        eprintln!("bench decode: batch {b}, {} prompt tokens, {} generated, {threads} threads", args.prompt, args.gen);
        measured.push((b, measure(model.as_ref(), b, args.prompt, args.gen)?));
        hy_engine::runtime::profile::report();
    }
    let context = (args.prompt + args.gen) as u64;
    let predict = |eff: &Efficiency, b: usize| predict(&input, &hw, eff, context, b as u64);
    let calibrated = calibrate(&base, &measured, predict)?;
    let mut rows = Vec::new();
    for (b, m) in &measured {
        let (pd, pp) = predict(&base, *b)?;
        let (cd, cp) = predict(&calibrated, *b)?;
        rows.push(Row {
            batch: *b,
            prefill_tokens: args.prompt,
            prefill_tokens_per_s: m.prefill,
            decode_tokens_per_s: m.decode,
            predicted_decode_tokens_per_s: pd,
            predicted_prefill_tokens_per_s: pp,
            calibrated_decode_tokens_per_s: cd,
            calibrated_prefill_tokens_per_s: cp,
        });
    }
    let report = Report { model: model.info().name.clone(), threads, read_gbps, rows, calibration: calibrated };
    if let Some(path) = &args.save {
        let text = format!(
            "# hy calibration: efficiencies measured by `hy bench decode {}` ({} threads, read {:.1} GB/s)\n{}",
            args.model.display(),
            threads,
            read_gbps,
            toml::to_string(&report.calibration)?
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote calibration to {} (use: hy plan MODEL --calibration {})", path.display(), path.display());
    }
    print(&report, args.json)?;
    Ok(exit::OK)
}

struct Measured {
    prefill: f64,
    decode: f64,
}

/// Deterministic token ids spread over the vocabulary.
fn tokens(n: usize, vocab: usize, salt: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + salt * 104_729 + 13) % vocab.max(1)) as u32).collect()
}

/// One untimed prefill before anything is timed: the first use of the engine's scratch
/// buffers and of its threads' stacks, as llama-bench warms up before it times. The profile
/// is cleared after it.
fn warm_up(model: &dyn Model, prompt: usize) -> anyhow::Result<()> {
    let mut warm = model.new_state(prompt + 1);
    model.forward(&mut warm, &tokens(prompt, model.info().vocab_size, 999), Logits::Last)?;
    hy_engine::runtime::profile::reset();
    Ok(())
}

/// Prefill of the first sequence (timed), the others untimed, then `gen` batched decode steps.
fn measure(model: &dyn Model, batch: usize, prompt: usize, gen: usize) -> anyhow::Result<Measured> {
    let vocab = model.info().vocab_size;
    let mut states: Vec<_> = (0..batch).map(|_| model.new_state(prompt + gen + 1)).collect();
    let mut prefill = 0.0;
    for (i, s) in states.iter_mut().enumerate() {
        let t = Instant::now();
        model.forward(s, &tokens(prompt, vocab, i), Logits::Last)?;
        if i == 0 {
            prefill = prompt as f64 / t.elapsed().as_secs_f64();
        }
    }
    // HY_PROFILE reports the prefills (all sequences), then the decode steps alone.
    if hy_engine::runtime::profile::enabled() {
        eprintln!("prefill of {batch} × {prompt} tokens:");
        hy_engine::runtime::profile::report();
        eprintln!("decode, {gen} steps:");
    }
    let mut next: Vec<u32> = (0..batch).map(|i| tokens(1, vocab, 1000 + i)[0]).collect();
    let t = Instant::now();
    for _ in 0..gen {
        let mut refs: Vec<&mut _> = states.iter_mut().collect();
        let logits = model.forward_batch(&mut refs, &next)?;
        next = logits.iter().map(|l| hy_engine::runtime::sampling::argmax(l)).collect();
    }
    let decode = (batch * gen) as f64 / t.elapsed().as_secs_f64();
    Ok(Measured { prefill, decode })
}

/// This machine as the engine uses it: CPU only (GPU execution does not exist yet), with the
/// read bandwidth of `threads` pinned threads measured now.
fn measured_cpu_box(threads: usize) -> anyhow::Result<HardwareSpec> {
    let mut hw = super::plan::local_hardware()?;
    hw.gpus.clear();
    let nodes = hw.numa_nodes.len().max(1);
    let cfg = bandwidth::BenchConfig {
        bytes_per_thread: 256 << 20,
        repetitions: 3,
        threads_per_node: Some(threads.div_ceil(nodes)),
    };
    let m = bandwidth::measure(&hw.numa_nodes, &cfg, &mut |_| {}).context("measuring memory bandwidth")?;
    hw.measured = Some(m.bandwidth);
    Ok(hw)
}

/// (decode tok/s aggregate, prefill tok/s) the planner predicts.
fn predict(
    input: &ModelInput,
    hw: &HardwareSpec,
    eff: &Efficiency,
    context: u64,
    batch: u64,
) -> anyhow::Result<(f64, f64)> {
    let mut opts = PlanOptions::new(context, batch);
    opts.efficiency = eff.clone();
    opts.hardware_label = "this machine, CPU only (measured)".into();
    let p = plan(input, hw, QuantChoice::Auto, &opts).context("planning for this machine")?;
    Ok((p.predicted.decode_tokens_per_s_total, p.predicted.prefill_tokens_per_s))
}

/// Fits the efficiencies to the decode measurements: the CPU bandwidth efficiency so that
/// batch 1 (mostly streaming) matches, then the CPU compute efficiency so that the largest
/// batch matches (larger batches reuse each weight read, and their arithmetic grows: the
/// speed model adds it to the streaming time or, for matrices in the 16-row layout, overlaps
/// the two). Fixed-point rounds, since the two efficiencies interact. Prefill is reported,
/// not fitted: it is dominated by prompt attention.
fn calibrate(
    base: &Efficiency,
    measured: &[(usize, Measured)],
    predict: impl Fn(&Efficiency, usize) -> anyhow::Result<(f64, f64)>,
) -> anyhow::Result<Efficiency> {
    let mut e = base.clone();
    let (Some((b1, m1)), Some((bn, mn))) = (measured.first(), measured.last()) else { return Ok(e) };
    for _ in 0..16 {
        let (p1, _) = predict(&e, *b1)?;
        if p1 > 0.0 && m1.decode > 0.0 {
            e.cpu_bandwidth_efficiency =
                (e.cpu_bandwidth_efficiency * m1.decode / p1).clamp(0.01, MAX_CPU_BANDWIDTH_EFFICIENCY);
        }
        if bn > b1 {
            let (pn, _) = predict(&e, *bn)?;
            if pn > 0.0 && mn.decode > 0.0 {
                e.cpu_compute_efficiency = (e.cpu_compute_efficiency * mn.decode / pn).clamp(0.001, 1.0);
            }
        }
    }
    Ok(e)
}

fn print(r: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!("{} — {} threads, read bandwidth {:.1} GB/s (measured now)", r.model, r.threads, r.read_gbps);
    println!(
        "{:>5} {:>12} {:>12} {:>14} {:>14} {:>16}",
        "batch", "prefill t/s", "decode t/s", "predicted t/s", "measured/pred", "calibrated t/s"
    );
    for row in &r.rows {
        println!(
            "{:>5} {:>12.1} {:>12.1} {:>14.1} {:>13.0}% {:>16.1}",
            row.batch,
            row.prefill_tokens_per_s,
            row.decode_tokens_per_s,
            row.predicted_decode_tokens_per_s,
            100.0 * row.decode_tokens_per_s / row.predicted_decode_tokens_per_s.max(1e-9),
            row.calibrated_decode_tokens_per_s
        );
    }
    println!(
        "calibration: cpu_bandwidth_efficiency {:.3}, cpu_compute_efficiency {:.3} (decode/prefill tok/s are aggregates over the batch)",
        r.calibration.cpu_bandwidth_efficiency, r.calibration.cpu_compute_efficiency
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy speed model: the lower of a bandwidth bound (100 tok/s per unit of bandwidth
    /// efficiency at batch 1, growing with √batch) and a compute bound (1000 tok/s per unit
    /// of compute efficiency): bandwidth-bound at batch 1, compute-bound at 16.
    fn toy(e: &Efficiency, batch: usize) -> anyhow::Result<(f64, f64)> {
        let bw = 100.0 * e.cpu_bandwidth_efficiency * (batch as f64).sqrt();
        Ok((bw.min(1000.0 * e.cpu_compute_efficiency), 0.0))
    }

    /// The kernels may outrun the plain read that measures the bandwidth: the calibration
    /// follows a measurement above the prediction at efficiency 1 instead of stopping at 1.
    #[test]
    fn calibration_fits_a_decode_faster_than_the_plain_read() {
        let m = |decode: f64| Measured { prefill: 0.0, decode };
        let e = calibrate(&Efficiency::default(), &[(1, m(117.0)), (16, m(300.0))], toy).unwrap();
        assert!((e.cpu_bandwidth_efficiency - 1.17).abs() < 1e-6, "{e:?}");
        let (p1, _) = toy(&e, 1).unwrap();
        let (p16, _) = toy(&e, 16).unwrap();
        assert!((p1 - 117.0).abs() < 0.01 && (p16 - 300.0).abs() < 3.0, "{p1} {p16}");
        // A largest batch faster than predicted raises the compute efficiency (0.35 → 0.4).
        let e = calibrate(&Efficiency::default(), &[(1, m(117.0)), (16, m(400.0))], toy).unwrap();
        assert!((e.cpu_compute_efficiency - 0.4).abs() < 1e-3, "{e:?}");
        // Beyond the bound, it stops there.
        let e = calibrate(&Efficiency::default(), &[(1, m(500.0))], toy).unwrap();
        assert_eq!(e.cpu_bandwidth_efficiency, MAX_CPU_BANDWIDTH_EFFICIENCY);
    }
}
