//! Counts reduced elsewhere (on the device: `counting="device"`) merged into the same accumulators
//! that `update` fills from bitmasks: per block of detail rows and layer, each neuron's activation
//! count and its exact (k-gram, count) pairs for k = 1, 2, 3; position counts as a dense
//! (position, neuron) matrix, added when the device hands them over.
//!
//! Why the certified bounds still hold. A summary's invariant (summary.rs) is: for every key,
//! stored <= true <= stored + slack, and an absent key has true <= slack. Adding a key with weight
//! w raises its stored and its true count by w: the invariant holds. A prune subtracts a threshold t
//! from every stored count (dropping those that reach 0, each losing at most t) and adds t to the
//! slack: stored' <= stored <= true and true <= stored + slack <= stored' + t + slack = stored' +
//! slack'. So any sequence of weighted adds and prunes keeps the invariant, whatever the grouping
//! of the activations into weights: a block's (key, count) pairs give the same guarantee as one add
//! per activation. And the slack stays as small: t is the (keep + 1)-th largest stored count, so a
//! prune takes at least (keep + 1) t off the stored total, and slack <= total / (keep + 1) as with
//! unit adds. Exactness is the same too: a summary prunes only once it holds `capacity` distinct
//! keys, and without prunes it holds exactly the distinct keys seen, however they are weighted, so
//! a neuron with fewer distinct k-grams than the capacity is counted exactly by either path.

use super::update::{count_data, Rows};
use super::{NeuronStats, ID_BITS};
use crate::error::StatsError;
use crate::position_counts::{PositionChunk, CHUNK};
use crate::summary::{Summary, TableKey};
use rayon::prelude::*;

/// One kind of k-gram counts of a block: the triples (neuron, key, count), sorted by neuron.
#[derive(Clone, Copy, Debug)]
pub struct KeyCounts<'a, K> {
    pub neurons: &'a [u32],
    pub keys: &'a [K],
    pub counts: &'a [u32],
}

/// One layer's counts of a block of detail rows.
#[derive(Clone, Copy, Debug)]
pub struct CountedLayer<'a> {
    /// Activations of each neuron on the block's rows (BOS rows included).
    pub active: &'a [u64],
    /// Token ids of the counted (non-BOS) activations.
    pub tokens: KeyCounts<'a, u32>,
    /// Bigram and trigram keys (ids packed 21 bits apiece, oldest highest) of counted activations.
    pub bigrams: KeyCounts<'a, u64>,
    pub trigrams: KeyCounts<'a, u64>,
}

impl<K: TableKey> KeyCounts<'_, K> {
    /// The triples of neurons `lo..hi` (the neurons are sorted).
    fn of_neurons(&self, lo: usize, hi: usize) -> (usize, usize) {
        let at = |n: usize| self.neurons.partition_point(|&x| (x as usize) < n);
        (at(lo), at(hi))
    }

    fn check(
        &self,
        what: &str,
        n_neurons: usize,
        sums: &mut [u64],
        valid: impl Fn(K) -> bool,
    ) -> Result<(), StatsError> {
        let (n, k, c) = (self.neurons.len(), self.keys.len(), self.counts.len());
        if n != k || n != c {
            return Err(StatsError::Shape(format!(
                "{what} counts: {n} neurons, {k} keys and {c} counts must have the same length"
            )));
        }
        if let Some(w) = self.neurons.windows(2).find(|w| w[0] > w[1]) {
            return Err(StatsError::Value(format!(
                "{what} counts must be sorted by neuron, got {} before {}",
                w[0], w[1]
            )));
        }
        if let Some(&j) = self.neurons.last().filter(|&&j| j as usize >= n_neurons) {
            return Err(StatsError::Value(format!("neuron {j} out of range: layers have {n_neurons} neurons")));
        }
        if let Some(key) = self.keys.iter().find(|&&key| key == K::EMPTY || !valid(key)) {
            return Err(StatsError::Value(format!("{what} key {key:?} holds a token id outside the vocabulary")));
        }
        if self.counts.contains(&0) {
            return Err(StatsError::Value(format!("{what} counts must be positive (leave out what is 0)")));
        }
        sums.fill(0);
        for (&j, &c) in self.neurons.iter().zip(self.counts) {
            sums[j as usize] += c as u64;
        }
        Ok(())
    }
}

impl CountedLayer<'_> {
    /// Shapes, ranges, and no neuron with more counted k-grams of a kind than activations.
    fn check(&self, layer: usize, n_neurons: usize, n_rows: u64, vocab: u64) -> Result<(), StatsError> {
        if self.active.len() != n_neurons {
            return Err(StatsError::Shape(format!(
                "{} activation counts for layer {layer}, which has {n_neurons} neurons",
                self.active.len()
            )));
        }
        if let Some(&m) = self.active.iter().find(|&&m| m > n_rows) {
            return Err(StatsError::Value(format!("an activation count of {m} exceeds the {n_rows} rows counted")));
        }
        let ids_ok = |key: u64, k: u32| {
            key >> (k * ID_BITS) == 0 && (0..k).all(|i| (key >> (i * ID_BITS)) & ((1 << ID_BITS) - 1) < vocab)
        };
        let mut sums = vec![0u64; n_neurons];
        let over = |sums: &[u64], what: &str| match sums.iter().zip(self.active).position(|(s, a)| s > a) {
            None => Ok(()),
            Some(j) => Err(StatsError::Value(format!(
                "layer {layer} neuron {j}: {} {what} counted but {} activations",
                sums[j], self.active[j]
            ))),
        };
        self.tokens.check("token", n_neurons, &mut sums, |t| (t as u64) < vocab)?;
        over(&sums, "tokens")?;
        self.bigrams.check("bigram", n_neurons, &mut sums, |k| ids_ok(k, 2))?;
        over(&sums, "bigrams")?;
        self.trigrams.check("trigram", n_neurons, &mut sums, |k| ids_ok(k, 3))?;
        over(&sums, "trigrams")
    }
}

/// Weighted adds of one neuron's (key, count) pairs, in the order given.
fn add_counts<K: TableKey>(summary: &mut Summary<K>, keys: &[K], counts: &[u32], capacity: usize) {
    for (&k, &c) in keys.iter().zip(counts) {
        summary.add(k, c, capacity);
    }
}

impl NeuronStats {
    /// Add blocks of detail rows counted elsewhere: for each layer given, what `update_layers` would
    /// add for the same rows' bits (activation counts, token and n-gram summaries, the data's counts
    /// for layer 0), except the position counts, which come through `add_position_counts`. The
    /// summaries are the same ones, with the same guarantees (see the module comment). Everything is
    /// checked before anything is added.
    pub fn merge_counted_layers(
        &mut self,
        layers: &[(usize, CountedLayer)],
        tokens: &[u32],
        positions: &[u32],
    ) -> Result<(), StatsError> {
        self.check_usable()?;
        let cfg = &self.config;
        cfg.check_layer_list(layers)?;
        cfg.check_rows(tokens.len(), tokens, positions)?;
        let n_rows = tokens.len() as u64;
        for (layer, c) in layers {
            c.check(*layer, cfg.n_neurons, n_rows, cfg.vocab_size as u64)?;
        }
        if layers.iter().any(|&(l, _)| l == 0) {
            let rows = Rows::new(tokens, positions, cfg.bos_token_id);
            count_data(&mut self.data, &rows);
        }
        let Self { config: cfg, layers: accs_by_layer, layer_rows, .. } = self;
        let cap = cfg.ngram_capacity;
        let mut counted = vec![None; cfg.n_layers];
        for &(layer, c) in layers {
            counted[layer] = Some(c);
            layer_rows[layer] += n_rows;
        }
        let tasks: Vec<_> = accs_by_layer
            .iter_mut()
            .zip(counted)
            .filter_map(|(accs, c)| Some((accs, c?)))
            .flat_map(|(accs, c)| accs.chunks_mut(CHUNK).enumerate().map(move |(task, a)| (task * CHUNK, a, c)))
            .collect();
        tasks.into_par_iter().for_each(|(first, accs, c)| {
            let ranges = [
                c.tokens.of_neurons(first, first + accs.len()),
                c.bigrams.of_neurons(first, first + accs.len()),
                c.trigrams.of_neurons(first, first + accs.len()),
            ];
            let mut at = ranges.map(|(lo, _)| lo);
            for (j, slot) in accs.iter_mut().enumerate() {
                let (n, active) = ((first + j) as u32, c.active[first + j]);
                if active == 0 {
                    continue;
                }
                let acc = slot.get_or_insert_with(Default::default);
                acc.n_active += active;
                // The triples of neuron n of each kind: the run starting at `at`.
                let run = |kc_neurons: &[u32], from: usize, to: usize| {
                    from + kc_neurons[from..to].iter().take_while(|&&x| x == n).count()
                };
                let ends = [
                    run(c.tokens.neurons, at[0], ranges[0].1),
                    run(c.bigrams.neurons, at[1], ranges[1].1),
                    run(c.trigrams.neurons, at[2], ranges[2].1),
                ];
                add_counts(&mut acc.tokens, &c.tokens.keys[at[0]..ends[0]], &c.tokens.counts[at[0]..ends[0]], cap);
                add_counts(&mut acc.bigrams, &c.bigrams.keys[at[1]..ends[1]], &c.bigrams.counts[at[1]..ends[1]], cap);
                add_counts(
                    &mut acc.trigrams,
                    &c.trigrams.keys[at[2]..ends[2]],
                    &c.trigrams.counts[at[2]..ends[2]],
                    cap,
                );
                at = ends;
            }
        });
        Ok(())
    }

    /// Position counts of one layer counted elsewhere: `counts[p * n_neurons + j]` activations of
    /// neuron j at position p (position-major, `max_positions` rows), added to what the state holds.
    /// Their rows are counted by `merge_counted_layers`; until both are in, the state is not whole.
    pub fn add_position_counts(&mut self, layer: usize, counts: &[u32]) -> Result<(), StatsError> {
        self.check_usable()?;
        let (f, t) = (self.config.n_neurons, self.config.max_positions);
        self.config.check_layer_list(&[(layer, ())])?;
        if counts.len() != f * t {
            return Err(StatsError::Shape(format!(
                "{} position counts for layer {layer}: it needs max_positions x n_neurons = {t} x {f}",
                counts.len()
            )));
        }
        self.positions[layer].par_iter_mut().enumerate().for_each(|(c, slot)| {
            let (lo, hi) = (c * CHUNK, ((c + 1) * CHUNK).min(f));
            let row = |p: usize| &counts[p * f + lo..p * f + hi];
            if slot.is_none() && (0..t).all(|p| row(p).iter().all(|&x| x == 0)) {
                return; // allocated on a first activation, as `update` does
            }
            let chunk = slot.get_or_insert_with(|| Box::new(PositionChunk::new(t)));
            for p in 0..t {
                for (j, &x) in row(p).iter().enumerate() {
                    if x > 0 {
                        chunk.add_many(p, j, x);
                    }
                }
            }
        });
        Ok(())
    }
}
