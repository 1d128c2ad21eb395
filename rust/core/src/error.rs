use std::fmt;

/// Errors name the problem and, where there is one, the fix.
#[derive(Debug, Clone, PartialEq)]
pub enum StatsError {
    Shape(String),
    Value(String),
    Incompatible(String),
    Decode(String),
    Io(String),
    /// A merge failed midway: the state is neither the old one nor the merged one.
    Unusable(String),
}

impl fmt::Display for StatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatsError::Shape(m)
            | StatsError::Value(m)
            | StatsError::Incompatible(m)
            | StatsError::Decode(m)
            | StatsError::Io(m)
            | StatsError::Unusable(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StatsError {}
