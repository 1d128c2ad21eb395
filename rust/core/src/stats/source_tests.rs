//! Per-source count tests (issue 19): adds, merges and the state file keep the (source, neuron) table exact.

use super::tests::{block, bytes, config, content, N};
use super::*;
use crate::{DetectorParams, PositionalParams};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::io::Cursor;

/// Per-row bits of neuron j in `bits` (rows of `words` words).
fn fired(bits: &[u64], words: usize, r: usize, j: usize) -> bool {
    bits[r * words + j / 64] >> (j % 64) & 1 == 1
}

#[test]
fn per_source_counts_add_merge_and_save_exactly() {
    const S: usize = 3;
    let mut rng = StdRng::seed_from_u64(11);
    let words = N.div_ceil(64);
    let mut want = vec![vec![0u64; S * N]; 2];
    let mut want_rows = [0u64; S];
    let mut parts: Vec<NeuronStats> = (0..3).map(|_| NeuronStats::with_sources(config(2), S).unwrap()).collect();
    for part in parts.iter_mut() {
        for _ in 0..2 {
            let (t, p, bits) = block(&mut rng, 2, 2);
            let src: Vec<usize> = (0..t.len()).map(|_| rng.gen_range(0..S)).collect();
            let mut rows = vec![0u64; S];
            src.iter().for_each(|&s| rows[s] += 1);
            let counts: Vec<Vec<u64>> = bits
                .iter()
                .map(|b| {
                    let mut c = vec![0u64; S * N];
                    for (r, &s) in src.iter().enumerate() {
                        (0..N).filter(|&j| fired(b, words, r, j)).for_each(|j| c[s * N + j] += 1);
                    }
                    c
                })
                .collect();
            for (l, c) in counts.iter().enumerate() {
                want[l].iter_mut().zip(c).for_each(|(a, b)| *a += b);
            }
            want_rows.iter_mut().zip(&rows).for_each(|(a, b)| *a += b);
            let chunks: Vec<[&[u64]; 1]> = bits.iter().map(|b| [b.as_slice()]).collect();
            let layers: Vec<(usize, &[&[u64]])> = chunks.iter().enumerate().map(|(l, c)| (l, &c[..])).collect();
            part.update_layers(&layers, words, &t, &p).unwrap();
            // Before the split by source is in, finalize names what is missing.
            let m = part.finalize(&DetectorParams::default(), &PositionalParams::default()).unwrap_err();
            assert!(m.to_string().contains("split by source"), "{m}");
            part.add_source_counts(&[(1, &counts[1]), (0, &counts[0])], &rows).unwrap();
        }
    }
    let (mut a, mut b) = (parts[0].clone(), NeuronStats::from_bytes(&bytes(&parts[0])).unwrap());
    for p in &parts[1..] {
        a.merge(p).unwrap();
        b.merge_from(Cursor::new(bytes(p))).unwrap();
    }
    let read = NeuronStats::read_from(bytes(&a).as_slice()).unwrap();
    for s in [&a, &b, &read] {
        assert_eq!(s.n_sources(), S);
        assert_eq!(s.source_rows(), &want_rows[..]);
        assert_eq!(s.source_rows().iter().sum::<u64>(), s.rows());
        for (l, w) in want.iter().enumerate() {
            assert_eq!(s.source_counts(l).unwrap(), &w[..]);
        }
        assert_eq!(content(s), content(&a));
    }
    // Each neuron's split adds up to its activations.
    let f = a.finalize(&DetectorParams::default(), &PositionalParams::default()).unwrap();
    for (l, w) in want.iter().enumerate() {
        for j in 0..N {
            let split: u64 = (0..S).map(|s| w[s * N + j]).sum();
            assert_eq!(split, f.n_active[l * N + j]);
        }
    }
    // A state without sources, or with other sources, does not merge with it; nothing is added.
    let before = bytes(&a);
    let plain = NeuronStats::new(config(2)).unwrap();
    assert!(matches!(a.merge(&plain), Err(StatsError::Incompatible(_))));
    assert!(matches!(a.merge_from(Cursor::new(bytes(&plain))), Err(StatsError::Incompatible(_))));
    let four = NeuronStats::with_sources(config(2), 4).unwrap();
    assert!(matches!(a.merge(&four), Err(StatsError::Incompatible(_))));
    assert_eq!(before, bytes(&a));
}

#[test]
fn per_source_counts_are_checked() {
    let mut s = NeuronStats::with_sources(config(2), 2).unwrap();
    let ok = vec![1u64; 2 * N];
    assert!(matches!(s.add_source_counts(&[(0, &ok)], &[1]), Err(StatsError::Shape(_))));
    assert!(matches!(s.add_source_counts(&[(0, &ok[..N])], &[1, 1]), Err(StatsError::Shape(_))));
    assert!(matches!(s.add_source_counts(&[(0, &ok)], &[1, 0]), Err(StatsError::Value(_))));
    assert!(matches!(s.add_source_counts(&[(2, &ok)], &[1, 1]), Err(StatsError::Value(_))));
    assert!(matches!(s.add_source_counts(&[(0, &ok), (0, &ok)], &[1, 1]), Err(StatsError::Value(_))));
    assert_eq!(s.source_rows(), &[0, 0]);
    // One source (or none) keeps no table and takes no counts.
    for n in [0, 1] {
        let mut one = NeuronStats::with_sources(config(2), n).unwrap();
        assert_eq!(one.n_sources(), 0);
        assert_eq!(one.source_counts(1).unwrap().len(), 0);
        assert!(matches!(one.add_source_counts(&[(0, &ok[..N])], &[1]), Err(StatsError::Config(_))));
        assert_eq!(bytes(&one), bytes(&NeuronStats::new(config(2)).unwrap()));
    }
    assert!(matches!(NeuronStats::with_sources(config(2), 70_000), Err(StatsError::Config(_))));
}
