//! Bounded-memory k-gram counts per neuron (tokens, bigrams, trigrams) with a certified error
//! (Misra-Gries, batched), held in a `CountTable`.
//!
//! While fewer than `capacity` distinct keys have been seen the counts are exact. Beyond that,
//! the summary keeps the heaviest keys: whenever the map reaches `capacity` keys it subtracts a
//! threshold from every count, drops what reaches zero, and adds the threshold to `slack`.
//! Invariant (holds through merges): for every key, stored <= true <= stored + slack, and a key
//! absent from the map has true count <= slack. With slack == 0 the counts are exact.

pub use crate::count_table::{CountTable, TableKey};
use serde::{Deserialize, Serialize};

/// The count at index `n` of the table's counts sorted in descending order (`n` < len): a
/// histogram of the small counts finds it in one pass; only counts in the top bucket are sorted.
fn nth_largest<K: TableKey>(t: &CountTable<K>, n: usize) -> u32 {
    if t.len_at_least_2() <= n && t.len() - t.len_zero() > n {
        // At most n counts exceed 1 and more than n are >= 1: the n-th largest is 1.
        return 1;
    }
    const TOP: usize = 63;
    let hist = t.count_histogram::<{ TOP + 1 }>();
    let mut at_least = 0; // counts >= b
    for b in (0..=TOP).rev() {
        at_least += hist[b];
        if at_least > n {
            if b < TOP {
                return b as u32;
            }
            let mut big: Vec<u32> = t.values().filter(|&c| c as usize >= TOP).collect();
            let (_, &mut v, _) = big.select_nth_unstable_by(n, |a, b| b.cmp(a));
            return v;
        }
    }
    unreachable!("nth_largest: n = {n} is not below the {} entries", t.len())
}

/// Default `capacity` (StatsConfig::ngram_capacity): the most a 512-slot table holds (3/4 full),
/// ~18 KiB per saturated neuron for its three summaries.
pub const DEFAULT_CAPACITY: usize = 384;

/// Misra-Gries summary of one neuron's k-grams (see the module comment). Keys: token ids (u32)
/// or packed n-grams (u64).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(serialize = "K: Serialize", deserialize = "K: Deserialize<'de>"))]
pub struct Summary<K: TableKey> {
    pub counts: CountTable<K>,
    /// Total count added (every occurrence, kept or not).
    pub total: u64,
    /// Largest possible undercount of any key.
    pub slack: u64,
}

pub type NgramSummary = Summary<u64>;
pub type TokenSummary = Summary<u32>;

impl<K: TableKey> Default for Summary<K> {
    fn default() -> Self {
        Summary { counts: CountTable::default(), total: 0, slack: 0 }
    }
}

impl<K: TableKey> Summary<K> {
    #[inline(always)]
    pub fn add(&mut self, key: K, by: u32, capacity: usize) {
        self.total += by as u64;
        self.counts.add(key, by);
        if self.counts.len() >= capacity {
            self.prune(capacity);
        }
    }

    /// Hint the cache about the slot a later `add(key)` reads first.
    #[inline(always)]
    pub fn prefetch(&self, key: K) {
        self.counts.prefetch(key);
    }

    /// Subtract the count of the (capacity/2 + 1)-th heaviest key from all keys, so that at most
    /// half the capacity survives: the amortised cost per added key stays O(1).
    #[cold]
    fn prune(&mut self, capacity: usize) {
        let keep = (capacity / 2).max(1);
        if self.counts.len() <= keep {
            return;
        }
        let threshold = nth_largest(&self.counts, keep);
        self.counts.subtract(threshold);
        self.slack += threshold as u64;
    }

    pub fn merge(&mut self, other: &Summary<K>, capacity: usize) {
        self.total += other.total;
        self.slack += other.slack;
        for (k, c) in other.counts.iter() {
            self.counts.add(k, c);
        }
        if self.counts.len() >= capacity {
            self.prune(capacity);
        }
        // The table grew to hold both sides: back to what `capacity` entries need.
        self.counts.shrink_for(capacity);
    }

    pub fn is_exact(&self) -> bool {
        self.slack == 0
    }

    pub fn heap_bytes(&self) -> usize {
        self.counts.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn summary_bounds_hold_when_lossy() {
        let cap = 16;
        let mut s = NgramSummary::default();
        let mut truth: HashMap<u64, u64> = HashMap::new();
        let mut x = 7u64;
        for _ in 0..5000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let r = (x >> 33) % 100;
            let k = if r < 50 { r % 4 } else { (x >> 20) % 500 };
            s.add(k, 1, cap);
            *truth.entry(k).or_insert(0) += 1;
        }
        assert!(s.counts.len() <= cap && s.slack > 0 && s.total == 5000);
        for (&k, &c) in &truth {
            let stored = s.counts.get(k) as u64;
            assert!(stored <= c && c <= stored + s.slack, "key {k}: {stored} {c} {}", s.slack);
        }
        // A merge keeps the table at the size `cap` entries need.
        let slots = s.counts.capacity();
        let other = s.clone();
        s.merge(&other, cap);
        assert!(s.counts.capacity() <= slots && s.counts.len() <= cap, "{} slots", s.counts.capacity());
    }
}
