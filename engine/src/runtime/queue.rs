//! Row ranges handed to a pool's threads as they ask for them.
//!
//! Equal static shares leave a job as slow as its slowest thread, and on shared machines the
//! threads are not equal: in the device's decode profile (16 threads, `HY_PROFILE`) a thread's
//! mean time inside the output-head product was 220 ms of 32 tokens against 268 ms for the
//! slowest, and 114 against 149 ms for `o_proj`. A [`RowQueue`] lets fast threads take more:
//! each claim is a contiguous range (one long stream through the weights), large at first and
//! smaller toward the end (guided self-scheduling: a claim is the remaining work over twice
//! the node's threads, at least `min` rows), so the tail is short and the chunks few.
//!
//! NUMA: thread `t` of node `k` only claims rows of node `k`'s part, the union of the static
//! shares (`share_aligned(len, T, t, 16)`: boundaries on whole tiles and repacked groups) of
//! that node's threads. Those are the rows its node's threads
//! first touched when weights were placed by share, so no weight row is read across nodes.
//!
//! `HY_SCHEDULE=static` gives every thread exactly its static share instead (for same-run
//! comparisons).

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use super::pool::{share_aligned, Pool};

/// Claims are whole multiples of this many rows by default (but a segment's last): an AMX
/// tile's rows.
const ALIGN: usize = 16;

/// Claims of about this many weight bytes or more: each is one stream through the weights,
/// and a stream's first lines arrive before its software prefetch has run ahead.
pub const MIN_CLAIM_BYTES: usize = 64 << 10;

/// Whether `HY_SCHEDULE=static` asks for fixed equal shares.
fn static_schedule() -> bool {
    static STATIC: OnceLock<bool> = OnceLock::new();
    *STATIC.get_or_init(|| std::env::var("HY_SCHEDULE").is_ok_and(|v| v == "static"))
}

/// One node's part of the work: `segments` copies of the rows `rows` (e.g. the same rows of
/// every active expert), claimed through one counter over `0..segments × rows.len()`.
#[repr(align(128))]
struct NodePart {
    next: AtomicUsize,
    rows: Range<usize>,
    threads: usize,
}

/// Dynamic row ranges for the threads of one pool job: `segments × len` rows, claimed as
/// `(segment, rows)`; a claim never spans two segments.
pub struct RowQueue {
    parts: Vec<NodePart>,
    node_of: Vec<usize>,
    segments: usize,
    len: usize,
    min: usize,
    align: usize,
    fixed: bool,
}

impl RowQueue {
    /// Rows `0..len` of one matrix; claims of at least `min` rows (except a part's last).
    pub fn new(pool: &Pool, len: usize, min: usize) -> Self {
        Self::segmented(pool, 1, len, min)
    }

    /// Rows `0..len` of each of `segments` matrices of the same shape.
    pub fn segmented(pool: &Pool, segments: usize, len: usize, min: usize) -> Self {
        let node_of: Vec<usize> = (0..pool.threads()).map(|t| pool.node_of(t)).collect();
        let parts = node_parts(&node_of, len, ALIGN);
        RowQueue { parts, node_of, segments, len, min: min.max(1), align: ALIGN, fixed: static_schedule() }
    }

    /// Claims (and node parts) in multiples of `align` rows instead of [`ALIGN`] (1: any
    /// count, e.g. heads).
    pub fn aligned(mut self, align: usize) -> Self {
        self.align = align.max(1);
        self.parts = node_parts(&self.node_of, self.len, self.align);
        self
    }

    /// Every thread gets exactly its static share (what `HY_SCHEDULE=static` selects).
    #[cfg(test)]
    fn fixed_shares(mut self) -> Self {
        self.fixed = true;
        self
    }

    /// Thread `t`'s claims, in order, until its node's part is done.
    pub fn claims(&self, t: usize) -> Claims<'_> {
        Claims { q: self, t, segment: 0 }
    }

    fn claim(&self, t: usize) -> Option<(usize, Range<usize>)> {
        let part = &self.parts[self.node_of.get(t).copied().unwrap_or(0)];
        let width = part.rows.len();
        let total = self.segments * width;
        let mut cur = part.next.load(Ordering::Relaxed);
        loop {
            if cur >= total {
                return None;
            }
            let guided = (total - cur) / (2 * part.threads.max(1));
            let seg_end = (cur / width + 1) * width;
            let end = (cur + guided.max(self.min).next_multiple_of(self.align)).min(seg_end);
            match part.next.compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    let (seg, r0) = (cur / width, part.rows.start + cur % width);
                    return Some((seg, r0..r0 + (end - cur)));
                }
                Err(now) => cur = now,
            }
        }
    }
}

/// Each node's part of `0..len`: the union of its threads' static shares
/// ([`share_aligned`], so parts start on whole multiples of `align` rows).
fn node_parts(node_of: &[usize], len: usize, align: usize) -> Vec<NodePart> {
    let threads = node_of.len();
    let nodes = node_of.iter().copied().max().map_or(1, |m| m + 1);
    (0..nodes)
        .map(|k| {
            let mine: Vec<usize> = (0..threads).filter(|&t| node_of[t] == k).collect();
            let rows = match (mine.first(), mine.last()) {
                (Some(&first), Some(&last)) => {
                    share_aligned(len, threads, first, align).start..share_aligned(len, threads, last, align).end
                }
                _ => 0..0,
            };
            NodePart { next: AtomicUsize::new(0), rows, threads: mine.len() }
        })
        .collect()
}

/// The iterator of [`RowQueue::claims`].
pub struct Claims<'a> {
    q: &'a RowQueue,
    t: usize,
    /// Static schedule: the next segment of the thread's fixed share.
    segment: usize,
}

impl Iterator for Claims<'_> {
    type Item = (usize, Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        if !self.q.fixed {
            return self.q.claim(self.t);
        }
        let threads = self.q.node_of.len();
        let rows = share_aligned(self.q.len, threads, self.t, self.q.align);
        if self.segment >= self.q.segments || rows.is_empty() {
            return None;
        }
        self.segment += 1;
        Some((self.segment - 1, rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::pool::ThreadLayout;
    use std::sync::Mutex;

    /// Every (segment, row) is claimed exactly once, claims stay inside a segment and inside
    /// the claiming thread's node part.
    #[test]
    fn claims_cover_every_row_once_within_the_node() {
        for layout in [ThreadLayout::unpinned(1), ThreadLayout::unpinned(5), ThreadLayout::simulated(6, 2)] {
            let pool = Pool::new(layout.clone());
            for (segments, len, min) in [(1, 1000, 8), (9, 2048, 16), (3, 7, 1), (2, 0, 4)] {
                let q = RowQueue::segmented(&pool, segments, len, min);
                let seen = Mutex::new(vec![0u32; segments * len]);
                let wrong_node = Mutex::new(Vec::new());
                pool.run(&|t| {
                    for (seg, rows) in q.claims(t) {
                        assert!(seg < segments && rows.end <= len && !rows.is_empty());
                        let node = pool.node_of(t);
                        for r in rows {
                            seen.lock().unwrap()[seg * len + r] += 1;
                            // The static share's owner of row r must be on the same node.
                            let owner = (0..pool.threads())
                                .find(|&o| share_aligned(len, pool.threads(), o, ALIGN).contains(&r));
                            if owner.map(|o| pool.node_of(o)) != Some(node) {
                                wrong_node.lock().unwrap().push((t, r));
                            }
                        }
                    }
                });
                assert!(seen.into_inner().unwrap().iter().all(|&c| c == 1), "{layout:?} {segments}×{len}");
                assert!(wrong_node.into_inner().unwrap().is_empty(), "{layout:?}: a row claimed off its node");
            }
        }
    }

    /// The static schedule: thread t's claims are its share of every segment, once each.
    #[test]
    fn fixed_shares_are_the_static_shares() {
        let pool = Pool::new(ThreadLayout::simulated(5, 2));
        let q = RowQueue::segmented(&pool, 3, 100, 1).fixed_shares();
        for t in 0..5 {
            let got: Vec<(usize, Range<usize>)> = q.claims(t).collect();
            let want: Vec<(usize, Range<usize>)> =
                (0..3).map(|seg| (seg, share_aligned(100, 5, t, ALIGN))).filter(|(_, r)| !r.is_empty()).collect();
            assert_eq!(got, want, "thread {t}");
        }
    }

    /// Claims shrink toward the end, whole tiles, never below `min` (but a segment's remainder).
    #[test]
    fn claims_are_guided_and_at_least_min() {
        let pool = Pool::new(ThreadLayout::unpinned(1));
        let q = RowQueue::new(&pool, 10_000, 50);
        let sizes: Vec<usize> = q.claims(0).map(|(_, r)| r.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 10_000);
        if static_schedule() {
            return assert_eq!(sizes, [10_000]);
        }
        assert_eq!(sizes[0], 5_008);
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]));
        assert!(sizes[..sizes.len() - 1].iter().all(|&s| s >= 50 && s % ALIGN == 0));
    }
}
