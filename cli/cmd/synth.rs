//! `hy synth`: write a GGUF with a full-size model's real shapes and random weights.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use hy_engine::synth::{self, Deepseek2Shape, SynthQuant};

use crate::exit;

#[derive(clap::Args)]
#[command(
    about = "Write a GGUF with a full-size model's real shapes and random weights (for speed measurements)",
    long_about = "Writes a GGUF file with the real tensor shapes and metadata of a catalog model and random \
(valid, finite) weights, so decode speed can be measured at full size without downloading hundreds of GB. \
The file loads in hy and in llama.cpp. Any figure measured on it must say \"synthetic weights\".\n\n\
Example: the 1-dense + 4-MoE-layer DeepSeek-V3 file used for side-by-side benchmarks:\n  \
hy synth deepseek-v3 --layers 5 --dense-layers 1 --quant q4_k_m ds5.gguf"
)]
pub struct Args {
    /// Architecture to imitate: deepseek-v3 (= deepseek-r1) or kimi-k2.
    pub arch: String,
    /// Output GGUF path.
    pub out: PathBuf,
    /// Number of transformer blocks (the full model has 61).
    #[arg(long, default_value_t = 61)]
    pub layers: u64,
    /// Leading dense blocks (DeepSeek-V3 has 3); capped at layers - 1 so at least one is MoE.
    #[arg(long)]
    pub dense_layers: Option<u64>,
    /// Weight format: q4_k_m (llama.cpp's mix), q8_0, q6_k, q5_k, q4_k, q3_k, q2_k, f16, bf16.
    #[arg(long, default_value = "q4_k_m")]
    pub quant: String,
    /// Seed for the random weights.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let mut shape = Deepseek2Shape::by_name(&args.arch).ok_or_else(|| {
        exit::coded(
            exit::USAGE,
            format!("unknown architecture '{}': use deepseek-v3, deepseek-r1 or kimi-k2", args.arch),
        )
    })?;
    let quant = SynthQuant::parse(&args.quant).ok_or_else(|| {
        exit::coded(
            exit::USAGE,
            format!(
                "unknown quantization '{}': use q4_k_m, q8_0, q6_k, q5_k, q4_k, q3_k, q2_k, f16 or bf16",
                args.quant
            ),
        )
    })?;
    if args.layers == 0 {
        return Err(exit::coded(exit::USAGE, "--layers must be at least 1"));
    }
    shape.n_layers = args.layers;
    shape.n_dense_layers = args.dense_layers.unwrap_or(shape.n_dense_layers).min(args.layers.saturating_sub(1));
    let total: u64 = synth::deepseek2_tensors(&shape, quant).iter().map(|t| t.n_bytes()).sum();
    check_space(&args.out, total)?;
    eprintln!(
        "writing {} ({} layers, {} dense, {}) — synthetic weights, {:.2} GB",
        args.out.display(),
        shape.n_layers,
        shape.n_dense_layers,
        args.quant,
        total as f64 / 1e9
    );
    let bar = progress_bar(total);
    let written = synth::write_deepseek2(&args.out, &shape, quant, args.seed, |done, _| bar.set_position(done))
        .with_context(|| format!("writing {}", args.out.display()))?;
    bar.finish_and_clear();
    println!("{}\t{} bytes of tensor data (synthetic weights)", args.out.display(), written);
    Ok(exit::OK)
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Refuses to start when the target file system cannot hold the file.
fn check_space(out: &std::path::Path, needed: u64) -> anyhow::Result<()> {
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let Some(free) = free_bytes(dir) else { return Ok(()) };
    if free < needed {
        return Err(exit::coded(
            exit::ERROR,
            format!(
                "not enough space in {}: the file needs {:.2} GB, {:.2} GB are free (short by {:.2} GB); \
                 use fewer --layers or another directory",
                dir.display(),
                needed as f64 / 1e9,
                free as f64 / 1e9,
                (needed - free) as f64 / 1e9
            ),
        ));
    }
    Ok(())
}

fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}
