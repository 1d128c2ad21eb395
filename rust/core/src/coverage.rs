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
    /// A k-gram is covered only when it occurs at least this often in the counted data (0: no minimum,
    /// as in the paper).
    pub min_count: u64,
}

impl Default for DetectorParams {
    fn default() -> Self {
        DetectorParams {
            coverage: 0.95,
            token_hit_rate: 0.95,
            detector_share: 0.95,
            max_tokens: 5,
            max_trigrams: 50,
            min_count: 0,
        }
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
/// A key occurring fewer than `min_count` times is never covered.
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
        if occ > 0 && occ >= p.min_count && c as f64 >= p.token_hit_rate * occ as f64 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::NgramSummary;
    use std::collections::HashMap;

    const P: DetectorParams = DetectorParams {
        coverage: 0.95,
        token_hit_rate: 0.95,
        detector_share: 0.95,
        max_tokens: 5,
        max_trigrams: 50,
        min_count: 0,
    };

    fn sorted(pairs: &[(u64, u32)]) -> Vec<(u64, u32)> {
        let mut v = pairs.to_vec();
        sort_by_count(&mut v);
        v
    }

    /// The true cover: fewest keys (heaviest first) holding `coverage` of the total.
    fn true_cover(counts: &HashMap<u64, u64>, coverage: f64) -> u32 {
        let mut v: Vec<u64> = counts.values().copied().collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        let total: u64 = v.iter().sum();
        let mut cum = 0;
        for (j, c) in v.iter().enumerate() {
            cum += c;
            if cum as f64 >= coverage * total as f64 {
                return j as u32 + 1;
            }
        }
        0
    }

    #[test]
    fn ties_sort_by_key() {
        assert_eq!(sorted(&[(9, 1), (3, 2), (5, 2), (1, 1)]), vec![(3, 2), (5, 2), (1, 1), (9, 1)]);
    }

    #[test]
    fn exact_cover_counts_the_heaviest_keys() {
        let v = sorted(&[(1, 5), (2, 3), (3, 1), (4, 1)]);
        assert_eq!(coverage_bounds(&v, 10, 0, 0.5), CoverageBounds { lo: 1, hi: 1 });
        assert_eq!(coverage_bounds(&v, 10, 0, 0.8), CoverageBounds { lo: 2, hi: 2 });
        assert_eq!(coverage_bounds(&v, 10, 0, 0.95), CoverageBounds { lo: 4, hi: 4 });
        assert_eq!(coverage_bounds::<u64>(&[], 0, 0, 0.95), CoverageBounds { lo: 0, hi: 0 });
    }

    #[test]
    fn lossy_cover_is_a_range() {
        // Stored 5 and 3 of 20, slack 2: need 19. At most: 2 stored keys, then 11 keys of 1.
        // At least: (5+2) + (3+2) = 12, then ceil(7 / 2) = 4 absent keys of 2 each.
        let v = sorted(&[(1, 5), (2, 3)]);
        assert_eq!(coverage_bounds(&v, 20, 2, 0.95), CoverageBounds { lo: 6, hi: 13 });
    }

    #[test]
    fn lossy_bounds_hold_the_true_cover() {
        let mut x = 11u64;
        for round in 0..40 {
            let (cap, n) = (8 + round % 5 * 4, 200 + 50 * round);
            let mut s = NgramSummary::default();
            let mut truth: HashMap<u64, u64> = HashMap::new();
            for _ in 0..n {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let r = (x >> 33) % 100;
                let k = if r < 60 { r % (1 + round as u64 % 6) } else { (x >> 20) % 300 };
                s.add(k, 1, cap);
                *truth.entry(k).or_insert(0) += 1;
            }
            let v: Vec<(u64, u32)> = sorted(&s.counts.iter().collect::<Vec<_>>());
            for coverage in [0.5, 0.8, 0.95] {
                let b = coverage_bounds(&v, s.total, s.slack, coverage);
                let c = true_cover(&truth, coverage);
                assert!(b.lo <= c && c <= b.hi, "round {round}, coverage {coverage}: {c} outside {b:?}");
                if s.slack == 0 {
                    assert_eq!(b.lo, b.hi);
                }
            }
        }
    }

    #[test]
    fn exact_detector_needs_hit_rate_and_share() {
        let v = sorted(&[(7, 10)]);
        let b = coverage_bounds(&v, 10, 0, P.coverage);
        assert_eq!(detect(&v, 10, 0, b, 5, |_| 10, &P), Some(vec![7]));
        // The neuron fires on half of the token's occurrences: not covered, no detector.
        assert_eq!(detect(&v, 10, 0, b, 5, |_| 20, &P), None);
        // More covering keys than max_top allows.
        let many: Vec<(u64, u32)> = sorted(&(0..8).map(|k| (k, 1)).collect::<Vec<_>>());
        let b = coverage_bounds(&many, 8, 0, P.coverage);
        assert_eq!(b.hi, 8);
        assert_eq!(detect(&many, 8, 0, b, 5, |_| 1, &P), None);
        assert_eq!(detect(&many, 8, 0, b, 8, |_| 1, &P), Some((0..8).collect()));
        assert_eq!(detect::<u64>(&[], 0, 0, CoverageBounds { lo: 0, hi: 0 }, 5, |_| 1, &P), None);
    }

    #[test]
    fn min_count_drops_rare_keys() {
        // Key 7 occurs 4 times, all of them active: covered with no minimum, not with min_count 5.
        let v = sorted(&[(7, 4)]);
        let b = coverage_bounds(&v, 4, 0, P.coverage);
        assert_eq!(detect(&v, 4, 0, b, 5, |_| 4, &P), Some(vec![7]));
        let p4 = DetectorParams { min_count: 4, ..P };
        assert_eq!(detect(&v, 4, 0, b, 5, |_| 4, &p4), Some(vec![7]));
        let p5 = DetectorParams { min_count: 5, ..P };
        assert_eq!(detect(&v, 4, 0, b, 5, |_| 4, &p5), None);
    }

    #[test]
    fn lossy_detector_claims_only_proven_tops() {
        // 100 of 100 stored on one key, slack 1: the top key is certain (100 > 0 + 1).
        let v = sorted(&[(3, 100)]);
        let b = CoverageBounds { lo: 1, hi: 1 };
        assert_eq!(detect(&v, 100, 1, b, 5, |_| 100, &P), Some(vec![3]));
        // The runner-up could reach the top key's count with the slack: no claim.
        let v = sorted(&[(3, 50), (4, 49)]);
        assert_eq!(detect(&v, 100, 2, CoverageBounds { lo: 1, hi: 1 }, 5, |_| 50, &P), None);
        // cover_k not known exactly.
        assert_eq!(detect(&v, 100, 2, CoverageBounds { lo: 1, hi: 2 }, 5, |_| 50, &P), None);
    }
}
