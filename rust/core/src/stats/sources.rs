//! Per-source activation counts (issue 19): when the data names several sources (the bundled
//! corpus's parts, files, a dataset's source column), the activations of every (layer, neuron,
//! source) and the tokens of each source. The counts are summed by the caller (on the device, per
//! batch) and added here; they merge and save with the rest of the state. A state of fewer than two
//! sources holds no table at all.

use super::NeuronStats;
use crate::error::StatsError;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The data's tokens per source, and per layer the rows given to `add_source_counts` (which must
/// reach every layer's rows before the state is finalized).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct SourceTotals {
    pub n_sources: usize,
    /// Tokens of each source (counted with layer 0's counts).
    pub rows: Vec<u64>,
    pub layer_rows: Vec<u64>,
}

impl SourceTotals {
    pub fn new(n_sources: usize, n_layers: usize) -> Self {
        let n = if n_sources > 1 { n_sources } else { 0 };
        SourceTotals { n_sources: n, rows: vec![0; n], layer_rows: vec![0; if n > 0 { n_layers } else { 0 }] }
    }

    pub fn merge(&mut self, o: &SourceTotals) {
        for (a, b) in self.rows.iter_mut().zip(&o.rows).chain(self.layer_rows.iter_mut().zip(&o.layer_rows)) {
            *a += b;
        }
    }

    /// Sizes agree with the state's settings (a read state).
    pub fn fits(&self, n_layers: usize) -> bool {
        self.n_sources != 1
            && self.rows.len() == self.n_sources
            && self.layer_rows.len() == if self.n_sources > 0 { n_layers } else { 0 }
    }
}

/// Add `theirs` into `mine`, element by element (one layer's (source, neuron) counts).
pub(super) fn merge_counts(mine: &mut [u64], theirs: &[u64]) {
    mine.par_iter_mut().zip(theirs).for_each(|(a, b)| *a += b);
}

impl NeuronStats {
    /// A state that also counts activations per source: `n_sources` sources (fewer than two: none).
    pub fn with_sources(config: super::StatsConfig, n_sources: usize) -> Result<Self, StatsError> {
        let mut s = NeuronStats::new(config)?;
        if n_sources > u16::MAX as usize {
            return Err(StatsError::Config(format!(
                "{n_sources} sources: per-source counts take at most {} (one counter per source and neuron)",
                u16::MAX
            )));
        }
        s.sources = SourceTotals::new(n_sources, s.config.n_layers);
        let cells = s.sources.n_sources * s.config.n_neurons;
        s.source_counts = (0..s.config.n_layers).map(|_| vec![0; cells]).collect();
        Ok(s)
    }

    /// Sources whose activations are counted (0: none).
    pub fn n_sources(&self) -> usize {
        self.sources.n_sources
    }

    /// Tokens counted per source.
    pub fn source_rows(&self) -> &[u64] {
        &self.sources.rows
    }

    /// One layer's activations per (source, neuron), source-major: `[s * n_neurons + j]`.
    pub fn source_counts(&self, layer: usize) -> Result<&[u64], StatsError> {
        self.check_usable()?;
        self.config.check_neuron(layer, 0)?;
        Ok(self.source_counts.get(layer).map_or(&[][..], |c| &c[..]))
    }

    /// Activations per (source, neuron) of a block of rows, summed elsewhere (on the device):
    /// `counts[s * n_neurons + j]` of the `rows[s]` rows of source s fired neuron j, for each layer
    /// given. The rows are also counted by `update_layers` / `add_activity_counts` (the totals);
    /// this adds their split by source.
    pub fn add_source_counts(&mut self, layers: &[(usize, &[u64])], rows: &[u64]) -> Result<(), StatsError> {
        self.check_usable()?;
        let (n, f) = (self.sources.n_sources, self.config.n_neurons);
        if n == 0 {
            return Err(StatsError::Config(
                "this NeuronStats counts no sources: build it with n_sources (at least 2) to add per-source counts"
                    .into(),
            ));
        }
        self.config.check_layer_list(layers)?;
        if rows.len() != n {
            return Err(StatsError::Shape(format!("{} source row counts for {n} sources", rows.len())));
        }
        for &(layer, counts) in layers {
            if counts.len() != n * f {
                return Err(StatsError::Shape(format!(
                    "{} per-source counts for layer {layer}: {n} sources x {f} neurons expected",
                    counts.len()
                )));
            }
            if let Some(i) = (0..n * f).find(|&i| counts[i] > rows[i / f]) {
                return Err(StatsError::Value(format!(
                    "a count of {} for source {} exceeds its {} rows",
                    counts[i],
                    i / f,
                    rows[i / f]
                )));
            }
        }
        let added: u64 = rows.iter().sum();
        if layers.iter().any(|&(l, _)| l == 0) {
            for (a, b) in self.sources.rows.iter_mut().zip(rows) {
                *a += b;
            }
        }
        for &(layer, counts) in layers {
            self.sources.layer_rows[layer] += added;
            merge_counts(&mut self.source_counts[layer], counts);
        }
        Ok(())
    }

    /// Every row of every layer was split by source (checked before finalizing).
    pub(super) fn check_sources_complete(&self) -> Result<(), StatsError> {
        for (l, (&r, &all)) in self.sources.layer_rows.iter().zip(&self.layer_rows).enumerate() {
            if r != all {
                return Err(StatsError::Value(format!(
                    "layer {l} has {all} rows but {r} of them were split by source: give add_source_counts \
                     every row"
                )));
            }
        }
        Ok(())
    }
}
