//! Coverage (fewest distinct k-grams holding a share of a neuron's activations) and detectors.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DetectorParams {
    /// Share of a neuron's counted activations that its covering k-grams must hold (0.95).
    pub coverage: f64,
    /// Share of a k-gram's occurrences on which the neuron must fire for the k-gram to be covered (0.95).
    pub token_hit_rate: f64,
    /// Share of activations the covered k-grams must hold for a detector (0.95).
    pub detector_share: f64,
    /// A token detector has cover_1 <= this (5).
    pub max_tokens: u32,
    /// A trigram detector has cover_3 <= this (50).
    pub max_trigrams: u32,
}

impl Default for DetectorParams {
    fn default() -> Self {
        DetectorParams { coverage: 0.95, token_hit_rate: 0.95, detector_share: 0.95, max_tokens: 5, max_trigrams: 50 }
    }
}

/// Certified range of cover_k: the true value lies in [lo, hi]; lo == hi when counts are exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoverageBounds {
    pub lo: u32,
    pub hi: u32,
}

/// Sort (key, count) pairs by count descending, then key ascending: the order in which
/// "top" k-grams are taken, fixed so that ties are broken the same way everywhere.
pub fn sort_by_count<K: Ord + Copy>(items: &mut [(K, u32)]) {
    items.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
}

/// cover_k of `sorted` counts (see `sort_by_count`) whose true total is `total`, where every
/// stored count may undercount by up to `slack` and absent keys may hold up to `slack` each.
pub fn coverage_bounds<K>(sorted: &[(K, u32)], total: u64, slack: u64, coverage: f64) -> CoverageBounds {
    if total == 0 {
        return CoverageBounds { lo: 0, hi: 0 };
    }
    let need = coverage * total as f64;
    // hi: stored counts are lower bounds, so the top j keys certainly hold their stored sum.
    let mut cum = 0u64;
    let mut hi = None;
    for (j, (_, c)) in sorted.iter().enumerate() {
        cum += *c as u64;
        if cum as f64 >= need {
            hi = Some(j as u32 + 1);
            break;
        }
    }
    // Unreached within the summary: the rest could be spread over keys of count 1.
    let hi = hi.unwrap_or_else(|| sorted.len() as u32 + (need - cum as f64).ceil().max(0.0) as u32);
    if slack == 0 {
        return CoverageBounds { lo: hi, hi };
    }
    // lo: any j keys hold at most the j largest upper bounds (stored + slack; absent keys slack).
    let mut cum = 0u64;
    let mut lo = 0u32;
    for (_, c) in sorted.iter() {
        cum += *c as u64 + slack;
        lo += 1;
        if cum as f64 >= need {
            return CoverageBounds { lo: lo.min(hi), hi };
        }
    }
    let extra = ((need - cum as f64) / slack as f64).ceil().max(0.0) as u32;
    CoverageBounds { lo: (lo + extra).min(hi), hi }
}

/// Detector rule of METHOD.md over `sorted` counts: among the top `max_top` keys (cover_k of
/// them), keep those the neuron fires on for >= hit_rate of their occurrences; a detector when
/// they hold >= detector_share of the activations. Returns the covered keys of a detector.
/// With a lossy summary (`slack` > 0, see `Summary`) only proven facts count: cover_k must be
/// known (lo == hi) and the stored top cover_k keys must certainly be the true top cover_k (each
/// beats the largest possible count of every other key); otherwise no detector is claimed.
pub fn detect<K: Copy>(
    sorted: &[(K, u32)],
    total: u64,
    slack: u64,
    bounds: CoverageBounds,
    max_top: u32,
    occurrences: impl Fn(K) -> u64,
    p: &DetectorParams,
) -> Option<Vec<K>> {
    if total == 0 || bounds.hi > max_top {
        return None;
    }
    if slack > 0 {
        let c = bounds.hi as usize;
        if bounds.lo != bounds.hi || c == 0 || c > sorted.len() {
            return None;
        }
        let next = sorted.get(c).map_or(0, |&(_, n)| n as u64);
        if (sorted[c - 1].1 as u64) <= next + slack {
            return None;
        }
    }
    let mut covered = Vec::new();
    let mut held = 0u64;
    for &(k, c) in sorted.iter().take(bounds.hi as usize) {
        let occ = occurrences(k);
        if occ > 0 && c as f64 >= p.token_hit_rate * occ as f64 {
            covered.push(k);
            held += c as u64;
        }
    }
    if held as f64 >= p.detector_share * total as f64 {
        Some(covered)
    } else {
        None
    }
}
