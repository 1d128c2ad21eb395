//! Activation counts by (position, neuron) for one chunk of `CHUNK` neurons of a layer.
//!
//! Laid out position-major (`p * CHUNK + j`) so that the activations of one row land in one
//! contiguous 512-byte stretch: counting streams through memory instead of touching one cold
//! per-neuron array per activation. Counts are 16-bit with the wraps kept in a small table
//! (a count per position passes 65535 only after that many sequences), so a chunk costs
//! 2 bytes per (position, neuron).

use crate::count_table::CountTable;
use serde::{Deserialize, Serialize};

/// Neurons per chunk (and per parallel task of an update).
pub const CHUNK: usize = 256;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PositionChunk {
    /// count(p, j) mod 65536 at p * CHUNK + j.
    low: Vec<u16>,
    /// count(p, j) >> 16, by the same index (absent = 0).
    high: CountTable<u32>,
}

impl PositionChunk {
    pub fn new(max_positions: usize) -> Self {
        assert!(max_positions * CHUNK < u32::MAX as usize, "max_positions too large for position counts");
        PositionChunk { low: vec![0; max_positions * CHUNK], high: CountTable::default() }
    }

    /// One activation of neuron `j` of the chunk at position `p`.
    #[inline(always)]
    pub fn add(&mut self, p: usize, j: usize) {
        let i = p * CHUNK + j;
        let c = self.low[i].wrapping_add(1);
        self.low[i] = c;
        if c == 0 {
            self.high.add(i as u32, 1);
        }
    }

    /// `by` activations of neuron `j` of the chunk at position `p` (counted elsewhere: the device).
    #[inline(always)]
    pub fn add_many(&mut self, p: usize, j: usize, by: u32) {
        let i = p * CHUNK + j;
        let s = self.low[i] as u64 + by as u64;
        self.low[i] = s as u16;
        if s >> 16 > 0 {
            self.high.add(i as u32, (s >> 16) as u32);
        }
    }

    /// Counts of every neuron of the chunk, neuron-major: `out[j * T + p]`.
    pub fn by_neuron(&self, max_positions: usize) -> Vec<u32> {
        let mut out = vec![0u32; CHUNK * max_positions];
        for p in 0..max_positions {
            for (j, &c) in self.low[p * CHUNK..(p + 1) * CHUNK].iter().enumerate() {
                out[j * max_positions + p] = c as u32;
            }
        }
        for (i, h) in self.high.iter() {
            let (p, j) = (i as usize / CHUNK, i as usize % CHUNK);
            out[j * max_positions + p] += h << 16;
        }
        out
    }

    pub fn get(&self, p: usize, j: usize) -> u32 {
        let i = p * CHUNK + j;
        self.low[i] as u32 + (self.high.get(i as u32) << 16)
    }

    pub fn merge(&mut self, o: &PositionChunk) {
        for (i, (a, &b)) in self.low.iter_mut().zip(&o.low).enumerate() {
            let s = *a as u32 + b as u32;
            *a = s as u16;
            if s > u16::MAX as u32 {
                self.high.add(i as u32, 1);
            }
        }
        for (i, h) in o.high.iter() {
            self.high.add(i, h);
        }
    }

    /// The chunk holds counts of `max_positions` positions (a state read back is checked with it).
    pub fn fits(&self, max_positions: usize) -> bool {
        self.low.len() == max_positions * CHUNK && self.high.iter().all(|(i, _)| (i as usize) < self.low.len())
    }

    pub fn heap_bytes(&self) -> usize {
        self.low.capacity() * 2 + self.high.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_carry_past_16_bits_and_merge() {
        let t = 3;
        let (mut a, mut b) = (PositionChunk::new(t), PositionChunk::new(t));
        for _ in 0..70_000 {
            a.add(1, 5);
        }
        for _ in 0..65_536 {
            b.add(1, 5);
        }
        b.add(2, 255);
        assert_eq!(a.get(1, 5), 70_000);
        assert_eq!(b.get(1, 5), 65_536);
        a.merge(&b);
        assert_eq!(a.get(1, 5), 135_536);
        assert_eq!(a.get(2, 255), 1);
        let by_n = a.by_neuron(t);
        assert_eq!(by_n[5 * t + 1], 135_536);
        assert_eq!(by_n[255 * t + 2], 1);
        assert_eq!(by_n.iter().map(|&c| c as u64).sum::<u64>(), 135_537);
        // Counts added in one go carry the same way as one at a time.
        let mut c = PositionChunk::new(t);
        c.add_many(1, 5, 65_535);
        c.add_many(1, 5, 70_001);
        c.add_many(2, 255, 1);
        assert_eq!(c.get(1, 5), 135_536);
        assert_eq!(c.get(2, 255), 1);
        assert_eq!(c.by_neuron(t), by_n);
    }
}
