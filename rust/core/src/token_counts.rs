//! Exact per-neuron counts by token id, sparse while few distinct tokens have been seen and
//! dense once a sparse map would cost more than a byte per vocabulary entry. Dense counts keep the
//! low byte of every count in an array and the rest (count >> 8) in a small table: one neuron's
//! count for a token rarely passes 255, so a dense neuron costs ~vocab bytes instead of 4 x vocab.

use crate::ngram::CountTable;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TokenCounts {
    Sparse(CountTable<u32>),
    /// count(t) = low[t] + 256 * high(t)
    Dense { low: Vec<u8>, high: CountTable<u32> },
}

impl Default for TokenCounts {
    fn default() -> Self {
        TokenCounts::Sparse(CountTable::default())
    }
}

impl TokenCounts {
    /// A sparse entry costs about 16 bytes (12-byte slot, table at most 3/4 full), a dense one 1.
    fn sparse_limit(vocab: usize) -> usize {
        vocab / 16
    }

    #[inline(always)]
    pub fn add(&mut self, token: u32, by: u32, vocab: usize) {
        match self {
            TokenCounts::Dense { low, high } => {
                let v = low[token as usize] as u32 + (by & 255);
                low[token as usize] = v as u8;
                let carry = (v >> 8) + (by >> 8);
                if carry > 0 {
                    high.add(token, carry);
                }
            }
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
            let mut dense = TokenCounts::Dense { low: vec![0u8; vocab], high: CountTable::default() };
            for (t, c) in m.iter() {
                dense.add(t, c, vocab);
            }
            *self = dense;
        }
    }

    /// Hint the cache about the memory a later `add(token)` reads first.
    #[inline(always)]
    pub fn prefetch(&self, token: u32) {
        match self {
            TokenCounts::Dense { low, .. } => {
                if let Some(c) = low.get(token as usize) {
                    crate::ngram::prefetch(c as *const u8);
                }
            }
            TokenCounts::Sparse(m) => m.prefetch(token),
        }
    }

    pub fn merge(&mut self, other: &TokenCounts, vocab: usize) {
        for (t, c) in other.nonzero() {
            self.add(t, c, vocab);
        }
    }

    /// (token, count) pairs with count > 0, in no particular order.
    pub fn nonzero(&self) -> Vec<(u32, u32)> {
        match self {
            TokenCounts::Dense { low, high } => {
                let mut out: Vec<(u32, u32)> = low
                    .iter()
                    .enumerate()
                    .filter(|(_, &c)| c > 0)
                    .map(|(t, &c)| (t as u32, c as u32 + 256 * high.get(t as u32)))
                    .collect();
                // Multiples of 256 have a zero low byte: only the high table holds them.
                out.extend(high.iter().filter(|&(t, _)| low[t as usize] == 0).map(|(t, h)| (t, 256 * h)));
                out
            }
            TokenCounts::Sparse(m) => m.iter().collect(),
        }
    }

    pub fn get(&self, token: u32) -> u32 {
        match self {
            TokenCounts::Dense { low, high } => low[token as usize] as u32 + 256 * high.get(token),
            TokenCounts::Sparse(m) => m.get(token),
        }
    }

    pub fn heap_bytes(&self) -> usize {
        match self {
            TokenCounts::Dense { low, high } => low.capacity() + high.heap_bytes(),
            TokenCounts::Sparse(m) => m.heap_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn dense_counts_carry_past_a_byte_and_merge_exactly() {
        let vocab = 64;
        let (mut a, mut b) = (TokenCounts::default(), TokenCounts::default());
        let mut truth: HashMap<u32, u32> = HashMap::new();
        // 40 distinct tokens: dense (limit 64 / 16 = 4); counts 1..=1000 cross 256 and hit 512 exactly.
        for t in 0..40u32 {
            let n = if t == 7 { 512 } else { 1 + t * 25 };
            for i in 0..n {
                let target = if i % 3 == 0 { &mut b } else { &mut a };
                target.add(t, 1, vocab);
                *truth.entry(t).or_insert(0) += 1;
            }
        }
        a.add(63, 300, vocab); // an add larger than a byte
        *truth.entry(63).or_insert(0) += 300;
        assert!(matches!(a, TokenCounts::Dense { .. }));
        a.merge(&b, vocab);
        let mut got: Vec<(u32, u32)> = a.nonzero();
        got.sort();
        let mut want: Vec<(u32, u32)> = truth.into_iter().collect();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(a.get(7), 512);
    }
}
