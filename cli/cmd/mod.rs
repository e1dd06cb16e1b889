//! One module per subcommand. Each exposes `Args` (clap) and `run(Args) -> anyhow::Result<i32>`.

pub mod bench;
mod bench_decode;
pub mod chat;
pub mod fetch;
pub mod logits;
pub mod plan;
pub mod probe;
pub mod profiles;
mod resolve;
pub mod run;
pub mod synth;
