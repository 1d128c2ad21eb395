//! Example positions per neuron in bounded memory (METHOD.md "Examples").
//!
//! * A uniform random sample of `k` firing positions per neuron, drawn from the activation bitmasks
//!   as a bottom-k sample: each firing (sequence, position) gets the priority
//!   `hash(seed, layer, neuron, sequence, position)` and the `k` smallest are kept. The sample is
//!   uniform without replacement, deterministic for a seed, and exactly mergeable (union, keep the
//!   `k` smallest) across shards, checkpoints and any order of the rows. The hash is a bijection of
//!   the position id for a given neuron, so priorities never tie.
//! * The top `k` firing positions by activation value and the per-neuron sum and maximum of the
//!   firing values: reduced on the device by the caller; held here for saving and merging. Order:
//!   value descending, equal values by (sequence, position) ascending.
//!
//! The state is saved with a CRC-32 of everything before it; a damaged or truncated file is refused.

mod batch_scan;
pub use batch_scan::{scan_batch, BatchScan};

use crate::error::StatsError;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"OPTNEX01";
/// Neurons per lazily allocated chunk of sample slots.
const CHUNK: usize = 256;
/// Id of an empty top-k slot (its value is -inf).
pub const NO_ID: u64 = i64::MAX as u64;

/// splitmix64's finaliser: a bijection of u64 with good avalanche.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A (sequence, position) pair as one id, in data order.
#[inline]
pub fn example_id(sequence: u32, position: u32) -> u64 {
    ((sequence as u64) << 32) | position as u64
}

/// The per-neuron part of the priority.
#[inline]
pub fn neuron_key(seed: u64, layer: usize, neuron: usize) -> u64 {
    mix(mix(seed) ^ mix(((layer as u64) << 32) | neuron as u64))
}

/// Priority of a firing position for a neuron: `mix(neuron_key ^ mix(id))`, a bijection of the id.
#[inline]
pub fn priority(neuron_key: u64, id: u64) -> u64 {
    mix(neuron_key ^ mix(id))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExamplesConfig {
    pub n_layers: usize,
    pub n_neurons: usize,
    /// Examples of each kind kept per neuron.
    pub k: usize,
    pub seed: u64,
}

/// Sample slots of CHUNK neurons: `k` (priority, id) slots each, the number filled, and the largest
/// priority held once full (the bar a new position must pass).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SampleChunk {
    slots: Vec<(u64, u64)>,
    len: Vec<u32>,
    bar: Vec<u64>,
}

impl SampleChunk {
    fn new(k: usize, n: usize) -> Self {
        SampleChunk { slots: vec![(0, 0); n * k], len: vec![0; n], bar: vec![u64::MAX; n] }
    }

    #[inline]
    fn offer(&mut self, j: usize, k: usize, p: u64, id: u64) {
        if p >= self.bar[j] {
            return;
        }
        let s = &mut self.slots[j * k..(j + 1) * k];
        let n = self.len[j] as usize;
        if n < k {
            if s[..n].iter().any(|&(q, i)| q == p && i == id) {
                return; // the same position offered twice (a state merged with itself)
            }
            s[n] = (p, id);
            self.len[j] += 1;
            if n + 1 == k {
                self.bar[j] = s.iter().map(|x| x.0).max().unwrap_or(u64::MAX);
            }
        } else {
            if s.iter().any(|&(q, i)| q == p && i == id) {
                return;
            }
            let worst = (0..k).max_by_key(|&t| s[t].0).unwrap_or(0);
            s[worst] = (p, id);
            self.bar[j] = s.iter().map(|x| x.0).max().unwrap_or(u64::MAX);
        }
    }

    /// (priority, id) of neuron j, smallest priority first.
    fn sorted(&self, j: usize, k: usize) -> Vec<(u64, u64)> {
        let mut v = self.slots[j * k..j * k + self.len[j] as usize].to_vec();
        v.sort_unstable();
        v
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct LayerState {
    sample: Vec<Option<Box<SampleChunk>>>,
    /// Top-k per neuron, neuron-major (`k` slots each): values and ids; empty slots are (-inf, NO_ID).
    top_values: Vec<f32>,
    top_ids: Vec<u64>,
    /// Sum and maximum of the firing values (-inf: none seen).
    sums: Vec<f64>,
    maxima: Vec<f32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Examples {
    config: ExamplesConfig,
    layers: Vec<LayerState>,
    /// Rows given to the sampler with layer 0 (detail rows), and rows covered by the sums (set by the caller).
    sampled_rows: u64,
    summed_rows: u64,
}

/// Columns of `examples.parquet`: kind 0 = top, 1 = random.
#[derive(Clone, Debug, Default)]
pub struct ExampleRows {
    pub layer: Vec<u16>,
    pub neuron: Vec<u32>,
    pub kind: Vec<u8>,
    pub rank: Vec<u32>,
    pub sequence: Vec<u32>,
    pub position: Vec<u32>,
    /// NaN for random samples (only their bits reach the host).
    pub value: Vec<f32>,
}

/// Is (value a, id a) before (value b, id b): larger value first, then smaller id.
#[inline]
fn top_before(a: (f32, u64), b: (f32, u64)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// The best `k` of two top-k lists (each ordered, empty slots last), ordered.
pub fn merge_top(a: &[(f32, u64)], b: &[(f32, u64)], k: usize) -> Vec<(f32, u64)> {
    let mut all: Vec<(f32, u64)> =
        a.iter().chain(b).copied().filter(|&(v, id)| id != NO_ID && v > f32::NEG_INFINITY).collect();
    all.sort_by(|x, y| {
        if top_before(*x, *y) {
            std::cmp::Ordering::Less
        } else if top_before(*y, *x) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    all.dedup_by(|x, y| x.1 == y.1);
    all.truncate(k);
    all.resize(k, (f32::NEG_INFINITY, NO_ID));
    all
}

impl Examples {
    pub fn new(config: ExamplesConfig) -> Result<Self, StatsError> {
        if config.n_layers == 0 || config.n_neurons == 0 || config.k == 0 {
            return Err(StatsError::Value(format!(
                "Examples needs positive n_layers, n_neurons and k, got {config:?}"
            )));
        }
        if config.k > u32::MAX as usize {
            return Err(StatsError::Value("k must fit in 32 bits".into()));
        }
        let (n, k) = (config.n_neurons, config.k);
        let layers = (0..config.n_layers)
            .map(|_| LayerState {
                sample: vec![None; n.div_ceil(CHUNK)],
                top_values: vec![f32::NEG_INFINITY; n * k],
                top_ids: vec![NO_ID; n * k],
                sums: vec![0.0; n],
                maxima: vec![f32::NEG_INFINITY; n],
            })
            .collect();
        Ok(Examples { config, layers, sampled_rows: 0, summed_rows: 0 })
    }

    pub fn config(&self) -> &ExamplesConfig {
        &self.config
    }

    pub fn sampled_rows(&self) -> u64 {
        self.sampled_rows
    }

    pub fn summed_rows(&self) -> u64 {
        self.summed_rows
    }

    fn check_layer(&self, layer: usize) -> Result<(), StatsError> {
        if layer >= self.config.n_layers {
            return Err(StatsError::Value(format!("layer {layer} out of range: {} layers", self.config.n_layers)));
        }
        Ok(())
    }

    /// Offer every firing position of a block of rows to the sample of its neuron. `layers`: each
    /// layer's bits in chunks of whole rows (bit j of word w = neuron 64w + j), the same rows for
    /// every layer; `sequences` / `positions`: each row's sequence index in the data and position.
    pub fn update_layers(
        &mut self,
        layers: &[(usize, &[&[u64]])],
        n_words: usize,
        sequences: &[u32],
        positions: &[u32],
    ) -> Result<(), StatsError> {
        let c = self.config.clone();
        if n_words != c.n_neurons.div_ceil(64) {
            return Err(StatsError::Shape(format!(
                "bitmask has {n_words} words per row but {} neurons need {}",
                c.n_neurons,
                c.n_neurons.div_ceil(64)
            )));
        }
        if sequences.len() != positions.len() {
            return Err(StatsError::Shape(format!("{} sequences but {} positions", sequences.len(), positions.len())));
        }
        let n_rows = sequences.len();
        let mut seen = vec![false; c.n_layers];
        for &(layer, chunks) in layers {
            self.check_layer(layer)?;
            if std::mem::replace(&mut seen[layer], true) {
                return Err(StatsError::Value(format!("layer {layer} is given twice in one update")));
            }
            let rows: usize = chunks.iter().map(|ch| ch.len() / n_words).sum();
            if rows != n_rows || chunks.iter().any(|ch| !ch.len().is_multiple_of(n_words)) {
                return Err(StatsError::Shape(format!(
                    "layer {layer} has {rows} bitmask rows for {n_rows} sequences / positions"
                )));
            }
        }
        if layers.is_empty() {
            return Ok(());
        }
        let row_keys: Vec<u64> = sequences.iter().zip(positions).map(|(&s, &p)| mix(example_id(s, p))).collect();
        let ids: Vec<u64> = sequences.iter().zip(positions).map(|(&s, &p)| example_id(s, p)).collect();
        let last_mask = match c.n_neurons % 64 {
            0 => u64::MAX,
            r => (1u64 << r) - 1,
        };
        let mut bits_of = vec![None; c.n_layers];
        for &(layer, chunks) in layers {
            bits_of[layer] = Some(chunks);
        }
        let tasks: Vec<_> = self
            .layers
            .iter_mut()
            .zip(bits_of)
            .enumerate()
            .filter_map(|(l, (st, bits))| Some((l, st, bits?)))
            .flat_map(|(l, st, bits)| st.sample.iter_mut().enumerate().map(move |(t, ch)| (l, t, ch, bits)))
            .collect();
        tasks.into_par_iter().for_each(|(layer, task, chunk, bits)| {
            let n0 = task * CHUNK;
            let n_here = CHUNK.min(c.n_neurons - n0);
            let w0 = n0 / 64;
            let w1 = (w0 + CHUNK / 64).min(n_words);
            let keys: Vec<u64> = (0..n_here).map(|j| neuron_key(c.seed, layer, n0 + j)).collect();
            let mut i = 0;
            for part in bits {
                for r in 0..part.len() / n_words {
                    let row = &part[r * n_words + w0..r * n_words + w1];
                    for (dw, &word) in row.iter().enumerate() {
                        let mut word = if w0 + dw == n_words - 1 { word & last_mask } else { word };
                        if word == 0 {
                            continue;
                        }
                        let ch = chunk.get_or_insert_with(|| Box::new(SampleChunk::new(c.k, n_here)));
                        while word != 0 {
                            let j = dw * 64 + word.trailing_zeros() as usize;
                            ch.offer(j, c.k, mix(keys[j] ^ row_keys[i]), ids[i]);
                            word &= word - 1;
                        }
                    }
                    i += 1;
                }
            }
        });
        if layers.iter().any(|&(l, _)| l == 0) {
            self.sampled_rows += n_rows as u64; // rows are counted with layer 0's bits (layer-major sends one layer at a time)
        }
        Ok(())
    }

    /// Replace one layer's top-k, sums and maxima with the caller's (reduced on the device):
    /// values / ids are (k, n_neurons) row-major (row r = the r-th best of every neuron).
    pub fn set_device_state(
        &mut self,
        layer: usize,
        values: &[f32],
        ids: &[u64],
        sums: &[f64],
        maxima: &[f32],
    ) -> Result<(), StatsError> {
        self.check_layer(layer)?;
        let (n, k) = (self.config.n_neurons, self.config.k);
        if values.len() != n * k || ids.len() != n * k || sums.len() != n || maxima.len() != n {
            return Err(StatsError::Shape(format!(
                "device state of layer {layer} must be (k={k}, {n}) values and ids and ({n},) sums and maxima"
            )));
        }
        let st = &mut self.layers[layer];
        for r in 0..k {
            for j in 0..n {
                st.top_values[j * k + r] = values[r * n + j];
                st.top_ids[j * k + r] = ids[r * n + j];
            }
        }
        st.sums.copy_from_slice(sums);
        st.maxima.copy_from_slice(maxima);
        Ok(())
    }

    /// One layer's top-k ((k, n) row-major values and ids), sums and maxima: what `set_device_state` takes.
    #[allow(clippy::type_complexity)]
    pub fn device_state(&self, layer: usize) -> Result<(Vec<f32>, Vec<u64>, Vec<f64>, Vec<f32>), StatsError> {
        self.check_layer(layer)?;
        let (n, k) = (self.config.n_neurons, self.config.k);
        let st = &self.layers[layer];
        let (mut v, mut ids) = (vec![0.0; n * k], vec![0; n * k]);
        for r in 0..k {
            for j in 0..n {
                v[r * n + j] = st.top_values[j * k + r];
                ids[r * n + j] = st.top_ids[j * k + r];
            }
        }
        Ok((v, ids, st.sums.clone(), st.maxima.clone()))
    }

    pub fn set_summed_rows(&mut self, rows: u64) {
        self.summed_rows = rows;
    }

    /// Add another state (a shard, or a saved state) of the same settings.
    pub fn merge(&mut self, o: &Examples) -> Result<(), StatsError> {
        if self.config != o.config {
            return Err(StatsError::Incompatible(format!(
                "cannot merge Examples with different settings: {:?} vs {:?}",
                self.config, o.config
            )));
        }
        let k = self.config.k;
        let n = self.config.n_neurons;
        self.layers.par_iter_mut().zip(&o.layers).for_each(|(a, b)| {
            for (t, (ca, cb)) in a.sample.iter_mut().zip(&b.sample).enumerate() {
                let Some(cb) = cb else { continue };
                let n_here = CHUNK.min(n - t * CHUNK);
                let ca = ca.get_or_insert_with(|| Box::new(SampleChunk::new(k, n_here)));
                for j in 0..n_here {
                    for (p, id) in cb.sorted(j, k) {
                        ca.offer(j, k, p, id);
                    }
                }
            }
            for j in 0..n {
                let pa: Vec<(f32, u64)> = (0..k).map(|r| (a.top_values[j * k + r], a.top_ids[j * k + r])).collect();
                let pb: Vec<(f32, u64)> = (0..k).map(|r| (b.top_values[j * k + r], b.top_ids[j * k + r])).collect();
                for (r, (v, id)) in merge_top(&pa, &pb, k).into_iter().enumerate() {
                    a.top_values[j * k + r] = v;
                    a.top_ids[j * k + r] = id;
                }
                a.sums[j] += b.sums[j];
                a.maxima[j] = a.maxima[j].max(b.maxima[j]);
            }
        });
        self.sampled_rows += o.sampled_rows;
        self.summed_rows += o.summed_rows;
        Ok(())
    }

    /// The random sample of one neuron: (priority, id), smallest priority first.
    pub fn sample(&self, layer: usize, neuron: usize) -> Result<Vec<(u64, u64)>, StatsError> {
        self.check_layer(layer)?;
        if neuron >= self.config.n_neurons {
            return Err(StatsError::Value(format!("neuron {neuron} out of range")));
        }
        Ok(match &self.layers[layer].sample[neuron / CHUNK] {
            None => Vec::new(),
            Some(ch) => ch.sorted(neuron % CHUNK, self.config.k),
        })
    }

    /// Every example as table rows: per (layer, neuron), the top ones by value (rank 0 = largest),
    /// then the random ones (rank 0 = smallest priority: any prefix is itself a uniform sample).
    pub fn rows(&self) -> ExampleRows {
        let (n, k) = (self.config.n_neurons, self.config.k);
        let mut out = ExampleRows::default();
        let mut push = |l: usize, j: usize, kind: u8, rank: usize, id: u64, v: f32| {
            out.layer.push(l as u16);
            out.neuron.push(j as u32);
            out.kind.push(kind);
            out.rank.push(rank as u32);
            out.sequence.push((id >> 32) as u32);
            out.position.push(id as u32);
            out.value.push(v);
        };
        for (l, st) in self.layers.iter().enumerate() {
            for j in 0..n {
                for r in 0..k {
                    let (v, id) = (st.top_values[j * k + r], st.top_ids[j * k + r]);
                    if id != NO_ID && v > f32::NEG_INFINITY {
                        push(l, j, 0, r, id, v);
                    }
                }
                if let Some(ch) = &st.sample[j / CHUNK] {
                    for (r, (_, id)) in ch.sorted(j % CHUNK, k).into_iter().enumerate() {
                        push(l, j, 1, r, id, f32::NAN);
                    }
                }
            }
        }
        out
    }

    /// Per neuron (layer-major): sum and maximum of the firing values.
    pub fn sums_and_maxima(&self) -> (Vec<f64>, Vec<f32>) {
        let sums = self.layers.iter().flat_map(|l| l.sums.iter().copied()).collect();
        let maxima = self.layers.iter().flat_map(|l| l.maxima.iter().copied()).collect();
        (sums, maxima)
    }

    /// The most this state takes: every neuron's sample chunk allocated, its top-k, sum and maximum.
    pub fn memory_bound(&self) -> usize {
        let c = &self.config;
        let neurons = c.n_layers * c.n_neurons;
        neurons * (c.k * (16 + 4 + 8) + 4 + 8 + 8 + 4) + c.n_layers * c.n_neurons.div_ceil(CHUNK) * 8
    }

    pub fn memory_bytes(&self) -> usize {
        let k = self.config.k;
        self.layers
            .iter()
            .map(|l| {
                l.sample.len() * 8
                    + l.sample.iter().flatten().map(|ch| ch.len.len() * (k * 16 + 12)).sum::<usize>()
                    + l.top_values.len() * 12
                    + l.sums.len() * 12
            })
            .sum()
    }
}

mod state_file;

#[cfg(test)]
mod tests;
