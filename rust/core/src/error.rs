use std::fmt;

/// Errors name the problem and, where there is one, the fix. The Python binding raises a class of
/// its own for each kind (python/opt_neurons/errors.py).
#[derive(Debug, Clone, PartialEq)]
pub enum StatsError {
    /// Arrays of the wrong shape or length (a bitmask's words per row, rows that disagree).
    Shape(String),
    /// Values outside what the state holds (a token id, position, layer or neuron), or a state not
    /// yet fed every layer's rows.
    Value(String),
    /// Settings a `NeuronStats` cannot be built with.
    Config(String),
    /// A merge of states with different settings.
    Incompatible(String),
    /// A state that cannot be read: damaged, truncated, empty, or of another format version.
    Decode(String),
    /// Reading or writing a state failed.
    Io(String),
    /// A merge failed midway: the state is neither the old one nor the merged one.
    Unusable(String),
}

impl fmt::Display for StatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatsError::Shape(m)
            | StatsError::Value(m)
            | StatsError::Config(m)
            | StatsError::Incompatible(m)
            | StatsError::Decode(m)
            | StatsError::Io(m)
            | StatsError::Unusable(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StatsError {}
