//! Downloads from Hugging Face / ModelScope / plain file servers: selection, parallel
//! resumable verified downloads into the HF cache layout or a plain folder, progress.
//!
//! Files: `hf.rs`, `modelscope.rs`, `url.rs` (sources), `select.rs` (which files),
//! `layout.rs` (where they land), `download.rs` (engine), `http.rs` (client, retries),
//! `verify.rs` (checksums), `disk.rs` (free space), `paths.rs` (path safety),
//! `progress.rs` (bars / lines / JSON events), `catalog.rs` (planner hooks).

pub mod catalog;
pub mod disk;
pub mod download;
pub mod hf;
pub mod http;
pub mod layout;
pub mod modelscope;
pub mod paths;
pub mod progress;
pub mod select;
pub mod url;
pub mod verify;

use crate::exit;
use anyhow::{Context, Result};
use download::{Ctx, Job};
use layout::{Layout, Placement};
use progress::{Reporter, StartInfo, Summary};
use select::Selector;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use verify::Digest;

/// A file as a source lists it.
#[derive(Clone, Debug)]
pub struct RemoteFile {
    pub path: String,
    pub size: u64,
    pub digest: Digest,
    /// Where to GET it.
    pub url: String,
}

/// A source's answer: a repo at a resolved commit, and its files.
#[derive(Clone, Debug)]
pub struct Listing {
    pub source: &'static str,
    pub repo: String,
    pub revision: String,
    pub commit: String,
    pub files: Vec<RemoteFile>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    Hf,
    Modelscope,
}

/// Everything `hy fetch` was asked to do.
#[derive(Clone, Debug)]
pub struct Request {
    pub model: String,
    pub source: SourceKind,
    pub revision: Option<String>,
    pub selector: Selector,
    pub dir: Option<PathBuf>,
    pub jobs: usize,
    pub verify: bool,
}

/// `org/name` with the characters hubs allow; anything else could smuggle URL or path syntax.
pub fn validate_repo_id(repo: &str) -> Result<()> {
    let ok_part = |p: &str| {
        !p.is_empty() && p != "." && p != ".." && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    match repo.split_once('/') {
        Some((a, b)) if ok_part(a) && ok_part(b) => Ok(()),
        _ => Err(exit::coded(
            exit::USAGE,
            format!("{repo:?} is not a repo id; use the form org/name (letters, digits, '-', '_', '.')"),
        )),
    }
}

/// Percent-encodes one URL path segment or query value.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a path, keeping its `/` separators.
pub fn encode_path(p: &str) -> String {
    p.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

/// Runs a fetch to completion and returns the folder holding the files.
pub fn run(req: Request, reporter: Arc<dyn Reporter>) -> Result<PathBuf> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 8))
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(req, reporter))
}

struct Resolved {
    listing: Listing,
    http: http::Http,
    layout: Layout,
}

async fn resolve(req: &Request) -> Result<Resolved> {
    let tuning = http::Tuning::from_env();
    let revision = req.revision.clone().unwrap_or_else(|| "main".into());
    if req.model.starts_with("http://") || req.model.starts_with("https://") {
        let http = http::Http::new(url::token(), http::URL_AUTH, tuning)?;
        let listing = url::list(&http, &req.model).await?;
        let root = req.dir.clone().unwrap_or_else(|| url::default_dir(&req.model));
        return Ok(Resolved { listing, http, layout: Layout::Dir { root } });
    }
    paths::safe_relative(&revision).map_err(|e| exit::coded(exit::USAGE, format!("--revision: {e}")))?;
    match req.source {
        SourceKind::Hf => {
            let http = http::Http::new(hf::token(), http::HF_AUTH, tuning)?;
            let listing = hf::list(&http, &hf::endpoint(), &req.model, &revision).await?;
            let layout = match &req.dir {
                Some(root) => Layout::Dir { root: root.clone() },
                None => Layout::Hf {
                    repo_dir: hf::hub_cache().join(hf::repo_folder(&listing.repo)),
                    commit: listing.commit.clone(),
                    revision: revision.clone(),
                },
            };
            Ok(Resolved { listing, http, layout })
        }
        SourceKind::Modelscope => {
            let http = http::Http::new(modelscope::token(), http::MS_AUTH, tuning)?;
            let rev = req.revision.clone().unwrap_or_else(|| "master".into());
            let listing = modelscope::list(&http, &modelscope::endpoint(), &req.model, &rev).await?;
            let root = req.dir.clone().unwrap_or_else(|| modelscope::default_dir(&listing.repo));
            Ok(Resolved { listing, http, layout: Layout::Dir { root } })
        }
    }
}

/// One unit of download: a distinct destination, and every selected path that shares it.
struct Unit {
    file: RemoteFile,
    placements: Vec<Placement>,
    paths: Vec<RemoteFile>,
}

async fn run_async(req: Request, reporter: Arc<dyn Reporter>) -> Result<PathBuf> {
    let started = Instant::now();
    let Resolved { listing, http, layout } = resolve(&req).await?;
    let names: Vec<&str> = listing.files.iter().map(|f| f.path.as_str()).collect();
    let chosen = select::select(&names, &req.selector).map_err(|e| exit::coded(exit::USAGE, format!("{e:#}")))?;
    let units = plan_units(&listing, &chosen, &layout)?;
    let (reused, todo) = split_complete(units, &layout, req.verify).await?;
    let target = layout.target();
    let target_s = target.display().to_string();
    let jobs: Vec<Job> = todo.iter().enumerate().map(|(id, u)| job_for(id, u, &listing)).collect();
    let bytes_total: u64 = reused.iter().map(|(u, _)| u.file.size).chain(todo.iter().map(|u| u.file.size)).sum();
    let to_fetch = check_disk(&layout, &jobs)?;
    reporter.start(&StartInfo {
        source: listing.source,
        repo: &listing.repo,
        revision: &listing.revision,
        commit: &listing.commit,
        target: &target_s,
        files: chosen.len(),
        bytes_total,
        bytes_to_fetch: to_fetch,
    });
    let mut bytes_reused = 0;
    for (u, sha) in &reused {
        finish_unit(&layout, u, sha, reporter.as_ref(), None)?;
        bytes_reused += u.file.size;
    }
    let ctx = Arc::new(Ctx {
        http,
        conns: Arc::new(tokio::sync::Semaphore::new(req.jobs.max(1))),
        reporter: reporter.clone(),
        downloaded: AtomicU64::new(0),
    });
    download_all(&ctx, &layout, todo, jobs, req.jobs.max(1)).await?;
    layout.finish_all()?;
    reporter.finish(&Summary {
        target: &target_s,
        files: chosen.len(),
        bytes_downloaded: ctx.downloaded.load(Ordering::Relaxed),
        bytes_reused,
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(target)
}

fn plan_units(listing: &Listing, chosen: &[usize], layout: &Layout) -> Result<Vec<Unit>> {
    let mut by_dest: BTreeMap<PathBuf, Unit> = BTreeMap::new();
    for &i in chosen {
        let f = &listing.files[i];
        let p = layout.place(f).map_err(|e| exit::coded(exit::DOWNLOAD_FAILED, format!("{e:#}")))?;
        let unit = by_dest.entry(p.dest.clone()).or_insert_with(|| Unit {
            file: f.clone(),
            placements: Vec::new(),
            paths: Vec::new(),
        });
        unit.placements.push(p);
        unit.paths.push(f.clone());
    }
    Ok(by_dest.into_values().collect())
}

type Split = (Vec<(Unit, String)>, Vec<Unit>);

/// Separates units already present (with their sha256) from those to download.
async fn split_complete(units: Vec<Unit>, layout: &Layout, verify: bool) -> Result<Split> {
    let mut reused = Vec::new();
    let mut todo = Vec::new();
    for u in units {
        let done = tokio::task::block_in_place(|| layout.complete(&u.placements[0], &u.file, verify))?;
        match done {
            Some(sha) => reused.push((u, sha)),
            None => todo.push(u),
        }
    }
    Ok((reused, todo))
}

fn job_for(id: usize, u: &Unit, listing: &Listing) -> Job {
    let p = &u.placements[0];
    Job {
        id,
        label: u.file.path.clone(),
        what: format!("file {} of {} {} at {}", u.file.path, listing.source, listing.repo, listing.commit),
        url: u.file.url.clone(),
        size: u.file.size,
        digest: u.file.digest.clone(),
        tmp: p.tmp.clone(),
        state: p.state.clone(),
        dest: p.dest.clone(),
    }
}

/// Needed bytes (minus what partial files already hold) against free space; returns needed.
fn check_disk(layout: &Layout, jobs: &[Job]) -> Result<u64> {
    let needed: u64 = jobs.iter().map(|j| j.size.saturating_sub(download::partial_bytes(j))).sum();
    if needed == 0 {
        return Ok(0);
    }
    let dir = layout.data_dir();
    let free = disk::free_bytes(&dir)?;
    if needed > free {
        return Err(exit::coded(
            exit::DOWNLOAD_FAILED,
            format!(
                "not enough disk space in {}: need {}, free {}, short by {}; free space or pass --dir on a larger disk",
                dir.display(),
                disk::human(needed),
                disk::human(free),
                disk::human(needed - free)
            ),
        ));
    }
    Ok(needed)
}

/// `job`: the id of the download that produced it, or None when it was already present.
fn finish_unit(layout: &Layout, u: &Unit, sha: &str, reporter: &dyn Reporter, job: Option<usize>) -> Result<()> {
    for (p, f) in u.placements.iter().zip(&u.paths) {
        layout.finish_file(p, f, sha)?;
        reporter.file_done(job.unwrap_or(usize::MAX), &f.path, f.size, sha, f.digest.kind(), job.is_none());
    }
    Ok(())
}

/// Downloads all jobs, `jobs` files at a time; keeps going after a failure so that the other
/// files complete, then reports every failure (exit 5 if any was a checksum mismatch).
async fn download_all(ctx: &Arc<Ctx>, layout: &Layout, todo: Vec<Unit>, jobs: Vec<Job>, par: usize) -> Result<()> {
    let files = Arc::new(tokio::sync::Semaphore::new(par));
    let mut set = tokio::task::JoinSet::new();
    for (idx, job) in jobs.into_iter().enumerate() {
        let (ctx, files) = (ctx.clone(), files.clone());
        set.spawn(async move {
            let _permit = files.acquire_owned().await;
            let r = download::fetch_file(&ctx, &job).await;
            (idx, r)
        });
    }
    let mut failures: Vec<anyhow::Error> = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (idx, r) = joined.context("a download task panicked")?;
        match r {
            Ok(fetched) => finish_unit(layout, &todo[idx], &fetched.sha256, ctx.reporter.as_ref(), Some(idx))?,
            Err(e) => failures.push(e),
        }
    }
    combine(failures)
}

fn combine(mut failures: Vec<anyhow::Error>) -> Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    let code = |e: &anyhow::Error| e.chain().find_map(|c| c.downcast_ref::<exit::Coded>().map(|c| c.code));
    let verify_failed = failures.iter().any(|e| code(e) == Some(exit::VERIFICATION_FAILED));
    if failures.len() == 1 {
        return Err(failures.remove(0));
    }
    let lines: Vec<String> = failures.iter().take(5).map(|e| format!("  {e:#}")).collect();
    let more = if failures.len() > 5 { format!("\n  ... and {} more", failures.len() - 5) } else { String::new() };
    let code = if verify_failed { exit::VERIFICATION_FAILED } else { exit::DOWNLOAD_FAILED };
    Err(exit::coded(code, format!("{} files failed:\n{}{more}", failures.len(), lines.join("\n"))))
}
