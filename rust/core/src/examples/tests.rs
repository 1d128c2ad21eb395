//! Unit tests of the sampler (against a plain reference), merges, the tie rule and the state file.
use super::*;
use rand::{Rng, SeedableRng};

fn random_bits(rng: &mut rand::rngs::StdRng, rows: usize, n_neurons: usize, p: f64) -> Vec<u64> {
    let words = n_neurons.div_ceil(64);
    let mut bits = vec![0u64; rows * words];
    for r in 0..rows {
        for j in 0..n_neurons {
            if rng.gen_bool(p) {
                bits[r * words + j / 64] |= 1 << (j % 64);
            }
        }
    }
    bits
}

/// Plain reference: every firing position's priority, sorted, the k smallest.
#[allow(clippy::too_many_arguments)] // the reference mirrors the sampler's whole input
fn reference(
    bits: &[u64],
    n_neurons: usize,
    seqs: &[u32],
    pos: &[u32],
    seed: u64,
    layer: usize,
    j: usize,
    k: usize,
) -> Vec<u64> {
    let words = n_neurons.div_ceil(64);
    let key = neuron_key(seed, layer, j);
    let mut all: Vec<(u64, u64)> = (0..seqs.len())
        .filter(|&r| bits[r * words + j / 64] >> (j % 64) & 1 == 1)
        .map(|r| {
            let id = example_id(seqs[r], pos[r]);
            (priority(key, id), id)
        })
        .collect();
    all.sort_unstable();
    all.into_iter().take(k).map(|x| x.1).collect()
}

fn rows(n_rows: usize, t: u32) -> (Vec<u32>, Vec<u32>) {
    ((0..n_rows as u32).map(|r| r / t).collect(), (0..n_rows as u32).map(|r| r % t).collect())
}

#[test]
fn sample_equals_plain_reference_and_merges_exactly() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (n, k, rows_n) = (300, 5, 400);
    let bits0 = random_bits(&mut rng, rows_n, n, 0.05);
    let bits1 = random_bits(&mut rng, rows_n, n, 0.3);
    let (seqs, pos) = rows(rows_n, 50);
    let cfg = ExamplesConfig { n_layers: 2, n_neurons: n, k, seed: 11 };
    let mut one = Examples::new(cfg.clone()).unwrap();
    one.update_layers(&[(0, &[&bits0[..]]), (1, &[&bits1[..]])], n.div_ceil(64), &seqs, &pos).unwrap();
    for j in 0..n {
        let got: Vec<u64> = one.sample(0, j).unwrap().into_iter().map(|x| x.1).collect();
        assert_eq!(got, reference(&bits0, n, &seqs, &pos, 11, 0, j, k), "neuron {j}");
        let got: Vec<u64> = one.sample(1, j).unwrap().into_iter().map(|x| x.1).collect();
        assert_eq!(got, reference(&bits1, n, &seqs, &pos, 11, 1, j, k));
    }
    // Two shards (rows split unevenly, given in reverse order, in pieces) merge to the same state.
    let words = n.div_ceil(64);
    let cut = 137;
    let mut a = Examples::new(cfg.clone()).unwrap();
    let mut b = Examples::new(cfg.clone()).unwrap();
    b.update_layers(&[(1, &[&bits1[cut * words..]]), (0, &[&bits0[cut * words..]])], words, &seqs[cut..], &pos[cut..])
        .unwrap();
    let (p, q) = bits0[..cut * words].split_at(60 * words);
    let (p1, q1) = bits1[..cut * words].split_at(60 * words);
    a.update_layers(&[(0, &[p, q]), (1, &[p1, q1])], words, &seqs[..cut], &pos[..cut]).unwrap();
    b.merge(&a).unwrap();
    for l in 0..2 {
        for j in 0..n {
            assert_eq!(b.sample(l, j).unwrap(), one.sample(l, j).unwrap());
        }
    }
    assert_eq!(b.sampled_rows(), rows_n as u64);
    // Merging a state with itself changes nothing (the same positions are not kept twice).
    let copy = one.clone();
    one.merge(&copy).unwrap();
    for j in 0..n {
        assert_eq!(one.sample(0, j).unwrap(), copy.sample(0, j).unwrap());
    }
}

#[test]
fn each_firing_position_is_equally_likely() {
    // One neuron firing on 40 rows, k = 4: over 4,000 seeds each row is drawn ~400 times.
    let (n, k, rows_n) = (1, 4, 40);
    let bits = vec![1u64; rows_n];
    let (seqs, pos) = rows(rows_n, 7);
    let mut hits = vec![0u32; rows_n];
    let seeds = 4000;
    for seed in 0..seeds {
        let mut e = Examples::new(ExamplesConfig { n_layers: 1, n_neurons: n, k, seed }).unwrap();
        e.update_layers(&[(0, &[&bits[..]])], 1, &seqs, &pos).unwrap();
        for (_, id) in e.sample(0, 0).unwrap() {
            hits[(id >> 32) as usize * 7 + (id as u32) as usize] += 1;
        }
    }
    let expect = (seeds * k as u64) as f64 / rows_n as f64;
    let chi2: f64 = hits.iter().map(|&h| (h as f64 - expect).powi(2) / expect).sum();
    // 39 degrees of freedom: the 0.999 quantile is 72.1.
    assert!(chi2 < 72.1, "chi-square {chi2}");
}

#[test]
fn top_merge_orders_by_value_then_id() {
    let ninf = f32::NEG_INFINITY;
    let a = [(3.0, 9), (2.0, 5), (ninf, NO_ID)];
    let b = [(3.0, 4), (2.0, 1), (1.0, 0)];
    assert_eq!(merge_top(&a, &b, 3), vec![(3.0, 4), (3.0, 9), (2.0, 1)]);
    assert_eq!(merge_top(&a, &[(ninf, NO_ID); 3], 3), a.to_vec());
}

#[test]
fn saved_state_round_trips_and_damage_is_refused() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let n = 70;
    let bits = random_bits(&mut rng, 30, n, 0.2);
    let (seqs, pos) = rows(30, 10);
    let mut e = Examples::new(ExamplesConfig { n_layers: 1, n_neurons: n, k: 3, seed: 2 }).unwrap();
    e.update_layers(&[(0, &[&bits[..]])], 2, &seqs, &pos).unwrap();
    let vals: Vec<f32> = (0..3 * n).map(|i| i as f32).collect();
    let ids: Vec<u64> = (0..3 * n as u64).collect();
    e.set_device_state(0, &vals, &ids, &vec![1.5; n], &vec![2.5; n]).unwrap();
    let mut buf = Vec::new();
    e.write_to(&mut buf).unwrap();
    let back = Examples::read_from(&buf[..]).unwrap();
    assert_eq!(back.device_state(0).unwrap(), e.device_state(0).unwrap());
    for j in 0..n {
        assert_eq!(back.sample(0, j).unwrap(), e.sample(0, j).unwrap());
    }
    let mut bad = buf.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    assert!(Examples::read_from(&bad[..]).is_err());
    assert!(Examples::read_from(&buf[..buf.len() - 3]).is_err());
}
