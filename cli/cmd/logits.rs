//! `hy logits MODEL --tokens 1,2,3 --out FILE`: the logits at every position for the given
//! token ids (no BOS added), written as raw little-endian f32, row-major [n_tokens × vocab].
//! Prints `{"n_tokens": N, "vocab": V}` on stdout. Used to verify architectures against
//! reference implementations, so by default activations stay f32 (`Precision::Exact`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use hy_engine::kernels::{set_precision, Precision};
use hy_engine::models::loader::{load, LoadOptions};
use hy_engine::models::Logits;

use crate::exit;

#[derive(clap::Args)]
pub struct Args {
    /// Model: a GGUF file or a Hugging Face folder (config.json + *.safetensors).
    pub model: PathBuf,
    /// Comma-separated token ids, fed verbatim (nothing is added).
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    pub tokens: Vec<u32>,
    /// Output file for the raw little-endian f32 logits [n_tokens × vocab].
    #[arg(long)]
    pub out: PathBuf,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Quantize activations to Q8 in the matrix products, as llama.cpp does (faster, not exact).
    #[arg(long)]
    pub fast: bool,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    if args.tokens.is_empty() {
        return Err(exit::coded(exit::USAGE, "--tokens needs at least one token id"));
    }
    if let Some(n) = args.threads {
        if n == 0 {
            return Err(exit::coded(exit::USAGE, "--threads must be at least 1"));
        }
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("configuring the thread pool")?;
    }
    set_precision(if args.fast { Precision::Fast } else { Precision::Exact });
    let model = load(&args.model, &LoadOptions::default())
        .map_err(|e| exit::coded(exit::INVALID_INPUT, format!("cannot load model {}: {e:#}", args.model.display())))?;
    let vocab = model.info().vocab_size;
    let mut state = model.new_state(args.tokens.len());
    let logits = model
        .forward(&mut state, &args.tokens, Logits::All)
        .map_err(|e| exit::coded(exit::USAGE, format!("cannot run the given tokens: {e:#}")))?;
    write_f32(&args.out, &logits)?;
    // The documented line, byte for byte: {"n_tokens": N, "vocab": V}
    println!("{{\"n_tokens\": {}, \"vocab\": {vocab}}}", args.tokens.len());
    Ok(exit::OK)
}

fn write_f32(path: &PathBuf, values: &[f32]) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for v in values {
        w.write_all(&v.to_le_bytes())?;
    }
    w.flush().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
