//! Exact per-neuron counts by token id, sparse while few distinct tokens have been seen and
//! dense once a sparse map would cost more than a plain array of the vocabulary.

use crate::ngram::CountTable;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TokenCounts {
    Sparse(CountTable<u32>),
    Dense(Vec<u32>),
}

impl Default for TokenCounts {
    fn default() -> Self {
        TokenCounts::Sparse(CountTable::default())
    }
}

impl TokenCounts {
    /// A hash map entry costs about 3 dense slots (key, value, control byte and load factor).
    fn sparse_limit(vocab: usize) -> usize {
        vocab / 3
    }

    #[inline(always)]
    pub fn add(&mut self, token: u32, by: u32, vocab: usize) {
        match self {
            TokenCounts::Dense(v) => v[token as usize] += by,
            TokenCounts::Sparse(m) => {
                m.add(token, by);
                if m.len() > Self::sparse_limit(vocab) {
                    self.densify(vocab);
                }
            }
        }
    }

    #[cold]
    fn densify(&mut self, vocab: usize) {
        if let TokenCounts::Sparse(m) = self {
            let mut dense = vec![0u32; vocab];
            for (t, c) in m.iter() {
                dense[t as usize] = c;
            }
            *self = TokenCounts::Dense(dense);
        }
    }

    /// Hint the cache about the memory a later `add(token)` reads first.
    #[inline(always)]
    pub fn prefetch(&self, token: u32) {
        match self {
            TokenCounts::Dense(v) => {
                if let Some(c) = v.get(token as usize) {
                    crate::ngram::prefetch(c as *const u32 as *const u8);
                }
            }
            TokenCounts::Sparse(m) => m.prefetch(token),
        }
    }

    pub fn merge(&mut self, other: &TokenCounts, vocab: usize) {
        match other {
            TokenCounts::Dense(v) => {
                for (t, &c) in v.iter().enumerate() {
                    if c > 0 {
                        self.add(t as u32, c, vocab);
                    }
                }
            }
            TokenCounts::Sparse(m) => {
                for (t, c) in m.iter() {
                    self.add(t, c, vocab);
                }
            }
        }
    }

    /// (token, count) pairs with count > 0, in no particular order.
    pub fn nonzero(&self) -> Vec<(u32, u32)> {
        match self {
            TokenCounts::Dense(v) => v
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(t, &c)| (t as u32, c))
                .collect(),
            TokenCounts::Sparse(m) => m.iter().collect(),
        }
    }

    pub fn get(&self, token: u32) -> u32 {
        match self {
            TokenCounts::Dense(v) => v[token as usize],
            TokenCounts::Sparse(m) => m.get(token),
        }
    }

    pub fn heap_bytes(&self) -> usize {
        match self {
            TokenCounts::Dense(v) => v.capacity() * 4,
            TokenCounts::Sparse(m) => m.heap_bytes(),
        }
    }
}
