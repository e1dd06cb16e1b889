//! `hy probe`: read the machine (CPU, NUMA, memory channels, GPUs), optionally measure its
//! memory bandwidth, and print a table, JSON, or save a TOML hardware file.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use hy_planner::hardware::HardwareSpec;

use crate::exit;
use crate::probe::bandwidth::{self, BenchConfig};
use crate::probe::{self as probing, cpu, memory, render, Probe, ProbeOptions, ProbeRoot};

#[derive(clap::Args)]
#[command(after_help = "The table goes to stdout; --json prints the HardwareSpec (schema in \
README.md) instead. --save writes the same data as a versioned TOML hardware file for \
`hy plan --hardware FILE`. Unknown facts (no DMI tables in a VM, no NVIDIA driver) are \
reported as unknown, not as errors.")]
pub struct Args {
    /// Print JSON (the HardwareSpec) instead of the table.
    #[arg(long)]
    json: bool,
    /// Write a TOML hardware file (format_version 1) for `hy plan --hardware`.
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
    /// Measure memory bandwidth per NUMA node and for the whole machine (takes seconds).
    #[arg(long)]
    bench: bool,
    /// With --bench: threads per NUMA node (default: every CPU of the node).
    #[arg(long, value_name = "N", requires = "bench", value_parser = clap::value_parser!(u32).range(1..))]
    bench_threads: Option<u32>,
    /// With --bench: size of each array per thread in MiB (default: 8 × LLC over all threads, ≥ 256).
    #[arg(long, value_name = "MIB", requires = "bench", value_parser = clap::value_parser!(u64).range(1..))]
    bench_mib: Option<u64>,
    /// With --bench: timed repetitions per kernel; the best is reported.
    #[arg(long, value_name = "N", default_value_t = 5, requires = "bench", value_parser = clap::value_parser!(u32).range(1..=100))]
    bench_reps: u32,
    /// Read sys/ and proc/ under DIR instead of / (fixture trees for tests). Implies
    /// --no-cpuid and --no-gpu, since those would describe this machine, not the tree.
    #[arg(long, value_name = "DIR", env = "HY_PROBE_ROOT")]
    root: Option<PathBuf>,
    /// Do not execute cpuid; take vendor, model and features from /proc/cpuinfo.
    #[arg(long)]
    no_cpuid: bool,
    /// Do not query NVML for NVIDIA GPUs.
    #[arg(long)]
    no_gpu: bool,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let opts = options(&args)?;
    let mut probe = probing::probe(&opts);
    if args.bench {
        bench(&mut probe, &opts.root, &args)?;
    }
    if args.json {
        let json = serde_json::to_string_pretty(&probe.spec).context("serialising the hardware spec")?;
        println!("{json}");
        // The table carries the notes; with --json they go to stderr so scripts still see why
        // a field is null.
        let n = &probe.notes;
        for note in n.cpu.iter().chain(&n.numa).chain(&n.memory).chain(&n.gpu).chain(&n.bandwidth) {
            eprintln!("note: {note}");
        }
    } else {
        print!("{}", render::report(&probe.spec, &probe.notes));
    }
    if let Some(path) = &args.save {
        std::fs::write(path, hardware_toml(&probe.spec)?).with_context(|| {
            format!("writing hardware file {}: check the directory exists and is writable", path.display())
        })?;
        eprintln!("saved hardware file {}", path.display());
    }
    Ok(exit::OK)
}

fn options(args: &Args) -> anyhow::Result<ProbeOptions> {
    let Some(root) = &args.root else {
        let live = ProbeOptions::live();
        return Ok(ProbeOptions { cpuid: !args.no_cpuid, gpu: !args.no_gpu, ..live });
    };
    if !root.is_dir() {
        return Err(exit::coded(
            exit::USAGE,
            format!("--root {}: not a directory (give a tree with sys/ and proc/, or omit --root)", root.display()),
        ));
    }
    let root = ProbeRoot::new(root);
    let live = root.is_live();
    if args.bench && !live {
        return Err(exit::coded(
            exit::USAGE,
            "--bench measures this machine and cannot be combined with --root (or HY_PROBE_ROOT)",
        ));
    }
    Ok(ProbeOptions { root, cpuid: live && !args.no_cpuid, gpu: live && !args.no_gpu })
}

/// The TOML hardware file: a comment header, then the HardwareSpec.
pub fn hardware_toml(spec: &HardwareSpec) -> anyhow::Result<String> {
    let body = toml::to_string(spec).context("serialising the hardware spec as TOML")?;
    Ok(format!(
        "# hy hardware file, written by `hy probe`. Read by `hy plan --hardware FILE`.\n\
         # Units: bytes, MHz, MT/s, decimal GB/s. Edit to declare what the probe could not\n\
         # read (e.g. memory.channels_per_socket and memory.mts in a VM).\n\n{body}"
    ))
}

fn bench(probe: &mut Probe, root: &ProbeRoot, args: &Args) -> anyhow::Result<()> {
    let spec = &probe.spec;
    let threads: usize =
        spec.numa_nodes.iter().map(|n| args.bench_threads.map_or(n.cpus.len(), |t| n.cpus.len().min(t as usize))).sum();
    let bytes_per_thread = match args.bench_mib {
        Some(mib) => usize::try_from(mib << 20).context("--bench-mib is too large for this machine")?,
        None => bandwidth::default_bytes_per_thread(
            cpu::total_llc_bytes(&spec.cpu),
            threads,
            memory::meminfo_available(root),
        ),
    };
    let cfg = BenchConfig {
        bytes_per_thread,
        repetitions: args.bench_reps,
        threads_per_node: args.bench_threads.map(|t| t as usize),
    };
    eprintln!(
        "measuring memory bandwidth: {} threads, {} per array per thread, best of {}",
        threads,
        render::bytes(bytes_per_thread as u64),
        cfg.repetitions
    );
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(1);
        let style = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar
    });
    let result = bandwidth::measure(&spec.numa_nodes, &cfg, &mut |p| {
        if let Some(bar) = &bar {
            bar.set_length(p.total);
            bar.set_position(p.done);
            bar.set_message(p.message.to_string());
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let m = result.context("measuring memory bandwidth")?;
    probe.notes.bandwidth.extend(m.notes);
    probe.spec.measured = Some(m.bandwidth);
    Ok(())
}
