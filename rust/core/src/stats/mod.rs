//! `NeuronStats`: the streaming accumulators of every neuron of a model, and what they hold.
//!
//! The work is split by concern: `config` (settings and input checks), `update` (counting blocks of
//! rows), `counted` (blocks counted elsewhere, on the device), `state_file` (the saved state and streamed merges), `finalize` (table columns).

mod config;
mod counted;
mod finalize;
#[cfg(test)]
mod source_tests;
mod sources;
mod state_file;
#[cfg(test)]
mod tests;
mod update;

pub use config::StatsConfig;
pub use counted::{CountedLayer, KeyCounts};
pub use finalize::{unpack_key, Finalized};
pub use state_file::{verify, STATE_FORMAT_VERSION, STATE_MAGIC};

use crate::coverage::sort_by_count;
use crate::error::StatsError;
use crate::position_counts::{PositionChunk, CHUNK};
use crate::summary::{CountTable, NgramSummary, TableKey, TokenSummary};
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use sources::SourceTotals;

/// Token ids are packed 21 bits apiece into n-gram keys.
pub const MAX_VOCAB: usize = 1 << 21;
const ID_BITS: u32 = 21;
/// The free-slot keys of the summaries' tables, never stored.
const NO_KEY: u64 = <u64 as TableKey>::EMPTY;
const NO_TOKEN: u32 = <u32 as TableKey>::EMPTY;

/// Per-neuron accumulators, allocated on the first activation (dead neurons cost 8 bytes).
/// Position counts live per chunk of neurons (`PositionChunk`), not here.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct NeuronAcc {
    n_active: u64,
    /// Token ids of the counted (non-BOS) activations; `tokens.total` counts them all.
    tokens: TokenSummary,
    bigrams: NgramSummary,
    trigrams: NgramSummary,
}

impl NeuronAcc {
    fn merge(&mut self, o: &NeuronAcc, c: &StatsConfig) {
        self.n_active += o.n_active;
        self.tokens.merge(&o.tokens, c.ngram_capacity);
        self.bigrams.merge(&o.bigrams, c.ngram_capacity);
        self.trigrams.merge(&o.trigrams, c.ngram_capacity);
    }

    fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.tokens.heap_bytes() + self.bigrams.heap_bytes() + self.trigrams.heap_bytes()
    }
}

/// Statistics of the data itself, counted from the updates of layer 0.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct DataStats {
    /// Every row counted (the denominator of `frequency`).
    rows: u64,
    /// Rows counted with full statistics (`update`; the rest came through `update_activity`).
    detail_rows: u64,
    position_totals: Vec<u64>,
    token_occurrences: Vec<u64>,
    bigram_occurrences: FxHashMap<u64, u32>,
    trigram_occurrences: FxHashMap<u64, u32>,
}

#[derive(Clone, Debug)]
pub struct NeuronStats {
    config: StatsConfig,
    layers: Vec<Vec<Option<Box<NeuronAcc>>>>,
    /// Per layer, per chunk of CHUNK neurons: counts by position (allocated on a first activation).
    positions: Vec<Vec<Option<Box<PositionChunk>>>>,
    layer_rows: Vec<u64>,
    data: DataStats,
    /// Tokens per source and, per layer, activations per (source, neuron) (`sources.rs`; empty
    /// without sources).
    sources: SourceTotals,
    source_counts: Vec<Vec<u64>>,
    /// Why this state can no longer be used (a merge failed midway), if it cannot.
    unusable: Option<String>,
}

/// Add `theirs` into `mine` slot by slot, in parallel; a slot only they have is copied.
fn merge_slots<T: Clone + Send + Sync>(
    mine: &mut [Option<Box<T>>],
    theirs: &[Option<Box<T>>],
    add: impl Fn(&mut T, &T) + Sync,
) {
    mine.par_iter_mut().zip(theirs).for_each(|(a, b)| match (a.as_mut(), b) {
        (_, None) => {}
        (None, Some(b)) => *a = Some(b.clone()),
        (Some(a), Some(b)) => add(a, b),
    });
}

impl NeuronStats {
    pub fn new(config: StatsConfig) -> Result<Self, StatsError> {
        config.check()?;
        let layers = (0..config.n_layers).map(|_| vec![None; config.n_neurons]).collect();
        let chunks = config.n_neurons.div_ceil(CHUNK);
        let positions = (0..config.n_layers).map(|_| vec![None; chunks]).collect();
        let data = DataStats {
            position_totals: vec![0; config.max_positions],
            token_occurrences: vec![0; config.vocab_size],
            ..Default::default()
        };
        Ok(NeuronStats {
            layer_rows: vec![0; config.n_layers],
            sources: SourceTotals::new(0, config.n_layers),
            source_counts: vec![Vec::new(); config.n_layers],
            config,
            layers,
            positions,
            data,
            unusable: None,
        })
    }

    pub fn config(&self) -> &StatsConfig {
        &self.config
    }

    /// Fails once a merge has failed midway (see `merge_from`): the counts are then neither the
    /// old ones nor the merged ones.
    pub fn check_usable(&self) -> Result<(), StatsError> {
        match &self.unusable {
            None => Ok(()),
            Some(why) => Err(StatsError::Unusable(format!(
                "this NeuronStats is unusable: {why}; start again from its last saved state (or a new one)"
            ))),
        }
    }

    /// Add another accumulator's counts (a shard of the same model and data layout).
    pub fn merge(&mut self, other: &NeuronStats) -> Result<(), StatsError> {
        self.check_usable()?;
        other.check_usable()?;
        self.check_mergeable(&other.config, &other.sources)?;
        self.merge_totals(&other.layer_rows, &other.data, &other.sources);
        for (l, (accs, pos)) in other.layers.iter().zip(&other.positions).enumerate() {
            self.merge_layer(l, accs, pos, &other.source_counts[l]);
        }
        Ok(())
    }

    fn check_mergeable(&self, config: &StatsConfig, sources: &SourceTotals) -> Result<(), StatsError> {
        if &self.config != config {
            return Err(StatsError::Incompatible(format!(
                "cannot merge NeuronStats with different settings: {:?} vs {config:?}",
                self.config
            )));
        }
        if self.sources.n_sources != sources.n_sources {
            return Err(StatsError::Incompatible(format!(
                "cannot merge NeuronStats counting {} and {} sources: shards of one run split the same sources",
                self.sources.n_sources, sources.n_sources
            )));
        }
        Ok(())
    }

    fn merge_totals(&mut self, layer_rows: &[u64], o: &DataStats, sources: &SourceTotals) {
        self.sources.merge(sources);
        for (a, b) in self.layer_rows.iter_mut().zip(layer_rows) {
            *a += b;
        }
        let d = &mut self.data;
        d.rows += o.rows;
        d.detail_rows += o.detail_rows;
        for (a, b) in d.position_totals.iter_mut().zip(&o.position_totals) {
            *a += b;
        }
        for (a, b) in d.token_occurrences.iter_mut().zip(&o.token_occurrences) {
            *a += b;
        }
        for (k, c) in &o.bigram_occurrences {
            *d.bigram_occurrences.entry(*k).or_insert(0) += c;
        }
        for (k, c) in &o.trigram_occurrences {
            *d.trigram_occurrences.entry(*k).or_insert(0) += c;
        }
    }

    fn merge_layer(
        &mut self,
        l: usize,
        accs: &[Option<Box<NeuronAcc>>],
        pos: &[Option<Box<PositionChunk>>],
        source_counts: &[u64],
    ) {
        sources::merge_counts(&mut self.source_counts[l], source_counts);
        let cfg = &self.config;
        merge_slots(&mut self.layers[l], accs, |a, b| a.merge(b, cfg));
        merge_slots(&mut self.positions[l], pos, |a, b| a.merge(b));
    }

    pub fn rows(&self) -> u64 {
        self.data.rows
    }

    pub fn detail_rows(&self) -> u64 {
        self.data.detail_rows
    }

    pub fn layer_rows(&self) -> &[u64] {
        &self.layer_rows
    }

    pub fn position_totals(&self) -> &[u64] {
        &self.data.position_totals
    }

    pub fn token_occurrences(&self) -> &[u64] {
        &self.data.token_occurrences
    }

    fn acc(&self, layer: usize, neuron: usize) -> Result<Option<&NeuronAcc>, StatsError> {
        self.check_usable()?;
        self.config.check_neuron(layer, neuron)?;
        Ok(self.layers[layer][neuron].as_deref())
    }

    /// Activations of one neuron at each position (all rows, BOS included).
    pub fn position_counts(&self, layer: usize, neuron: usize) -> Result<Vec<u32>, StatsError> {
        self.acc(layer, neuron)?; // range checks
        let t = self.config.max_positions;
        Ok(match &self.positions[layer][neuron / CHUNK] {
            None => vec![0; t],
            Some(c) => (0..t).map(|p| c.get(p, neuron % CHUNK)).collect(),
        })
    }

    /// (token id, activations) of one neuron on non-BOS rows, heaviest first, and the summary's
    /// slack: the counts are exact when it is 0, else each may undercount by up to the slack (and
    /// an absent token may hold up to the slack).
    pub fn token_counts(&self, layer: usize, neuron: usize) -> Result<(Vec<(u32, u32)>, u64), StatsError> {
        Ok(match self.acc(layer, neuron)? {
            None => (Vec::new(), 0),
            Some(a) => {
                let mut v: Vec<(u32, u32)> = a.tokens.counts.iter().collect();
                sort_by_count(&mut v);
                (v, a.tokens.slack)
            }
        })
    }

    /// The most the accumulators can take, however many rows are counted: every neuron live and every
    /// summary full, and the data's token and position totals. Not included: the data's own n-gram
    /// tables, which grow with the distinct n-grams of the data.
    pub fn memory_bound(&self) -> usize {
        let c = &self.config;
        let neurons = c.n_layers * c.n_neurons;
        let per_live = std::mem::size_of::<NeuronAcc>()
            + CountTable::<u32>::bytes_for(c.ngram_capacity)
            + 2 * CountTable::<u64>::bytes_for(c.ngram_capacity);
        let chunks = c.n_layers * c.n_neurons.div_ceil(CHUNK);
        neurons * (8 + per_live)
            + chunks * c.max_positions * CHUNK * 2
            + (c.vocab_size + c.max_positions) * 8
            + self.source_bytes()
    }

    /// Bytes of the per-source counts (fixed: sources x neurons x layers counters).
    fn source_bytes(&self) -> usize {
        self.source_counts.iter().map(|c| c.len() * 8).sum()
    }

    /// Bytes held by the accumulators (heap estimate), for memory reports.
    pub fn memory_bytes(&self) -> usize {
        let neurons: usize = self
            .layers
            .iter()
            .map(|l| l.len() * 8 + l.iter().flatten().map(|a| a.heap_bytes()).sum::<usize>())
            .sum::<usize>()
            + self.positions.iter().flatten().flatten().map(|c| c.heap_bytes()).sum::<usize>();
        let d = &self.data;
        neurons
            + self.source_bytes()
            + d.position_totals.len() * 8
            + d.token_occurrences.len() * 8
            // hashbrown: 8/7 buckets per unit of capacity, each a 16-byte (u64, u32) entry and a control byte.
            + (d.bigram_occurrences.capacity() + d.trigram_occurrences.capacity()) * 8 / 7 * 17
    }
}
