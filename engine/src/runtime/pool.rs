//! A fixed pool of pinned worker threads for bandwidth-bound decode.
//!
//! Why not rayon: during decode every layer is a few hundred microseconds of streaming
//! through weights. Here the threads are pinned, they only take rows of their own NUMA node
//! (the weights they first touched stay local to them; see `queue::RowQueue` for how rows
//! are handed out), and between phases they meet at a barrier that spins briefly before
//! yielding, because phases are short.
//!
//! [`Pool::run`] executes a closure on every thread (the caller is thread 0) and returns when
//! all are done. Inside the closure, [`Pool::barrier`] separates phases.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;

/// Which CPUs the pool's threads run on, grouped by NUMA node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadLayout {
    /// One entry per node: the CPU ids its threads are pinned to (one thread per CPU).
    /// An empty CPU list for a node means "unpinned threads" (count given by `unpinned`).
    pub nodes: Vec<Vec<usize>>,
    /// Pin threads to their CPUs.
    pub pin: bool,
}

impl ThreadLayout {
    /// `n` unpinned threads on one node.
    pub fn unpinned(n: usize) -> Self {
        ThreadLayout { nodes: vec![(0..n.max(1)).collect()], pin: false }
    }

    /// `n` threads split as evenly as possible into `nodes` simulated nodes (for tests of
    /// NUMA-split placement on single-node machines), unpinned.
    pub fn simulated(n: usize, nodes: usize) -> Self {
        let nodes = nodes.clamp(1, n.max(1));
        let mut out = vec![Vec::new(); nodes];
        for t in 0..n.max(1) {
            out[t * nodes / n.max(1)].push(t);
        }
        ThreadLayout { nodes: out, pin: false }
    }

    pub fn threads(&self) -> usize {
        self.nodes.iter().map(Vec::len).sum()
    }

    /// (node index, cpu) of every thread, in thread order: node 0's threads first.
    pub fn assignments(&self) -> Vec<(usize, usize)> {
        self.nodes.iter().enumerate().flat_map(|(n, cpus)| cpus.iter().map(move |&c| (n, c))).collect()
    }
}

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// The current job; valid while `run` is waiting (lifetime erased, see `run`).
    job: Mutex<Option<&'static Job>>,
    generation: AtomicU64,
    remaining: AtomicUsize,
    stop: AtomicBool,
    wake: Condvar,
    wake_lock: Mutex<()>,
    barrier: SpinBarrier,
}

/// A pool of `threads - 1` workers plus the calling thread.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    layout: ThreadLayout,
    /// Thread index → node index.
    node_of: Vec<usize>,
}

/// Spins this many times before yielding while waiting inside a job (barriers, the caller
/// waiting for the workers).
const SPINS: u32 = 2_000;

/// How long an idle worker spins for the next job before it parks: `HY_SPIN_US` µs, default
/// 100 (spinning longer keeps cores busy that could otherwise lend their power budget, and
/// turbo, to the thread doing the single-threaded work between jobs).
fn idle_spin() -> std::time::Duration {
    static US: OnceLock<u64> = OnceLock::new();
    let us = *US.get_or_init(|| std::env::var("HY_SPIN_US").ok().and_then(|v| v.parse().ok()).unwrap_or(100));
    std::time::Duration::from_micros(us)
}

impl Pool {
    pub fn new(layout: ThreadLayout) -> Pool {
        let assignments = layout.assignments();
        let n = assignments.len().max(1);
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            generation: AtomicU64::new(0),
            remaining: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
            barrier: SpinBarrier::new(n),
        });
        if layout.pin {
            if let Some(&(_, cpu)) = assignments.first() {
                pin_current_thread(cpu);
            }
        }
        let workers = (1..n)
            .map(|t| {
                let shared = Arc::clone(&shared);
                let cpu = layout.pin.then(|| assignments[t].1);
                std::thread::Builder::new()
                    .name(format!("hy-worker-{t}"))
                    .spawn(move || worker(shared, t, cpu))
                    .expect("spawning a worker thread")
            })
            .collect();
        let node_of = assignments.iter().map(|&(node, _)| node).collect();
        Pool { shared, workers, layout, node_of }
    }

    pub fn threads(&self) -> usize {
        self.node_of.len().max(1)
    }

    pub fn layout(&self) -> &ThreadLayout {
        &self.layout
    }

    /// NUMA node index of thread `t`.
    pub fn node_of(&self, t: usize) -> usize {
        self.node_of.get(t).copied().unwrap_or(0)
    }

    /// Runs `f(thread_index)` on every thread and waits for all of them.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        let n = self.threads();
        if n == 1 {
            f(0);
            return;
        }
        if super::profile::enabled() {
            return self.run_timed(f);
        }
        self.dispatch(f);
    }

    /// [`Pool::run`] with `HY_PROFILE` on: besides running the job, adds to the profile its
    /// wall time, how late the last thread started, and the mean and longest time a thread
    /// spent in the job (wall − mean busy = what the job lost to starting and waiting).
    fn run_timed(&self, f: &(dyn Fn(usize) + Sync)) {
        use super::profile::{add, current, mean_max, Stamps};
        let stamps = Stamps::<2>::new(self.threads());
        self.dispatch(&|t| {
            stamps.mark(t, 0);
            f(t);
            stamps.mark(t, 1);
        });
        let wall = stamps.elapsed();
        let (starts, ends) = (stamps.at(0), stamps.at(1));
        let busy: Vec<u64> = starts.iter().zip(&ends).map(|(s, e)| e.saturating_sub(*s)).collect();
        let ((_, start_lag), (busy_mean, busy_max)) = (mean_max(&starts), mean_max(&busy));
        let op = current();
        add(format!("{op} pool.wall"), wall);
        add(format!("{op} pool.start_lag_max"), start_lag);
        add(format!("{op} pool.busy_mean"), busy_mean);
        add(format!("{op} pool.busy_max"), busy_max);
    }

    fn dispatch(&self, f: &(dyn Fn(usize) + Sync)) {
        let n = self.threads();
        // SAFETY: the reference is only used by workers between the generation bump below and
        // `remaining` reaching zero, and this function does not return before that, so `f`
        // outlives every use. The slot is cleared before returning.
        let erased: &'static Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f) };
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(erased);
        self.shared.remaining.store(n - 1, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        {
            let _g = self.shared.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        f(0);
        let mut spins = 0u32;
        while self.shared.remaining.load(Ordering::Acquire) != 0 {
            spin_or_yield(&mut spins);
        }
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Waits until every thread of the pool reaches the barrier. Only call from inside
    /// [`Pool::run`], on every thread the same number of times.
    pub fn barrier(&self) {
        if self.threads() > 1 {
            self.shared.barrier.wait();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        {
            let _g = self.shared.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(shared: Arc<Shared>, t: usize, cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        pin_current_thread(cpu);
    }
    let mut seen = 0u64;
    loop {
        let idle_since = std::time::Instant::now();
        let idle = idle_spin();
        let mut spins = 0u32;
        loop {
            let g = shared.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            // Spin through the short single-threaded gaps between the jobs of one token
            // (norms, routing, sampling): waking a parked thread costs tens of µs in a VM, and
            // a token runs dozens of jobs. Park once idle for longer than that.
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || idle_since.elapsed() < idle {
                std::hint::spin_loop();
                continue;
            }
            // Park: re-check under the lock so a bump between check and wait is not missed.
            let guard = shared.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
            if shared.generation.load(Ordering::Acquire) == seen {
                let _unused = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let job = *shared.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job {
            job(t);
        }
        shared.remaining.fetch_sub(1, Ordering::AcqRel);
    }
}

fn spin_or_yield(spins: &mut u32) {
    if *spins < SPINS {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// A sense-reversing barrier that spins, then yields.
struct SpinBarrier {
    n: usize,
    count: AtomicUsize,
    phase: AtomicU64,
}

impl SpinBarrier {
    fn new(n: usize) -> Self {
        SpinBarrier { n, count: AtomicUsize::new(0), phase: AtomicU64::new(0) }
    }

    fn wait(&self) {
        let phase = self.phase.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.count.store(0, Ordering::Release);
            self.phase.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let mut spins = 0u32;
        while self.phase.load(Ordering::Acquire) == phase {
            spin_or_yield(&mut spins);
        }
    }
}

/// The process-wide compute pool the runtime sets up once (`hy run`, `hy bench`): routed
/// experts and large matrix-vector products run on it. `None` = the kernels' rayon threads.
static GLOBAL: std::sync::RwLock<Option<Arc<Mutex<Pool>>>> = std::sync::RwLock::new(None);

/// Installs (or removes) the process-wide compute pool.
pub fn set_global(pool: Option<Pool>) {
    *GLOBAL.write().unwrap_or_else(|e| e.into_inner()) = pool.map(|p| Arc::new(Mutex::new(p)));
}

/// The process-wide compute pool, if one is installed. It runs one job at a time: callers
/// lock it for the duration of a job.
pub fn global() -> Option<Arc<Mutex<Pool>>> {
    GLOBAL.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// `f(first_unit, chunk)` over `data` split into contiguous chunks of whole `unit`s, one per
/// thread of the process-wide pool when one is installed and free and `data` holds at least
/// `min_units` units; else `f(0, data)` on the calling thread. For the element-wise work of a
/// prompt (norms, activations: milliseconds per layer on one thread) between the pool's
/// matrix products; results do not depend on the split.
pub fn par_chunks_mut<T: Send>(data: &mut [T], unit: usize, min_units: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
    let units = data.len() / unit.max(1);
    let pool = if units >= min_units.max(2) { global() } else { None };
    let guard = pool.as_ref().and_then(|p| p.try_lock().ok());
    match guard {
        Some(pool) => pool.chunks_mut(data, unit, f),
        None => f(0, data),
    }
}

impl Pool {
    /// [`par_chunks_mut`] on this pool: thread `t` gets units `share(units, T, t)` (the last
    /// part also the tail shorter than a unit).
    pub fn chunks_mut<T: Send>(&self, data: &mut [T], unit: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
        let threads = self.threads();
        let units = data.len() / unit.max(1);
        if threads == 1 || units < 2 {
            return f(0, data);
        }
        let base = SyncPtr(data.as_mut_ptr());
        let len = data.len();
        self.run(&|t| {
            let r = share(units, threads, t);
            let start = r.start * unit;
            let end = if r.end == units { len } else { r.end * unit };
            // SAFETY: the parts of `share` are disjoint and inside `data`, which outlives the job.
            let chunk = unsafe { std::slice::from_raw_parts_mut(base.ptr().add(start), end - start) };
            f(r.start, chunk);
        });
    }
}

/// A raw pointer that the threads of one [`Pool::run`] job write through at disjoint indices
/// (each thread its own rows). Whoever creates it states, at the write, why the ranges are
/// disjoint and the buffer outlives the job.
pub struct SyncPtr<T>(pub *mut T);

// By hand: derived impls would require `T: Copy`; copying the pointer never copies a `T`.
impl<T> Clone for SyncPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SyncPtr<T> {}

// SAFETY: the pointer is only dereferenced for disjoint writes inside a pool job while the
// owner of the buffer waits for the job (see the type's contract).
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// Method access, so closures capture the whole (Sync) wrapper, not the raw field.
    pub fn ptr(self) -> *mut T {
        self.0
    }
}

/// Pins the calling thread to one CPU (Linux). Returns false when the OS refuses or cannot
/// pin; callers treat that as a speed problem, not an error.
pub fn pin_current_thread(cpu: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        if cpu >= libc::CPU_SETSIZE as usize {
            return false;
        }
        // SAFETY: cpu_set_t is plain data (all-zero is the empty set); CPU_SET writes a bit
        // below its capacity (checked above); sched_setaffinity(0, ..) only affects the
        // calling thread and reads `set`, which lives on the stack.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cpu;
        false
    }
}

/// Splits `0..len` into `parts` contiguous ranges of nearly equal size; part `i`.
pub fn share(len: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let parts = parts.max(1);
    (len * i / parts)..(len * (i + 1) / parts)
}

/// [`share`] with every boundary but the end rounded up to a multiple of `align` (whole AMX
/// tiles or repacked 16-row groups per thread); some parts may be empty.
pub fn share_aligned(len: usize, parts: usize, i: usize, align: usize) -> std::ops::Range<usize> {
    let parts = parts.max(1);
    let bound = |k: usize| if k >= parts { len } else { (len * k / parts).next_multiple_of(align.max(1)).min(len) };
    bound(i)..bound(i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_each_job_once_and_barriers_order_phases() {
        for layout in [ThreadLayout::unpinned(1), ThreadLayout::unpinned(3), ThreadLayout::simulated(5, 2)] {
            let pool = Pool::new(layout);
            let n = pool.threads();
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            let phase1 = AtomicUsize::new(0);
            for _ in 0..50 {
                pool.run(&|t| {
                    hits[t].fetch_add(1, Ordering::Relaxed);
                    phase1.fetch_add(1, Ordering::AcqRel);
                    pool.barrier();
                    // After the barrier, every thread has finished phase 1 of this job.
                    assert_eq!(phase1.load(Ordering::Acquire) % n, 0);
                    pool.barrier();
                });
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 50));
        }
    }

    #[test]
    fn chunks_mut_visits_every_element_once_at_its_index() {
        let pools = [Pool::new(ThreadLayout::unpinned(1)), Pool::new(ThreadLayout::unpinned(3))];
        for (len, unit) in [(1000, 7), (5, 2), (64, 8), (2, 8)] {
            for pool in &pools {
                let mut v = vec![0usize; len];
                let calls = AtomicUsize::new(0);
                let fill = |first: usize, chunk: &mut [usize]| {
                    calls.fetch_add(1, Ordering::Relaxed);
                    for (i, x) in chunk.iter_mut().enumerate() {
                        *x += first * unit + i + 1;
                    }
                };
                pool.chunks_mut(&mut v, unit, &fill);
                assert!(v.iter().enumerate().all(|(i, &x)| x == i + 1), "{len} by {unit}");
                let split = pool.threads() > 1 && len / unit >= 2;
                assert_eq!(calls.load(Ordering::Relaxed), if split { pool.threads() } else { 1 });
                // Without an installed pool (none in this test binary) or below the minimum,
                // the global helper runs it once here.
                let mut w = vec![0usize; len];
                par_chunks_mut(&mut w, unit, usize::MAX, &|first, chunk| {
                    chunk.iter_mut().enumerate().for_each(|(i, x)| *x = first * unit + i + 1)
                });
                assert_eq!(v, w);
            }
        }
    }

    #[test]
    fn shares_cover_the_range_exactly() {
        for (len, parts) in [(10, 3), (2048, 16), (5, 7), (0, 4)] {
            let ranges: Vec<_> = (0..parts).map(|i| share(len, parts, i)).collect();
            for align in [1, 16] {
                let aligned: Vec<_> = (0..parts).map(|i| share_aligned(len, parts, i, align)).collect();
                assert_eq!(aligned.first().map(|r| r.start), Some(0));
                assert_eq!(aligned.last().map(|r| r.end), Some(len));
                assert!(aligned.windows(2).all(|w| w[0].end == w[1].start));
                assert!(aligned[..parts - 1].iter().all(|r| r.end % align == 0 || r.end == len));
                if align == 1 {
                    assert_eq!(aligned, ranges);
                }
            }
            assert_eq!(ranges.first().unwrap().start, 0);
            assert_eq!(ranges.last().unwrap().end, len);
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        }
    }

    #[test]
    fn simulated_layout_splits_threads_over_nodes() {
        let l = ThreadLayout::simulated(5, 2);
        assert_eq!(l.threads(), 5);
        assert_eq!(l.nodes.len(), 2);
        assert_eq!(l.nodes[0].len() + l.nodes[1].len(), 5);
    }
}
