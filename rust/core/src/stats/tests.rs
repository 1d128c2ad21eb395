//! Whole-state tests: update paths, merges and the state file agree.

use super::*;
use crate::{DetectorParams, PositionalParams};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::io::{Cursor, Read, Seek, SeekFrom};

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
