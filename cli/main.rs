//! `hy`: turn a bare server into an appliance serving full-size MoE LLMs.
//!
//! Each subcommand lives in its own module under `cli/cmd/`; this file only wires them up.

mod cmd;
mod exit;
mod fetch;
mod model_source;
mod probe;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hy",
    version,
    about = "Serve full-size Mixture-of-Experts LLMs from CPU RAM plus one GPU",
    long_about = "hy reads the machine (hy probe), matches it to hardware profiles (hy profiles), \
decides where every weight lives and at which quantization (hy plan), downloads exactly the \
files the plan needs (hy fetch) and serves an OpenAI-compatible API from its own engine (hy run).",
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 model does not fit, 4 download failed, \
5 verification failed, 6 invalid input file. See README.md for details."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read the machine: CPU, NUMA, memory channels, GPUs, bandwidth.
    Probe(cmd::probe::Args),
    /// List, show and match hardware profiles.
    Profiles(cmd::profiles::Args),
    /// Decide placement and quantization for a model on a box, and predict speed.
    Plan(cmd::plan::Args),
    /// Download exactly the files a model/plan needs: parallel, resumable, verified.
    Fetch(cmd::fetch::Args),
    /// Probe, plan, fetch, load and serve an OpenAI-compatible API.
    Run(cmd::run::Args),
    /// Interactive terminal chat against a server URL or a local model.
    Chat(cmd::chat::Args),
    /// Print logits for given token ids (verification against references).
    Logits(cmd::logits::Args),
    /// Write a GGUF with a full-size model's shapes and random weights.
    Synth(cmd::synth::Args),
    /// Measure memory bandwidth and engine speed against the hardware limit.
    Bench(cmd::bench::Args),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    // llama.cpp's exact CPU summation orders in the Fast kernels (slower; for comparing
    // outputs with llama.cpp bit for bit), see hy_engine::kernels::quant::set_llama_order.
    if std::env::var_os("HY_LLAMA_ORDER").is_some_and(|v| v == "1") {
        hy_engine::kernels::quant::set_llama_order(true);
    }
    let result = match cli.command {
        Command::Probe(a) => cmd::probe::run(a),
        Command::Profiles(a) => cmd::profiles::run(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Fetch(a) => cmd::fetch::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Logits(a) => cmd::logits::run(a),
        Command::Synth(a) => cmd::synth::run(a),
        Command::Bench(a) => cmd::bench::run(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => std::process::exit(exit::report(&err)),
    }
}
