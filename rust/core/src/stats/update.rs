//! Counting: blocks of rows' activation bitmasks into the accumulators, one parallel task per
//! chunk of neurons of every layer given.

use super::{DataStats, NeuronAcc, NeuronStats, StatsConfig, ID_BITS, NO_KEY, NO_TOKEN};
use crate::count_table::prefetch;
use crate::error::StatsError;
use crate::position_counts::{PositionChunk, CHUNK};
use crate::summary::{Summary, TableKey};
use rayon::prelude::*;

/// Neurons handled by one parallel task (one position chunk): 4 words of each row.
const TASK_NEURONS: usize = CHUNK;
/// How many activations ahead the hash-table slots are prefetched.
const PREFETCH: usize = 16;

/// Row-level facts shared by all neurons of one update.
pub(super) struct Rows<'a> {
    tokens: &'a [u32],
    positions: &'a [u32],
    counted: Vec<bool>,
    bigram: Vec<u64>,
    trigram: Vec<u64>,
    /// What an activation on the row adds to the token statistics: the token id, bigram and
    /// trigram keys, or NO_TOKEN / NO_KEY (BOS rows, n-grams reaching before the sequence start).
    pub(super) tok_add: Vec<u32>,
    pub(super) bigram_add: Vec<u64>,
    pub(super) trigram_add: Vec<u64>,
}

impl<'a> Rows<'a> {
    pub(super) fn new(tokens: &'a [u32], positions: &'a [u32], bos: Option<u32>) -> Self {
        let counted: Vec<bool> = tokens.iter().map(|&t| Some(t) != bos).collect();
        let (bigram, trigram) = ngram_keys(tokens, positions);
        let tok_add = tokens.iter().zip(&counted).map(|(&t, &c)| if c { t } else { NO_TOKEN }).collect();
        let bigram_add = bigram.iter().zip(&counted).map(|(&k, &c)| if c { k } else { NO_KEY }).collect();
        let trigram_add = trigram.iter().zip(&counted).map(|(&k, &c)| if c { k } else { NO_KEY }).collect();
        Rows { tokens, positions, counted, bigram, trigram, tok_add, bigram_add, trigram_add }
    }
}

thread_local! {
    /// Per-thread scratch of `update`: active rows of each neuron of a task, reused across calls.
    static ACTIVE: std::cell::RefCell<Vec<Vec<u32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The data's own counts for a block of detail rows (positions, token and n-gram occurrences).
pub(super) fn count_data(d: &mut DataStats, rows: &Rows) {
    d.rows += rows.tokens.len() as u64;
    d.detail_rows += rows.tokens.len() as u64;
    for i in 0..rows.tokens.len() {
        d.position_totals[rows.positions[i] as usize] += 1;
        if rows.counted[i] {
            d.token_occurrences[rows.tokens[i] as usize] += 1;
            if rows.bigram[i] != NO_KEY {
                *d.bigram_occurrences.entry(rows.bigram[i]).or_insert(0) += 1;
            }
            if rows.trigram[i] != NO_KEY {
                *d.trigram_occurrences.entry(rows.trigram[i]).or_insert(0) += 1;
            }
        }
    }
}

fn ngram_keys(tokens: &[u32], positions: &[u32]) -> (Vec<u64>, Vec<u64>) {
    let n = tokens.len();
    let mut bi = vec![NO_KEY; n];
    let mut tri = vec![NO_KEY; n];
    for i in 1..n {
        // Only n-grams inside one sequence: the previous row must be the previous position.
        if positions[i] >= 1 && positions[i - 1] + 1 == positions[i] {
            bi[i] = ((tokens[i - 1] as u64) << ID_BITS) | tokens[i] as u64;
            if bi[i - 1] != NO_KEY {
                tri[i] = ((tokens[i - 2] as u64) << (2 * ID_BITS)) | bi[i];
            }
        }
    }
    (bi, tri)
}

/// The words of one parallel task in every row: `w0..w1` of a row's `n_words`.
#[derive(Clone, Copy)]
struct TaskWords {
    w0: usize,
    w1: usize,
    n_words: usize,
    last_mask: u64,
}

impl TaskWords {
    fn new(task: usize, cfg: &StatsConfig, n_words: usize) -> Self {
        let w0 = task * TASK_NEURONS / 64;
        TaskWords { w0, w1: (w0 + TASK_NEURONS / 64).min(n_words), n_words, last_mask: cfg.last_word_mask() }
    }

    /// The task's words of row `r` of `bits`, padding bits past the last neuron cleared.
    #[inline(always)]
    fn words<'b>(&self, bits: &'b [u64], r: usize) -> impl Iterator<Item = (usize, u64)> + 'b {
        let (last, mask) = (self.n_words - 1 - self.w0, self.last_mask);
        bits[r * self.n_words + self.w0..r * self.n_words + self.w1]
            .iter()
            .enumerate()
            .map(move |(dw, &w)| (dw, if dw == last { w & mask } else { w }))
    }

    /// The bit scan shared by every update: `on(j)` for each neuron j (counted from the task's
    /// first) that fired on row `r` of `bits`.
    #[inline(always)]
    fn for_each_active(&self, bits: &[u64], r: usize, mut on: impl FnMut(usize)) {
        for (dw, mut word) in self.words(bits, r) {
            while word != 0 {
                on(dw * 64 + word.trailing_zeros() as usize);
                word &= word - 1;
            }
        }
    }

    fn any_active(&self, bits: &[u64], r: usize) -> bool {
        self.words(bits, r).any(|(_, w)| w != 0)
    }
}

impl NeuronStats {
    /// Add one layer's activations for a block of rows. Rows of one sequence must be
    /// contiguous and in order (n-grams are read off neighbouring rows).
    pub fn update(
        &mut self,
        layer: usize,
        bits: &[u64],
        n_words: usize,
        tokens: &[u32],
        positions: &[u32],
    ) -> Result<(), StatsError> {
        self.update_layers(&[(layer, &[bits])], n_words, tokens, positions)
    }

    /// `update` for several layers' bitmasks of the same rows, in one parallel pass: a task per
    /// 256 neurons of every layer given (one small layer alone has fewer blocks than a GPU host has
    /// cores), and the rows' n-gram keys built once. Each layer's bits come in chunks of whole rows,
    /// in row order (the batches of a block, counted where they were copied to: no joined copy).
    pub fn update_layers(
        &mut self,
        layers: &[(usize, &[&[u64]])],
        n_words: usize,
        tokens: &[u32],
        positions: &[u32],
    ) -> Result<(), StatsError> {
        self.check_usable()?;
        let bit_rows = self.config.check_layers(layers, n_words)?;
        self.config.check_rows(bit_rows.unwrap_or(tokens.len()), tokens, positions)?;
        let rows = Rows::new(tokens, positions, self.config.bos_token_id);
        let n_rows = tokens.len();
        // Each layer's bits (None: not in this update).
        let mut bits_of = vec![None; self.config.n_layers];
        for &(layer, bits) in layers {
            bits_of[layer] = Some(bits);
            self.layer_rows[layer] += n_rows as u64;
        }
        let Self { config: cfg, layers: accs_by_layer, positions: pos_by_layer, data, .. } = self;
        let tasks: Vec<_> = accs_by_layer
            .iter_mut()
            .zip(pos_by_layer.iter_mut())
            .zip(bits_of)
            .filter_map(|((accs, pos), bits)| Some((accs, pos, bits?)))
            .flat_map(|(accs, pos, bits)| {
                accs.chunks_mut(TASK_NEURONS)
                    .zip(pos.iter_mut())
                    .enumerate()
                    .map(move |(task, (a, p))| (task, a, p, bits))
            })
            .collect();
        let cfg = &*cfg;
        let count_layer0 = layers.iter().any(|&(l, _)| l == 0);
        // The data's own counts (layer 0 only) run beside the neurons' tasks.
        rayon::join(
            || {
                if count_layer0 {
                    count_data(data, &rows);
                }
            },
            || {
                tasks.into_par_iter().for_each(|(task, accs, pos, bits)| {
                    let words = TaskWords::new(task, cfg, n_words);
                    ACTIVE.with(|scratch| {
                        let mut active = scratch.borrow_mut();
                        if active.len() < accs.len() {
                            active.resize_with(accs.len(), Vec::new);
                        }
                        let active = &mut active[..accs.len()];
                        for a in active.iter_mut() {
                            a.clear();
                        }
                        // The chunk's position counts are allocated on its first activation.
                        if pos.is_none()
                            && bits.iter().any(|part| (0..part.len() / n_words).any(|r| words.any_active(part, r)))
                        {
                            *pos = Some(Box::new(PositionChunk::new(cfg.max_positions)));
                        }
                        let Some(chunk) = pos.as_deref_mut() else { return };
                        // Transpose this block of bits into per-neuron lists of active rows, counting
                        // positions on the way (a row's counts are one contiguous stretch of the chunk).
                        let mut i = 0; // row of the block
                        for part in bits {
                            for r in 0..part.len() / n_words {
                                // Rows are n_words apart: prefetch this task's words a few rows ahead.
                                if let Some(w) = part.get((r + 8) * n_words + words.w0) {
                                    prefetch(w as *const u64 as *const u8);
                                }
                                let p = positions[i] as usize;
                                words.for_each_active(part, r, |j| {
                                    active[j].push(i as u32);
                                    chunk.add(p, j);
                                });
                                i += 1;
                            }
                        }
                        for (acc, rows_on) in accs.iter_mut().zip(active.iter()) {
                            if !rows_on.is_empty() {
                                add_activations(acc.get_or_insert_with(Default::default), rows_on, &rows, cfg);
                            }
                        }
                    });
                });
            },
        );
        Ok(())
    }

    /// Add one layer's activations for a block of rows to the activation counts only (frequency,
    /// dead neurons): no token, n-gram or position statistics. The paper's protocol counts dead
    /// neurons over more tokens (20 M) than the rest (5 M); these rows cost a popcount each.
    pub fn update_activity(&mut self, layer: usize, bits: &[u64], n_words: usize) -> Result<(), StatsError> {
        self.check_usable()?;
        let Some(n_rows) = self.config.check_layers(&[(layer, &[bits])], n_words)? else { return Ok(()) };
        let cfg = &self.config;
        let mut counts = vec![0u64; cfg.n_neurons];
        counts.par_chunks_mut(TASK_NEURONS).enumerate().for_each(|(task, counts)| {
            let words = TaskWords::new(task, cfg, n_words);
            for r in 0..n_rows {
                words.for_each_active(bits, r, |j| counts[j] += 1);
            }
        });
        self.add_activity_counts(&[(layer, &counts)], n_rows as u64)
    }

    /// Activation counts of rows that count towards frequency and dead neurons only, already summed
    /// (on the GPU, where summing beats copying the bits): `counts[j]` of the `n_rows` rows fired
    /// neuron j. The same as `update_activity` with those rows' bits, for each layer given.
    pub fn add_activity_counts(&mut self, layers: &[(usize, &[u64])], n_rows: u64) -> Result<(), StatsError> {
        self.check_usable()?;
        self.config.check_activity_counts(layers, n_rows)?;
        if layers.iter().any(|&(l, _)| l == 0) {
            self.data.rows += n_rows;
        }
        for &(layer, counts) in layers {
            self.layer_rows[layer] += n_rows;
            for (acc, &m) in self.layers[layer].iter_mut().zip(counts) {
                if m > 0 {
                    acc.get_or_insert_with(Default::default).n_active += m;
                }
            }
        }
        Ok(())
    }
}

/// Add `keys[i]` for every active row i to a summary (NO_KEY rows skipped), prefetching the slots
/// of later activations.
#[inline(always)]
fn add_keys<K: TableKey>(summary: &mut Summary<K>, active_rows: &[u32], keys: &[K], capacity: usize) {
    for &i in &active_rows[..active_rows.len().min(PREFETCH)] {
        let k = keys[i as usize];
        if k != K::EMPTY {
            summary.prefetch(k);
        }
    }
    for (n, &i) in active_rows.iter().enumerate() {
        if let Some(&j) = active_rows.get(n + PREFETCH) {
            let k = keys[j as usize];
            if k != K::EMPTY {
                summary.prefetch(k);
            }
        }
        let key = keys[i as usize];
        if key != K::EMPTY {
            summary.add(key, 1, capacity);
        }
    }
}

/// Count one neuron's activations on `active_rows` (ascending). Each summary sees its adds in row
/// order, exactly as one add per activation would; the token, bigram and trigram summaries are
/// filled in separate passes.
fn add_activations(acc: &mut NeuronAcc, active_rows: &[u32], rows: &Rows, cfg: &StatsConfig) {
    acc.n_active += active_rows.len() as u64;
    add_keys(&mut acc.tokens, active_rows, &rows.tok_add, cfg.ngram_capacity);
    add_keys(&mut acc.bigrams, active_rows, &rows.bigram_add, cfg.ngram_capacity);
    add_keys(&mut acc.trigrams, active_rows, &rows.trigram_add, cfg.ngram_capacity);
}
