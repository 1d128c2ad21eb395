//! Streaming statistics of feed-forward neurons from packed activation bitmasks.
//!
//! Input per call: one layer's activations for a block of token rows, packed as u64 words
//! (bit j of word w = neuron 64w + j), with each row's token id and position.
//! Accumulators add up across calls and across shards (`NeuronStats::merge`), and
//! `NeuronStats::finalize` turns them into the columns of the `neurons` table (see METHOD.md).
//! Pure Rust: the Python binding lives in a separate crate.
//!
//! Counting: `count_table` (hash table of counts), `summary` (Misra-Gries k-gram summaries),
//! `position_counts` (counts by position per chunk of neurons). Analysis: `coverage` (cover_k and
//! detectors), `positional_analysis` (positional neurons). `stats` ties them into `NeuronStats`.

pub mod count_table;
pub mod coverage;
pub mod error;
pub mod examples;
pub mod position_counts;
pub mod positional_analysis;
pub mod stats;
pub mod summary;

pub use coverage::{CoverageBounds, DetectorParams};
pub use error::StatsError;
pub use positional_analysis::{PositionalKind, PositionalParams, PositionalResult};
pub use stats::{Finalized, NeuronStats, StatsConfig};
pub use summary::{NgramSummary, Summary, TokenSummary};
