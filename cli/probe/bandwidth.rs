//! Measured memory bandwidth (STREAM-like), per NUMA node and for the whole machine.
//!
//! Each thread is pinned to one CPU of its node and allocates and first-touches its own
//! arrays, so the kernel places their pages on that node. Two kernels, timed between
//! barriers so the figure covers all threads: a read-only sum (one stream, every byte
//! read and folded into a result the optimiser must keep) and the triad a = b + s·c
//! (counted as 3 streams, the STREAM convention; write-allocate traffic is not counted).
//! The best of a few repetitions is reported. Reused by `hy bench memory`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hy_planner::hardware::{MeasuredBandwidth, NodeBandwidth, NumaNode};

#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Size of each of a thread's arrays, in bytes (three arrays per thread for the triad).
    pub bytes_per_thread: usize,
    /// Timed repetitions per kernel; the best is reported.
    pub repetitions: u32,
    /// Use at most this many CPUs per node (first in the node's list, i.e. one per
    /// physical core before SMT siblings on Linux numbering); `None` = all allowed.
    pub threads_per_node: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("no CPU of any NUMA node is available to this process (check taskset/cgroup cpusets)")]
    NoCpus,
    #[error("a benchmark thread failed (out of memory?); try a smaller --bench-mib")]
    WorkerFailed,
}

/// One unit of progress: a finished repetition or allocation phase.
pub struct Progress<'a> {
    pub done: u64,
    pub total: u64,
    pub message: &'a str,
}

/// The outcome, with notes on anything that weakens the figures (e.g. failed pinning).
pub struct Measurement {
    pub bandwidth: MeasuredBandwidth,
    pub notes: Vec<String>,
}

/// Measures each node with its own CPUs, then the whole machine with every node's threads
/// at once (skipped, and taken from the node, on one-node machines).
pub fn measure(
    nodes: &[NumaNode],
    cfg: &BenchConfig,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Measurement, BenchError> {
    let allowed = allowed_cpus();
    let mut notes = Vec::new();
    let groups: Vec<(u32, Vec<u32>)> = nodes
        .iter()
        .filter_map(|n| {
            let mut cpus: Vec<u32> =
                n.cpus.iter().copied().filter(|c| allowed.as_ref().is_none_or(|a| a.contains(c))).collect();
            if let Some(limit) = cfg.threads_per_node {
                cpus.truncate(limit.max(1));
            }
            if cpus.is_empty() && !n.cpus.is_empty() {
                notes.push(format!("node {}: none of its CPUs is available to this process; not measured", n.id));
            }
            (!cpus.is_empty()).then_some((n.id, cpus))
        })
        .collect();
    if groups.is_empty() {
        return Err(BenchError::NoCpus);
    }
    let runs = groups.len() as u64 + u64::from(groups.len() > 1);
    let mut tracker = Tracker { done: 0, total: runs * (1 + 2 * u64::from(cfg.repetitions.max(1))), progress };
    let mut per_node = Vec::new();
    let mut pin_failed = false;
    for (id, cpus) in &groups {
        let r = run_group(cpus, cfg, &format!("node {id}"), &mut tracker)?;
        pin_failed |= r.pin_failed;
        per_node.push(NodeBandwidth {
            node: *id,
            threads: cpus.len() as u32,
            read_gbps: r.read_gbps,
            triad_gbps: r.triad_gbps,
        });
    }
    let whole = if groups.len() > 1 {
        let all: Vec<u32> = groups.iter().flat_map(|(_, c)| c.iter().copied()).collect();
        let r = run_group(&all, cfg, "all nodes", &mut tracker)?;
        pin_failed |= r.pin_failed;
        (r.read_gbps, r.triad_gbps, all.len() as u32)
    } else {
        (per_node[0].read_gbps, per_node[0].triad_gbps, per_node[0].threads)
    };
    if pin_failed {
        notes.push("some threads could not be pinned to their CPU; figures may mix NUMA nodes".into());
    }
    Ok(Measurement {
        bandwidth: MeasuredBandwidth { read_gbps: whole.0, triad_gbps: whole.1, threads: whole.2, per_node },
        notes,
    })
}

struct Tracker<'p> {
    done: u64,
    total: u64,
    progress: &'p mut dyn FnMut(Progress<'_>),
}

impl Tracker<'_> {
    fn step(&mut self, message: &str) {
        self.done += 1;
        (self.progress)(Progress { done: self.done, total: self.total, message });
    }
}

struct GroupResult {
    read_gbps: f64,
    triad_gbps: f64,
    pin_failed: bool,
}

#[derive(Clone, Copy)]
enum Kernel {
    Read,
    Triad,
}

/// Runs both kernels on one thread per CPU in `cpus`, all threads at once. Each thread
/// stamps its own start and end, and a repetition lasts from the earliest start to the
/// latest end: timing on the coordinating thread would undercount whenever it is scheduled
/// late after the start barrier (the workers may be done before it reads the clock).
fn run_group(
    cpus: &[u32],
    cfg: &BenchConfig,
    label: &str,
    tracker: &mut Tracker<'_>,
) -> Result<GroupResult, BenchError> {
    let elems = (cfg.bytes_per_thread / 8).max(1024);
    let reps = cfg.repetitions.max(1) as usize;
    let barrier = Barrier::new(cpus.len() + 1);
    let pin_failed = AtomicBool::new(false);
    let stamps: Vec<Vec<Stamp>> = std::thread::scope(|s| {
        let handles: Vec<_> = cpus
            .iter()
            .map(|&cpu| {
                let (barrier, pin_failed) = (&barrier, &pin_failed);
                s.spawn(move || worker(cpu, elems, reps, barrier, pin_failed))
            })
            .collect();
        barrier.wait(); // every thread has pinned itself and first-touched its arrays
        tracker.step(&format!("{label}: arrays placed"));
        for name in ["read", "triad"] {
            for rep in 0..reps {
                barrier.wait();
                barrier.wait();
                tracker.step(&format!("{label}: {name} {}/{reps}", rep + 1));
            }
        }
        handles.into_iter().map(|h| h.join()).collect::<Result<_, _>>()
    })
    .map_err(|_| BenchError::WorkerFailed)?;
    let best = |kernel: usize| {
        (0..reps)
            .filter_map(|rep| {
                let i = kernel * reps + rep;
                let start = stamps.iter().map(|t| t[i].0).min()?;
                let end = stamps.iter().map(|t| t[i].1).max()?;
                Some(end.duration_since(start))
            })
            .min()
            .unwrap_or(Duration::MAX)
    };
    let bytes = (cpus.len() * elems * 8) as f64;
    Ok(GroupResult {
        read_gbps: round_centi(bytes / best(0).as_secs_f64().max(1e-9) / 1e9),
        triad_gbps: round_centi(3.0 * bytes / best(1).as_secs_f64().max(1e-9) / 1e9),
        pin_failed: pin_failed.load(Ordering::Relaxed),
    })
}

/// Rounds to 0.01 GB/s: finer digits are noise, and short decimals survive a TOML round
/// trip exactly (17-digit floats did not).
fn round_centi(gbps: f64) -> f64 {
    (gbps * 100.0).round() / 100.0
}

/// When one thread started and finished one repetition.
type Stamp = (Instant, Instant);

/// One pinned thread: places its arrays, then runs each repetition between two barriers
/// and returns its stamps, read repetitions first.
fn worker(cpu: u32, elems: usize, reps: usize, barrier: &Barrier, pin_failed: &AtomicBool) -> Vec<Stamp> {
    if !hy_engine::runtime::pool::pin_current_thread(cpu as usize) {
        pin_failed.store(true, Ordering::Relaxed);
    }
    // First touch happens here, on the pinned thread, so pages land on its node.
    let mut a = vec![0.0f64; elems];
    let mut b: Vec<f64> = (0..elems).map(|i| (i % 1024) as f64).collect();
    let mut c: Vec<f64> = (0..elems).map(|i| (i % 7) as f64).collect();
    a.iter_mut().for_each(|x| *x = 1.0);
    let mut stamps = Vec::with_capacity(2 * reps);
    barrier.wait();
    for kernel in [Kernel::Read, Kernel::Triad] {
        for _ in 0..reps {
            barrier.wait();
            let start = Instant::now();
            // Inputs pass through black_box as `&mut`: the optimiser must then assume their
            // contents changed since the last repetition, so it cannot reuse an earlier sum
            // (a shared reference would let it, and the "best" repetition would read nothing).
            match kernel {
                Kernel::Read => {
                    black_box(read_sum(black_box(b.as_mut_slice())));
                }
                Kernel::Triad => {
                    triad(black_box(a.as_mut_slice()), black_box(b.as_mut_slice()), black_box(c.as_mut_slice()), 3.0);
                    black_box(&mut a);
                }
            }
            stamps.push((start, Instant::now()));
            barrier.wait();
        }
    }
    stamps
}

/// Sum with 8 independent accumulators: lane-wise adds need no reassociation, so the
/// compiler vectorises them, and every element feeds the result.
pub fn read_sum(data: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = data.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (a, x) in acc.iter_mut().zip(chunk) {
            *a += x;
        }
    }
    acc.iter().sum::<f64>() + tail
}

pub fn triad(a: &mut [f64], b: &[f64], c: &[f64], s: f64) {
    for ((x, y), z) in a.iter_mut().zip(b).zip(c) {
        *x = y + s * z;
    }
}

/// CPUs this process may run on (sched_getaffinity); `None` if unknown.
#[cfg(target_os = "linux")]
pub fn allowed_cpus() -> Option<Vec<u32>> {
    // SAFETY: cpu_set_t is plain data; all-zero is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 = this thread; size and pointer describe `set`, which lives on the stack.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return None;
    }
    let max = (std::mem::size_of::<libc::cpu_set_t>() * 8) as u32;
    // SAFETY: CPU_ISSET reads a bit of `set` for an index below its capacity.
    Some((0..max).filter(|&c| unsafe { libc::CPU_ISSET(c as usize, &set) }).collect())
}

#[cfg(not(target_os = "linux"))]
pub fn allowed_cpus() -> Option<Vec<u32>> {
    None
}

/// Array size per thread: together the threads' arrays exceed the machine's last-level
/// cache eight times over, and each is at least 256 MiB, because a VM reports its own
/// cache sizes, not the host's (64 MiB arrays still read partly from cache on a 2-vCPU
/// EPYC guest); all three arrays of all threads stay within half of the available memory.
pub fn default_bytes_per_thread(llc_total: Option<u64>, threads: usize, available: Option<u64>) -> usize {
    const MIN: u64 = 256 << 20;
    let threads = threads.max(1) as u64;
    let want = llc_total.map_or(MIN, |l| (8 * l).div_ceil(threads)).max(MIN);
    let cap = available.map_or(u64::MAX, |a| a / 2 / 3 / threads);
    want.min(cap).max(1 << 20) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_compute_what_they_say() {
        let data: Vec<f64> = (1..=1003).map(f64::from).collect();
        assert_eq!(read_sum(&data), 1003.0 * 1004.0 / 2.0);
        let (b, c) = (vec![1.0; 5], vec![2.0; 5]);
        let mut a = vec![0.0; 5];
        triad(&mut a, &b, &c, 3.0);
        assert_eq!(a, vec![7.0; 5]);
    }

    #[test]
    fn array_sizing() {
        // 8 × 1 GiB LLC over 8 threads = 1 GiB each; small caches hit the 256 MiB floor.
        assert_eq!(default_bytes_per_thread(Some(1 << 30), 8, None), 1 << 30);
        assert_eq!(default_bytes_per_thread(Some(256 << 20), 16, None), 256 << 20);
        assert_eq!(default_bytes_per_thread(None, 4, None), 256 << 20);
        // Capped by available memory: 6 GiB / 2 / 3 / 8 threads = 128 MiB.
        assert_eq!(default_bytes_per_thread(Some(1 << 30), 8, Some(6 << 30)), 128 << 20);
    }

    #[test]
    fn measures_this_machine_with_small_arrays() {
        let cpus = allowed_cpus().unwrap_or_else(|| vec![0]);
        let nodes = vec![NumaNode { id: 0, cpus: cpus.clone(), memory_bytes: 0, distances: vec![10], socket: Some(0) }];
        let cfg = BenchConfig { bytes_per_thread: 1 << 20, repetitions: 2, threads_per_node: Some(2) };
        let mut steps = Vec::new();
        let m = measure(&nodes, &cfg, &mut |p| steps.push((p.done, p.total))).unwrap();
        let bw = m.bandwidth;
        assert_eq!(bw.per_node.len(), 1);
        assert_eq!(bw.threads, cpus.len().min(2) as u32);
        assert!(bw.read_gbps.is_finite() && bw.read_gbps > 0.0);
        assert!(bw.triad_gbps.is_finite() && bw.triad_gbps > 0.0);
        // 1 allocation step + 2 kernels × 2 repetitions, counted up to the total.
        assert_eq!(steps.last(), Some(&(5, 5)));
    }

    #[test]
    fn nodes_without_available_cpus_are_an_error() {
        let nodes = vec![NumaNode { id: 0, cpus: vec![], memory_bytes: 1, distances: vec![], socket: None }];
        let cfg = BenchConfig { bytes_per_thread: 1 << 20, repetitions: 1, threads_per_node: None };
        assert!(matches!(measure(&nodes, &cfg, &mut |_| {}), Err(BenchError::NoCpus)));
    }
}
