//! The examples state on disk: "OPTNEX01", the bincode of the state, then a CRC-32 (u32 LE) of every byte
//! before it. A damaged, truncated or other-version file is refused before anything of it is used.

use super::{Examples, CHUNK, MAGIC};
use crate::error::StatsError;

impl Examples {
    /// The state, then a checksum of everything before it.
    pub fn write_to<W: std::io::Write>(&self, w: W) -> Result<(), StatsError> {
        let io = |e: std::io::Error| StatsError::Io(format!("cannot write the examples state: {e}"));
        let mut hw = Checksummed::new(w);
        std::io::Write::write_all(&mut hw, MAGIC).map_err(io)?;
        bincode::serialize_into(&mut hw, self)
            .map_err(|e| StatsError::Io(format!("cannot write the examples state: {e}")))?;
        let (sum, mut w) = (hw.crc.finalize(), hw.inner);
        w.write_all(&sum.to_le_bytes()).map_err(io)?;
        w.flush().map_err(io)
    }

    pub fn read_from<R: std::io::Read>(r: R) -> Result<Self, StatsError> {
        let mut hr = Checksummed::new(r);
        let mut magic = [0u8; 8];
        if std::io::Read::read_exact(&mut hr, &mut magic).is_err() || &magic != MAGIC {
            return Err(StatsError::Decode(
                "not an examples state (bad header); was it written by this version?".into(),
            ));
        }
        let state: Examples = bincode::deserialize_from(&mut hr)
            .map_err(|e| StatsError::Decode(format!("damaged examples state: {e}")))?;
        let (sum, mut r) = (hr.crc.finalize(), hr.inner);
        let mut stored = [0u8; 4];
        r.read_exact(&mut stored).map_err(|_| {
            StatsError::Decode("damaged examples state: its checksum is missing (truncated file)".into())
        })?;
        if u32::from_le_bytes(stored) != sum {
            return Err(StatsError::Decode("damaged examples state: checksum mismatch".into()));
        }
        let c = &state.config;
        let (n, k) = (c.n_neurons, c.k);
        if state.layers.len() != c.n_layers
            || state.layers.iter().any(|l| {
                l.sample.len() != n.div_ceil(CHUNK)
                    || l.top_values.len() != n * k
                    || l.top_ids.len() != n * k
                    || l.sums.len() != n
                    || l.maxima.len() != n
            })
        {
            return Err(StatsError::Decode("damaged examples state: sizes disagree with its settings".into()));
        }
        Ok(state)
    }

    pub fn save(&self, path: &std::path::Path) -> Result<(), StatsError> {
        let f = std::fs::File::create(path)
            .map_err(|e| StatsError::Io(format!("cannot create {}: {e}", path.display())))?;
        self.write_to(std::io::BufWriter::with_capacity(1 << 20, f))
    }

    pub fn load(path: &std::path::Path) -> Result<Self, StatsError> {
        let f =
            std::fs::File::open(path).map_err(|e| StatsError::Io(format!("cannot open {}: {e}", path.display())))?;
        Self::read_from(std::io::BufReader::with_capacity(1 << 20, f))
    }
}

/// A reader or writer that folds every byte through it into a CRC-32 (as the statistics' state file).
struct Checksummed<T> {
    inner: T,
    crc: crc32fast::Hasher,
}

impl<T> Checksummed<T> {
    fn new(inner: T) -> Self {
        Checksummed { inner, crc: crc32fast::Hasher::new() }
    }

    fn add(&mut self, bytes: &[u8]) {
        self.crc.update(bytes);
    }
}

impl<W: std::io::Write> std::io::Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.add(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: std::io::Read> std::io::Read for Checksummed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.add(&buf[..n]);
        Ok(n)
    }
}
