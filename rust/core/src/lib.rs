//! Streaming statistics of feed-forward neurons from packed activation bitmasks.
//!
//! Input per call: one layer's activations for a block of token rows, packed as u64 words
//! (bit j of word w = neuron 64w + j), with each row's token id and position.
//! Accumulators add up across calls and across shards (`NeuronStats::merge`), and
//! `NeuronStats::finalize` turns them into the columns of the `neurons` table (see METHOD.md).
//! Pure Rust: the Python binding lives in a separate crate.

pub mod coverage;
pub mod error;
pub mod ngram;
pub mod positional;
pub mod stats;
pub mod token_counts;

pub use coverage::{CoverageBounds, DetectorParams};
pub use error::StatsError;
pub use ngram::NgramSummary;
pub use positional::{PositionalParams, PositionalResult, PositionalKind};
pub use stats::{Finalized, NeuronStats, StatsConfig};
