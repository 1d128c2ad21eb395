//! `NeuronStats`: the streaming accumulators and their finalisation into table columns.

use crate::coverage::{coverage_bounds, detect, sort_by_count, CoverageBounds, DetectorParams};
use crate::error::StatsError;
use crate::positional::{self, PositionalParams};
use crate::positions::{PositionChunk, CHUNK};
use crate::summary::{CountTable, NgramSummary, Summary, TableKey, TokenSummary};
use crate::summary::prefetch;
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// Token ids are packed 21 bits apiece into n-gram keys.
pub const MAX_VOCAB: usize = 1 << 21;
const ID_BITS: u32 = 21;
const ID_MASK: u64 = (1 << ID_BITS) - 1;
const NO_KEY: u64 = <u64 as TableKey>::EMPTY;
/// Neurons handled by one parallel task (one position chunk): 4 words of each row.
const TASK_NEURONS: usize = CHUNK;
const MAGIC: &[u8; 8] = b"OPTNST03";

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
    fn last_word_mask(&self) -> u64 {
        match self.n_neurons % 64 {
            0 => u64::MAX,
            r => (1u64 << r) - 1,
        }
    }
}

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

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NeuronStats {
    config: StatsConfig,
    layers: Vec<Vec<Option<Box<NeuronAcc>>>>,
    /// Per layer, per chunk of CHUNK neurons: counts by position (allocated on a first activation).
    positions: Vec<Vec<Option<Box<PositionChunk>>>>,
    layer_rows: Vec<u64>,
    data: DataStats,
}

/// Row-level facts shared by all neurons of one update.
struct Rows<'a> {
    tokens: &'a [u32],
    positions: &'a [u32],
    counted: Vec<bool>,
    bigram: Vec<u64>,
    trigram: Vec<u64>,
    /// What an activation on the row adds to the token statistics: the token id, bigram and
    /// trigram keys, or NO_TOKEN / NO_KEY (BOS rows, n-grams reaching before the sequence start).
    tok_add: Vec<u32>,
    bigram_add: Vec<u64>,
    trigram_add: Vec<u64>,
}

/// The free-slot keys of the summaries' tables, never stored.
const NO_TOKEN: u32 = <u32 as TableKey>::EMPTY;

thread_local! {
    /// Per-thread scratch of `update`: active rows of each neuron of a task, reused across calls.
    static ACTIVE: std::cell::RefCell<Vec<Vec<u32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The data's own counts for a block of detail rows (positions, token and n-gram occurrences).
fn count_data(d: &mut DataStats, rows: &Rows) {
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

type Header = (StatsConfig, Vec<u64>, DataStats);
type Layer = (Vec<Option<Box<NeuronAcc>>>, Vec<Option<Box<PositionChunk>>>);

fn read_header<R: std::io::Read>(r: &mut R) -> Result<Header, StatsError> {
    let mut magic = [0u8; 8];
    if r.read_exact(&mut magic).is_err() || &magic != MAGIC {
        return Err(StatsError::Decode("not a NeuronStats state (bad header); was it written by this version?".into()));
    }
    let h: Header = bincode::deserialize_from(&mut *r).map_err(|e| StatsError::Decode(format!("corrupt NeuronStats state: {e}")))?;
    let c = &h.0;
    if h.1.len() != c.n_layers || h.2.position_totals.len() != c.max_positions || h.2.token_occurrences.len() != c.vocab_size {
        return Err(StatsError::Decode("corrupt NeuronStats state: sizes disagree with its settings".into()));
    }
    Ok(h)
}

fn read_layer<R: std::io::Read>(r: &mut R, c: &StatsConfig) -> Result<Layer, StatsError> {
    let layer: Layer = bincode::deserialize_from(&mut *r).map_err(|e| StatsError::Decode(format!("corrupt NeuronStats state: {e}")))?;
    if layer.0.len() != c.n_neurons || layer.1.len() != c.n_neurons.div_ceil(CHUNK) {
        return Err(StatsError::Decode("corrupt NeuronStats state: a layer's size disagrees with its settings".into()));
    }
    Ok(layer)
}

/// Add `theirs` into `mine` slot by slot, in parallel; a slot only they have is copied.
fn merge_slots<T: Clone + Send + Sync>(mine: &mut [Option<Box<T>>], theirs: &[Option<Box<T>>], add: impl Fn(&mut T, &T) + Sync) {
    mine.par_iter_mut().zip(theirs).for_each(|(a, b)| match (a.as_mut(), b) {
        (_, None) => {}
        (None, Some(b)) => *a = Some(b.clone()),
        (Some(a), Some(b)) => add(a, b),
    });
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

/// Token ids of an n-gram key, oldest first.
pub fn unpack_key(key: u64, k: usize) -> Vec<u32> {
    (0..k).rev().map(|i| ((key >> (i as u32 * ID_BITS)) & ID_MASK) as u32).collect()
}

/// Columns of the `neurons` table, one entry per (layer, neuron), layer-major.
/// List columns are flattened with offsets (len = rows + 1).
#[derive(Clone, Debug, Default)]
pub struct Finalized {
    pub layer: Vec<u16>,
    pub neuron: Vec<u32>,
    pub n_active: Vec<u64>,
    pub frequency: Vec<f64>,
    pub dead: Vec<bool>,
    pub cover_1: Vec<u32>,
    pub cover_1_max: Vec<u32>,
    pub cover_2: Vec<u32>,
    pub cover_2_max: Vec<u32>,
    pub cover_3: Vec<u32>,
    pub cover_3_max: Vec<u32>,
    pub token_detector: Vec<bool>,
    pub detected_tokens: Vec<u32>,
    pub detected_tokens_offsets: Vec<u64>,
    pub trigram_detector: Vec<bool>,
    /// Flattened triples (3 ids each); offsets count triples.
    pub detected_trigrams: Vec<u32>,
    pub detected_trigrams_offsets: Vec<u64>,
    pub mi_position: Vec<f64>,
    pub positional: Vec<bool>,
    /// "" when not positional.
    pub positional_kind: Vec<&'static str>,
    pub positional_strong: Vec<bool>,
    pub interval_start: Vec<u32>,
    pub interval_end: Vec<u32>,
    pub intervals_offsets: Vec<u64>,
}

struct NeuronResult {
    n_active: u64,
    cover: [CoverageBounds; 3],
    tokens: Option<Vec<u32>>,
    trigrams: Option<Vec<u64>>,
    pos: positional::PositionalResult,
}

impl NeuronStats {
    pub fn new(config: StatsConfig) -> Result<Self, StatsError> {
        if config.n_layers == 0 || config.n_neurons == 0 || config.max_positions == 0 || config.vocab_size == 0 {
            return Err(StatsError::Value(format!(
                "NeuronStats needs positive n_layers, n_neurons, vocab_size and max_positions, got {config:?}"
            )));
        }
        if config.vocab_size > MAX_VOCAB {
            return Err(StatsError::Value(format!(
                "vocab_size {} exceeds the supported {MAX_VOCAB} (n-gram keys pack 21 bits per token)",
                config.vocab_size
            )));
        }
        if config.n_layers > u16::MAX as usize {
            return Err(StatsError::Value("n_layers must fit in u16".into()));
        }
        let layers = (0..config.n_layers).map(|_| vec![None; config.n_neurons]).collect();
        let chunks = config.n_neurons.div_ceil(CHUNK);
        let positions = (0..config.n_layers).map(|_| vec![None; chunks]).collect();
        let data = DataStats {
            position_totals: vec![0; config.max_positions],
            token_occurrences: vec![0; config.vocab_size],
            ..Default::default()
        };
        Ok(NeuronStats { layer_rows: vec![0; config.n_layers], config, layers, positions, data })
    }

    pub fn config(&self) -> &StatsConfig {
        &self.config
    }

    /// Every layer of an update is known and named once.
    fn check_layer_list<T>(&self, layers: &[(usize, T)]) -> Result<(), StatsError> {
        for (k, &(layer, _)) in layers.iter().enumerate() {
            if layer >= self.config.n_layers {
                return Err(StatsError::Value(format!("layer {layer} out of range: this NeuronStats has {} layers", self.config.n_layers)));
            }
            if layers[..k].iter().any(|&(l, _)| l == layer) {
                return Err(StatsError::Value(format!("layer {layer} is given twice in one update")));
            }
        }
        Ok(())
    }

    fn check_words(&self, n_words: usize) -> Result<(), StatsError> {
        let c = &self.config;
        if n_words != c.n_words() {
            return Err(StatsError::Shape(format!(
                "bitmask has {n_words} words per row but {} neurons need {} (bit j of word w = neuron 64w+j)",
                c.n_neurons,
                c.n_words()
            )));
        }
        Ok(())
    }

    /// Every (layer, chunks) pair names a known layer, once, with chunks of whole rows of `n_words`
    /// words, and every layer has the same rows in all. Returns that number of rows (None: no layers).
    fn check_layers(&self, layers: &[(usize, &[&[u64]])], n_words: usize) -> Result<Option<usize>, StatsError> {
        self.check_layer_list(layers)?;
        if !layers.is_empty() {
            self.check_words(n_words)?;
        }
        let rows_of = |chunks: &[&[u64]]| chunks.iter().map(|c| c.len() / n_words).sum::<usize>();
        let first = layers.first().map(|&(l, c)| (l, rows_of(c)));
        for &(layer, chunks) in layers {
            if let Some(c) = chunks.iter().find(|c| !c.len().is_multiple_of(n_words)) {
                return Err(StatsError::Shape(format!("bitmask of {} words is not whole rows of {n_words} words", c.len())));
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

    fn check_rows(&self, bit_rows: usize, tokens: &[u32], positions: &[u32]) -> Result<(), StatsError> {
        let c = &self.config;
        let n = tokens.len();
        if positions.len() != n || bit_rows != n {
            return Err(StatsError::Shape(format!(
                "bitmask rows ({bit_rows}), token_ids ({n}) and positions ({}) must have the same length",
                positions.len()
            )));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(StatsError::Value(format!("token id {t} is outside the vocabulary of size {}", c.vocab_size)));
        }
        if let Some(&p) = positions.iter().find(|&&p| p as usize >= c.max_positions) {
            return Err(StatsError::Value(format!(
                "position {p} is beyond max_positions {}: sequences must be at most that long",
                c.max_positions
            )));
        }
        Ok(())
    }

    /// Add one layer's activations for a block of rows. Rows of one sequence must be
    /// contiguous and in order (n-grams are read off neighbouring rows).
    pub fn update(&mut self, layer: usize, bits: &[u64], n_words: usize, tokens: &[u32], positions: &[u32]) -> Result<(), StatsError> {
        self.update_layers(&[(layer, &[bits])], n_words, tokens, positions)
    }

    /// `update` for several layers' bitmasks of the same rows, in one parallel pass: a task per
    /// 256 neurons of every layer given (one small layer alone has fewer blocks than a GPU host has
    /// cores), and the rows' n-gram keys built once. Each layer's bits come in chunks of whole rows,
    /// in row order (the batches of a block, counted where they were copied to: no joined copy).
    pub fn update_layers(&mut self, layers: &[(usize, &[&[u64]])], n_words: usize, tokens: &[u32], positions: &[u32]) -> Result<(), StatsError> {
        let bit_rows = self.check_layers(layers, n_words)?;
        self.check_rows(bit_rows.unwrap_or(tokens.len()), tokens, positions)?;
        let bos = self.config.bos_token_id;
        let counted: Vec<bool> = tokens.iter().map(|&t| Some(t) != bos).collect();
        let (bigram, trigram) = ngram_keys(tokens, positions);
        let tok_add = tokens.iter().zip(&counted).map(|(&t, &c)| if c { t } else { NO_TOKEN }).collect();
        let bigram_add = bigram.iter().zip(&counted).map(|(&k, &c)| if c { k } else { NO_KEY }).collect();
        let trigram_add = trigram.iter().zip(&counted).map(|(&k, &c)| if c { k } else { NO_KEY }).collect();
        let rows = Rows { tokens, positions, counted, bigram, trigram, tok_add, bigram_add, trigram_add };
        let n_rows = tokens.len();
        // Each layer's bits (None: not in this update).
        let mut bits_of = vec![None; self.config.n_layers];
        for &(layer, bits) in layers {
            bits_of[layer] = Some(bits);
            self.layer_rows[layer] += n_rows as u64;
        }
        let Self { config: cfg, layers: accs_by_layer, positions: pos_by_layer, data, .. } = self;
        let last_mask = cfg.last_word_mask();
        let tasks: Vec<_> = accs_by_layer
            .iter_mut()
            .zip(pos_by_layer.iter_mut())
            .zip(bits_of)
            .filter_map(|((accs, pos), bits)| Some((accs, pos, bits?)))
            .flat_map(|(accs, pos, bits)| {
                accs.chunks_mut(TASK_NEURONS).zip(pos.iter_mut()).enumerate().map(move |(task, (a, p))| (task, a, p, bits))
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
                    let w0 = task * TASK_NEURONS / 64;
                    let w1 = (w0 + TASK_NEURONS / 64).min(n_words);
                    ACTIVE.with(|scratch| {
                        let mut active = scratch.borrow_mut();
                        if active.len() < accs.len() {
                            active.resize_with(accs.len(), Vec::new);
                        }
                        let active = &mut active[..accs.len()];
                        for a in active.iter_mut() {
                            a.clear();
                        }
                        // Transpose this block of bits into per-neuron lists of active rows, counting
                        // positions on the way (a row's counts are one contiguous stretch of the chunk).
                        let mut i = 0; // row of the block
                        for part in bits {
                            for r in 0..part.len() / n_words {
                                // Rows are n_words apart: prefetch this task's words a few rows ahead.
                                if let Some(w) = part.get((r + 8) * n_words + w0) {
                                    prefetch(w as *const u64 as *const u8);
                                }
                                let row = &part[r * n_words + w0..r * n_words + w1];
                                let p = positions[i] as usize;
                                for (dw, &word) in row.iter().enumerate() {
                                    let mut word = if w0 + dw == n_words - 1 { word & last_mask } else { word };
                                    if word == 0 {
                                        continue;
                                    }
                                    let chunk = pos.get_or_insert_with(|| Box::new(PositionChunk::new(cfg.max_positions)));
                                    while word != 0 {
                                        let j = dw * 64 + word.trailing_zeros() as usize;
                                        active[j].push(i as u32);
                                        chunk.add(p, j);
                                        word &= word - 1;
                                    }
                                }
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
        let Some(n_rows) = self.check_layers(&[(layer, &[bits])], n_words)? else { return Ok(()) };
        let last_mask = self.config.last_word_mask();
        let mut counts = vec![0u64; self.config.n_neurons];
        counts.par_chunks_mut(TASK_NEURONS).enumerate().for_each(|(task, counts)| {
            let w0 = task * TASK_NEURONS / 64;
            let w1 = (w0 + TASK_NEURONS / 64).min(n_words);
            for i in 0..n_rows {
                for (dw, &word) in bits[i * n_words + w0..i * n_words + w1].iter().enumerate() {
                    let mut word = if w0 + dw == n_words - 1 { word & last_mask } else { word };
                    while word != 0 {
                        counts[dw * 64 + word.trailing_zeros() as usize] += 1;
                        word &= word - 1;
                    }
                }
            }
        });
        self.add_activity_counts(&[(layer, &counts)], n_rows as u64)
    }

    /// Activation counts of rows that count towards frequency and dead neurons only, already summed
    /// (on the GPU, where summing beats copying the bits): `counts[j]` of the `n_rows` rows fired
    /// neuron j. The same as `update_activity` with those rows' bits, for each layer given.
    pub fn add_activity_counts(&mut self, layers: &[(usize, &[u64])], n_rows: u64) -> Result<(), StatsError> {
        self.check_layer_list(layers)?;
        let c = &self.config;
        for &(layer, counts) in layers {
            if counts.len() != c.n_neurons {
                return Err(StatsError::Shape(format!("{} activation counts for layer {layer}, which has {} neurons", counts.len(), c.n_neurons)));
            }
            if let Some(&m) = counts.iter().find(|&&m| m > n_rows) {
                return Err(StatsError::Value(format!("an activation count of {m} exceeds the {n_rows} rows counted")));
            }
        }
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

    /// Add another accumulator's counts (a shard of the same model and data layout).
    pub fn merge(&mut self, other: &NeuronStats) -> Result<(), StatsError> {
        self.merge_totals(&other.config, &other.layer_rows, &other.data)?;
        for (l, (accs, pos)) in other.layers.iter().zip(&other.positions).enumerate() {
            self.merge_layer(l, accs, pos);
        }
        Ok(())
    }

    /// `merge` of a state streamed by `write_to` (a saved file, say), holding one of its layers in
    /// memory at a time: rank 0 of a data-parallel run of a big model never holds two whole states.
    /// Settings are checked before anything is added; a stream that breaks off midway leaves this
    /// state partly merged (an error the caller cannot recover from, so it must stop).
    pub fn merge_from<R: std::io::Read>(&mut self, mut r: R) -> Result<(), StatsError> {
        let (config, layer_rows, data) = read_header(&mut r)?;
        self.merge_totals(&config, &layer_rows, &data)?;
        drop(data);
        for l in 0..config.n_layers {
            let (accs, pos) = read_layer(&mut r, &config)?;
            self.merge_layer(l, &accs, &pos);
        }
        Ok(())
    }

    pub fn merge_file(&mut self, path: &std::path::Path) -> Result<(), StatsError> {
        let f = std::fs::File::open(path).map_err(|e| StatsError::Io(format!("cannot open {}: {e}", path.display())))?;
        self.merge_from(std::io::BufReader::with_capacity(1 << 20, f))
    }

    fn merge_totals(&mut self, config: &StatsConfig, layer_rows: &[u64], o: &DataStats) -> Result<(), StatsError> {
        if &self.config != config {
            return Err(StatsError::Incompatible(format!(
                "cannot merge NeuronStats with different settings: {:?} vs {config:?}",
                self.config
            )));
        }
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
        Ok(())
    }

    fn merge_layer(&mut self, l: usize, accs: &[Option<Box<NeuronAcc>>], pos: &[Option<Box<PositionChunk>>]) {
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
        let l = self.layers.get(layer).ok_or_else(|| StatsError::Value(format!("layer {layer} out of range")))?;
        let a = l.get(neuron).ok_or_else(|| StatsError::Value(format!("neuron {neuron} out of range")))?;
        Ok(a.as_deref())
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
        neurons * (8 + per_live) + chunks * c.max_positions * CHUNK * 2 + (c.vocab_size + c.max_positions) * 8
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
            + d.position_totals.len() * 8
            + d.token_occurrences.len() * 8
            // hashbrown: 8/7 buckets per unit of capacity, each a 16-byte (u64, u32) entry and a control byte.
            + (d.bigram_occurrences.capacity() + d.trigram_occurrences.capacity()) * 8 / 7 * 17
    }

    /// The state, streamed: a header (settings, row counts, the data's own counts), then each layer
    /// on its own, so that a reader can take one layer at a time (`merge_from`). No copy is held.
    pub fn write_to<W: std::io::Write>(&self, mut w: W) -> Result<(), StatsError> {
        let io = |e: std::io::Error| StatsError::Io(format!("cannot write the NeuronStats state: {e}"));
        let enc = |e: bincode::Error| StatsError::Io(format!("cannot write the NeuronStats state: {e}"));
        w.write_all(MAGIC).map_err(io)?;
        bincode::serialize_into(&mut w, &(&self.config, &self.layer_rows, &self.data)).map_err(enc)?;
        for (accs, pos) in self.layers.iter().zip(&self.positions) {
            bincode::serialize_into(&mut w, &(accs, pos)).map_err(enc)?;
        }
        w.flush().map_err(io)
    }

    pub fn read_from<R: std::io::Read>(mut r: R) -> Result<Self, StatsError> {
        let (config, layer_rows, data) = read_header(&mut r)?;
        let (mut layers, mut positions) = (Vec::with_capacity(config.n_layers), Vec::with_capacity(config.n_layers));
        for _ in 0..config.n_layers {
            let (accs, pos) = read_layer(&mut r, &config)?;
            layers.push(accs);
            positions.push(pos);
        }
        Ok(NeuronStats { config, layers, positions, layer_rows, data })
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, StatsError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StatsError> {
        Self::read_from(bytes)
    }

    /// Write the state to a file (checkpoints of big models: tens of GB, never copied in memory).
    pub fn save(&self, path: &std::path::Path) -> Result<(), StatsError> {
        let f = std::fs::File::create(path).map_err(|e| StatsError::Io(format!("cannot create {}: {e}", path.display())))?;
        self.write_to(std::io::BufWriter::with_capacity(1 << 20, f))
    }

    pub fn load(path: &std::path::Path) -> Result<Self, StatsError> {
        let f = std::fs::File::open(path).map_err(|e| StatsError::Io(format!("cannot open {}: {e}", path.display())))?;
        Self::read_from(std::io::BufReader::with_capacity(1 << 20, f))
    }

    fn check_complete(&self) -> Result<(), StatsError> {
        if self.data.rows == 0 {
            return Err(StatsError::Value("no tokens were counted: call update() with data for layer 0 (and every other layer) first".into()));
        }
        for (l, &r) in self.layer_rows.iter().enumerate() {
            if r != self.data.rows {
                return Err(StatsError::Value(format!(
                    "layer {l} was updated with {r} rows but layer 0 with {}: update every layer with the same tokens",
                    self.data.rows
                )));
            }
        }
        Ok(())
    }

    fn finalize_neuron(&self, acc: Option<&NeuronAcc>, positions: &[u32], dp: &DetectorParams, pp: &PositionalParams) -> NeuronResult {
        let zero = CoverageBounds { lo: 0, hi: 0 };
        let Some(a) = acc else {
            return NeuronResult {
                n_active: 0,
                cover: [zero; 3],
                tokens: None,
                trigrams: None,
                pos: positional::PositionalResult { mi: 0.0, kind: None, strong: false, intervals: Vec::new() },
            };
        };
        let d = &self.data;
        let (toks, c1) = sorted_with_bounds(&a.tokens, dp);
        let tokens = detect(&toks, a.tokens.total, a.tokens.slack, c1, dp.max_tokens, |t| d.token_occurrences[t as usize], dp);
        let (_, c2) = sorted_with_bounds(&a.bigrams, dp);
        let (tri, c3) = sorted_with_bounds(&a.trigrams, dp);
        let trigrams = detect(&tri, a.trigrams.total, a.trigrams.slack, c3, dp.max_trigrams, |k| d.trigram_occurrences.get(&k).copied().unwrap_or(0) as u64, dp);
        let pos = positional::analyze(positions, &d.position_totals, pp);
        NeuronResult { n_active: a.n_active, cover: [c1, c2, c3], tokens, trigrams, pos }
    }

    /// Results of one chunk of neurons of a layer (the chunk's position counts are transposed once).
    fn finalize_chunk(&self, layer: usize, chunk: usize, dp: &DetectorParams, pp: &PositionalParams) -> Vec<NeuronResult> {
        let t = self.config.max_positions;
        let accs = &self.layers[layer][chunk * CHUNK..((chunk + 1) * CHUNK).min(self.config.n_neurons)];
        let by_neuron = self.positions[layer][chunk].as_ref().map(|c| c.by_neuron(t));
        let zeros = vec![0u32; t];
        accs.iter()
            .enumerate()
            .map(|(j, a)| {
                let pos = by_neuron.as_ref().map_or(&zeros[..], |b| &b[j * t..(j + 1) * t]);
                self.finalize_neuron(a.as_deref(), pos, dp, pp)
            })
            .collect()
    }

    /// Turn the accumulators into `neurons` table columns (METHOD.md definitions).
    pub fn finalize(&self, dp: &DetectorParams, pp: &PositionalParams) -> Result<Finalized, StatsError> {
        self.check_complete()?;
        let cfg = &self.config;
        let chunks = cfg.n_neurons.div_ceil(CHUNK);
        let results: Vec<NeuronResult> = (0..cfg.n_layers * chunks)
            .into_par_iter()
            .flat_map_iter(|i| self.finalize_chunk(i / chunks, i % chunks, dp, pp))
            .collect();
        let mut f = Finalized::default();
        f.detected_tokens_offsets.push(0);
        f.detected_trigrams_offsets.push(0);
        f.intervals_offsets.push(0);
        let total = self.data.rows as f64;
        for (i, r) in results.into_iter().enumerate() {
            f.layer.push((i / cfg.n_neurons) as u16);
            f.neuron.push((i % cfg.n_neurons) as u32);
            f.n_active.push(r.n_active);
            f.frequency.push(r.n_active as f64 / total);
            f.dead.push(r.n_active == 0);
            f.cover_1.push(r.cover[0].lo);
            f.cover_1_max.push(r.cover[0].hi);
            f.cover_2.push(r.cover[1].lo);
            f.cover_2_max.push(r.cover[1].hi);
            f.cover_3.push(r.cover[2].lo);
            f.cover_3_max.push(r.cover[2].hi);
            f.token_detector.push(r.tokens.is_some());
            f.detected_tokens.extend(r.tokens.unwrap_or_default());
            f.detected_tokens_offsets.push(f.detected_tokens.len() as u64);
            f.trigram_detector.push(r.trigrams.is_some());
            for k in r.trigrams.unwrap_or_default() {
                f.detected_trigrams.extend(unpack_key(k, 3));
            }
            f.detected_trigrams_offsets.push(f.detected_trigrams.len() as u64 / 3);
            f.mi_position.push(r.pos.mi);
            f.positional.push(r.pos.kind.is_some());
            f.positional_kind.push(r.pos.kind.map_or("", |k| k.name()));
            f.positional_strong.push(r.pos.strong);
            for (s, e) in r.pos.intervals {
                f.interval_start.push(s);
                f.interval_end.push(e);
            }
            f.intervals_offsets.push(f.interval_start.len() as u64);
        }
        Ok(f)
    }
}

/// How many activations ahead the hash-table slots are prefetched.
const PREFETCH: usize = 16;

/// Sorted (key, count) pairs of a summary (see `sort_by_count`) and its cover bounds.
fn sorted_with_bounds<K: TableKey + Ord>(s: &Summary<K>, dp: &DetectorParams) -> (Vec<(K, u32)>, CoverageBounds) {
    let mut v: Vec<(K, u32)> = s.counts.iter().collect();
    sort_by_count(&mut v);
    let b = coverage_bounds(&v, s.total, s.slack, dp.coverage);
    (v, b)
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

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
            let chunks: Vec<[&[u64]; 2]> = bits.iter().enumerate().map(|(l, b)| {
                let (a, b) = b.split_at((5 + 7 * l) * words);
                [a, b]
            }).collect();
            let layers: Vec<(usize, &[&[u64]])> = [1, 2, 0].iter().map(|&l| (l, &chunks[l][..])).collect();
            many.update_layers(&layers, words, &t, &p).unwrap();
        }
        assert_eq!(bytes(&one), bytes(&many));
        // Activation-only rows: summed counts equal the bits' popcounts.
        let (_, _, bits) = block(&mut rng, 3, 2);
        let rows = 2 * T;
        let counts: Vec<Vec<u64>> = bits
            .iter()
            .map(|b| (0..N).map(|j| (0..rows).filter(|&i| b[i * words + j / 64] >> (j % 64) & 1 == 1).count() as u64).collect())
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
        let (mut a, mut b) = (NeuronStats::from_bytes(&bytes(&parts[0])).unwrap(), NeuronStats::from_bytes(&bytes(&parts[0])).unwrap());
        for p in &parts[1..] {
            a.merge(p).unwrap();
            b.merge_from(bytes(p).as_slice()).unwrap();
        }
        // A table read back holds the same counts in another slot order, so merges of it may lay
        // out their tables differently: equal in content, not byte for byte.
        let merged = content(&a);
        assert_eq!(merged, content(&b));
        assert_eq!(merged, content(&NeuronStats::read_from(bytes(&a).as_slice()).unwrap()));
        // Other settings: refused before anything is added.
        let other = NeuronStats::new(StatsConfig { ngram_capacity: 16, ..config(2) }).unwrap();
        let before = bytes(&b);
        assert!(matches!(b.merge_from(bytes(&other).as_slice()), Err(StatsError::Incompatible(_))));
        assert_eq!(before, bytes(&b));
        // A stream cut inside a layer is named corrupt.
        let cut = bytes(&parts[1]);
        assert!(matches!(b.merge_from(&cut[..cut.len() - 10]), Err(StatsError::Decode(_))));
    }
}
