//! Opt-in timing of engine phases: with `HY_PROFILE=1`, [`scope`] guards add their elapsed
//! time to a per-label total, and [`report`] prints the totals (stderr). Off, a scope costs
//! one relaxed atomic load.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static STATE: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 off, 2 on
static TOTALS: Mutex<BTreeMap<String, (Duration, u64)>> = Mutex::new(BTreeMap::new());

thread_local! {
    /// The labels of this thread's open scopes, innermost last.
    static OPEN: std::cell::RefCell<Vec<&'static str>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The innermost open scope on this thread ("-" outside any).
pub fn current() -> &'static str {
    OPEN.with(|o| o.borrow().last().copied().unwrap_or("-"))
}

/// Whether `HY_PROFILE` is on.
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var_os("HY_PROFILE").is_some_and(|v| v != "0");
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
        s => s == 2,
    }
}

/// Adds the time until the guard drops to `label`'s total (when profiling is on).
pub struct Scope {
    label: &'static str,
    start: Option<Instant>,
}

pub fn scope(label: &'static str) -> Scope {
    let on = enabled();
    if on {
        OPEN.with(|o| o.borrow_mut().push(label));
    }
    Scope { label, start: on.then(Instant::now) }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(t) = self.start {
            OPEN.with(|o| o.borrow_mut().pop());
            add(self.label, t.elapsed());
        }
    }
}

/// Adds `d` to `label`'s total as one call (when profiling is on): for times measured
/// elsewhere than in a scope, such as a pool job's per-thread spread.
pub fn add(label: impl Into<String>, d: Duration) {
    if enabled() {
        let mut m = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(label.into()).or_default();
        e.0 += d;
        e.1 += 1;
    }
}

/// Per-thread timestamps inside one pool job, at `K` marked points: nanoseconds since
/// [`Stamps::new`]. Empty (marks cost a branch) when profiling is off.
pub struct Stamps<const K: usize> {
    t0: Option<Instant>,
    at: Vec<[std::sync::atomic::AtomicU64; K]>,
}

impl<const K: usize> Stamps<K> {
    pub fn new(threads: usize) -> Self {
        let on = enabled();
        Stamps {
            t0: on.then(Instant::now),
            at: (0..if on { threads } else { 0 }).map(|_| std::array::from_fn(|_| Default::default())).collect(),
        }
    }

    /// Thread `t` is at point `k` now.
    pub fn mark(&self, t: usize, k: usize) {
        if let Some(t0) = self.t0 {
            self.at[t][k].store(t0.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Time since [`Stamps::new`] (zero when profiling is off).
    pub fn elapsed(&self) -> Duration {
        self.t0.map(|t| t.elapsed()).unwrap_or_default()
    }

    /// Every thread's time at point `k` (empty when profiling is off).
    pub fn at(&self, k: usize) -> Vec<u64> {
        self.at.iter().map(|a| a[k].load(std::sync::atomic::Ordering::Relaxed)).collect()
    }
}

/// The mean and the largest of `v` (0 for none).
pub fn mean_max(v: &[u64]) -> (Duration, Duration) {
    let mean = v.iter().sum::<u64>() / v.len().max(1) as u64;
    (Duration::from_nanos(mean), Duration::from_nanos(v.iter().copied().max().unwrap_or(0)))
}

/// Prints and clears the totals (nothing when profiling is off).
pub fn report() {
    if !enabled() {
        return;
    }
    let mut m = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let total: Duration = m.values().map(|v| v.0).sum();
    eprintln!("profile (HY_PROFILE): label, total ms, calls, share of the listed total");
    for (k, (d, n)) in m.iter() {
        eprintln!(
            "  {k:<40} {:>10.1} {:>8} {:>6.1}%",
            d.as_secs_f64() * 1e3,
            n,
            100.0 * d.as_secs_f64() / total.as_secs_f64().max(1e-12)
        );
    }
    m.clear();
}

/// Clears the totals (e.g. after a prefill, to time decode alone).
pub fn reset() {
    TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
