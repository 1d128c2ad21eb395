//! Criterion benchmarks of the core: `NeuronStats::update` and `finalize` at OPT layer shapes.
//!
//! Run: `cargo bench -p opt_neurons_core --bench core` (about 5 minutes on 2 cores; filter with
//! e.g. `-- update/3072`).
//!
//! Synthetic input, one OPT layer: 3072 neurons (OPT-125m) or 36864 (OPT-66b); token ids drawn from a
//! Zipf(1) law over the OPT vocabulary (50272) with a random id permutation, whole 2048-token
//! sequences starting with BOS (id 2). One update = one layer of one forward batch of 2 sequences
//! (4096 rows) unless the case says otherwise. Activation profiles:
//! - `uniform`: every neuron fires independently with probability `density` on every row. This is the
//!   worst case for the accumulators: each neuron sees as many distinct tokens and n-grams as the data
//!   has, its n-gram summaries stay full and prune all the time, and its state (tens of KB) is cold
//!   in the caches each time the neuron is visited.
//! - `selective`: 40% of neurons fire (p = 0.95) on 1-5 trigger tokens drawn from the token law
//!   (token detectors), the others on a pseudo-random eighth of the vocabulary with p = 8 x density.
//!
//! `update` is measured in steady state: the timed calls cycle through 4 different blocks of rows and
//! keep adding to the same accumulators (across criterion's samples), which are rebuilt every
//! `reset_every` timed calls so that memory stays bounded; a rebuild and the `reset_every / 4` (at
//! least 1) updates that warm the new accumulators up are not timed. Throughput is reported by criterion as
//! activation events (set bits) per second; a table at the end gives, for every case, events/s of wall
//! time, events per CPU-second (all threads; robust to other load on the machine) and bitmask bytes/s.

use criterion::{BenchmarkId, Criterion, Throughput};
use opt_neurons_core::{DetectorParams, NeuronStats, PositionalParams, StatsConfig};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const VOCAB: usize = 50272;
const T: usize = 2048;
const BOS: u32 = 2;
/// Distinct blocks of rows per case, fed in turn.
const BLOCKS: usize = 4;

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
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Zipf(1) law over the vocabulary, ranks mapped to ids by a random permutation.
struct Zipf {
    cdf: Vec<f64>,
    perm: Vec<u32>,
}

impl Zipf {
    fn new(rng: &mut Rng) -> Self {
        let mut cdf = Vec::with_capacity(VOCAB);
        let mut acc = 0.0;
        for r in 1..=VOCAB {
            acc += 1.0 / r as f64;
            cdf.push(acc);
        }
        let mut perm: Vec<u32> = (0..VOCAB as u32).collect();
        for i in (1..VOCAB).rev() {
            perm.swap(i, rng.below(i as u64 + 1) as usize);
        }
        Zipf { cdf, perm }
    }

    fn sample(&self, rng: &mut Rng) -> u32 {
        let u = rng.unit() * self.cdf[VOCAB - 1];
        self.perm[self.cdf.partition_point(|&c| c < u).min(VOCAB - 1)]
    }

    /// (tokens, positions) of `n_seq` sequences of T tokens, each starting with BOS.
    fn rows(&self, n_seq: usize, rng: &mut Rng) -> (Vec<u32>, Vec<u32>) {
        let mut tokens = Vec::with_capacity(n_seq * T);
        let mut positions = Vec::with_capacity(n_seq * T);
        for _ in 0..n_seq {
            for p in 0..T {
                tokens.push(if p == 0 { BOS } else { self.sample(rng) });
                positions.push(p as u32);
            }
        }
        (tokens, positions)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Profile {
    Uniform,
    Selective,
}

/// Threshold of a 32-bit uniform draw for probability p.
fn thr(p: f64) -> u64 {
    (p.clamp(0.0, 1.0) * (1u64 << 32) as f64) as u64
}

/// (rows, ceil(n/64)) words of activations for the given tokens.
fn make_bits(tokens: &[u32], n_neurons: usize, density: f64, profile: Profile, zipf: &Zipf, rng: &mut Rng) -> Vec<u64> {
    let words = n_neurons.div_ceil(64);
    let mut bits = vec![0u64; tokens.len() * words];
    // Per-neuron trigger tokens of the selective profile (fixed per neuron across blocks).
    let mut nrng = Rng(0x7711);
    let triggers: Vec<Option<Vec<u32>>> = (0..n_neurons)
        .map(|_| {
            if profile == Profile::Selective && nrng.unit() < 0.4 {
                let k = 1 + nrng.below(5);
                Some((0..k).map(|_| zipf.sample(&mut nrng)).collect())
            } else {
                None
            }
        })
        .collect();
    let (p_uniform, p_diffuse, p_hit, p_bg) = (thr(density), thr(8.0 * density), thr(0.95), thr(0.0005));
    for (r, &t) in tokens.iter().enumerate() {
        let row = &mut bits[r * words..(r + 1) * words];
        let mut x = 0u64;
        for j in 0..n_neurons {
            // two 32-bit draws per 64-bit random number
            x = if j % 2 == 0 { rng.next() } else { x >> 32 };
            let u = x & 0xFFFF_FFFF;
            let on = match (profile, &triggers[j]) {
                (Profile::Uniform, _) => u < p_uniform,
                (Profile::Selective, Some(tr)) => u < if tr.contains(&t) { p_hit } else { p_bg },
                (Profile::Selective, None) => {
                    ((j as u64).wrapping_mul(0x9E37_79B9).wrapping_add(t as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
                        >> 61)
                        == 0
                        && u < p_diffuse
                }
            };
            row[j / 64] |= (on as u64) << (j % 64);
        }
    }
    bits
}

fn config(n_neurons: usize, n_layers: usize) -> StatsConfig {
    StatsConfig {
        n_layers,
        n_neurons,
        vocab_size: VOCAB,
        max_positions: T,
        bos_token_id: Some(BOS),
        ngram_capacity: opt_neurons_core::summary::DEFAULT_CAPACITY,
    }
}

type Block = (Vec<u32>, Vec<u32>, Vec<u64>);

fn blocks(n_neurons: usize, density: f64, profile: Profile, n_seq: usize, seed: u64) -> Vec<Block> {
    let mut rng = Rng(seed);
    let zipf = Zipf::new(&mut rng);
    (0..BLOCKS)
        .map(|_| {
            let (t, p) = zipf.rows(n_seq, &mut rng);
            let b = make_bits(&t, n_neurons, density, profile, &zipf, &mut rng);
            (t, p, b)
        })
        .collect()
}

/// Process CPU time (user + system, all threads) in seconds, from /proc (0 where unavailable).
fn cpu_seconds() -> f64 {
    let Ok(st) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    let Some(close) = st.rfind(')') else { return 0.0 };
    let f: Vec<&str> = st[close + 2..].split(' ').collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // USER_HZ is 100 on Linux
}

#[derive(Default, Clone, Copy)]
struct Tally {
    wall: Duration,
    cpu: f64,
    calls: u64,
}

/// One line of the closing table: name, events per call, bitmask bytes per call, tally.
static REPORT: Mutex<Vec<(String, u64, u64, Tally)>> = Mutex::new(Vec::new());

struct Case {
    n_neurons: usize,
    density: f64,
    profile: Profile,
    n_seq: usize,
    reset_every: u64,
    /// `update_activity` (frequency and dead neurons only) instead of `update`.
    activity: bool,
    /// Layers given the same block of bits in one `update_layers` call (1: plain `update`), as the
    /// pipeline does for every layer of a forward batch.
    layers: usize,
}

fn bench_update(c: &mut Criterion) {
    use Profile::*;
    let cases = [
        Case {
            n_neurons: 3072,
            density: 0.005,
            profile: Uniform,
            n_seq: 2,
            reset_every: 64,
            activity: false,
            layers: 1,
        },
        Case {
            n_neurons: 3072,
            density: 0.05,
            profile: Uniform,
            n_seq: 2,
            reset_every: 64,
            activity: false,
            layers: 1,
        },
        Case { n_neurons: 3072, density: 0.5, profile: Uniform, n_seq: 2, reset_every: 16, activity: false, layers: 1 },
        // The pipeline's default batch: 8 sequences per update.
        Case {
            n_neurons: 3072,
            density: 0.05,
            profile: Uniform,
            n_seq: 8,
            reset_every: 16,
            activity: false,
            layers: 1,
        },
        Case {
            n_neurons: 3072,
            density: 0.05,
            profile: Selective,
            n_seq: 2,
            reset_every: 64,
            activity: false,
            layers: 1,
        },
        Case {
            n_neurons: 36864,
            density: 0.005,
            profile: Uniform,
            n_seq: 2,
            reset_every: 16,
            activity: false,
            layers: 1,
        },
        Case {
            n_neurons: 36864,
            density: 0.05,
            profile: Uniform,
            n_seq: 2,
            reset_every: 4,
            activity: false,
            layers: 1,
        },
        // 36864 live neurons at 50% hold ~70 KB each after one sequence (2.6 GB for the layer):
        // one sequence per update, accumulators rebuilt after every timed update (1 warm-up update).
        Case { n_neurons: 36864, density: 0.5, profile: Uniform, n_seq: 1, reset_every: 1, activity: false, layers: 1 },
        // OPT-125m's 12 layers of a 4-sequence batch in one call (a 3072-neuron layer alone is 12
        // tasks: too few for a 16-core GPU host), against the same work as 12 calls.
        Case {
            n_neurons: 3072,
            density: 0.05,
            profile: Uniform,
            n_seq: 4,
            reset_every: 8,
            activity: false,
            layers: 12,
        },
        // Rows past `detail_tokens`: activation counts only.
        Case { n_neurons: 3072, density: 0.05, profile: Uniform, n_seq: 8, reset_every: 64, activity: true, layers: 1 },
        Case {
            n_neurons: 36864,
            density: 0.05,
            profile: Uniform,
            n_seq: 2,
            reset_every: 64,
            activity: true,
            layers: 1,
        },
    ];
    let mut group = c.benchmark_group("core");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for case in &cases {
        let prof = if case.profile == Uniform { "uniform" } else { "selective" };
        let kind = match (case.activity, case.layers) {
            (true, _) => "activity".to_string(),
            (false, 1) => "update".to_string(),
            (false, l) => format!("update_layers{l}x"),
        };
        let name = format!("{kind}/{}/{}%/{prof}/{}rows", case.n_neurons, case.density * 100.0, case.n_seq * T);
        let data: Mutex<Option<(Vec<Block>, u64, u64)>> = Mutex::new(None);
        let tally = Mutex::new(Tally::default());
        let n_words = case.n_neurons.div_ceil(64);
        // Elements per iteration must be known before the data exist: the expected set bits; the
        // closing table uses the exact count.
        let expect_events = (case.density * (case.layers * case.n_seq * T * case.n_neurons) as f64) as u64;
        group.throughput(Throughput::Elements(expect_events));
        // Criterion calls the routine below many times (warm-up, each sample): state kept out here.
        let mut state: Option<(NeuronStats, u64)> = None;
        group.bench_function(BenchmarkId::from_parameter(&name), |b| {
            let mut guard = data.lock().unwrap();
            let (blocks, _, _) = guard.get_or_insert_with(|| {
                let seed = 0x5EED ^ case.n_neurons as u64 ^ (case.density * 1e6) as u64;
                let bl = blocks(case.n_neurons, case.density, case.profile, case.n_seq, seed);
                let events = bl.iter().map(|b| b.2.iter().map(|w| w.count_ones() as u64).sum::<u64>()).sum::<u64>()
                    / BLOCKS as u64
                    * case.layers as u64;
                let bytes = (bl[0].2.len() * 8 * case.layers) as u64;
                (bl, events, bytes)
            });
            let update = |stats: &mut NeuronStats, k: u64| {
                let (t, p, bits) = &blocks[k as usize % BLOCKS];
                if case.activity {
                    stats.update_activity(0, bits, n_words).unwrap();
                } else if case.layers == 1 {
                    stats.update(0, bits, n_words, t, p).unwrap();
                } else {
                    let chunk = [bits.as_slice()];
                    let layers: Vec<(usize, &[&[u64]])> = (0..case.layers).map(|l| (l, &chunk[..])).collect();
                    stats.update_layers(&layers, n_words, t, p).unwrap();
                }
            };
            // Accumulators persist across criterion's samples; rebuilt (untimed) every `reset_every`
            // timed updates, then warmed by `warm` untimed updates.
            let warm = (case.reset_every / 4).max(1);
            let fresh = || {
                let mut st = NeuronStats::new(config(case.n_neurons, case.layers)).unwrap();
                for k in 0..warm {
                    update(&mut st, k);
                }
                st
            };
            b.iter_custom(|iters| {
                let mut wall = Duration::ZERO;
                let mut cpu = 0.0;
                for _ in 0..iters {
                    if state.as_ref().is_none_or(|s| s.1 >= case.reset_every) {
                        state = None; // the old accumulators are dropped untimed
                        state = Some((fresh(), 0));
                    }
                    let (stats, done) = state.as_mut().unwrap();
                    let (c0, s) = (cpu_seconds(), Instant::now());
                    update(stats, warm + *done);
                    wall += s.elapsed();
                    cpu += cpu_seconds() - c0;
                    *done += 1;
                }
                let mut t = tally.lock().unwrap();
                t.wall += wall;
                t.cpu += cpu;
                t.calls += iters;
                wall
            });
        });
        let summary = data.lock().unwrap().as_ref().map(|d| (d.1, d.2));
        if let Some((events, bytes)) = summary {
            REPORT.lock().unwrap().push((name.clone(), events, bytes, *tally.lock().unwrap()));
        }
    }
    group.finish();
}

fn bench_finalize(c: &mut Criterion) {
    // Accumulators after `n_updates` updates of 2 x 2048 rows (uniform profile): token maps and
    // n-gram summaries in the sizes tens of thousands of tokens give them.
    let cases = [(3072usize, 0.005f64, 8usize), (3072, 0.05, 8), (3072, 0.5, 4), (36864, 0.005, 4), (36864, 0.05, 1)];
    let mut group = c.benchmark_group("finalize");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    let (dp, pp) = (DetectorParams::default(), PositionalParams::default());
    for &(n_neurons, density, n_updates) in &cases {
        let name = format!("{n_neurons}/{}%/{}rows", density * 100.0, n_updates * 2 * T);
        let state: Mutex<Option<NeuronStats>> = Mutex::new(None);
        let tally = Mutex::new(Tally::default());
        group.throughput(Throughput::Elements(n_neurons as u64));
        group.bench_function(BenchmarkId::from_parameter(&name), |b| {
            let mut guard = state.lock().unwrap();
            let stats = guard.get_or_insert_with(|| {
                let mut rng = Rng(0xF1A1 ^ n_neurons as u64 ^ (density * 1e6) as u64);
                let zipf = Zipf::new(&mut rng);
                let mut stats = NeuronStats::new(config(n_neurons, 1)).unwrap();
                for _ in 0..n_updates {
                    let (t, p) = zipf.rows(2, &mut rng);
                    let bits = make_bits(&t, n_neurons, density, Profile::Uniform, &zipf, &mut rng);
                    stats.update(0, &bits, n_neurons.div_ceil(64), &t, &p).unwrap();
                }
                eprintln!("finalize/{name}: accumulators {:.1} MB", stats.memory_bytes() as f64 / 1e6);
                stats
            });
            b.iter_custom(|iters| {
                let (c0, s) = (cpu_seconds(), Instant::now());
                for _ in 0..iters {
                    std::hint::black_box(stats.finalize(&dp, &pp).unwrap());
                }
                let wall = s.elapsed();
                let mut t = tally.lock().unwrap();
                t.wall += wall;
                t.cpu += cpu_seconds() - c0;
                t.calls += iters;
                wall
            })
        });
        let built = state.lock().unwrap().is_some();
        if built {
            REPORT.lock().unwrap().push((
                format!("finalize/{name} (neurons)"),
                n_neurons as u64,
                0,
                *tally.lock().unwrap(),
            ));
        }
    }
    group.finish();
}

fn print_report() {
    let rows = REPORT.lock().unwrap();
    if rows.is_empty() {
        return;
    }
    println!(
        "\nSummary ({} rayon threads; means over every timed call, warm-up included)",
        rayon::current_num_threads()
    );
    println!(
        "{:<44} {:>10} {:>10} {:>13} {:>15} {:>13}",
        "case", "events", "ms/call", "events/s", "events/CPU-s", "bitmask MB/s"
    );
    for (name, events, bytes, t) in rows.iter() {
        if t.calls == 0 {
            continue;
        }
        let per = t.wall.as_secs_f64() / t.calls as f64;
        let per_cpu = t.cpu / t.calls as f64;
        let rate = |x: f64| if x >= 1e6 { format!("{:.1} M", x / 1e6) } else { format!("{:.1} k", x / 1e3) };
        let cpu = if per_cpu > 0.0 { rate(*events as f64 / per_cpu) } else { "-".into() };
        let mbs = if *bytes > 0 { format!("{:.0}", *bytes as f64 / per / 1e6) } else { "-".into() };
        println!(
            "{:<44} {:>10} {:>10.2} {:>13} {:>15} {:>13}",
            name,
            events,
            per * 1e3,
            rate(*events as f64 / per),
            cpu,
            mbs
        );
    }
    println!("(finalize rows: \"events\" are neurons, rates are neurons/s)");
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_update(&mut c);
    bench_finalize(&mut c);
    c.final_summary();
    print_report();
}
