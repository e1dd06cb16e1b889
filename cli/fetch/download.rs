//! The download engine for one file: parallel HTTP Range chunks, resumable across process
//! restarts, retries with backoff, an idle (not total) read timeout, and verification before
//! the file becomes visible.
//!
//! On disk, next to the final location: `<tmp>` (the partial content, full size, sparse) and
//! `<state>` (JSON: size, chunk size, expected digest, bytes done per chunk). The state is
//! written only after the data it describes has been fsynced, so after a crash or SIGKILL it
//! never claims bytes that are not on disk; a restart requests only the missing ranges.

use super::http::{classify, Http, Verdict};
use super::progress::Reporter;
use super::verify::{hash_file, Digest, Hasher, Hashes};
use crate::exit;
use anyhow::{Context, Result};
use futures_util::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// What every file download shares.
pub struct Ctx {
    pub http: Http,
    /// One permit per open HTTP connection (`--jobs`).
    pub conns: Arc<Semaphore>,
    pub reporter: Arc<dyn Reporter>,
    /// Body bytes received from the network in this run.
    pub downloaded: AtomicU64,
}

/// One file to fetch.
pub struct Job {
    pub id: usize,
    pub label: String,
    /// The file with its repo and commit, for HTTP error messages (404, 401, ...).
    pub what: String,
    pub url: String,
    pub size: u64,
    pub digest: Digest,
    pub tmp: PathBuf,
    pub state: PathBuf,
    pub dest: PathBuf,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct State {
    version: u32,
    size: u64,
    chunk: u64,
    expect: String,
    done: Vec<u64>,
    /// Bumped whenever written bytes are thrown away (a restart from 0), so the hasher that
    /// follows the download knows to start over. Not persisted.
    #[serde(skip, default)]
    gen: u64,
}

impl State {
    fn fresh(size: u64, chunk: u64, expect: &str) -> State {
        let chunk = chunk.max(1);
        let n = size.div_ceil(chunk).max(1) as usize;
        State { version: 1, size, chunk, expect: expect.into(), done: vec![0; n], gen: 0 }
    }

    fn range(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * self.chunk;
        (start, self.chunk.min(self.size.saturating_sub(start)))
    }

    /// Bytes from offset 0 that are all on disk.
    fn prefix(&self) -> u64 {
        let mut total = 0;
        for (i, &d) in self.done.iter().enumerate() {
            total += d;
            if d < self.range(i).1 {
                break;
            }
        }
        total
    }

    fn done_bytes(&self) -> u64 {
        self.done.iter().sum()
    }

    fn valid(&self) -> bool {
        self.done.len() == self.size.div_ceil(self.chunk.max(1)).max(1) as usize
            && (0..self.done.len()).all(|i| self.done[i] <= self.range(i).1)
    }
}

fn expect_key(job: &Job) -> String {
    match &job.digest {
        Digest::None => format!("url:{}", job.url),
        d => format!("{}:{}", d.kind(), d.hex().unwrap_or_default()),
    }
}

/// Bytes already on disk for `job` according to its state file (for the disk-space check).
pub fn partial_bytes(job: &Job) -> u64 {
    load_state(job).map(|s| s.done_bytes()).unwrap_or(0)
}

fn load_state(job: &Job) -> Option<State> {
    let text = std::fs::read(&job.state).ok()?;
    let st: State = serde_json::from_slice(&text).ok()?;
    let tmp_len = std::fs::metadata(&job.tmp).ok()?.len();
    (st.version == 1 && st.size == job.size && st.expect == expect_key(job) && st.valid() && tmp_len == job.size)
        .then_some(st)
}

struct Shared {
    file: std::fs::File,
    state: Mutex<State>,
    dirty: AtomicBool,
    state_path: PathBuf,
    /// Held while persisting; `true` once the download is over, so that a persist still
    /// queued on the blocking pool cannot resurrect a state file after the rename.
    closed: Mutex<bool>,
    /// No more writes will happen (set after all chunks completed).
    finished: AtomicBool,
    /// The download failed; the hasher should give up.
    stop: AtomicBool,
}

impl Shared {
    fn snapshot(&self) -> State {
        self.state.lock().map(|s| s.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Stops all further persisting (waits for one in progress).
    fn close(&self) {
        *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Snapshot first, then fsync the data, then write the snapshot: the state on disk never
    /// runs ahead of the data on disk.
    fn persist(&self) -> std::io::Result<()> {
        let closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if *closed {
            return Ok(());
        }
        let snap = self.snapshot();
        self.file.sync_data()?;
        write_state(&self.state_path, &snap)
    }
}

fn write_state(path: &Path, st: &State) -> std::io::Result<()> {
    let tmp = path.with_extension("state-tmp");
    let mut f = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut f, &serde_json::to_vec(st).unwrap_or_default())?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

enum ChunkError {
    /// A 200 answered a range request: the server ignores Range.
    RangeIgnored,
    Fatal(anyhow::Error),
}

enum Attempt {
    Complete,
    Retry { reason: String, wait: Option<Duration>, progressed: bool },
}

/// Result of a successful fetch.
pub struct Fetched {
    pub sha256: String,
}

/// Downloads, verifies and atomically renames `job.tmp` to `job.dest`. A checksum mismatch
/// deletes the bad data and downloads once more; a second mismatch fails with exit code 5.
pub async fn fetch_file(ctx: &Ctx, job: &Job) -> Result<Fetched> {
    let mut last = String::new();
    for round in 0..2 {
        let hashes = download(ctx, job).await?;
        match hashes.check(&job.digest) {
            Ok(()) => {
                finalize(job).with_context(|| format!("moving {} into place", job.label))?;
                return Ok(Fetched { sha256: hashes.sha256 });
            }
            Err(actual) => {
                let _ = std::fs::remove_file(&job.tmp);
                let _ = std::fs::remove_file(&job.state);
                ctx.reporter.verify_failed(
                    job.id,
                    &job.label,
                    job.digest.hex().unwrap_or_default(),
                    &actual,
                    round == 0,
                );
                last = actual;
            }
        }
    }
    Err(exit::coded(
        exit::VERIFICATION_FAILED,
        format!(
            "{}: {} mismatch on two downloads (expected {}, got {}); the bad data was deleted. \
The server or a proxy serves corrupt data: try again later or another --source/HF_ENDPOINT",
            job.label,
            job.digest.kind(),
            job.digest.hex().unwrap_or_default(),
            last
        ),
    ))
}

fn finalize(job: &Job) -> std::io::Result<()> {
    if let Some(parent) = job.dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(&job.tmp, &job.dest)?;
    if let Some(parent) = job.dest.parent() {
        // Make the rename durable before the state file (our only record) goes away.
        std::fs::File::open(parent)?.sync_all()?;
    }
    let _ = std::fs::remove_file(&job.state);
    Ok(())
}

/// Brings `job.tmp` to full, contiguous content and returns its hashes, computed while the
/// bytes arrive (verification then costs no time after the last byte).
async fn download(ctx: &Ctx, job: &Job) -> Result<Hashes> {
    let (file, state) = open_partial(ctx, job)?;
    let already = state.done_bytes();
    ctx.reporter.file_start(job.id, &job.label, job.size, already);
    let git = matches!(job.digest, Digest::GitSha1(_));
    if already == job.size {
        let tmp = job.tmp.clone();
        return tokio::task::spawn_blocking(move || hash_file(&tmp, git)).await.context("hashing task failed")?;
    }
    let multi = state.done.len() > 1;
    let shared = Arc::new(Shared {
        file,
        state: Mutex::new(state),
        dirty: AtomicBool::new(false),
        state_path: job.state.clone(),
        closed: Mutex::new(false),
        finished: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let ticker = spawn_persister(shared.clone(), ctx.http.tuning.persist);
    let hasher = {
        let (s, size) = (shared.clone(), job.size);
        tokio::task::spawn_blocking(move || follow_hash(&s, size, git))
    };
    let result = transfer(ctx, job, &shared, multi).await;
    ticker.abort();
    if result.is_err() {
        shared.stop.store(true, Ordering::Release);
        let _ = shared.persist();
    }
    shared.close();
    result?;
    shared.finished.store(true, Ordering::Release);
    shared.file.sync_data().with_context(|| format!("syncing {}", job.tmp.display()))?;
    let hashes = hasher.await.context("hashing task failed")?;
    hashes.with_context(|| format!("reading back {}", job.tmp.display()))?.context("hashing stopped early")
}

/// Runs the chunks; on a server that ignores Range, restarts as one stream from byte 0.
async fn transfer(ctx: &Ctx, job: &Job, shared: &Arc<Shared>, multi: bool) -> Result<()> {
    let mut result = run_chunks(ctx, job, shared).await;
    if multi && matches!(result, Err(ChunkError::RangeIgnored)) {
        let rewind = shared.with_state(|s| {
            let had = s.done_bytes();
            let gen = s.gen + 1;
            *s = State::fresh(job.size, job.size, &expect_key(job));
            s.gen = gen;
            had
        });
        ctx.reporter.rewind(job.id, rewind);
        ctx.reporter.note(&format!("{}: server ignores HTTP Range; downloading it as one stream", job.label));
        result = run_chunks(ctx, job, shared).await;
    }
    match result {
        Ok(()) => Ok(()),
        Err(ChunkError::Fatal(e)) => Err(e),
        Err(ChunkError::RangeIgnored) => Err(exit::coded(
            exit::DOWNLOAD_FAILED,
            format!("{}: server answered a range request with the whole file", job.label),
        )),
    }
}

/// Hashes the file behind the download: reads the contiguous prefix that is on disk (from
/// the page cache, just written) as it grows. Within one `gen` a byte below the prefix is
/// never rewritten, so the result equals hashing the finished file; a new `gen` starts over.
/// Returns None when the download failed.
fn follow_hash(shared: &Shared, size: u64, git: bool) -> std::io::Result<Option<Hashes>> {
    let mut hasher = Hasher::new(size, git);
    let (mut pos, mut gen) = (0u64, shared.with_state(|s| s.gen));
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let finished = shared.finished.load(Ordering::Acquire);
        let (prefix, g) = shared.with_state(|s| (s.prefix(), s.gen));
        if g != gen {
            (hasher, pos, gen) = (Hasher::new(size, git), 0, g);
        }
        if pos < prefix {
            let n = (prefix - pos).min(buf.len() as u64) as usize;
            shared.file.read_exact_at(&mut buf[..n], pos)?;
            hasher.update(&buf[..n]);
            pos += n as u64;
            continue;
        }
        if finished && pos == size {
            return Ok(Some(hasher.finish()));
        }
        if shared.stop.load(Ordering::Acquire) {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn open_partial(ctx: &Ctx, job: &Job) -> Result<(std::fs::File, State)> {
    if let Some(parent) = job.tmp.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&job.tmp)
        .with_context(|| format!("opening {}", job.tmp.display()))?;
    // Locked before anything is read or resized: a second `hy fetch` into the same place must
    // not truncate or interleave with this one. The kernel drops the lock when we exit.
    lock_exclusive(&file).map_err(|e| {
        exit::coded(
            exit::DOWNLOAD_FAILED,
            format!(
                "{}: another process is downloading it into {} ({e}); wait for it to finish or stop it",
                job.label,
                job.tmp.display()
            ),
        )
    })?;
    let state = load_state(job).unwrap_or_else(|| State::fresh(job.size, ctx.http.tuning.chunk, &expect_key(job)));
    if state.done_bytes() == 0 {
        file.set_len(0)?;
    }
    file.set_len(job.size).with_context(|| format!("sizing {}", job.tmp.display()))?;
    write_state(&job.state, &state).with_context(|| format!("writing {}", job.state.display()))?;
    Ok((file, state))
}

/// A non-blocking exclusive `flock` on the partial file.
fn lock_exclusive(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock only takes a file descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn spawn_persister(shared: Arc<Shared>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if shared.dirty.swap(false, Ordering::AcqRel) {
                let s = shared.clone();
                // Failure to persist only costs re-downloading on restart; the download goes on.
                let _ = tokio::task::spawn_blocking(move || s.persist()).await;
            }
        }
    })
}

async fn run_chunks(ctx: &Ctx, job: &Job, shared: &Arc<Shared>) -> Result<(), ChunkError> {
    let n = shared.with_state(|s| s.done.len());
    let tasks = (0..n).map(|i| run_chunk(ctx, job, shared, i));
    futures_util::future::try_join_all(tasks).await.map(|_| ())
}

async fn run_chunk(ctx: &Ctx, job: &Job, shared: &Arc<Shared>, idx: usize) -> Result<(), ChunkError> {
    let tuning = &ctx.http.tuning;
    let (mut attempt, mut total) = (0u32, 0u32);
    loop {
        let (start, len, done, whole) = shared.with_state(|s| {
            let (a, l) = s.range(idx);
            (a, l, s.done[idx], s.done.len() == 1)
        });
        if done >= len {
            return Ok(());
        }
        let permit = ctx.conns.acquire().await.map_err(|e| ChunkError::Fatal(e.into()))?;
        let outcome = attempt_range(ctx, job, shared, idx, start + done, start + len, whole).await?;
        drop(permit);
        let Attempt::Retry { reason, wait, progressed } = outcome else { return Ok(()) };
        attempt = if progressed { 1 } else { attempt + 1 };
        total += 1;
        if attempt >= tuning.max_attempts || total >= tuning.max_attempts.saturating_mul(20) {
            return Err(ChunkError::Fatal(exit::coded(
                exit::DOWNLOAD_FAILED,
                format!(
                    "{}: giving up after {total} attempts (last: {reason}); run the same command again to resume",
                    job.label
                ),
            )));
        }
        let delay = tuning.backoff(attempt, wait);
        ctx.reporter.retry(job.id, &job.label, total, delay, &reason);
        tokio::time::sleep(delay).await;
    }
}

/// One request for bytes `[off, end)` of the file, streamed to disk.
async fn attempt_range(
    ctx: &Ctx,
    job: &Job,
    shared: &Arc<Shared>,
    idx: usize,
    off: u64,
    end: u64,
    whole: bool,
) -> Result<Attempt, ChunkError> {
    let retry = |reason: String, wait| Ok(Attempt::Retry { reason, wait, progressed: false });
    let req = ctx.http.get(&job.url).header(RANGE, format!("bytes={off}-{}", end - 1));
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return retry(format!("request failed: {e}"), None),
    };
    let redirected = resp.url().as_str() != job.url;
    match classify(resp.status(), resp.headers(), &job.what, redirected, &ctx.http.auth) {
        Verdict::Ok => {}
        Verdict::Retry { reason, wait } => return retry(reason, wait),
        Verdict::Fail(e) => return Err(ChunkError::Fatal(e)),
    }
    let mut pos = off;
    match resp.status().as_u16() {
        206 => check_content_range(&resp, off, job)?,
        200 if off == 0 && end == job.size => check_length(&resp, job)?,
        200 if whole => {
            // Resuming, but the server sends the whole file: start over from byte 0.
            check_length(&resp, job)?;
            let had = shared.with_state(|s| {
                s.gen += 1;
                std::mem::take(&mut s.done[idx])
            });
            ctx.reporter.rewind(job.id, had);
            pos = 0;
        }
        200 => return Err(ChunkError::RangeIgnored),
        s => return Err(fatal(format!("{}: unexpected HTTP {s} to a range request", job.label))),
    }
    stream_body(ctx, job, shared, idx, resp, pos, end).await
}

fn fatal(msg: String) -> ChunkError {
    ChunkError::Fatal(exit::coded(exit::DOWNLOAD_FAILED, msg))
}

fn check_content_range(resp: &reqwest::Response, off: u64, job: &Job) -> Result<(), ChunkError> {
    let cr = resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let parsed = cr.strip_prefix("bytes ").and_then(|r| {
        let (span, total) = r.split_once('/')?;
        let (a, _) = span.split_once('-')?;
        Some((a.trim().parse::<u64>().ok()?, total.trim().parse::<u64>().ok()))
    });
    match parsed {
        Some((a, _)) if a != off => {
            Err(fatal(format!("{}: asked for bytes from {off}, server sent from {a}", job.label)))
        }
        Some((_, Some(t))) if t != job.size => Err(fatal(format!(
            "{}: the file on the server is {t} bytes, the listing said {}; it changed while fetching, run again",
            job.label, job.size
        ))),
        Some(_) => Ok(()),
        None => Err(fatal(format!("{}: 206 answer without a valid Content-Range ({cr:?})", job.label))),
    }
}

fn check_length(resp: &reqwest::Response, job: &Job) -> Result<(), ChunkError> {
    let len = resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match len {
        Some(l) if l != job.size => Err(fatal(format!(
            "{}: the server sends {l} bytes, the listing said {}; it changed while fetching, run again",
            job.label, job.size
        ))),
        _ => Ok(()),
    }
}

async fn stream_body(
    ctx: &Ctx,
    job: &Job,
    shared: &Arc<Shared>,
    idx: usize,
    resp: reqwest::Response,
    mut pos: u64,
    end: u64,
) -> Result<Attempt, ChunkError> {
    let idle = ctx.http.tuning.idle;
    let mut stream = resp.bytes_stream();
    let start = pos;
    let retry = |reason: String, pos: u64| Ok(Attempt::Retry { reason, wait: None, progressed: pos > start });
    loop {
        let item = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => {
                return retry(format!("no data for {:.1} s (idle timeout) at byte {pos}", idle.as_secs_f64()), pos)
            }
            Ok(None) if pos < end => return retry(format!("connection closed at byte {pos} of {end}"), pos),
            Ok(None) => return Ok(Attempt::Complete),
            Ok(Some(Err(e))) => return retry(format!("connection dropped at byte {pos}: {e}"), pos),
            Ok(Some(Ok(b))) => b,
        };
        // Anything past the requested range is dropped: it belongs to another chunk.
        let take = item.len().min((end - pos) as usize);
        shared
            .file
            .write_all_at(&item[..take], pos)
            .map_err(|e| fatal(format!("writing {}: {e} (disk full?)", job.tmp.display())))?;
        pos += take as u64;
        shared.with_state(|s| s.done[idx] += take as u64);
        shared.dirty.store(true, Ordering::Release);
        ctx.downloaded.fetch_add(take as u64, Ordering::Relaxed);
        ctx.reporter.bytes(job.id, take as u64);
        if pos >= end {
            return Ok(Attempt::Complete);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_ranges_and_prefix() {
        let mut s = State::fresh(250, 100, "sha256:x");
        assert_eq!(s.done.len(), 3);
        assert_eq!((s.range(0), s.range(2)), ((0, 100), (200, 50)));
        s.done = vec![100, 40, 50];
        assert_eq!(s.prefix(), 140, "the prefix stops at the first incomplete chunk");
        assert_eq!(s.done_bytes(), 190);
        assert!(s.valid());
        s.done = vec![100, 101, 0];
        assert!(!s.valid(), "a chunk cannot hold more than its range");
        assert_eq!(State::fresh(0, 100, "e").done, vec![0]);
    }
}
