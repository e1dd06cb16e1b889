//! `hy run MODEL|PATH`: load a model into the engine and serve the OpenAI-compatible API.
//!
//! Stdout gets exactly one line, when the server accepts connections (scripts wait for it);
//! everything else goes to stderr.

use anyhow::{bail, Context};
use hy_engine::formats::GgufFile;
use hy_engine::models::loader::{self, LoadOptions};
use hy_engine::models::Model;
use hy_engine::runtime::codec::{TemplateSource, TokenizerCodec};
use hy_engine::runtime::{Scheduler, SchedulerConfig, SchedulerHandle};
use hy_engine::server::{self, App, ServerConfig};
use hy_engine::tokenizer::{builtin_template_names, Tokenizer};
use hy_planner::Plan;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Context used when `--context` is not given (and the model allows that much): enough for
/// chat, small enough that every concurrent sequence's KV cache fits comfortably.
const DEFAULT_CONTEXT: usize = 4096;

#[derive(clap::Args)]
pub struct Args {
    /// A local GGUF file (first shard of a split GGUF), an HF folder with config.json, a
    /// catalog name (planned for this machine, then fetched) or an HF repo id (fetched).
    /// May be left out when --plan names the model.
    pub model: Option<String>,
    /// A plan from `hy plan --save`: its model, context and concurrency are the defaults, and
    /// its predicted decode speed is shown when ready.
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// Address to bind. The default serves this machine only; use 0.0.0.0 to expose it.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind; 0 picks a free one (the ready line shows which).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* requests.
    #[arg(long, env = "HY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Sequences decoded together at most; more requests wait in the queue (default: the
    /// plan's concurrency, else 16).
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Requests allowed to wait for a slot; beyond that the server answers 429.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// The model name clients send in `model` (default: the file or folder name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Largest accepted request body in bytes (larger: 413).
    #[arg(long, default_value_t = ServerConfig::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
}

/// Engine options shared by `hy run` and `hy chat`.
#[derive(clap::Args, Clone, Debug)]
pub struct EngineArgs {
    /// CPU threads for the kernels (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Tokens per sequence, prompt + reply (default: min(model context, 4096)).
    #[arg(long)]
    pub context: Option<usize>,
    /// Chat template: a built-in name (gemma, chatml, llama3, deepseek3) or a Jinja file.
    /// Default: the model's own, else one matching its vocabulary, else chatml.
    #[arg(long)]
    pub chat_template: Option<String>,
    /// For a catalog name or repo id: the quantization to fetch (default for a catalog name:
    /// what `hy plan` picks for this machine).
    #[arg(long)]
    pub quant: Option<String>,
    /// For a catalog name or repo id: the revision (branch, tag or commit) to fetch.
    #[arg(long)]
    pub revision: Option<String>,
}

pub fn run(mut args: Args) -> anyhow::Result<i32> {
    let plan = args.plan.as_deref().map(read_plan).transpose()?;
    let model = match (&args.model, &plan) {
        (Some(m), _) => m.clone(),
        (None, Some(p)) => p.model_reference.clone(),
        (None, None) => bail!("name a model: `hy run MODEL` (a GGUF file or HF folder) or `hy run --plan plan.toml`"),
    };
    let path = resolve_model(&model, &args.engine)?;
    if let Some(p) = &plan {
        // The plan sized memory for its context and concurrency: use them unless overridden.
        args.engine.context = args.engine.context.or(usize::try_from(p.context).ok());
        args.max_concurrency = args.max_concurrency.or(usize::try_from(p.concurrency).ok());
    }
    let expected = plan.as_ref().map(|p| p.predicted.decode_tokens_per_s).filter(|t| *t > 0.0);
    let max_concurrency = args.max_concurrency.unwrap_or(16);
    let engine = Engine::load(&path, &args.engine, max_concurrency, args.queue)?;
    let model_id = args.served_model_name.clone().unwrap_or_else(|| default_model_id(&path));
    let cfg =
        ServerConfig { model_id: model_id.clone(), api_key: args.api_key.clone(), max_body_bytes: args.max_body_bytes };
    let app = App::new(cfg, engine.handle.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hy-http")
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    rt.block_on(async {
        let bind = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .with_context(|| format!("cannot listen on {bind}; pick another --port or stop what uses it"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        if !addr.ip().is_loopback() && args.api_key.is_none() {
            eprintln!(
                "hy: warning: listening on {addr} without --api-key: anyone who can reach this port can use the model"
            );
        }
        print_ready(addr, &model_id, &engine.handle, expected);
        server::serve(listener, app, shutdown_signal()).await.context("serving HTTP")
    })?;
    eprintln!("hy: shut down");
    Ok(0)
}

/// Turns the MODEL argument into local files: a path as is; a catalog name or repo id is
/// planned for this box and fetched (see `resolve`).
pub fn resolve_model(model: &str, engine: &EngineArgs) -> anyhow::Result<PathBuf> {
    let remote = super::resolve::Remote {
        quant: engine.quant.clone(),
        revision: engine.revision.clone(),
        context: engine.context.map(|c| c as u64),
    };
    super::resolve::resolve_model(model, &remote)
}

/// A loaded model and tokenizer behind a running engine thread.
pub struct Engine {
    pub handle: SchedulerHandle,
    /// Keeps the engine thread alive; dropping stops it.
    _scheduler: Scheduler,
}

impl Engine {
    pub fn load(path: &Path, args: &EngineArgs, max_concurrency: usize, queue: usize) -> anyhow::Result<Engine> {
        if let Some(n) = args.threads {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n.max(1))
                .build_global()
                .context("setting the number of kernel threads")?;
        }
        let threads = rayon::current_num_threads();
        eprintln!("hy: execution is CPU-only for now ({threads} threads); GPU placements in a plan are not used yet");
        // Routed experts and large products run on pinned threads claiming rows of their node.
        hy_engine::models::moe::set_expert_pool(Some(hy_engine::runtime::pool::Pool::new(
            super::bench::thread_layout(Some(threads), None),
        )));
        let t0 = Instant::now();
        let (model, tok) = load_model_and_tokenizer(path)?;
        let template = user_template(args.chat_template.as_deref())?;
        let codec = TokenizerCodec::new(Arc::new(tok), template);
        report_template(codec.template_source());
        let info = model.info().clone();
        let context = choose_context(args.context, info.context_length);
        eprintln!(
            "hy: loaded {} ({}, {} layers, vocab {}) in {:.1} s",
            info.name,
            info.arch,
            info.n_layers,
            info.vocab_size,
            t0.elapsed().as_secs_f64()
        );
        let cfg = SchedulerConfig { max_concurrency: max_concurrency.max(1), queue_capacity: queue, context };
        let scheduler = Scheduler::start(model, Arc::new(codec), cfg).context("starting the engine thread")?;
        Ok(Engine { handle: scheduler.handle(), _scheduler: scheduler })
    }
}

fn choose_context(asked: Option<usize>, model_max: usize) -> usize {
    let model_max = if model_max == 0 { DEFAULT_CONTEXT } else { model_max };
    match asked {
        Some(n) if n > model_max => {
            eprintln!("hy: --context {n} exceeds the model's {model_max}; using {model_max}");
            model_max
        }
        Some(n) => n.max(2),
        None => model_max.min(DEFAULT_CONTEXT),
    }
}

/// The model and its tokenizer: of a GGUF (opened once; the tokenizer, from its metadata, is
/// read first, so a bad one is reported before the weights load) or of an HF folder
/// (tokenizer.json).
fn load_model_and_tokenizer(path: &Path) -> anyhow::Result<(Box<dyn Model>, Tokenizer)> {
    let loading = || format!("loading the model {}", path.display());
    if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
        let file = GgufFile::open(path).with_context(|| format!("opening {}", path.display()))?;
        let tok =
            Tokenizer::from_gguf(&file).with_context(|| format!("reading the tokenizer of {}", path.display()))?;
        let model = loader::load_gguf_file(file, path, &LoadOptions::default()).with_context(loading)?;
        return Ok((model, tok));
    }
    let model = loader::load(path, &LoadOptions::default()).with_context(loading)?;
    Ok((model, hf_tokenizer(path)?))
}

/// The tokenizer of an HF folder (tokenizer.json, or tiktoken.model for Kimi-K2).
fn hf_tokenizer(path: &Path) -> anyhow::Result<Tokenizer> {
    let dir = if path.is_dir() { path.to_path_buf() } else { path.parent().unwrap_or(Path::new(".")).to_path_buf() };
    Tokenizer::from_hf_dir(&dir).with_context(|| {
        format!("reading the tokenizer of {} (tokenizer.json, or tiktoken.model for Kimi-K2)", dir.display())
    })
}

/// `--chat-template`: a built-in name, or a file holding a Jinja template.
fn user_template(arg: Option<&str>) -> anyhow::Result<Option<(String, String)>> {
    let Some(arg) = arg else { return Ok(None) };
    if builtin_template_names().contains(&arg) {
        return Ok(Some((arg.to_string(), arg.to_string())));
    }
    let text = std::fs::read_to_string(arg).with_context(|| {
        format!(
            "--chat-template {arg}: not a built-in template ({}) and not a readable file",
            builtin_template_names().join(", ")
        )
    })?;
    Ok(Some((arg.to_string(), text)))
}

fn report_template(src: &TemplateSource) {
    match src {
        TemplateSource::User(l) => eprintln!("hy: chat template: {l} (from --chat-template)"),
        TemplateSource::Model => eprintln!("hy: chat template: the model's own"),
        TemplateSource::Builtin(n) => eprintln!("hy: chat template: built-in `{n}` (the model ships none)"),
        TemplateSource::Fallback => eprintln!(
            "hy: chat template: generic `chatml` (the model ships none and none matches its vocabulary; \
             choose one with --chat-template)"
        ),
    }
}

/// The served model id: the file name without `.gguf` (and without a shard suffix), or the
/// folder name.
fn default_model_id(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let name = name.strip_suffix(".gguf").unwrap_or(&name).to_string();
    match name.rfind("-00001-of-") {
        Some(i) => name[..i].to_string(),
        None => name,
    }
}

/// Reads a plan saved by `hy plan --save`.
fn read_plan(path: &Path) -> anyhow::Result<Plan> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the plan {}", path.display()))?;
    Plan::from_toml_str(&text).map_err(|e| {
        crate::exit::coded(
            crate::exit::INVALID_INPUT,
            format!("{} is not a usable plan: {e}; write one with `hy plan MODEL --save plan.toml`", path.display()),
        )
    })
}

fn print_ready(addr: SocketAddr, model_id: &str, engine: &SchedulerHandle, expected: Option<f64>) {
    let cfg = engine.config();
    let speed = expected.map(|t| format!(", expected {t:.1} tok/s")).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "hy: serving {model_id} at http://{addr}/v1 (context {} tokens, up to {} concurrent{speed})",
        cfg.context, cfg.max_concurrency
    );
    let _ = out.flush();
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("hy: shutting down (finishing open requests; Ctrl-C again to stop now)");
    tokio::spawn(async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("hy: stopped without finishing open requests");
        std::process::exit(130);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_id_drops_extension_and_shard_suffix() {
        assert_eq!(default_model_id(Path::new("/m/tiny-llama-Q8_0.gguf")), "tiny-llama-Q8_0");
        assert_eq!(default_model_id(Path::new("/m/DeepSeek-V3-Q4_K_M-00001-of-00009.gguf")), "DeepSeek-V3-Q4_K_M");
        assert_eq!(default_model_id(Path::new("/m/hf-folder")), "hf-folder");
    }

    #[test]
    fn context_is_capped_by_the_model() {
        assert_eq!(choose_context(None, 131072), 4096);
        assert_eq!(choose_context(None, 2048), 2048);
        assert_eq!(choose_context(Some(8192), 4096), 4096);
        assert_eq!(choose_context(Some(512), 4096), 512);
    }
}
