//! Finalisation: the accumulators turned into the columns of the `neurons` table (METHOD.md).

use super::{NeuronAcc, NeuronStats, ID_BITS};
use crate::coverage::{coverage_bounds, detect, sort_by_count, CoverageBounds, DetectorParams};
use crate::error::StatsError;
use crate::position_counts::CHUNK;
use crate::positional_analysis::{self as positional, PositionalParams};
use crate::summary::{Summary, TableKey};
use rayon::prelude::*;

const ID_MASK: u64 = (1 << ID_BITS) - 1;

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
    /// NaN when not positional.
    pub positional_spread: Vec<f64>,
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
    fn check_complete(&self) -> Result<(), StatsError> {
        self.check_usable()?;
        self.check_sources_complete()?;
        if self.data.rows == 0 {
            return Err(StatsError::Value(
                "no tokens were counted: call update() with data for layer 0 (and every other layer) first".into(),
            ));
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

    fn finalize_neuron(
        &self,
        acc: Option<&NeuronAcc>,
        positions: &[u32],
        dp: &DetectorParams,
        pp: &PositionalParams,
    ) -> NeuronResult {
        let zero = CoverageBounds { lo: 0, hi: 0 };
        let Some(a) = acc else {
            return NeuronResult {
                n_active: 0,
                cover: [zero; 3],
                tokens: None,
                trigrams: None,
                pos: positional::PositionalResult {
                    mi: 0.0,
                    kind: None,
                    strong: false,
                    intervals: Vec::new(),
                    spread: f64::NAN,
                },
            };
        };
        let d = &self.data;
        let (toks, c1) = sorted_with_bounds(&a.tokens, dp);
        let tokens =
            detect(&toks, a.tokens.total, a.tokens.slack, c1, dp.max_tokens, |t| d.token_occurrences[t as usize], dp);
        let (_, c2) = sorted_with_bounds(&a.bigrams, dp);
        let (tri, c3) = sorted_with_bounds(&a.trigrams, dp);
        let trigrams = detect(
            &tri,
            a.trigrams.total,
            a.trigrams.slack,
            c3,
            dp.max_trigrams,
            |k| d.trigram_occurrences.get(&k).copied().unwrap_or(0) as u64,
            dp,
        );
        let pos = positional::analyze(positions, &d.position_totals, pp);
        NeuronResult { n_active: a.n_active, cover: [c1, c2, c3], tokens, trigrams, pos }
    }

    /// Results of one chunk of neurons of a layer (the chunk's position counts are transposed once).
    fn finalize_chunk(
        &self,
        layer: usize,
        chunk: usize,
        dp: &DetectorParams,
        pp: &PositionalParams,
    ) -> Vec<NeuronResult> {
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
            f.positional_spread.push(r.pos.spread);
            for (s, e) in r.pos.intervals {
                f.interval_start.push(s);
                f.interval_end.push(e);
            }
            f.intervals_offsets.push(f.interval_start.len() as u64);
        }
        Ok(f)
    }
}

/// Sorted (key, count) pairs of a summary (see `sort_by_count`) and its cover bounds.
fn sorted_with_bounds<K: TableKey + Ord>(s: &Summary<K>, dp: &DetectorParams) -> (Vec<(K, u32)>, CoverageBounds) {
    let mut v: Vec<(K, u32)> = s.counts.iter().collect();
    sort_by_count(&mut v);
    let b = coverage_bounds(&v, s.total, s.slack, dp.coverage);
    (v, b)
}
