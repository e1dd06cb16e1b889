//! Progress reporting: bars on a TTY (indicatif, stderr), plain lines otherwise, or one JSON
//! event per line on stdout with `--json` (schema in README-section.md).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::disk::human;

/// Facts about a run, reported once at its start.
pub struct StartInfo<'a> {
    pub source: &'a str,
    pub repo: &'a str,
    pub revision: &'a str,
    pub commit: &'a str,
    pub target: &'a str,
    pub files: usize,
    pub bytes_total: u64,
    pub bytes_to_fetch: u64,
}

/// Totals of a finished run.
pub struct Summary<'a> {
    pub target: &'a str,
    pub files: usize,
    pub bytes_downloaded: u64,
    pub bytes_reused: u64,
    pub seconds: f64,
}

pub trait Reporter: Send + Sync {
    fn start(&self, info: &StartInfo);
    fn file_start(&self, id: usize, path: &str, size: u64, already: u64);
    fn bytes(&self, id: usize, n: u64);
    /// Bytes previously counted for `id` were thrown away (server ignored Range).
    fn rewind(&self, id: usize, n: u64);
    fn retry(&self, id: usize, path: &str, attempt: u32, wait: Duration, reason: &str);
    fn verify_failed(&self, id: usize, path: &str, expected: &str, actual: &str, retrying: bool);
    fn file_done(&self, id: usize, path: &str, size: u64, sha256: &str, check: &str, reused: bool);
    fn note(&self, msg: &str);
    fn finish(&self, s: &Summary);
    fn error(&self, msg: &str, code: i32);
}

/// Picks the reporter for the output mode and terminal.
pub fn reporter(json: bool) -> std::sync::Arc<dyn Reporter> {
    use std::io::IsTerminal;
    if json {
        std::sync::Arc::new(JsonReporter::default())
    } else if std::io::stderr().is_terminal() {
        std::sync::Arc::new(BarReporter::new())
    } else {
        std::sync::Arc::new(LineReporter::default())
    }
}

#[derive(Default)]
struct Totals {
    done: AtomicU64,
    total: AtomicU64,
}

/// `--json`: one object per line on stdout. Progress events at most once a second.
#[derive(Default)]
pub struct JsonReporter {
    totals: Totals,
    last: Mutex<Option<Instant>>,
    started: Mutex<Option<Instant>>,
}

impl JsonReporter {
    fn emit(&self, v: serde_json::Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }
}

impl Reporter for JsonReporter {
    fn start(&self, i: &StartInfo) {
        self.totals.total.store(i.bytes_total, Ordering::Relaxed);
        self.totals.done.store(i.bytes_total - i.bytes_to_fetch.min(i.bytes_total), Ordering::Relaxed);
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.emit(json!({"event":"start","source":i.source,"repo":i.repo,"revision":i.revision,"commit":i.commit,
            "target":i.target,"files":i.files,"bytes_total":i.bytes_total,"bytes_to_fetch":i.bytes_to_fetch}));
    }
    fn file_start(&self, _id: usize, path: &str, size: u64, already: u64) {
        self.emit(json!({"event":"file_start","path":path,"size":size,"resume_from":already}));
    }
    fn bytes(&self, _id: usize, n: u64) {
        let done = self.totals.done.fetch_add(n, Ordering::Relaxed) + n;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(Instant::now());
        drop(last);
        let secs = self.started.lock().ok().and_then(|s| *s).map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
        self.emit(json!({"event":"progress","bytes_done":done,"bytes_total":self.totals.total.load(Ordering::Relaxed),"seconds":secs}));
    }
    fn rewind(&self, _id: usize, n: u64) {
        self.totals.done.fetch_sub(n.min(self.totals.done.load(Ordering::Relaxed)), Ordering::Relaxed);
    }
    fn retry(&self, _id: usize, path: &str, attempt: u32, wait: Duration, reason: &str) {
        self.emit(
            json!({"event":"retry","path":path,"attempt":attempt,"wait_ms":wait.as_millis() as u64,"reason":reason}),
        );
    }
    fn verify_failed(&self, _id: usize, path: &str, expected: &str, actual: &str, retrying: bool) {
        self.emit(json!({"event":"verify_failed","path":path,"expected":expected,"actual":actual,"retrying":retrying}));
    }
    fn file_done(&self, _id: usize, path: &str, size: u64, sha256: &str, check: &str, reused: bool) {
        self.emit(json!({"event":"file_done","path":path,"size":size,"sha256":sha256,"check":check,"reused":reused}));
    }
    fn note(&self, msg: &str) {
        self.emit(json!({"event":"note","message":msg}));
    }
    fn finish(&self, s: &Summary) {
        self.emit(json!({"event":"done","target":s.target,"files":s.files,"bytes_downloaded":s.bytes_downloaded,
            "bytes_reused":s.bytes_reused,"seconds":s.seconds}));
    }
    fn error(&self, msg: &str, code: i32) {
        self.emit(json!({"event":"error","message":msg,"exit_code":code}));
    }
}

/// Not a TTY: a line per file and a total line every 10 seconds, on stderr.
#[derive(Default)]
pub struct LineReporter {
    totals: Totals,
    last: Mutex<Option<Instant>>,
}

impl Reporter for LineReporter {
    fn start(&self, i: &StartInfo) {
        self.totals.total.store(i.bytes_to_fetch, Ordering::Relaxed);
        eprintln!(
            "hy fetch: {} {} ({}): {} files, {}, {} to download, into {}",
            i.source,
            i.repo,
            short(i.commit),
            i.files,
            human(i.bytes_total),
            human(i.bytes_to_fetch),
            i.target
        );
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
    fn file_start(&self, _id: usize, path: &str, size: u64, already: u64) {
        if already > 0 {
            eprintln!("  resuming {path} at {} of {}", human(already), human(size));
        }
    }
    fn bytes(&self, _id: usize, n: u64) {
        let done = self.totals.done.fetch_add(n, Ordering::Relaxed) + n;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            eprintln!("  {} of {} downloaded", human(done), human(self.totals.total.load(Ordering::Relaxed)));
        }
    }
    fn rewind(&self, _id: usize, n: u64) {
        self.totals.done.fetch_sub(n.min(self.totals.done.load(Ordering::Relaxed)), Ordering::Relaxed);
    }
    fn retry(&self, _id: usize, path: &str, attempt: u32, wait: Duration, reason: &str) {
        eprintln!("  retry {attempt} of {path} in {:.1} s: {reason}", wait.as_secs_f64());
    }
    fn verify_failed(&self, _id: usize, path: &str, expected: &str, actual: &str, retrying: bool) {
        let next = if retrying { "deleted, downloading again" } else { "deleted" };
        eprintln!("  checksum mismatch for {path}: expected {expected}, got {actual}; {next}");
    }
    fn file_done(&self, _id: usize, path: &str, size: u64, _sha256: &str, check: &str, reused: bool) {
        let how = if reused { "already present" } else { "downloaded" };
        eprintln!("  {how}: {path} ({}, {check} ok)", human(size));
    }
    fn note(&self, msg: &str) {
        eprintln!("  {msg}");
    }
    fn finish(&self, s: &Summary) {
        eprintln!(
            "hy fetch: done, {} files in {}; downloaded {} in {:.1} s, reused {}",
            s.files,
            s.target,
            human(s.bytes_downloaded),
            s.seconds,
            human(s.bytes_reused)
        );
    }
    fn error(&self, _msg: &str, _code: i32) {}
}

/// A TTY: a total bar plus one bar per file in flight.
pub struct BarReporter {
    multi: MultiProgress,
    total: ProgressBar,
    files: Mutex<HashMap<usize, ProgressBar>>,
}

impl BarReporter {
    fn new() -> BarReporter {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = multi.add(ProgressBar::new(0));
        total.set_style(style("total"));
        BarReporter { multi, total, files: Mutex::new(HashMap::new()) }
    }

    fn bar(&self, id: usize) -> Option<ProgressBar> {
        self.files.lock().ok()?.get(&id).cloned()
    }
}

fn style(kind: &str) -> ProgressStyle {
    // No colours in the templates, so NO_COLOR is respected by construction.
    let t = if kind == "total" {
        "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}"
    } else {
        "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}"
    };
    ProgressStyle::with_template(t).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

impl Reporter for BarReporter {
    fn start(&self, i: &StartInfo) {
        self.total.set_prefix("total");
        self.total.set_length(i.bytes_to_fetch);
        let _ = self.multi.println(format!(
            "{} {} ({}): {} files, {} to download, into {}",
            i.source,
            i.repo,
            short(i.commit),
            i.files,
            human(i.bytes_to_fetch),
            i.target
        ));
    }
    fn file_start(&self, id: usize, path: &str, size: u64, already: u64) {
        let pb = self.multi.add(ProgressBar::new(size));
        pb.set_style(style("file"));
        pb.set_prefix("file");
        pb.set_message(path.to_string());
        pb.set_position(already);
        // A second round (after a checksum mismatch) replaces the file's old bar.
        if let Some(old) = self.files.lock().ok().and_then(|mut m| m.insert(id, pb)) {
            old.finish_and_clear();
            self.multi.remove(&old);
        }
    }
    fn bytes(&self, id: usize, n: u64) {
        self.total.inc(n);
        if let Some(pb) = self.bar(id) {
            pb.inc(n);
        }
    }
    fn rewind(&self, id: usize, n: u64) {
        self.total.set_position(self.total.position().saturating_sub(n));
        if let Some(pb) = self.bar(id) {
            pb.set_position(pb.position().saturating_sub(n));
        }
    }
    fn retry(&self, _id: usize, path: &str, attempt: u32, wait: Duration, reason: &str) {
        let _ = self.multi.println(format!("retry {attempt} of {path} in {:.1} s: {reason}", wait.as_secs_f64()));
    }
    fn verify_failed(&self, _id: usize, path: &str, expected: &str, actual: &str, retrying: bool) {
        let next = if retrying { "deleted, downloading again" } else { "deleted" };
        let _ = self.multi.println(format!("checksum mismatch for {path}: expected {expected}, got {actual}; {next}"));
    }
    fn file_done(&self, id: usize, path: &str, size: u64, _sha256: &str, check: &str, reused: bool) {
        if let Some(pb) = self.files.lock().ok().and_then(|mut m| m.remove(&id)) {
            pb.finish_and_clear();
            self.multi.remove(&pb);
        }
        let how = if reused { "present" } else { "done" };
        let _ = self.multi.println(format!("{how:>10} {path} ({}, {check} ok)", human(size)));
    }
    fn note(&self, msg: &str) {
        let _ = self.multi.println(msg);
    }
    fn finish(&self, s: &Summary) {
        self.total.finish_and_clear();
        eprintln!(
            "done: {} files in {}; downloaded {} in {:.1} s, reused {}",
            s.files,
            s.target,
            human(s.bytes_downloaded),
            s.seconds,
            human(s.bytes_reused)
        );
    }
    fn error(&self, _msg: &str, _code: i32) {
        self.total.abandon();
    }
}
