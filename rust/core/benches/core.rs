//! Criterion benchmarks of the core: `NeuronStats::update` and `finalize` at OPT layer shapes.
//!
//! Run: `cargo bench -p opt_neurons_core --bench core` (a few minutes; filter with `-- update/3072`).
//!
//! Synthetic input: one OPT layer (3072 neurons = OPT-125m, 36864 = OPT-66b), every neuron active
//! independently with probability `density` on each row (the pessimistic case for the n-gram summaries:
//! random activations see as many distinct n-grams as the data has), token ids drawn from a Zipf(1)
//! law over the OPT vocabulary (50272) with a random id permutation, whole 2048-token sequences
//! starting with BOS (id 2). One update = one forward batch of one layer.
//!
//! `update` is measured in steady state: the accumulators keep growing over the measured calls and
//! are rebuilt (untimed) every `reset_every` calls, so that memory stays bounded. Throughput is
//! reported by criterion as activation events (set bits) per second, and at the end a table prints
//! events/s and bitmask bytes/s for every case from the same measurements.

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use opt_neurons_core::{DetectorParams, NeuronStats, PositionalParams, StatsConfig};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const VOCAB: usize = 50272;
const T: usize = 2048;
const BOS: u32 = 2;

/// splitmix64: fast, good enough for synthetic data, reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf(1)-distributed token ids over the vocabulary, ranks mapped to ids by a random permutation;
/// each sequence starts with BOS. Returns (tokens, positions).
fn zipf_rows(n_seq: usize, rng: &mut Rng) -> (Vec<u32>, Vec<u32>) {
    let mut cdf = Vec::with_capacity(VOCAB);
    let mut acc = 0.0;
    for r in 1..=VOCAB {
        acc += 1.0 / r as f64;
        cdf.push(acc);
    }
    let mut perm: Vec<u32> = (0..VOCAB as u32).collect();
    for i in (1..VOCAB).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        perm.swap(i, j);
    }
    let mut tokens = Vec::with_capacity(n_seq * T);
    let mut positions = Vec::with_capacity(n_seq * T);
    for _ in 0..n_seq {
        for p in 0..T {
            let t = if p == 0 {
                BOS
            } else {
                let u = rng.unit() * acc;
                perm[cdf.partition_point(|&c| c < u).min(VOCAB - 1)]
            };
            tokens.push(t);
            positions.push(p as u32);
        }
    }
    (tokens, positions)
}

/// (rows, ceil(n/64)) words, every bit set with probability `density`.
fn random_bits(rows: usize, n_neurons: usize, density: f64, rng: &mut Rng) -> Vec<u64> {
    let words = n_neurons.div_ceil(64);
    let thr = (density * (1u64 << 32) as f64) as u64;
    let mut bits = vec![0u64; rows * words];
    for r in 0..rows {
        let mut x = 0u64;
        for j in 0..n_neurons {
            // two 32-bit draws per 64-bit random number
            if j % 2 == 0 {
                x = rng.next();
            } else {
                x >>= 32;
            }
            if (x & 0xFFFF_FFFF) < thr {
                bits[r * words + j / 64] |= 1 << (j % 64);
            }
        }
    }
    bits
}

fn config(n_neurons: usize) -> StatsConfig {
    StatsConfig { n_layers: 1, n_neurons, vocab_size: VOCAB, max_positions: T, bos_token_id: Some(BOS), ngram_capacity: 1024 }
}

struct Case {
    n_neurons: usize,
    density: f64,
    n_seq: usize,
    reset_every: u64,
}

/// (name, events per update, bytes per update, total time, iterations)
static REPORT: Mutex<Vec<(String, u64, u64, Duration, u64)>> = Mutex::new(Vec::new());

fn bench_update(c: &mut Criterion) {
    let cases = [
        Case { n_neurons: 3072, density: 0.005, n_seq: 2, reset_every: 64 },
        Case { n_neurons: 3072, density: 0.05, n_seq: 2, reset_every: 64 },
        Case { n_neurons: 3072, density: 0.5, n_seq: 2, reset_every: 16 },
        Case { n_neurons: 36864, density: 0.005, n_seq: 2, reset_every: 16 },
        Case { n_neurons: 36864, density: 0.05, n_seq: 2, reset_every: 4 },
        // 36864 live neurons at 50% hold ~100 KB each after one update: one 2048-token sequence per update.
        Case { n_neurons: 36864, density: 0.5, n_seq: 1, reset_every: 2 },
    ];
    let mut group = c.benchmark_group("update");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for case in &cases {
        let mut rng = Rng(0x5EED ^ case.n_neurons as u64 ^ (case.density * 1e6) as u64);
        let (tokens, positions) = zipf_rows(case.n_seq, &mut rng);
        let rows = tokens.len();
        let bits = random_bits(rows, case.n_neurons, case.density, &mut rng);
        let n_words = case.n_neurons.div_ceil(64);
        let events: u64 = bits.iter().map(|w| w.count_ones() as u64).sum();
        let bytes = (bits.len() * 8) as u64;
        let name = format!("{}/{}%/{}rows", case.n_neurons, case.density * 100.0, rows);
        group.throughput(Throughput::Elements(events));
        let total = Mutex::new((Duration::ZERO, 0u64));
        group.bench_function(BenchmarkId::from_parameter(&name), |b| {
            b.iter_custom(|iters| {
                let mut stats = NeuronStats::new(config(case.n_neurons)).unwrap();
                let mut t = Duration::ZERO;
                for k in 0..iters {
                    if k > 0 && k % case.reset_every == 0 {
                        stats = NeuronStats::new(config(case.n_neurons)).unwrap(); // old one dropped untimed
                    }
                    let s = Instant::now();
                    stats.update(0, &bits, n_words, &tokens, &positions).unwrap();
                    t += s.elapsed();
                }
                let mut tot = total.lock().unwrap();
                tot.0 += t;
                tot.1 += iters;
                t
            })
        });
        let (t, n) = *total.lock().unwrap();
        REPORT.lock().unwrap().push((format!("update/{name}"), events, bytes, t, n));
    }
    group.finish();
}

fn bench_finalize(c: &mut Criterion) {
    // State after `n_updates` updates of 2 x 2048 rows: token maps and n-gram summaries in the sizes
    // a few hundred thousand tokens give them.
    let cases = [(3072usize, 0.005f64, 8usize), (3072, 0.05, 8), (3072, 0.5, 4), (36864, 0.005, 4), (36864, 0.05, 1)];
    let mut group = c.benchmark_group("finalize");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    let (dp, pp) = (DetectorParams::default(), PositionalParams::default());
    for &(n_neurons, density, n_updates) in &cases {
        let mut rng = Rng(0xF1A1 ^ n_neurons as u64 ^ (density * 1e6) as u64);
        let (tokens, positions) = zipf_rows(2, &mut rng);
        let n_words = n_neurons.div_ceil(64);
        let mut stats = NeuronStats::new(config(n_neurons)).unwrap();
        let mut events = 0u64;
        for _ in 0..n_updates {
            let bits = random_bits(tokens.len(), n_neurons, density, &mut rng);
            events += bits.iter().map(|w| w.count_ones() as u64).sum::<u64>();
            stats.update(0, &bits, n_words, &tokens, &positions).unwrap();
        }
        let name = format!("{n_neurons}/{}%/{}rows", density * 100.0, n_updates * tokens.len());
        group.throughput(Throughput::Elements(n_neurons as u64));
        let total = Mutex::new((Duration::ZERO, 0u64));
        group.bench_function(BenchmarkId::from_parameter(&name), |b| {
            b.iter_custom(|iters| {
                let s = Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(stats.finalize(&dp, &pp).unwrap());
                }
                let t = s.elapsed();
                let mut tot = total.lock().unwrap();
                tot.0 += t;
                tot.1 += iters;
                t
            })
        });
        let (t, n) = *total.lock().unwrap();
        eprintln!("finalize/{name}: accumulators {:.1} MB, {events} events counted", stats.memory_bytes() as f64 / 1e6);
        REPORT.lock().unwrap().push((format!("finalize/{name} (per neuron)"), n_neurons as u64, 0, t, n));
    }
    group.finish();
}

fn print_report() {
    let threads = rayon::current_num_threads();
    println!("\nSummary ({threads} rayon threads; mean over all timed calls, warm-up included):");
    println!("{:<42} {:>12} {:>12} {:>14} {:>12}", "case", "events/call", "ms/call", "events/s", "bitmask MB/s");
    for (name, events, bytes, t, n) in REPORT.lock().unwrap().iter() {
        if *n == 0 {
            continue;
        }
        let per = t.as_secs_f64() / *n as f64;
        let mbs = if *bytes > 0 { format!("{:.0}", *bytes as f64 / per / 1e6) } else { "-".into() };
        println!("{:<42} {:>12} {:>12.3} {:>12.1} M {:>12}", name, events, per * 1e3, *events as f64 / per / 1e6, mbs);
    }
}

criterion_group!(benches, bench_update, bench_finalize);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    print_report();
}
