//! The saved state, streamed so that a reader can take one layer at a time (`merge_from`):
//!
//! ```text
//! "OPTNST" + the format version as two ASCII digits ("05")
//! bincode (settings, row counts per layer, the data's own counts, tokens per source)
//! bincode (neuron accumulators, position chunks, activations per (source, neuron)) of each layer in turn
//! trailer: u64 LE count of the bytes before the trailer, u32 LE CRC-32 of every byte before it
//! ```
//!
//! CRC-32 catches every error burst of up to 32 bits, so any one damaged byte is always refused;
//! the byte count refuses truncated and extended files. A file is verified whole before anything
//! is taken from it. Format 04 was this layout without the per-source counts, 03 without the trailer as well:
//! they are refused, not converted.

use super::{DataStats, NeuronAcc, NeuronStats, SourceTotals, StatsConfig};
use crate::error::StatsError;
use crate::position_counts::{PositionChunk, CHUNK};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// First bytes of every state file; the format version follows as two ASCII digits.
pub const STATE_MAGIC: &[u8; 6] = b"OPTNST";
/// Version of the layout above, written after the magic.
pub const STATE_FORMAT_VERSION: u32 = 5;
const HEAD_LEN: usize = 8;
/// Byte count (8) and CRC-32 (4).
const TRAILER_LEN: usize = 12;
/// What to do about a state that cannot be read.
const FILE_ADVICE: &str =
    "if it is a run's checkpoint, delete the checkpoint folder to start over; otherwise save the state again";
const BYTES_ADVICE: &str = "save the state again from the NeuronStats it came from";

type Header = (StatsConfig, Vec<u64>, DataStats, SourceTotals);
type Layer = (Vec<Option<Box<NeuronAcc>>>, Vec<Option<Box<PositionChunk>>>, Vec<u64>);

fn corrupt(why: impl std::fmt::Display) -> StatsError {
    StatsError::Decode(format!("corrupt NeuronStats state: {why}"))
}

fn decode_error(e: bincode::ErrorKind) -> StatsError {
    match e {
        bincode::ErrorKind::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            corrupt("it ends early (truncated)")
        }
        bincode::ErrorKind::Io(e) => StatsError::Io(format!("cannot read the NeuronStats state: {e}")),
        e => corrupt(e),
    }
}

fn read_io(e: std::io::Error) -> StatsError {
    StatsError::Io(format!("cannot read the NeuronStats state: {e}"))
}

fn write_io(e: impl std::fmt::Display) -> StatsError {
    StatsError::Io(format!("cannot write the NeuronStats state: {e}"))
}

/// Fill `buf` as far as the stream goes; returns the bytes read.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, StatsError> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_io(e)),
        }
    }
    Ok(n)
}

fn head_bytes() -> [u8; HEAD_LEN] {
    let mut h = [0u8; HEAD_LEN];
    h[..6].copy_from_slice(STATE_MAGIC);
    h[6..].copy_from_slice(format!("{STATE_FORMAT_VERSION:02}").as_bytes());
    h
}

/// The first `got` bytes of a stream are a state of this format version.
fn check_head(head: &[u8]) -> Result<(), StatsError> {
    if head.is_empty() {
        return Err(StatsError::Decode("not a NeuronStats state: the file is empty".into()));
    }
    if head.len() < HEAD_LEN || &head[..6] != STATE_MAGIC || !head[6..].iter().all(u8::is_ascii_digit) {
        return Err(StatsError::Decode("not a NeuronStats state (bad header)".into()));
    }
    let version: u32 = std::str::from_utf8(&head[6..]).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if version != STATE_FORMAT_VERSION {
        return Err(StatsError::Decode(format!(
            "a NeuronStats state of format version {version}, but this opt_neurons reads version {STATE_FORMAT_VERSION} only \
             (states of other versions are not converted)"
        )));
    }
    Ok(())
}

/// A reader that counts and checksums what passes through it.
struct Hashing<T> {
    inner: T,
    crc: crc32fast::Hasher,
    n: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Hashing { inner, crc: crc32fast::Hasher::new(), n: 0 }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.crc.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.crc.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Check a whole stream (header, byte count, checksum) in one pass, holding 1 MiB at a time.
pub fn verify<R: Read>(mut r: R) -> Result<(), StatsError> {
    let mut head = [0u8; HEAD_LEN];
    let got = read_up_to(&mut r, &mut head)?;
    check_head(&head[..got])?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    let mut total = HEAD_LEN as u64;
    // The last TRAILER_LEN bytes seen so far are held back: they may be the trailer.
    let mut tail: Vec<u8> = Vec::with_capacity(2 * TRAILER_LEN);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = read_up_to(&mut r, &mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if n >= TRAILER_LEN {
            crc.update(&tail);
            crc.update(&buf[..n - TRAILER_LEN]);
            tail.clear();
            tail.extend_from_slice(&buf[n - TRAILER_LEN..n]);
        } else {
            tail.extend_from_slice(&buf[..n]);
            let extra = tail.len().saturating_sub(TRAILER_LEN);
            crc.update(&tail[..extra]);
            tail.drain(..extra);
        }
    }
    if tail.len() < TRAILER_LEN {
        return Err(corrupt("it ends early (truncated)"));
    }
    crc.update(&tail[..8]);
    let count = u64::from_le_bytes(tail[..8].try_into().unwrap());
    let stored = u32::from_le_bytes(tail[8..].try_into().unwrap());
    if count != total - TRAILER_LEN as u64 || crc.finalize() != stored {
        return Err(corrupt("its checksum does not match its contents (the file is truncated, extended or damaged)"));
    }
    Ok(())
}

fn read_header<R: Read>(r: &mut R) -> Result<Header, StatsError> {
    let mut head = [0u8; HEAD_LEN];
    let got = read_up_to(r, &mut head)?;
    check_head(&head[..got])?;
    let h: Header = bincode::deserialize_from(&mut *r).map_err(|e| decode_error(*e))?;
    let c = &h.0;
    if c.check().is_err()
        || h.1.len() != c.n_layers
        || h.2.position_totals.len() != c.max_positions
        || h.2.token_occurrences.len() != c.vocab_size
        || !h.3.fits(c.n_layers)
    {
        return Err(corrupt("sizes disagree with its settings"));
    }
    Ok(h)
}

fn read_layer<R: Read>(r: &mut R, c: &StatsConfig, n_sources: usize) -> Result<Layer, StatsError> {
    let layer: Layer = bincode::deserialize_from(&mut *r).map_err(|e| decode_error(*e))?;
    let sizes_ok = layer.0.len() == c.n_neurons
        && layer.1.len() == c.n_neurons.div_ceil(CHUNK)
        && layer.2.len() == n_sources * c.n_neurons;
    // Token ids index the data's counts when finalized: one outside the vocabulary would not be data.
    let tokens_ok =
        || layer.0.iter().flatten().all(|a| a.tokens.counts.iter().all(|(t, _)| (t as usize) < c.vocab_size));
    if !sizes_ok || !layer.1.iter().flatten().all(|p| p.fits(c.max_positions)) || !tokens_ok() {
        return Err(corrupt("a layer's size disagrees with its settings"));
    }
    Ok(layer)
}

/// The trailer after the last layer, and nothing after it.
fn read_trailer<R: Read>(mut r: Hashing<R>) -> Result<(), StatsError> {
    let before = r.n;
    let mut count = [0u8; 8];
    let mut stored = [0u8; 4];
    let ok = read_up_to(&mut r, &mut count)? == 8 && read_up_to(&mut r.inner, &mut stored)? == 4;
    if !ok {
        return Err(corrupt("it ends early (truncated)"));
    }
    if u64::from_le_bytes(count) != before || r.crc.finalize() != u32::from_le_bytes(stored) {
        return Err(corrupt("its checksum does not match its contents (the file is damaged)"));
    }
    let extra = read_up_to(&mut r.inner, &mut [0u8; 1])?;
    if extra > 0 {
        return Err(corrupt("unexpected bytes after its end (two states written into one file?)"));
    }
    Ok(())
}

/// Name the file and the fix in an error about it.
fn about_file(path: &Path, e: StatsError) -> StatsError {
    let p = path.display();
    match e {
        StatsError::Decode(m) => StatsError::Decode(format!("{p}: {m}; {FILE_ADVICE}")),
        StatsError::Io(m) => StatsError::Io(format!("{p}: {m}")),
        StatsError::Incompatible(m) => StatsError::Incompatible(format!("{p}: {m}")),
        e => e,
    }
}

fn about_bytes(e: StatsError) -> StatsError {
    match e {
        StatsError::Decode(m) => StatsError::Decode(format!("{m}; {BYTES_ADVICE}")),
        e => e,
    }
}

fn open(path: &Path) -> Result<std::io::BufReader<std::fs::File>, StatsError> {
    let f = std::fs::File::open(path).map_err(|e| StatsError::Io(format!("cannot open {}: {e}", path.display())))?;
    Ok(std::io::BufReader::with_capacity(1 << 20, f))
}

fn rewind<R: Seek>(r: &mut R) -> Result<(), StatsError> {
    r.seek(SeekFrom::Start(0)).map(|_| ()).map_err(read_io)
}

impl NeuronStats {
    /// Write the state (see the module comment), streamed: no copy is held.
    pub fn write_to<W: Write>(&self, w: W) -> Result<(), StatsError> {
        self.check_usable()?;
        let mut w = Hashing::new(w);
        w.write_all(&head_bytes()).map_err(write_io)?;
        bincode::serialize_into(&mut w, &(&self.config, &self.layer_rows, &self.data, &self.sources))
            .map_err(write_io)?;
        for ((accs, pos), counts) in self.layers.iter().zip(&self.positions).zip(&self.source_counts) {
            bincode::serialize_into(&mut w, &(accs, pos, counts)).map_err(write_io)?;
        }
        let count = w.n;
        w.write_all(&count.to_le_bytes()).map_err(write_io)?;
        let Hashing { mut inner, crc, .. } = w;
        inner.write_all(&crc.finalize().to_le_bytes()).map_err(write_io)?;
        inner.flush().map_err(write_io)
    }

    /// Read a state in one pass; its checksum is checked at the end (the callers in this module
    /// verify a stream before reading it, so that nothing is decoded from damaged bytes).
    pub fn read_from<R: Read>(r: R) -> Result<Self, StatsError> {
        let mut r = Hashing::new(r);
        let (config, layer_rows, data, sources) = read_header(&mut r)?;
        let n = config.n_layers;
        let (mut layers, mut positions, mut source_counts) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::new());
        for _ in 0..n {
            let (accs, pos, counts) = read_layer(&mut r, &config, sources.n_sources)?;
            layers.push(accs);
            positions.push(pos);
            source_counts.push(counts);
        }
        read_trailer(r)?;
        Ok(NeuronStats { config, layers, positions, layer_rows, data, sources, source_counts, unusable: None })
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, StatsError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StatsError> {
        verify(bytes).and_then(|_| Self::read_from(bytes)).map_err(about_bytes)
    }

    /// Write the state to a file (checkpoints of big models: tens of GB, never copied in memory).
    pub fn save(&self, path: &Path) -> Result<(), StatsError> {
        self.check_usable()?;
        let f = std::fs::File::create(path)
            .map_err(|e| StatsError::Io(format!("cannot create {}: {e}", path.display())))?;
        self.write_to(std::io::BufWriter::with_capacity(1 << 20, f)).map_err(|e| about_file(path, e))
    }

    /// Read a state file, verified whole first (two passes over the file, 1 MiB held at a time by the first).
    pub fn load(path: &Path) -> Result<Self, StatsError> {
        let mut r = open(path)?;
        let read = |r: &mut std::io::BufReader<std::fs::File>| {
            verify(&mut *r)?;
            rewind(r)?;
            Self::read_from(r)
        };
        read(&mut r).map_err(|e| about_file(path, e))
    }

    /// `merge` of a state streamed by `write_to` (a saved file, say), holding one of its layers in
    /// memory at a time: rank 0 of a data-parallel run of a big model never holds two whole states.
    /// The stream is verified whole (checksum, settings) before anything is added; should reading
    /// still fail midway (an IO error), this state is left partly merged and marked unusable:
    /// every later call then fails.
    pub fn merge_from<R: Read + Seek>(&mut self, mut r: R) -> Result<(), StatsError> {
        self.check_usable()?;
        verify(&mut r)?;
        rewind(&mut r)?;
        let mut r = Hashing::new(r);
        let (config, layer_rows, data, sources) = read_header(&mut r)?;
        self.check_mergeable(&config, &sources)?;
        let merge = || {
            self.merge_totals(&layer_rows, &data, &sources);
            drop(data);
            for l in 0..config.n_layers {
                let (accs, pos, counts) = read_layer(&mut r, &config, sources.n_sources)?;
                self.merge_layer(l, &accs, &pos, &counts);
            }
            read_trailer(r)
        };
        let result = merge();
        if let Err(e) = &result {
            self.unusable = Some(format!("a merge failed midway and left it partly merged ({e})"));
        }
        result
    }

    pub fn merge_file(&mut self, path: &Path) -> Result<(), StatsError> {
        let r = open(path)?;
        self.merge_from(r).map_err(|e| about_file(path, e))
    }
}
