//! Whole-state tests: update paths, merges and the state file agree.

use super::*;
use crate::{DetectorParams, PositionalParams};
use rand::{rngs::StdRng, Rng, SeedableRng};

const N: usize = 300; // 5 words per row, the last one partial
const T: usize = 16;

fn config(n_layers: usize) -> StatsConfig {
    StatsConfig { n_layers, n_neurons: N, vocab_size: 40, max_positions: T, bos_token_id: Some(2), ngram_capacity: 8 }
}

/// `seqs` whole sequences: token ids, positions, and per layer random bits (some neurons dense,
/// some sparse, some never on).
fn block(rng: &mut StdRng, n_layers: usize, seqs: usize) -> (Vec<u32>, Vec<u32>, Vec<Vec<u64>>) {
    let rows = seqs * T;
    let tokens = (0..rows).map(|i| if i % T == 0 { 2 } else { rng.gen_range(0..40) }).collect();
    let positions = (0..rows).map(|i| (i % T) as u32).collect();
    let words = N.div_ceil(64);
    let bits = (0..n_layers)
        .map(|_| {
            (0..rows * words)
                .map(|w| {
                    let p = [0.0, 0.05, 0.5][(w % words) % 3];
                    (0..64).fold(0u64, |acc, b| acc | ((rng.gen::<f64>() < p) as u64) << b)
                })
                .collect()
        })
        .collect();
    (tokens, positions, bits)
}

fn bytes(s: &NeuronStats) -> Vec<u8> {
    s.to_bytes().unwrap()
}

/// What a state means, whatever the slot order of its tables: every neuron's position and token
/// counts, and the finalized tables.
fn content(s: &NeuronStats) -> String {
    let mut out = format!("{:?}\n", s.finalize(&DetectorParams::default(), &PositionalParams::default()).unwrap());
    for l in 0..s.config.n_layers {
        for n in 0..N {
            let (mut toks, slack) = s.token_counts(l, n).unwrap();
            toks.sort_unstable();
            out += &format!("{l} {n} {:?} {toks:?} {slack}\n", s.position_counts(l, n).unwrap());
        }
    }
    out
}

#[test]
fn one_pass_over_all_layers_in_chunks_equals_a_call_per_layer() {
    let mut rng = StdRng::seed_from_u64(1);
    let words = N.div_ceil(64);
    let (mut one, mut many) = (NeuronStats::new(config(3)).unwrap(), NeuronStats::new(config(3)).unwrap());
    for _ in 0..4 {
        let (t, p, bits) = block(&mut rng, 3, 3);
        for l in [2, 0, 1] {
            one.update(l, &bits[l], words, &t, &p).unwrap();
        }
        // Each layer's bits in two chunks, cut mid-sequence at a different row per layer.
        let chunks: Vec<[&[u64]; 2]> = bits.iter().enumerate().map(|(l, b)| {
            let (a, b) = b.split_at((5 + 7 * l) * words);
            [a, b]
        }).collect();
        let layers: Vec<(usize, &[&[u64]])> = [1, 2, 0].iter().map(|&l| (l, &chunks[l][..])).collect();
        many.update_layers(&layers, words, &t, &p).unwrap();
    }
    assert_eq!(bytes(&one), bytes(&many));
    // Activation-only rows: summed counts equal the bits' popcounts.
    let (_, _, bits) = block(&mut rng, 3, 2);
    let rows = 2 * T;
    let counts: Vec<Vec<u64>> = bits
        .iter()
        .map(|b| (0..N).map(|j| (0..rows).filter(|&i| b[i * words + j / 64] >> (j % 64) & 1 == 1).count() as u64).collect())
        .collect();
    for (l, b) in bits.iter().enumerate() {
        one.update_activity(l, b, words).unwrap();
    }
    let layers: Vec<(usize, &[u64])> = counts.iter().enumerate().map(|(l, c)| (l, c.as_slice())).collect();
    many.add_activity_counts(&layers, rows as u64).unwrap();
    assert_eq!(bytes(&one), bytes(&many));
    assert_eq!(many.rows(), 14 * T as u64);
    assert_eq!(many.detail_rows(), 12 * T as u64);
}

#[test]
fn merging_a_stream_equals_merging_the_state() {
    let mut rng = StdRng::seed_from_u64(2);
    let words = N.div_ceil(64);
    let mut parts: Vec<NeuronStats> = (0..3).map(|_| NeuronStats::new(config(2)).unwrap()).collect();
    for part in parts.iter_mut() {
        for _ in 0..3 {
            let (t, p, bits) = block(&mut rng, 2, 2);
            let chunks: Vec<[&[u64]; 1]> = bits.iter().map(|b| [b.as_slice()]).collect();
            let layers: Vec<(usize, &[&[u64]])> = chunks.iter().enumerate().map(|(l, c)| (l, &c[..])).collect();
            part.update_layers(&layers, words, &t, &p).unwrap();
        }
    }
    let (mut a, mut b) = (NeuronStats::from_bytes(&bytes(&parts[0])).unwrap(), NeuronStats::from_bytes(&bytes(&parts[0])).unwrap());
    for p in &parts[1..] {
        a.merge(p).unwrap();
        b.merge_from(bytes(p).as_slice()).unwrap();
    }
    // A table read back holds the same counts in another slot order, so merges of it may lay
    // out their tables differently: equal in content, not byte for byte.
    let merged = content(&a);
    assert_eq!(merged, content(&b));
    assert_eq!(merged, content(&NeuronStats::read_from(bytes(&a).as_slice()).unwrap()));
    // Other settings: refused before anything is added.
    let other = NeuronStats::new(StatsConfig { ngram_capacity: 16, ..config(2) }).unwrap();
    let before = bytes(&b);
    assert!(matches!(b.merge_from(bytes(&other).as_slice()), Err(StatsError::Incompatible(_))));
    assert_eq!(before, bytes(&b));
    // A stream cut inside a layer is named corrupt.
    let cut = bytes(&parts[1]);
    assert!(matches!(b.merge_from(&cut[..cut.len() - 10]), Err(StatsError::Decode(_))));
}
