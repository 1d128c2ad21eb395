//! Positional neurons: mutual information between activation and position, the smoothed
//! activation-frequency curve, its active intervals and the kind of neuron (METHOD.md).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PositionalParams {
    /// A neuron is positional when I(act; pos) > this, in nats (0.05).
    pub mi_threshold: f64,
    /// Smoothed fr(p) >= this is "active" (0.5).
    pub active_level: f64,
    /// lo <= this reaches the low side (0.05); <= strong_low is strong (0.01).
    pub low: f64,
    pub strong_low: f64,
    /// hi >= this reaches the high side (0.95); >= strong_high is strong (0.99).
    pub high: f64,
    pub strong_high: f64,
    /// At least this many active intervals makes a neuron oscillatory (3).
    pub min_oscillations: usize,
    /// Half-width of the moving average; 0 means max(1, T // 256) for T observed positions.
    pub smoothing_half_width: usize,
    /// An `other` neuron is strong (the paper's thin curve) when its spread is <= this (0.02).
    pub thin_spread: f64,
}

impl Default for PositionalParams {
    fn default() -> Self {
        PositionalParams {
            mi_threshold: 0.05,
            active_level: 0.5,
            low: 0.05,
            strong_low: 0.01,
            high: 0.95,
            strong_high: 0.99,
            min_oscillations: 3,
            smoothing_half_width: 0,
            thin_spread: 0.02,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PositionalKind {
    Oscillatory,
    TwoSided,
    OneSided,
    Other,
}

impl PositionalKind {
    pub fn name(self) -> &'static str {
        match self {
            PositionalKind::Oscillatory => "oscillatory",
            PositionalKind::TwoSided => "two_sided",
            PositionalKind::OneSided => "one_sided",
            PositionalKind::Other => "other",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PositionalResult {
    pub mi: f64,
    pub kind: Option<PositionalKind>,
    pub strong: bool,
    /// Half-open [start, end) runs of the smoothed curve at or above `active_level`.
    pub intervals: Vec<(u32, u32)>,
    /// Thickness of the curve: median over observed positions of |fr(p) - smoothed(p)| (NaN when not
    /// positional).
    pub spread: f64,
}

#[inline]
fn xlogx_ratio(x: f64, y: f64) -> f64 {
    // x ln(x / y) with 0 ln 0 = 0.
    if x <= 0.0 {
        0.0
    } else {
        x * (x / y).ln()
    }
}

/// I(act; pos) in nats, positions weighted by their token counts. `active[p]` / `totals[p]` is fr(p).
pub fn mutual_information(active: &[u32], totals: &[u64]) -> f64 {
    let n: u64 = totals.iter().sum();
    let a: u64 = active.iter().map(|&c| c as u64).sum();
    if n == 0 || a == 0 || a == n {
        return 0.0;
    }
    let fr = a as f64 / n as f64;
    let mut mi = 0.0;
    for (&c, &t) in active.iter().zip(totals) {
        if t == 0 {
            continue;
        }
        let w = t as f64 / n as f64;
        let f = c as f64 / t as f64;
        mi += w * (xlogx_ratio(f, fr) + xlogx_ratio(1.0 - f, 1.0 - fr));
    }
    mi.max(0.0)
}

/// fr(p) over positions 0..=last observed position; NaN where no token was at p.
pub fn frequency_curve(active: &[u32], totals: &[u64]) -> Vec<f64> {
    let len = totals.iter().rposition(|&t| t > 0).map_or(0, |p| p + 1);
    (0..len).map(|p| if totals[p] > 0 { active[p] as f64 / totals[p] as f64 } else { f64::NAN }).collect()
}

/// Centred moving average of width 2w+1, over the observed positions inside the window
/// (truncated at the ends; NaN positions skipped).
pub fn smooth(curve: &[f64], w: usize) -> Vec<f64> {
    let n = curve.len();
    let mut sum = vec![0.0f64; n + 1];
    let mut cnt = vec![0u32; n + 1];
    for (i, &v) in curve.iter().enumerate() {
        let ok = !v.is_nan();
        sum[i + 1] = sum[i] + if ok { v } else { 0.0 };
        cnt[i + 1] = cnt[i] + ok as u32;
    }
    (0..n)
        .map(|i| {
            let a = i.saturating_sub(w);
            let b = (i + w + 1).min(n);
            let c = cnt[b] - cnt[a];
            if c == 0 {
                f64::NAN
            } else {
                (sum[b] - sum[a]) / c as f64
            }
        })
        .collect()
}

/// Maximal runs with smoothed >= level, runs separated by a gap shorter than `w` merged.
pub fn active_intervals(smoothed: &[f64], level: f64, w: usize) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    let mut start: Option<usize> = None;
    for (i, &v) in smoothed.iter().enumerate() {
        let on = v >= level; // NaN is off
        match (on, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                runs.push((s as u32, i as u32));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push((s as u32, smoothed.len() as u32));
    }
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(runs.len());
    for r in runs {
        match merged.last_mut() {
            Some(last) if ((r.0 - last.1) as usize) < w => last.1 = r.1,
            _ => merged.push(r),
        }
    }
    merged
}

pub fn half_width(n_positions: usize, p: &PositionalParams) -> usize {
    if p.smoothing_half_width > 0 {
        p.smoothing_half_width
    } else {
        (n_positions / 256).max(1)
    }
}

/// Median over observed positions of |curve(p) - smoothed(p)|: how far fr(p) jitters around its
/// trend (a thick curve in the paper's plots); 0 for a curve that follows its moving average.
pub fn spread(curve: &[f64], smoothed: &[f64]) -> f64 {
    let mut d: Vec<f64> = curve.iter().zip(smoothed).filter(|(c, _)| !c.is_nan()).map(|(c, s)| (c - s).abs()).collect();
    if d.is_empty() {
        return f64::NAN;
    }
    d.sort_unstable_by(f64::total_cmp);
    let m = d.len() / 2;
    if d.len() % 2 == 1 {
        d[m]
    } else {
        0.5 * (d[m - 1] + d[m])
    }
}

/// Everything METHOD.md asks of one neuron's position counts.
pub fn analyze(active: &[u32], totals: &[u64], p: &PositionalParams) -> PositionalResult {
    let mi = mutual_information(active, totals);
    if mi.is_nan() || mi <= p.mi_threshold {
        return PositionalResult { mi, kind: None, strong: false, intervals: Vec::new(), spread: f64::NAN };
    }
    let curve = frequency_curve(active, totals);
    let w = half_width(curve.len(), p);
    let smoothed = smooth(&curve, w);
    let intervals = active_intervals(&smoothed, p.active_level, w);
    let finite = smoothed.iter().copied().filter(|v| !v.is_nan());
    let lo = finite.clone().fold(f64::INFINITY, f64::min);
    let hi = finite.fold(f64::NEG_INFINITY, f64::max);
    let (low, high) = (lo <= p.low, hi >= p.high);
    let (strong_lo, strong_hi) = (lo <= p.strong_low, hi >= p.strong_high);
    let spread = spread(&curve, &smoothed);
    let kind = if intervals.len() >= p.min_oscillations {
        PositionalKind::Oscillatory
    } else if low && high {
        PositionalKind::TwoSided
    } else if low || high {
        PositionalKind::OneSided
    } else {
        PositionalKind::Other
    };
    // METHOD.md: strong when the side(s) reached are <= strong_low / >= strong_high, for every kind
    // (an oscillatory curve may reach one side only); an oscillatory curve reaching no side is never
    // strong; an `other` curve (reaching no side) is strong when it is thin: spread <= thin_spread.
    let strong = if kind == PositionalKind::Other {
        spread <= p.thin_spread
    } else {
        (low || high) && (!low || strong_lo) && (!high || strong_hi)
    };
    PositionalResult { mi, kind: Some(kind), strong, intervals, spread }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_frequency_has_no_information() {
        let totals = vec![10u64; 8];
        let active = vec![5u32; 8];
        assert!(mutual_information(&active, &totals).abs() < 1e-12);
    }

    #[test]
    fn perfectly_split_positions_give_ln2() {
        let totals = vec![10u64; 8];
        let active: Vec<u32> = (0..8).map(|p| if p < 4 { 10 } else { 0 }).collect();
        assert!((mutual_information(&active, &totals) - 2f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn spread_is_the_median_jitter() {
        // |residuals| 0.1, 0.1, 0.4 (the NaN position skipped): median 0.1; with 0.3 added, (0.1 + 0.3) / 2.
        assert!((spread(&[0.2, 0.4, f64::NAN, 0.9], &[0.3, 0.3, 0.5, 0.5]) - 0.1).abs() < 1e-12);
        assert!((spread(&[0.2, 0.4, 0.9, 0.0], &[0.3, 0.3, 0.5, 0.3]) - 0.2).abs() < 1e-12);
        assert!(spread(&[f64::NAN], &[f64::NAN]).is_nan());
    }

    /// An `other` curve (0.3 outside, 0.7 inside a middle range) with jitter of +-`amp` at every position.
    fn other_curve(amp: f64) -> (Vec<u32>, Vec<u64>) {
        let totals = vec![1000u64; 512];
        let active = (0..512)
            .map(|p| {
                let base = if (200..300).contains(&p) { 0.7 } else { 0.3 };
                let sign = if p % 2 == 0 { 1.0 } else { -1.0 };
                ((base + sign * amp) * 1000.0f64).round() as u32
            })
            .collect();
        (active, totals)
    }

    #[test]
    fn other_is_strong_when_thin() {
        let p = PositionalParams::default();
        let (a, t) = other_curve(0.0);
        let r = analyze(&a, &t, &p);
        assert_eq!((r.kind, r.strong), (Some(PositionalKind::Other), true));
        assert!(r.spread < 1e-12, "{}", r.spread);
        let (a, t) = other_curve(0.1);
        let r = analyze(&a, &t, &p);
        assert_eq!((r.kind, r.strong), (Some(PositionalKind::Other), false));
        assert!(r.spread > 0.05, "{}", r.spread);
    }

    #[test]
    fn close_runs_merge() {
        let s = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        assert_eq!(active_intervals(&s, 0.5, 2), vec![(0, 4), (7, 8)]);
    }
}
