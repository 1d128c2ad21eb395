//! Bounded-memory n-gram counts per neuron with a certified error (Misra-Gries, batched).
//!
//! While fewer than `capacity` distinct keys have been seen the counts are exact. Beyond that,
//! the summary keeps the heaviest keys: whenever the map grows past `capacity` it subtracts a
//! threshold from every count, drops what reaches zero, and adds the threshold to `slack`.
//! Invariant (holds through merges): for every key, stored <= true <= stored + slack, and a key
//! absent from the map has true count <= slack. With slack == 0 the counts are exact.
//! Memory: at most `capacity` entries of 12 bytes plus hash-map overhead (about 16 bytes each).

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NgramSummary {
    pub counts: FxHashMap<u64, u32>,
    /// Total count added (every occurrence, kept or not).
    pub total: u64,
    /// Largest possible undercount of any key.
    pub slack: u64,
}

impl NgramSummary {
    #[inline]
    pub fn add(&mut self, key: u64, by: u32, capacity: usize) {
        self.total += by as u64;
        *self.counts.entry(key).or_insert(0) += by;
        if self.counts.len() > capacity {
            self.prune(capacity);
        }
    }

    /// Subtract the count of the (capacity/2 + 1)-th heaviest key from all keys, so that at most
    /// half the capacity survives: the amortised cost per added key stays O(1).
    fn prune(&mut self, capacity: usize) {
        let keep = (capacity / 2).max(1);
        let mut values: Vec<u32> = self.counts.values().copied().collect();
        if values.len() <= keep {
            return;
        }
        let (_, &mut threshold, _) = values.select_nth_unstable_by(keep, |a, b| b.cmp(a));
        self.counts.retain(|_, c| {
            if *c > threshold {
                *c -= threshold;
                true
            } else {
                false
            }
        });
        self.slack += threshold as u64;
    }

    pub fn merge(&mut self, other: &NgramSummary, capacity: usize) {
        self.total += other.total;
        self.slack += other.slack;
        for (&k, &c) in other.counts.iter() {
            *self.counts.entry(k).or_insert(0) += c;
        }
        if self.counts.len() > capacity {
            self.prune(capacity);
        }
    }

    pub fn is_exact(&self) -> bool {
        self.slack == 0
    }

    pub fn heap_bytes(&self) -> usize {
        self.counts.capacity() * 13
    }
}
