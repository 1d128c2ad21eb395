//! The compact hash table that holds the k-gram counts of a summary: open addressing with linear
//! probing, 4-byte-aligned (key, count) slots and a tag byte per slot (a probe tests 16 slots with
//! one vector compare). At most 3/4 full: 512 slots for the default capacity 384, i.e. 6.5 KiB for
//! n-gram keys (12-byte slots) and 4.5 KiB for token ids (8 bytes), with a tag byte per slot.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::marker::PhantomData;

/// A key of a `CountTable`: a reserved `EMPTY` value marks free slots and is never stored.
pub trait TableKey: Copy + Eq + std::fmt::Debug {
    const EMPTY: Self;
    fn hash64(self) -> u64;
}

impl TableKey for u64 {
    /// n-gram keys pack at most 3 x 21 bits, so the top bit is free.
    const EMPTY: u64 = u64::MAX;
    #[inline(always)]
    fn hash64(self) -> u64 {
        self
    }
}

impl TableKey for u32 {
    const EMPTY: u32 = u32::MAX;
    #[inline(always)]
    fn hash64(self) -> u64 {
        self as u64
    }
}

/// One slot: key and count side by side, 4-byte aligned (12 bytes for u64 keys), so that a
/// lookup touches one cache line.
#[derive(Clone, Copy, Debug)]
#[repr(C, packed(4))]
struct Slot<K> {
    key: K,
    count: u32,
}

impl<K: TableKey> Slot<K> {
    #[inline(always)]
    fn get(&self) -> (K, u32) {
        (self.key, self.count)
    }
    #[inline(always)]
    fn is_free(&self) -> bool {
        let k = self.key;
        k == K::EMPTY
    }
}

/// Open-addressing (linear probing) hash map from keys to u32 counts, at most 3/4 full,
/// Fibonacci hashing on the top bits. Iteration order is arbitrary (as with a hash map).
/// A control byte per slot (7 other bits of the hash, or EMPTY_TAG) lets a probe test 16 slots
/// with one vector compare instead of a branch per slot.
#[derive(Clone)]
pub struct CountTable<K: TableKey> {
    slots: Vec<Slot<K>>,
    /// One tag per slot, then the first GROUP tags again (a group read at any slot needs no wrap).
    tags: Vec<u8>,
    len: usize,
    /// Entries with count >= 2 (lets a Misra-Gries prune find a threshold of 1 without a scan).
    n_big: usize,
    /// Entries with count 0 (only a caller adding 0 makes them).
    n_zero: usize,
    /// 64 - log2(slots.len())
    shift: u32,
}

const MIN_SLOTS: usize = 16;
/// Slots tested by one probe step (MIN_SLOTS >= GROUP).
const GROUP: usize = 16;
const EMPTY_TAG: u8 = 0x80;

#[inline(always)]
fn hash<K: TableKey>(key: K) -> u64 {
    key.hash64().wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// 7 bits of the hash that the home slot (its top bits) does not use, for tables up to 2^32 slots.
#[inline(always)]
fn tag_of(h: u64) -> u8 {
    ((h >> 24) & 0x7F) as u8
}

/// Bit j set when tags[pos + j] == b, for j < GROUP.
#[inline(always)]
fn group_match(tags: &[u8], pos: usize, b: u8) -> u32 {
    debug_assert!(pos + GROUP <= tags.len());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: pos + GROUP <= tags.len() (pos < slots, tags has GROUP extra); SSE2 is baseline x86_64.
    unsafe {
        use std::arch::x86_64::*;
        let g = _mm_loadu_si128(tags.as_ptr().add(pos) as *const __m128i);
        _mm_movemask_epi8(_mm_cmpeq_epi8(g, _mm_set1_epi8(b as i8))) as u32
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        (0..GROUP).fold(0u32, |m, j| m | (((tags[pos + j] == b) as u32) << j))
    }
}

impl<K: TableKey> Default for CountTable<K> {
    fn default() -> Self {
        CountTable { slots: Vec::new(), tags: Vec::new(), len: 0, n_big: 0, n_zero: 0, shift: 64 }
    }
}

impl<K: TableKey> std::fmt::Debug for CountTable<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: TableKey> CountTable<K> {
    #[inline(always)]
    fn home(&self, key: K) -> usize {
        (hash(key) >> self.shift) as usize
    }

    #[inline(always)]
    fn set_tag(&mut self, i: usize, t: u8) {
        self.tags[i] = t;
        if i < GROUP {
            let n = self.slots.len();
            self.tags[n + i] = t;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries with a count of at least 2.
    pub fn len_at_least_2(&self) -> usize {
        self.n_big
    }

    /// Entries with a count of 0.
    pub fn len_zero(&self) -> usize {
        self.n_zero
    }

    /// Slots allocated (the table is rebuilt twice as large past 3/4 full).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot<K>>() + self.tags.capacity()
    }

    /// Hint the cache about the slot a later `add(key)` reads first.
    #[inline(always)]
    pub fn prefetch(&self, key: K) {
        if !self.slots.is_empty() {
            let i = self.home(key);
            // SAFETY: i < slots.len() <= tags.len().
            unsafe {
                prefetch(self.tags.as_ptr().add(i));
                prefetch(self.slots.as_ptr().add(i) as *const u8);
            }
        }
    }

    #[inline(always)]
    fn key_at(&self, i: usize) -> K {
        // SAFETY: callers pass i < slots.len() (masked).
        unsafe { self.slots.get_unchecked(i) }.key
    }

    /// Add `by` to the count in slot i (occupied); returns the new count.
    #[inline(always)]
    fn bump(&mut self, i: usize, by: u32) -> u32 {
        // SAFETY: as key_at.
        let s = unsafe { self.slots.get_unchecked_mut(i) };
        let old = s.count;
        let c = old + by;
        s.count = c;
        self.n_big += (old < 2 && c >= 2) as usize;
        self.n_zero -= (old == 0 && c > 0) as usize;
        c
    }

    /// Add `by` to `key`'s count (inserting it at `by`); returns the new count.
    #[inline(always)]
    pub fn add(&mut self, key: K, by: u32) -> u32 {
        debug_assert!(key != K::EMPTY);
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let h = hash(key);
        let tag = tag_of(h);
        let mut pos = (h >> self.shift) as usize;
        // Most adds of a key already present find it at home: no group scan then.
        if self.key_at(pos) == key {
            return self.bump(pos, by);
        }
        loop {
            let mut m = group_match(&self.tags, pos, tag);
            while m != 0 {
                let i = (pos + m.trailing_zeros() as usize) & mask;
                if self.key_at(i) == key {
                    return self.bump(i, by);
                }
                m &= m - 1;
            }
            // Not in this group; the first free slot of the group ends the probe (linear probing).
            let e = group_match(&self.tags, pos, EMPTY_TAG);
            if e != 0 {
                let i = (pos + e.trailing_zeros() as usize) & mask;
                self.slots[i] = Slot { key, count: by };
                self.set_tag(i, tag);
                self.len += 1;
                self.n_big += (by >= 2) as usize;
                self.n_zero += (by == 0) as usize;
                return by;
            }
            pos = (pos + GROUP) & mask;
        }
    }

    pub fn get(&self, key: K) -> u32 {
        if self.slots.is_empty() {
            return 0;
        }
        let mask = self.slots.len() - 1;
        let h = hash(key);
        let tag = tag_of(h);
        let mut pos = (h >> self.shift) as usize;
        loop {
            let mut m = group_match(&self.tags, pos, tag);
            while m != 0 {
                let i = (pos + m.trailing_zeros() as usize) & mask;
                let s = self.slots[i];
                let k = s.key;
                if k == key {
                    return s.count;
                }
                m &= m - 1;
            }
            if group_match(&self.tags, pos, EMPTY_TAG) != 0 {
                return 0;
            }
            pos = (pos + GROUP) & mask;
        }
    }

    fn rebuild(&mut self, n_slots: usize, entries: impl Iterator<Item = (K, u32)>) {
        if self.slots.len() == n_slots {
            self.slots.fill(Slot { key: K::EMPTY, count: 0 });
            self.tags.fill(EMPTY_TAG);
        } else {
            // Exact allocations (a resized Vec may keep spare capacity).
            self.slots = vec![Slot { key: K::EMPTY, count: 0 }; n_slots];
            self.tags = vec![EMPTY_TAG; n_slots + GROUP];
        }
        self.shift = 64 - n_slots.trailing_zeros();
        self.len = 0;
        self.n_big = 0;
        self.n_zero = 0;
        let mask = n_slots - 1;
        for (key, count) in entries {
            let mut i = self.home(key);
            // SAFETY: indices are masked to the table size.
            while !unsafe { self.slots.get_unchecked(i) }.is_free() {
                i = (i + 1) & mask;
            }
            *unsafe { self.slots.get_unchecked_mut(i) } = Slot { key, count };
            self.set_tag(i, tag_of(hash(key)));
            self.len += 1;
            self.n_big += (count >= 2) as usize;
            self.n_zero += (count == 0) as usize;
        }
    }

    #[cold]
    fn grow(&mut self) {
        let old = std::mem::take(&mut self.slots);
        let n = (old.len() * 2).max(MIN_SLOTS);
        self.rebuild(n, old.iter().filter(|s| !s.is_free()).map(|s| s.get()));
    }

    /// Slots of the smallest table that holds `n` entries without growing (at most 3/4 full).
    pub fn slots_for(n: usize) -> usize {
        let mut want = MIN_SLOTS;
        while n * 4 > want * 3 {
            want *= 2;
        }
        want
    }

    /// Bytes of a table that holds `n` entries (a full summary of capacity `n`).
    pub fn bytes_for(n: usize) -> usize {
        let slots = Self::slots_for(n);
        slots * std::mem::size_of::<Slot<K>>() + slots + GROUP
    }

    /// Rebuild at the smallest size that holds `n` entries (and the current ones) without growing.
    pub fn shrink_for(&mut self, n: usize) {
        let want = Self::slots_for(n.max(self.len));
        if want < self.slots.len() {
            let old = std::mem::take(&mut self.slots);
            self.rebuild(want, old.iter().filter(|s| !s.is_free()).map(|s| s.get()));
        }
    }

    /// (key, count) of every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (K, u32)> + '_ {
        self.slots.iter().filter(|s| !s.is_free()).map(|s| s.get())
    }

    pub fn values(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots.iter().filter(|s| !s.is_free()).map(|s| s.get().1)
    }

    /// Subtract `t` from every count and drop the entries that reach 0 (or less): the survivors
    /// are gathered without branches (which slots survive is unpredictable) and put back into the
    /// cleared table.
    pub fn subtract(&mut self, t: u32) {
        if self.slots.is_empty() {
            return;
        }
        // Every slot is written at `n`; only survivors (count > t, hence > 0 after) move it on.
        let mut kept = vec![(K::EMPTY, 0u32); self.len + 1];
        let mut n = 0;
        for s in &self.slots {
            let (k, c) = s.get();
            kept[n] = (k, c.wrapping_sub(t));
            n += ((k != K::EMPTY) & (c > t)) as usize;
        }
        let size = self.slots.len();
        self.rebuild(size, kept[..n].iter().copied());
    }

    /// How many entries have count c, for c < B - 1; bucket B - 1 holds the counts >= B - 1.
    pub fn count_histogram<const B: usize>(&self) -> [usize; B] {
        // Four interleaved histograms and a dummy bucket for free slots: no branches, and no
        // chain of increments of one bucket (most counts are equal).
        const DUMMY: usize = 64;
        let mut h = [[0u32; DUMMY + 1]; 4];
        assert!(B <= DUMMY);
        for (i, s) in self.slots.iter().enumerate() {
            let (k, c) = s.get();
            let b = if k == K::EMPTY { DUMMY } else { (c as usize).min(B - 1) };
            h[i & 3][b] += 1;
        }
        std::array::from_fn(|b| (h[0][b] + h[1][b] + h[2][b] + h[3][b]) as usize)
    }
}

#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Serialized as a map (the same bytes as a `HashMap<K, u32>` of the same entries).
impl<K: TableKey + Serialize> Serialize for CountTable<K> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len))?;
        for (k, c) in self.iter() {
            m.serialize_entry(&k, &c)?;
        }
        m.end()
    }
}

impl<'de, K: TableKey + Deserialize<'de>> Deserialize<'de> for CountTable<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<K>(PhantomData<K>);
        impl<'de, K: TableKey + Deserialize<'de>> Visitor<'de> for V<K> {
            type Value = CountTable<K>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of counts")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut t = CountTable::default();
                while let Some((k, c)) = a.next_entry::<K, u32>()? {
                    if k == K::EMPTY {
                        return Err(serde::de::Error::custom("reserved key in a count table"));
                    }
                    t.add(k, c);
                }
                Ok(t)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn table_counts_like_a_hash_map() {
        let mut t = CountTable::<u64>::default();
        let mut m = HashMap::new();
        let mut x = 1u64;
        for i in 0..20_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let k = (x >> 40) % 3000 + if i % 7 == 0 { 1 << 62 } else { 0 };
            t.add(k, 1 + (i % 3) as u32);
            *m.entry(k).or_insert(0u32) += 1 + (i % 3) as u32;
        }
        assert_eq!(t.len(), m.len());
        assert_eq!(t.len_at_least_2(), m.values().filter(|&&c| c >= 2).count());
        for (&k, &c) in &m {
            assert_eq!(t.get(k), c);
        }
        assert_eq!(t.get(5 << 50), 0);
        let hist = t.count_histogram::<4>();
        for (b, &h) in hist.iter().enumerate() {
            let want = m.values().filter(|&&c| if b < 3 { c == b as u32 } else { c >= 3 }).count();
            assert_eq!(h, want);
        }
        t.subtract(2);
        assert_eq!(t.len(), m.values().filter(|&&c| c > 2).count());
        for (k, c) in t.iter() {
            assert_eq!(c, m[&k] - 2);
        }
        // Every key is still found where probing looks for it (entries moved back, tags with them).
        for (&k, &c) in &m {
            assert_eq!(t.get(k), c.saturating_sub(2), "key {k}");
        }
        // And the table keeps working: more adds, another subtract, all checked against a map.
        let mut m2: HashMap<u64, u32> = m.iter().filter(|&(_, &c)| c > 2).map(|(&k, &c)| (k, c - 2)).collect();
        for i in 0..5_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let k = (x >> 40) % 6000 + if i % 5 == 0 { 1 << 61 } else { 0 };
            t.add(k, 1);
            *m2.entry(k).or_insert(0) += 1;
        }
        t.subtract(1);
        m2.retain(|_, c| {
            *c = c.saturating_sub(1);
            *c > 0
        });
        assert_eq!(t.len(), m2.len());
        for (&k, &c) in &m2 {
            assert_eq!(t.get(k), c, "key {k}");
        }
        assert_eq!(t.get(7 << 55), 0);
        let b = bincode::serialize(&t).unwrap();
        let back: CountTable<u64> = bincode::deserialize(&b).unwrap();
        let as_map: HashMap<u64, u32> = bincode::deserialize(&b).unwrap();
        assert_eq!(back.len(), t.len());
        assert_eq!(as_map.len(), t.len());
        for (k, c) in t.iter() {
            assert_eq!(back.get(k), c);
            assert_eq!(as_map[&k], c);
        }
    }
}
