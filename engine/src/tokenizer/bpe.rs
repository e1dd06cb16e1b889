//! Rank-based BPE merging: repeatedly merge the adjacent pair with the lowest merge rank
//! (leftmost first among equal ranks), on a linked list of symbols with a heap of
//! candidate pairs, so a word of n symbols costs O(n log n) rather than O(n²).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Merge table: (left id, right id) → (rank, merged id).
#[derive(Debug, Default)]
pub(crate) struct Merges {
    table: HashMap<(u32, u32), (u32, u32)>,
}

#[derive(Clone, Copy)]
struct Sym {
    id: u32,
    prev: u32,
    next: u32,
    alive: bool,
}

const NONE: u32 = u32::MAX;

impl Merges {
    /// Adds the merge of rank `rank`; an earlier (lower-rank) duplicate wins.
    pub(crate) fn insert(&mut self, left: u32, right: u32, rank: u32, merged: u32) {
        self.table.entry((left, right)).or_insert((rank, merged));
    }

    fn get(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        self.table.get(&(left, right)).copied()
    }

    /// Merges the symbol ids of one word until no listed pair remains.
    pub(crate) fn apply(&self, ids: &[u32]) -> Vec<u32> {
        if ids.len() < 2 {
            return ids.to_vec();
        }
        let n = ids.len() as u32;
        let mut syms: Vec<Sym> = (0..n)
            .map(|i| Sym {
                id: ids[i as usize],
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 == n { NONE } else { i + 1 },
                alive: true,
            })
            .collect();
        let mut heap = BinaryHeap::new();
        for i in 0..n - 1 {
            self.push_pair(&syms, i, &mut heap);
        }
        while let Some(Reverse((rank, pos, merged))) = heap.pop() {
            let left = syms[pos as usize];
            if !left.alive || left.next == NONE {
                continue;
            }
            let right = syms[left.next as usize];
            // Stale entry: one side was merged since this pair was queued.
            if self.get(left.id, right.id) != Some((rank, merged)) {
                continue;
            }
            syms[pos as usize].id = merged;
            syms[pos as usize].next = right.next;
            syms[left.next as usize].alive = false;
            if right.next != NONE {
                syms[right.next as usize].prev = pos;
            }
            if left.prev != NONE {
                self.push_pair(&syms, left.prev, &mut heap);
            }
            self.push_pair(&syms, pos, &mut heap);
        }
        syms.iter().filter(|s| s.alive).map(|s| s.id).collect()
    }

    fn push_pair(&self, syms: &[Sym], pos: u32, heap: &mut BinaryHeap<Reverse<(u32, u32, u32)>>) {
        let next = syms[pos as usize].next;
        if next == NONE {
            return;
        }
        if let Some((rank, merged)) = self.get(syms[pos as usize].id, syms[next as usize].id) {
            heap.push(Reverse((rank, pos, merged)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_rank_first_then_leftmost() {
        // ids: a=0 b=1 c=2 ab=3 bc=4 abc=5 aa=6
        let mut m = Merges::default();
        m.insert(1, 2, 0, 4); // b c
        m.insert(0, 1, 1, 3); // a b
        m.insert(0, 4, 2, 5); // a bc
        m.insert(0, 0, 3, 6); // a a
        assert_eq!(m.apply(&[0, 1, 2]), [5]);
        assert_eq!(m.apply(&[0, 1]), [3]);
        assert_eq!(m.apply(&[0, 0, 0]), [6, 0]);
        assert_eq!(m.apply(&[0, 0, 0, 0]), [6, 6]);
        assert_eq!(m.apply(&[2]), [2]);
    }
}
