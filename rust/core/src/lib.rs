//! Streaming statistics of feed-forward neurons from packed activation bitmasks.
//!
//! Input per call: one layer's activations for a block of token rows, packed as u64 words
//! (bit j of word w = neuron 64w + j), with each row's token id and position.
//! Accumulators add up across calls and across shards (`NeuronStats::merge`), and
//! `NeuronStats::finalize` turns them into the columns of the `neurons` table (see METHOD.md).
//! Pure Rust: the Python binding lives in a separate crate.

pub mod coverage;
pub mod error;
pub mod examples;
pub mod positional;
pub mod positions;
pub mod stats;
pub mod summary;

pub use coverage::{CoverageBounds, DetectorParams};
pub use error::StatsError;
pub use summary::{NgramSummary, Summary, TokenSummary};
pub use positional::{PositionalParams, PositionalResult, PositionalKind};
pub use stats::{Finalized, NeuronStats, StatsConfig};
