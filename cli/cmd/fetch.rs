//! `hy fetch`: download exactly the files a model/quantization/plan needs; parallel,
//! resumable, verified. The machinery lives in `cli/fetch/`.

use crate::exit;
use crate::fetch::{self, catalog, select::Selector, Request, SourceKind};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Environment: HF_ENDPOINT, HF_TOKEN / HUGGING_FACE_HUB_TOKEN / $HF_HOME/token, \
HF_HOME / HF_HUB_CACHE, MODELSCOPE_ENDPOINT, MODELSCOPE_API_TOKEN, HY_FETCH_TOKEN (plain URLs), \
HY_FETCH_RETRIES, HY_FETCH_RETRY_BASE_MS, HY_FETCH_MAX_WAIT_S, HY_FETCH_IDLE_TIMEOUT_MS, \
HY_FETCH_CHUNK_BYTES, HY_FETCH_PERSIST_MS.\n\
Exit codes: 0 ok, 2 usage, 4 download failed, 5 verification failed, 6 invalid plan file.")]
pub struct Args {
    /// Catalog name, Hugging Face / ModelScope repo id (org/name), or URL of a file server
    /// (a file, or a folder ending in '/').
    #[arg(required_unless_present = "plan", conflicts_with = "plan")]
    pub model: Option<String>,
    /// Quantization to fetch, e.g. Q4_K_M, UD-IQ1_S, FP8 (case-insensitive).
    #[arg(long, short = 'q')]
    pub quant: Option<String>,
    /// Also fetch files matching this glob (alone: fetch only these). Repeatable.
    #[arg(long)]
    pub include: Vec<String>,
    /// Skip files matching this glob. Repeatable.
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Branch, tag or commit (default: main on Hugging Face, master on ModelScope).
    #[arg(long)]
    pub revision: Option<String>,
    /// Which hub a repo id refers to.
    #[arg(long, value_enum, default_value = "hf")]
    pub source: SourceKind,
    /// Write plain files into this folder instead of the hub cache.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Parallel connections (and files in flight).
    #[arg(long, short = 'j', default_value_t = 8)]
    pub jobs: usize,
    /// Re-hash files that are already present instead of trusting name + size.
    #[arg(long)]
    pub verify: bool,
    /// One JSON event per line on stdout (see the README for the schema).
    #[arg(long)]
    pub json: bool,
    /// Fetch the files a saved plan needs (`hy plan --save plan.toml`).
    #[arg(long)]
    pub plan: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let reporter = fetch::progress::reporter(args.json);
    let json = args.json;
    let result = request(args).and_then(|req| fetch::run(req, reporter.clone()));
    match result {
        Ok(target) => {
            if !json {
                // The one line of data: where the files are, for `$(hy fetch …)` in scripts.
                println!("{}", target.display());
            }
            Ok(exit::OK)
        }
        Err(e) => {
            let code = e.chain().find_map(|c| c.downcast_ref::<exit::Coded>().map(|c| c.code)).unwrap_or(exit::ERROR);
            reporter.error(&format!("{e:#}"), code);
            Err(e)
        }
    }
}

fn request(args: Args) -> anyhow::Result<Request> {
    let mut selector = Selector { quant: args.quant.clone(), include: args.include, exclude: args.exclude };
    let mut revision = args.revision;
    let (model, source) = match (&args.plan, args.model) {
        (Some(plan), _) => {
            let p = catalog::from_plan(plan)?;
            selector.include.extend(p.include);
            if selector.quant.is_none() {
                selector.quant = p.hit.quant.clone();
            }
            revision = revision.or(p.revision);
            (p.hit.repo, source_of(&p.hit.source)?)
        }
        (None, Some(m)) if m.contains('/') => (m, args.source),
        (None, Some(name)) => match catalog::resolve(&name, args.quant.as_deref())? {
            Some(hit) => {
                if selector.quant.is_none() {
                    selector.quant = hit.quant.clone();
                }
                (hit.repo, source_of(&hit.source)?)
            }
            None => {
                return Err(exit::coded(
                    exit::USAGE,
                    format!(
                        "{name:?} is not a known model name (known: {}; see `hy plan --list-models`); \
or give a repo id (org/name) or a URL",
                        known_names()
                    ),
                ))
            }
        },
        (None, None) => return Err(exit::coded(exit::USAGE, "give a MODEL or --plan FILE")),
    };
    if args.jobs == 0 {
        return Err(exit::coded(exit::USAGE, "--jobs must be at least 1"));
    }
    Ok(Request { model, source, revision, selector, dir: args.dir, jobs: args.jobs, verify: args.verify })
}

fn source_of(s: &str) -> anyhow::Result<SourceKind> {
    match s {
        "hf" | "huggingface" => Ok(SourceKind::Hf),
        "modelscope" | "ms" => Ok(SourceKind::Modelscope),
        other => Err(exit::coded(exit::INVALID_INPUT, format!("unknown source {other:?} in the catalog/plan"))),
    }
}

fn known_names() -> String {
    match hy_planner::catalog::catalog() {
        Ok(models) => models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
        Err(_) => "catalog unavailable".into(),
    }
}
