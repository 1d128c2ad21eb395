//! Whole-state tests: update paths, merges and the state file agree.

use super::*;
use crate::{DetectorParams, PositionalParams};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::io::{Cursor, Read, Seek, SeekFrom};

pub(super) const N: usize = 300; // 5 words per row, the last one partial
const T: usize = 16;

pub(super) fn config(n_layers: usize) -> StatsConfig {
    StatsConfig { n_layers, n_neurons: N, vocab_size: 40, max_positions: T, bos_token_id: Some(2), ngram_capacity: 8 }
}

/// `seqs` whole sequences: token ids, positions, and per layer random bits (some neurons dense,
/// some sparse, some never on).
pub(super) fn block(rng: &mut StdRng, n_layers: usize, seqs: usize) -> (Vec<u32>, Vec<u32>, Vec<Vec<u64>>) {
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

pub(super) fn bytes(s: &NeuronStats) -> Vec<u8> {
    s.to_bytes().unwrap()
}

/// What a state means, whatever the slot order of its tables: every neuron's position and token
/// counts, and the finalized tables.
pub(super) fn content(s: &NeuronStats) -> String {
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
        let chunks: Vec<[&[u64]; 2]> = bits
            .iter()
            .enumerate()
            .map(|(l, b)| {
                let (a, b) = b.split_at((5 + 7 * l) * words);
                [a, b]
            })
            .collect();
        let layers: Vec<(usize, &[&[u64]])> = [1, 2, 0].iter().map(|&l| (l, &chunks[l][..])).collect();
        many.update_layers(&layers, words, &t, &p).unwrap();
    }
    assert_eq!(bytes(&one), bytes(&many));
    // Activation-only rows: summed counts equal the bits' popcounts.
    let (_, _, bits) = block(&mut rng, 3, 2);
    let rows = 2 * T;
    let counts: Vec<Vec<u64>> = bits
        .iter()
        .map(|b| {
            (0..N).map(|j| (0..rows).filter(|&i| b[i * words + j / 64] >> (j % 64) & 1 == 1).count() as u64).collect()
        })
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
    let (mut a, mut b) =
        (NeuronStats::from_bytes(&bytes(&parts[0])).unwrap(), NeuronStats::from_bytes(&bytes(&parts[0])).unwrap());
    for p in &parts[1..] {
        a.merge(p).unwrap();
        b.merge_from(Cursor::new(bytes(p))).unwrap();
    }
    // A table read back holds the same counts in another slot order, so merges of it may lay
    // out their tables differently: equal in content, not byte for byte.
    let merged = content(&a);
    assert_eq!(merged, content(&b));
    assert_eq!(merged, content(&NeuronStats::read_from(bytes(&a).as_slice()).unwrap()));
    // Other settings: refused before anything is added.
    let other = NeuronStats::new(StatsConfig { ngram_capacity: 16, ..config(2) }).unwrap();
    let before = bytes(&b);
    assert!(matches!(b.merge_from(Cursor::new(bytes(&other))), Err(StatsError::Incompatible(_))));
    assert_eq!(before, bytes(&b));
    // A stream cut inside a layer is named corrupt.
    let cut = bytes(&parts[1]);
    assert!(matches!(b.merge_from(Cursor::new(&cut[..cut.len() - 10])), Err(StatsError::Decode(_))));
}

/// A small state with some of everything: 2 layers of 70 neurons, lossy summaries.
fn small_state(seed: u64) -> NeuronStats {
    let mut rng = StdRng::seed_from_u64(seed);
    let cfg = StatsConfig {
        n_layers: 2,
        n_neurons: 70,
        vocab_size: 40,
        max_positions: 8,
        bos_token_id: Some(2),
        ngram_capacity: 4,
    };
    let mut s = NeuronStats::new(cfg).unwrap();
    let rows = 24;
    let tokens: Vec<u32> = (0..rows).map(|i| if i % 8 == 0 { 2 } else { rng.gen_range(0..40) }).collect();
    let positions: Vec<u32> = (0..rows).map(|i| (i % 8) as u32).collect();
    for l in 0..2 {
        let bits: Vec<u64> = (0..rows * 2).map(|_| rng.gen::<u64>() & rng.gen::<u64>()).collect();
        s.update(l, &bits, 2, &tokens, &positions).unwrap();
    }
    s
}

fn is_decode<T>(r: Result<T, StatsError>) -> bool {
    matches!(r, Err(StatsError::Decode(_)))
}

#[test]
fn every_damaged_byte_truncation_and_extension_is_refused() {
    let s = small_state(3);
    let good = bytes(&s);
    assert_eq!(&good[..8], b"OPTNST05");
    let mut target = small_state(4);
    let before = bytes(&target);
    let mut damaged = good.clone();
    for i in 0..good.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            damaged[i] ^= flip;
            assert!(is_decode(NeuronStats::from_bytes(&damaged)), "byte {i} ^ {flip:#x} accepted by from_bytes");
            assert!(is_decode(target.merge_from(Cursor::new(&damaged))), "byte {i} ^ {flip:#x} accepted by merge_from");
            // The single pass of read_from, which decodes before the checksum can be checked.
            assert!(
                flip != 0xff || is_decode(NeuronStats::read_from(damaged.as_slice())),
                "byte {i} ^ {flip:#x} accepted by read_from"
            );
            damaged[i] ^= flip;
        }
    }
    for n in 0..good.len() {
        assert!(is_decode(NeuronStats::from_bytes(&good[..n])), "truncated to {n} bytes: accepted");
        assert!(is_decode(NeuronStats::read_from(&good[..n])), "truncated to {n} bytes: accepted by read_from");
        assert!(is_decode(target.merge_from(Cursor::new(&good[..n]))), "truncated to {n} bytes: merged");
    }
    for extra in [&[0u8][..], &[0; 4], &[0; 12], &good[..]] {
        let long = [&good[..], extra].concat();
        assert!(is_decode(NeuronStats::from_bytes(&long)), "{} bytes appended: accepted", extra.len());
        assert!(
            is_decode(NeuronStats::read_from(long.as_slice())),
            "{} bytes appended: accepted by read_from",
            extra.len()
        );
        assert!(is_decode(target.merge_from(Cursor::new(&long))), "{} bytes appended: merged", extra.len());
    }
    // Nothing refused was added, and the target still works.
    assert_eq!(before, bytes(&target));
    target.merge_from(Cursor::new(&good)).unwrap();
    assert_eq!(target.rows(), 2 * s.rows());
}

#[test]
fn errors_say_what_is_wrong() {
    let msg = |r: Result<NeuronStats, StatsError>| r.unwrap_err().to_string();
    let good = bytes(&small_state(5));
    assert!(msg(NeuronStats::from_bytes(b"")).contains("empty"));
    assert!(msg(NeuronStats::from_bytes(b"garbage")).contains("not a NeuronStats state"));
    // A state of format 03 (the same layout without the trailer) names its version.
    let mut old = good[..good.len() - 12].to_vec();
    old[6..8].copy_from_slice(b"03");
    let m = msg(NeuronStats::from_bytes(&old));
    assert!(m.contains("format version 3") && m.contains("reads version 5"), "{m}");
    let mut damaged = good.clone();
    damaged[good.len() / 2] ^= 4;
    let m = msg(NeuronStats::from_bytes(&damaged));
    assert!(
        m.starts_with("corrupt NeuronStats state: its checksum does not match") && m.contains("save the state again"),
        "{m}"
    );
    let dir = std::env::temp_dir().join(format!("opt_neurons_state_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("state.bin");
    std::fs::write(&f, &damaged).unwrap();
    let m = msg(NeuronStats::load(&f));
    assert!(m.contains("state.bin: corrupt NeuronStats state") && m.contains("delete the checkpoint folder"), "{m}");
    std::fs::write(&f, b"").unwrap();
    assert!(msg(NeuronStats::load(&f)).contains("empty"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A stream that fails to read past `fail_at` bytes once it has been rewound `passes` times.
struct Flaky {
    data: Cursor<Vec<u8>>,
    rewinds: usize,
    passes: usize,
    fail_at: u64,
}

impl Read for Flaky {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.rewinds >= self.passes && self.data.position() >= self.fail_at {
            return Err(std::io::Error::other("the disk went away"));
        }
        let room = if self.rewinds >= self.passes { (self.fail_at - self.data.position()) as usize } else { buf.len() };
        let k = room.min(buf.len());
        self.data.read(&mut buf[..k])
    }
}

impl Seek for Flaky {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.rewinds += 1;
        self.data.seek(to)
    }
}

#[test]
fn a_merge_that_fails_midway_leaves_the_state_unusable() {
    let other = bytes(&small_state(6));
    // Failing in the first (verifying) pass: refused, nothing added, still usable.
    let mut s = small_state(7);
    let before = bytes(&s);
    let r = s.merge_from(Flaky { data: Cursor::new(other.clone()), rewinds: 0, passes: 0, fail_at: 100 });
    assert!(matches!(r, Err(StatsError::Io(_))), "{r:?}");
    assert_eq!(before, bytes(&s));
    // Failing in the second pass, after the totals and a layer were added: every later call fails.
    let fail_at = other.len() as u64 - 100;
    let r = s.merge_from(Flaky { data: Cursor::new(other.clone()), rewinds: 0, passes: 1, fail_at });
    assert!(matches!(r, Err(StatsError::Io(_))), "{r:?}");
    let unusable = |r: Result<(), StatsError>| matches!(r, Err(StatsError::Unusable(m)) if m.contains("unusable") && m.contains("partly merged"));
    assert!(unusable(s.to_bytes().map(|_| ())));
    assert!(unusable(s.save(&std::env::temp_dir().join("never-written.bin"))));
    assert!(unusable(s.update(0, &[0, 0], 2, &[1], &[0])));
    assert!(unusable(s.update_activity(0, &[0, 0], 2)));
    assert!(unusable(s.add_activity_counts(&[(0, &[0; 70])], 1)));
    assert!(unusable(s.merge_from(Cursor::new(other.clone()))));
    assert!(unusable(s.finalize(&DetectorParams::default(), &PositionalParams::default()).map(|_| ())));
    assert!(unusable(s.position_counts(0, 0).map(|_| ())));
    assert!(unusable(s.token_counts(0, 0).map(|_| ())));
    let mut fresh = small_state(8);
    assert!(unusable(fresh.merge(&s)));
    assert!(unusable(s.merge(&fresh)));
    assert!(!std::env::temp_dir().join("never-written.bin").exists());
}

/// What the device reduces a block to (`counting="device"`), computed here from the bits: per layer,
/// activation counts, (neuron, key, count) triples of each kind sorted by neuron then key, and the
/// position-major position counts.
type Triples<K> = (Vec<u32>, Vec<K>, Vec<u32>);
struct Reduced {
    active: Vec<u64>,
    tokens: Triples<u32>,
    bigrams: Triples<u64>,
    trigrams: Triples<u64>,
    positions: Vec<u32>,
}

fn triples<K: Ord + Copy>(m: std::collections::BTreeMap<(u32, K), u32>) -> Triples<K> {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for ((n, k), c) in m {
        out.0.push(n);
        out.1.push(k);
        out.2.push(c);
    }
    out
}

fn reduce(bits: &[u64], tokens: &[u32], positions: &[u32]) -> Reduced {
    use std::collections::BTreeMap;
    let words = N.div_ceil(64);
    let rows = update::Rows::new(tokens, positions, Some(2));
    let (mut t1, mut t2, mut t3) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let mut active = vec![0u64; N];
    let mut pos = vec![0u32; T * N];
    for r in 0..tokens.len() {
        for j in 0..N {
            if bits[r * words + j / 64] >> (j % 64) & 1 == 0 {
                continue;
            }
            active[j] += 1;
            pos[positions[r] as usize * N + j] += 1;
            if rows.tok_add[r] != NO_TOKEN {
                *t1.entry((j as u32, rows.tok_add[r])).or_insert(0) += 1;
            }
            if rows.bigram_add[r] != NO_KEY {
                *t2.entry((j as u32, rows.bigram_add[r])).or_insert(0) += 1;
            }
            if rows.trigram_add[r] != NO_KEY {
                *t3.entry((j as u32, rows.trigram_add[r])).or_insert(0) += 1;
            }
        }
    }
    Reduced { active, tokens: triples(t1), bigrams: triples(t2), trigrams: triples(t3), positions: pos }
}

fn kc<K>(t: &Triples<K>) -> KeyCounts<'_, K> {
    KeyCounts { neurons: &t.0, keys: &t.1, counts: &t.2 }
}

fn merge_reduced(s: &mut NeuronStats, layers: &[usize], reduced: &[Reduced], tokens: &[u32], positions: &[u32]) {
    let counted: Vec<(usize, CountedLayer)> = layers
        .iter()
        .map(|&l| {
            let r = &reduced[l];
            (
                l,
                CountedLayer {
                    active: &r.active,
                    tokens: kc(&r.tokens),
                    bigrams: kc(&r.bigrams),
                    trigrams: kc(&r.trigrams),
                },
            )
        })
        .collect();
    s.merge_counted_layers(&counted, tokens, positions).unwrap();
    for &l in layers {
        s.add_position_counts(l, &reduced[l].positions).unwrap();
    }
}

#[test]
fn counted_blocks_equal_bits_where_exact_and_keep_the_bounds_where_not() {
    let words = N.div_ceil(64);
    for capacity in [64, 4] {
        let mut rng = StdRng::seed_from_u64(5);
        let cfg = StatsConfig { ngram_capacity: capacity, ..config(2) };
        let (mut bits_path, mut counted_path) =
            (NeuronStats::new(cfg.clone()).unwrap(), NeuronStats::new(cfg).unwrap());
        let mut truth: Vec<std::collections::HashMap<(usize, u32), u64>> = vec![Default::default(); 2];
        for _ in 0..3 {
            let (t, p, bits) = block(&mut rng, 2, 3);
            for (l, b) in bits.iter().enumerate() {
                bits_path.update(l, b, words, &t, &p).unwrap();
            }
            let reduced: Vec<Reduced> = bits.iter().map(|b| reduce(b, &t, &p)).collect();
            merge_reduced(&mut counted_path, &[1, 0], &reduced, &t, &p);
            for (l, r) in reduced.iter().enumerate() {
                for ((&n, &k), &c) in r.tokens.0.iter().zip(&r.tokens.1).zip(&r.tokens.2) {
                    *truth[l].entry((n as usize, k)).or_insert(0) += c as u64;
                }
            }
        }
        assert_eq!(counted_path.layer_rows(), bits_path.layer_rows());
        assert_eq!(counted_path.data.token_occurrences, bits_path.data.token_occurrences);
        for (l, truth) in truth.iter().enumerate() {
            for n in 0..N {
                assert_eq!(counted_path.position_counts(l, n).unwrap(), bits_path.position_counts(l, n).unwrap());
                let (a, b) = (counted_path.layers[l][n].as_deref(), bits_path.layers[l][n].as_deref());
                assert_eq!(a.map(|a| a.n_active), b.map(|b| b.n_active));
                let Some(a) = a else { continue };
                assert_eq!(a.tokens.total, b.unwrap().tokens.total);
                // Certified: stored <= true <= stored + slack for every token, listed or not.
                for t in 0..40u32 {
                    let (stored, real) = (a.tokens.counts.get(t) as u64, truth.get(&(n, t)).copied().unwrap_or(0));
                    assert!(stored <= real && real <= stored + a.tokens.slack, "{l} {n} {t}: {stored} {real}");
                }
            }
        }
        if capacity == 64 {
            assert_eq!(content(&counted_path), content(&bits_path)); // exact: every table the same
        } else {
            assert!(counted_path.layers[0].iter().flatten().any(|a| a.tokens.slack > 0));
        }
    }
}

#[test]
fn counted_blocks_are_checked_before_anything_is_added() {
    let mut s = NeuronStats::new(config(1)).unwrap();
    let (t, p) = (vec![2, 5, 6], vec![0, 1, 2]);
    let active = vec![1u64; N];
    let none: Triples<u64> = (vec![], vec![], vec![]);
    let bad_cases: Vec<(Triples<u32>, &str)> = vec![
        ((vec![3, 1], vec![5, 5], vec![1, 1]), "sorted by neuron"),
        ((vec![N as u32], vec![5], vec![1]), "out of range"),
        ((vec![1], vec![40], vec![1]), "outside the vocabulary"),
        ((vec![1], vec![5], vec![0]), "positive"),
        ((vec![1], vec![5], vec![2]), "activations"),
        ((vec![1, 1], vec![5], vec![1]), "same length"),
    ];
    for (tokens, want) in bad_cases {
        let c = CountedLayer { active: &active, tokens: kc(&tokens), bigrams: kc(&none), trigrams: kc(&none) };
        let e = s.merge_counted_layers(&[(0, c)], &t, &p).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
    assert!(s.add_position_counts(0, &[1; 3]).unwrap_err().to_string().contains("max_positions x n_neurons"));
    assert_eq!(s.rows(), 0);
    assert!(s.layers[0].iter().all(|a| a.is_none()) && s.positions[0].iter().all(|c| c.is_none()));
}
