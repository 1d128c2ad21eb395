//! The settings of a `NeuronStats` and the checks every input passes before anything is counted
//! (a refused call changes nothing).

use super::MAX_VOCAB;
use crate::error::StatsError;
use crate::position_counts::CHUNK;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsConfig {
    pub n_layers: usize,
    pub n_neurons: usize,
    pub vocab_size: usize,
    pub max_positions: usize,
    /// Rows holding this token (BOS, also the document separator) are left out of token statistics.
    pub bos_token_id: Option<u32>,
    /// Most tokens / bigrams / trigrams a neuron's summary holds: exact while it has seen fewer
    /// distinct ones, lossy (certified) from then on.
    pub ngram_capacity: usize,
}

impl StatsConfig {
    pub fn n_words(&self) -> usize {
        self.n_neurons.div_ceil(64)
    }

    /// The bits of the last word of a row that are neurons (the rest is padding, ignored).
    pub(super) fn last_word_mask(&self) -> u64 {
        match self.n_neurons % 64 {
            0 => u64::MAX,
            r => (1u64 << r) - 1,
        }
    }

    /// Settings a `NeuronStats` can be built with.
    pub fn check(&self) -> Result<(), StatsError> {
        if self.n_layers == 0 || self.n_neurons == 0 || self.max_positions == 0 || self.vocab_size == 0 {
            return Err(StatsError::Config(format!(
                "NeuronStats needs positive n_layers, n_neurons, vocab_size and max_positions, got {self:?}"
            )));
        }
        if self.ngram_capacity == 0 {
            return Err(StatsError::Config("ngram_capacity must be at least 1 (the default is 384)".into()));
        }
        // Neuron ids are u32 in the tables; a chunk's position counts are indexed by u32.
        if self.n_neurons > u32::MAX as usize || self.max_positions >= u32::MAX as usize / CHUNK {
            return Err(StatsError::Config(format!(
                "n_neurons {} or max_positions {} is beyond what NeuronStats supports ({} and {})",
                self.n_neurons,
                self.max_positions,
                u32::MAX,
                u32::MAX as usize / CHUNK - 1
            )));
        }
        if self.vocab_size > MAX_VOCAB {
            return Err(StatsError::Config(format!(
                "vocab_size {} exceeds the supported {MAX_VOCAB} (n-gram keys pack 21 bits per token)",
                self.vocab_size
            )));
        }
        if self.n_layers > u16::MAX as usize {
            return Err(StatsError::Config(format!("n_layers must be at most {}, got {}", u16::MAX, self.n_layers)));
        }
        Ok(())
    }

    /// Every layer of an update is known and named once.
    pub(super) fn check_layer_list<T>(&self, layers: &[(usize, T)]) -> Result<(), StatsError> {
        for (k, &(layer, _)) in layers.iter().enumerate() {
            if layer >= self.n_layers {
                return Err(StatsError::Value(format!(
                    "layer {layer} out of range: this NeuronStats has {} layers",
                    self.n_layers
                )));
            }
            if layers[..k].iter().any(|&(l, _)| l == layer) {
                return Err(StatsError::Value(format!("layer {layer} is given twice in one update")));
            }
        }
        Ok(())
    }

    fn check_words(&self, n_words: usize) -> Result<(), StatsError> {
        if n_words != self.n_words() {
            return Err(StatsError::Shape(format!(
                "bitmask has {n_words} words per row but {} neurons need {} (bit j of word w = neuron 64w+j)",
                self.n_neurons,
                self.n_words()
            )));
        }
        Ok(())
    }

    /// Every (layer, chunks) pair names a known layer, once, with chunks of whole rows of `n_words`
    /// words, and every layer has the same rows in all. Returns that number of rows (None: no layers).
    pub(super) fn check_layers(
        &self,
        layers: &[(usize, &[&[u64]])],
        n_words: usize,
    ) -> Result<Option<usize>, StatsError> {
        self.check_layer_list(layers)?;
        if !layers.is_empty() {
            self.check_words(n_words)?;
        }
        let rows_of = |chunks: &[&[u64]]| chunks.iter().map(|c| c.len() / n_words).sum::<usize>();
        let first = layers.first().map(|&(l, c)| (l, rows_of(c)));
        for &(layer, chunks) in layers {
            if let Some(c) = chunks.iter().find(|c| !c.len().is_multiple_of(n_words)) {
                return Err(StatsError::Shape(format!(
                    "bitmask of {} words is not whole rows of {n_words} words",
                    c.len()
                )));
            }
            if let Some((l0, want)) = first.filter(|&(_, want)| rows_of(chunks) != want) {
                return Err(StatsError::Shape(format!(
                    "layer {layer} has {} bitmask rows, layer {l0} has {want}: one update is one block of rows",
                    rows_of(chunks)
                )));
            }
        }
        Ok(first.map(|(_, rows)| rows))
    }

    pub(super) fn check_rows(&self, bit_rows: usize, tokens: &[u32], positions: &[u32]) -> Result<(), StatsError> {
        let n = tokens.len();
        if positions.len() != n || bit_rows != n {
            return Err(StatsError::Shape(format!(
                "bitmask rows ({bit_rows}), token_ids ({n}) and positions ({}) must have the same length",
                positions.len()
            )));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(StatsError::Value(format!(
                "token id {t} is outside the vocabulary of size {}",
                self.vocab_size
            )));
        }
        if let Some(&p) = positions.iter().find(|&&p| p as usize >= self.max_positions) {
            return Err(StatsError::Value(format!(
                "position {p} is beyond max_positions {}: sequences must be at most that long",
                self.max_positions
            )));
        }
        Ok(())
    }

    /// Per-layer activation counts summed elsewhere: one per neuron, none above the rows counted.
    pub(super) fn check_activity_counts(&self, layers: &[(usize, &[u64])], n_rows: u64) -> Result<(), StatsError> {
        self.check_layer_list(layers)?;
        for &(layer, counts) in layers {
            if counts.len() != self.n_neurons {
                return Err(StatsError::Shape(format!(
                    "{} activation counts for layer {layer}, which has {} neurons",
                    counts.len(),
                    self.n_neurons
                )));
            }
            if let Some(&m) = counts.iter().find(|&&m| m > n_rows) {
                return Err(StatsError::Value(format!("an activation count of {m} exceeds the {n_rows} rows counted")));
            }
        }
        Ok(())
    }

    /// A layer or neuron index of a query.
    pub(super) fn check_neuron(&self, layer: usize, neuron: usize) -> Result<(), StatsError> {
        if layer >= self.n_layers {
            return Err(StatsError::Value(format!(
                "layer {layer} out of range: this NeuronStats has {} layers",
                self.n_layers
            )));
        }
        if neuron >= self.n_neurons {
            return Err(StatsError::Value(format!(
                "neuron {neuron} out of range: layers have {} neurons",
                self.n_neurons
            )));
        }
        Ok(())
    }
}
