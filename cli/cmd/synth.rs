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
    let mut shape = shape_for(&args.arch)?;
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

/// The tensor shapes of a catalog model (the planner's catalog is the one source of model
/// dimensions), with the routing and rope metadata the engine's synth defaults give that family.
pub(super) fn shape_for(name: &str) -> anyhow::Result<Deepseek2Shape> {
    let unknown =
        || exit::coded(exit::USAGE, format!("unknown architecture '{name}': use deepseek-v3, deepseek-r1 or kimi-k2"));
    let base = Deepseek2Shape::by_name(name).ok_or_else(unknown)?;
    let model = hy_planner::catalog::find(name)?.ok_or_else(unknown)?;
    let a = &model.architecture;
    let mla = a.mla.as_ref().ok_or_else(unknown)?;
    Ok(Deepseek2Shape {
        name: format!("{} (synthetic weights)", model.display_name),
        hidden: a.hidden_size,
        n_layers: a.num_layers,
        n_dense_layers: a.first_dense_layers,
        dense_intermediate: a.intermediate_size,
        n_experts: a.num_experts,
        n_experts_used: a.experts_per_token,
        n_shared_experts: a.num_shared_experts,
        moe_intermediate: a.moe_intermediate_size,
        n_heads: a.num_heads,
        q_lora_rank: mla.q_lora_rank,
        kv_lora_rank: mla.kv_lora_rank,
        qk_nope_head_dim: mla.qk_nope_head_dim,
        qk_rope_head_dim: mla.qk_rope_head_dim,
        v_head_dim: mla.v_head_dim,
        vocab: a.vocab_size,
        context_length: a.max_context,
        ..base
    })
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
    let Ok(free) = crate::fetch::disk::free_bytes(dir) else { return Ok(()) };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_shapes_agree_with_the_engine_defaults() {
        // The engine keeps DeepSeek-V3/Kimi-K2 defaults for its own tests; they must not drift
        // from the catalog that `hy synth` and `hy bench` use.
        for name in ["deepseek-v3", "kimi-k2"] {
            let from_catalog = shape_for(name).unwrap();
            let engine = Deepseek2Shape::by_name(name).unwrap();
            assert_eq!(Deepseek2Shape { name: engine.name.clone(), ..from_catalog }, engine, "{name}");
        }
        assert!(shape_for("qwen3-30b-a3b").is_err());
    }
}
