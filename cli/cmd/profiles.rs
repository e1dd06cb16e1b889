//! `hy profiles list | show NAME | match [--hardware FILE] | validate FILE...`
//!
//! Built-in profiles (HY90, HY70, HY50) plus user profiles from `$HY_PROFILE_DIR`, else
//! `~/.config/hy/profiles` (a user file with a built-in's name replaces it).
//! Exit codes: 0 ok, 2 unknown profile, 6 an invalid profile or hardware file.

use std::path::PathBuf;

use hy_profiles::{match_profile, MatchResult, Profile};

use crate::cmd::plan::{load_hardware_file, load_profile, local_hardware};
use crate::exit;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(clap::Subcommand)]
pub enum Sub {
    /// List every profile (built-in and user) with its target.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one profile: nominal hardware, requirements, defaults.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Score each profile against this machine (probed) or a hardware file, and say what is missing.
    Match {
        /// A hardware file (`hy probe --save`); default: probe this machine.
        #[arg(long, value_name = "FILE")]
        hardware: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Check profile files and report every problem (file, key, what is wrong).
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    match args.command {
        Sub::List { json } => list(json),
        Sub::Show { name, json } => show(&name, json),
        Sub::Match { hardware, json } => matching(hardware, json),
        Sub::Validate { files } => validate(&files),
    }
}

/// Prints invalid user files to stderr; returns the exit code they imply.
fn report_errors(errors: &[hy_profiles::ProfileError]) -> i32 {
    for e in errors {
        eprintln!("hy: invalid profile {e}");
    }
    if errors.is_empty() {
        exit::OK
    } else {
        exit::INVALID_INPUT
    }
}

fn list(json: bool) -> anyhow::Result<i32> {
    let (profiles, errors) = hy_profiles::all();
    if json {
        let v: Vec<serde_json::Value> = profiles
            .iter()
            .map(|p| serde_json::json!({"name": p.name, "title": p.title, "targets": p.targets, "source": p.source}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{:<8} {:<20} {:<11} TARGETS", "NAME", "TITLE", "SOURCE");
        for p in &profiles {
            let src = if p.source == "built-in" { "built-in" } else { "user" };
            println!("{:<8} {:<20} {:<11} {}", p.name, p.title, src, p.targets);
        }
        if let Some(dir) = hy_profiles::user_dir() {
            eprintln!("hy: user profiles are read from {}", dir.display());
        }
    }
    Ok(report_errors(&errors))
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn show(name: &str, json: bool) -> anyhow::Result<i32> {
    let p = load_profile(name)?;
    if json {
        let mut v = serde_json::to_value(&p)?;
        v["source"] = serde_json::Value::String(p.source.clone());
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(exit::OK);
    }
    print!("{}", describe(&p));
    Ok(exit::OK)
}

fn describe(p: &Profile) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let hw = &p.hardware;
    let (bw, _) = hy_profiles::theoretical_bandwidth(hw);
    let _ = writeln!(s, "{} — {} ({})", p.name, p.title, p.source);
    let _ = writeln!(s, "  {}", p.description);
    let _ = writeln!(s, "  targets: {}", p.targets);
    let _ = writeln!(s, "\nNominal hardware: {}", hw.name.as_deref().unwrap_or("-"));
    let _ = writeln!(
        s,
        "  CPU     {} × {} ({} cores each, {} threads each)",
        hw.cpu.sockets, hw.cpu.model_name, hw.cpu.cores_per_socket, hw.cpu.threads_per_socket
    );
    let _ = writeln!(
        s,
        "  memory  {:.0} GiB, {} channels/socket × {} MT/s = {:.1} GB/s theoretical",
        gib(hw.memory.total_bytes),
        hw.memory.channels_per_socket.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
        hw.memory.mts.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
        bw
    );
    for g in &hw.gpus {
        let _ = writeln!(
            s,
            "  GPU {}   {} {:.0} GiB, {} GB/s",
            g.index,
            g.name,
            gib(g.vram_total_bytes),
            g.bandwidth_gbps.map(|b| format!("{b:.0}")).unwrap_or_else(|| "?".into())
        );
    }
    let r = &p.requirements;
    let _ = writeln!(s, "\nRequirements to match:");
    let _ = writeln!(
        s,
        "  memory >= {:.0} GiB, bandwidth >= {:.0} GB/s, CPU cores >= {}, GPUs >= {}, VRAM >= {:.0} GiB, features: {}",
        r.min_memory_gib,
        r.min_memory_bandwidth_gbps,
        r.min_cpu_cores,
        r.min_gpus,
        r.min_gpu_vram_gib,
        if r.cpu_features.is_empty() { "-".to_string() } else { r.cpu_features.join(", ") }
    );
    let d = &p.defaults;
    let _ = writeln!(s, "\nDefaults: context {}, concurrency {}", d.context, d.concurrency);
    let quants: Vec<String> = d.quant.iter().map(|(f, q)| format!("{f}={q}")).collect();
    let _ = writeln!(s, "  preferred quantization: {}", quants.join(", "));
    let _ = writeln!(
        s,
        "  engine: ubatch {}, numa {}, threads per node {}",
        d.engine.ubatch,
        d.engine.numa,
        if d.engine.threads_per_node == 0 {
            "all physical cores".to_string()
        } else {
            d.engine.threads_per_node.to_string()
        }
    );
    s
}

fn matching(hardware: Option<PathBuf>, json: bool) -> anyhow::Result<i32> {
    let (hw, label) = match &hardware {
        Some(path) => (load_hardware_file(path)?, format!("hardware file {}", path.display())),
        None => (local_hardware()?, "this machine (probed)".to_string()),
    };
    let (profiles, errors) = hy_profiles::all();
    let mut results: Vec<MatchResult> = profiles.iter().map(|p| match_profile(p, &hw)).collect();
    results.sort_by(|a, b| b.matches.cmp(&a.matches).then(b.score.total_cmp(&a.score)));
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!("Matching {label}: {}", hw.name.as_deref().unwrap_or("-"));
        println!("{:<8} {:<7} {:>6}  MISSING", "PROFILE", "MATCH", "SCORE");
        for r in &results {
            let missing = r.missing();
            println!(
                "{:<8} {:<7} {:>5.0}%  {}",
                r.profile,
                if r.matches { "yes" } else { "no" },
                r.score * 100.0,
                if missing.is_empty() { "-".to_string() } else { missing.join("; ") }
            );
        }
    }
    Ok(report_errors(&errors))
}

fn validate(files: &[PathBuf]) -> anyhow::Result<i32> {
    let mut bad = 0;
    for f in files {
        match hy_profiles::load_file(f) {
            Ok(p) => println!("{}: ok ({})", f.display(), p.name),
            Err(e) => {
                println!("{e}");
                bad += 1;
            }
        }
    }
    Ok(if bad == 0 { exit::OK } else { exit::INVALID_INPUT })
}
