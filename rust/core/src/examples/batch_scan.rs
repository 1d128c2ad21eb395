//! One layer's batch of activations on the host -> what the examples need from it (METHOD.md
//! "Examples"): per neuron the float64 sum and the maximum of the firing values over all rows, and the
//! top `k` firing detail rows by value. One pass that visits only the firing entries (found from the
//! firing mask eight at a time), instead of array passes over every entry: on the CPU this is what
//! keeps the examples' cost small next to the forward pass (benches/RESULTS.md).

use crate::error::StatsError;

/// A batch's reduction, as the device computes it (python/opt_neurons/topk.py `batch_topk`).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchScan {
    /// (k, n) row-major: each neuron's top values, larger first, equal values by the earlier row;
    /// -inf in empty slots.
    pub values: Vec<f32>,
    /// (k, n) row-major: the rows of those values (0 in empty slots).
    pub rows: Vec<i64>,
    /// (n,): the sum of each neuron's firing values over all rows, added in row order.
    pub sums: Vec<f64>,
    /// (n,): each neuron's largest firing value over all rows (-inf: none fired).
    pub maxima: Vec<f32>,
}

/// `x` and `fired` are (rows, n) row-major: the activations and the firing rule's mask (0 or 1 bytes).
/// Rows below `n_detail` are detail rows, the only ones the top k takes; of those, only values at or
/// above the neuron's `floor` (the committed top k's k-th value: nothing below it can enter) are
/// kept, which leaves the merged result unchanged.
pub fn scan_batch(
    x: &[f32],
    fired: &[u8],
    n: usize,
    n_detail: usize,
    floor: &[f32],
    k: usize,
) -> Result<BatchScan, StatsError> {
    if n == 0 || !x.len().is_multiple_of(n) || fired.len() != x.len() || floor.len() != n || k == 0 {
        return Err(StatsError::Shape(format!(
            "scan_batch: activations of {} values, a mask of {}, {} floors for {n} neurons and k = {k} do not fit \
             (rows x neurons each, one floor per neuron, k > 0)",
            x.len(),
            fired.len(),
            floor.len()
        )));
    }
    let rows = x.len() / n;
    let n_detail = n_detail.min(rows);
    // One thread, the caller's: it runs inside the forward pass, between layers, where a thread pool of
    // its own would fight the forward's threads for the cores (RESULTS.md: it cost more than it saved).
    let part = scan_rows(x, fired, n, rows, n_detail, floor, k);
    let mut out = BatchScan {
        values: vec![f32::NEG_INFINITY; k * n],
        rows: vec![0; k * n],
        sums: part.sums,
        maxima: part.maxima,
    };
    for (j, &len) in part.len.iter().enumerate() {
        for slot in 0..len as usize {
            out.values[slot * n + j] = part.values[j * k + slot];
            out.rows[slot * n + j] = part.rows[j * k + slot] as i64;
        }
    }
    Ok(out)
}

/// Rows ahead whose values are asked for early: the firing entries are scattered over a row, too
/// sparse for the hardware's prefetcher, and each load would otherwise wait for memory.
const AHEAD: usize = 4;

/// Ask for every cache line of `values` (a hint: no effect on results).
#[inline]
fn prefetch(values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in values.chunks(16) {
        // SAFETY: a prefetch only hints the cache; any address is allowed.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr() as *const i8) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// The neurons' results; each neuron's top list is its own `k` slots, filled in order.
struct Scanned {
    sums: Vec<f64>,
    maxima: Vec<f32>,
    values: Vec<f32>,
    rows: Vec<u32>,
    len: Vec<u32>,
}

fn scan_rows(x: &[f32], fired: &[u8], n: usize, rows: usize, n_detail: usize, floor: &[f32], k: usize) -> Scanned {
    let mut b = Scanned {
        sums: vec![0.0; n],
        maxima: vec![f32::NEG_INFINITY; n],
        values: vec![0.0; n * k],
        rows: vec![0; n * k],
        len: vec![0; n],
    };
    for r in 0..rows {
        let mask = &fired[r * n..(r + 1) * n];
        let values = &x[r * n..(r + 1) * n];
        let detail = r < n_detail;
        if r + AHEAD < rows {
            prefetch(&x[(r + AHEAD) * n..(r + AHEAD + 1) * n]);
        }
        let mut visit = |j: usize| {
            let v = values[j] + 0.0; // -0.0 -> +0.0 (a negative threshold): equal values, equal order
            b.sums[j] += v as f64;
            if v > b.maxima[j] {
                b.maxima[j] = v;
            }
            if detail && v >= floor[j] {
                insert(&mut b, j, k, v, r as u32);
            }
        };
        let mut words = mask.chunks_exact(8);
        for (w, word) in words.by_ref().enumerate() {
            let mut bits = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            while bits != 0 {
                let j = w * 8 + bits.trailing_zeros() as usize / 8;
                bits &= !(0xFF << (bits.trailing_zeros() / 8 * 8));
                visit(j);
            }
        }
        let tail = n - n % 8;
        for (j, &m) in words.remainder().iter().enumerate() {
            if m != 0 {
                visit(tail + j);
            }
        }
    }
    b
}

/// Put (v, row) into neuron j's top list if it belongs there. Rows come in ascending order, so an
/// equal value goes after the ones already there (the earlier row first: the tie rule).
#[inline]
fn insert(b: &mut Scanned, j: usize, k: usize, v: f32, row: u32) {
    let len = b.len[j] as usize;
    let slots = j * k;
    if len == k && v <= b.values[slots + k - 1] {
        return;
    }
    let mut at = len.min(k - 1);
    while at > 0 && b.values[slots + at - 1] < v {
        b.values[slots + at] = b.values[slots + at - 1];
        b.rows[slots + at] = b.rows[slots + at - 1];
        at -= 1;
    }
    b.values[slots + at] = v;
    b.rows[slots + at] = row;
    b.len[j] = (len + 1).min(k) as u32;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain definition: sort each neuron's firing detail entries by (value desc, row asc).
    fn reference(x: &[f32], fired: &[u8], n: usize, n_detail: usize, k: usize) -> BatchScan {
        let rows = x.len() / n;
        let mut out = BatchScan {
            values: vec![f32::NEG_INFINITY; k * n],
            rows: vec![0; k * n],
            sums: vec![0.0; n],
            maxima: vec![f32::NEG_INFINITY; n],
        };
        for j in 0..n {
            let mut top = vec![];
            for r in 0..rows {
                if fired[r * n + j] != 0 {
                    let v = x[r * n + j] + 0.0;
                    out.sums[j] += v as f64;
                    out.maxima[j] = out.maxima[j].max(v);
                    if r < n_detail {
                        top.push((v, r));
                    }
                }
            }
            top.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
            for (slot, &(v, r)) in top.iter().take(k).enumerate() {
                out.values[slot * n + j] = v;
                out.rows[slot * n + j] = r as i64;
            }
        }
        out
    }

    #[test]
    fn equals_the_sorted_definition_with_ties_and_odd_widths() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for &(rows, n, k) in &[(1, 1, 1), (37, 13, 4), (200, 1029, 16), (64, 520, 200)] {
            // few distinct values: many ties; some -0.0 (a negative threshold fires on them)
            let x: Vec<f32> = (0..rows * n).map(|_| [-0.0, 0.5, 1.0, 2.0, -1.0][rng.gen_range(0..5)]).collect();
            let fired: Vec<u8> = x.iter().map(|&v| (v > -0.5 && rng.gen_bool(0.4)) as u8).collect();
            let n_detail = rows * 2 / 3;
            let got = scan_batch(&x, &fired, n, n_detail, &vec![f32::NEG_INFINITY; n], k).unwrap();
            assert_eq!(got, reference(&x, &fired, n, n_detail, k), "rows {rows} n {n} k {k}");
        }
    }

    #[test]
    fn a_floor_drops_only_what_cannot_enter() {
        let (x, fired) = (vec![3.0, 1.0, 2.0, 5.0], vec![1, 1, 1, 1]); // one neuron, four rows
        let got = scan_batch(&x, &fired, 1, 4, &[2.0], 3).unwrap();
        assert_eq!(got.values, vec![5.0, 3.0, 2.0]);
        assert_eq!(got.rows, vec![3, 0, 2]);
        assert_eq!((got.sums, got.maxima), (vec![11.0], vec![5.0]));
    }

    #[test]
    fn mismatched_shapes_are_shape_errors() {
        let e = scan_batch(&[1.0; 6], &[1; 5], 3, 2, &[0.0; 3], 2).unwrap_err();
        assert!(matches!(e, StatsError::Shape(_)), "{e:?}");
    }
}
