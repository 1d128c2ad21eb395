//! The saved state: a header (settings, row counts, the data's own counts), then each layer on its
//! own, so that a reader can take one layer at a time (`merge_from`).

use super::{DataStats, NeuronAcc, NeuronStats, StatsConfig};
use crate::error::StatsError;
use crate::position_counts::{PositionChunk, CHUNK};

const MAGIC: &[u8; 8] = b"OPTNST03";

type Header = (StatsConfig, Vec<u64>, DataStats);
type Layer = (Vec<Option<Box<NeuronAcc>>>, Vec<Option<Box<PositionChunk>>>);

fn read_header<R: std::io::Read>(r: &mut R) -> Result<Header, StatsError> {
    let mut magic = [0u8; 8];
    if r.read_exact(&mut magic).is_err() || &magic != MAGIC {
        return Err(StatsError::Decode("not a NeuronStats state (bad header); was it written by this version?".into()));
    }
    let h: Header = bincode::deserialize_from(&mut *r).map_err(|e| StatsError::Decode(format!("corrupt NeuronStats state: {e}")))?;
    let c = &h.0;
    if h.1.len() != c.n_layers || h.2.position_totals.len() != c.max_positions || h.2.token_occurrences.len() != c.vocab_size {
        return Err(StatsError::Decode("corrupt NeuronStats state: sizes disagree with its settings".into()));
    }
    Ok(h)
}

fn read_layer<R: std::io::Read>(r: &mut R, c: &StatsConfig) -> Result<Layer, StatsError> {
    let layer: Layer = bincode::deserialize_from(&mut *r).map_err(|e| StatsError::Decode(format!("corrupt NeuronStats state: {e}")))?;
    if layer.0.len() != c.n_neurons || layer.1.len() != c.n_neurons.div_ceil(CHUNK) {
        return Err(StatsError::Decode("corrupt NeuronStats state: a layer's size disagrees with its settings".into()));
    }
    Ok(layer)
}

impl NeuronStats {
    /// The state, streamed: a header (settings, row counts, the data's own counts), then each layer
    /// on its own, so that a reader can take one layer at a time (`merge_from`). No copy is held.
    pub fn write_to<W: std::io::Write>(&self, mut w: W) -> Result<(), StatsError> {
        let io = |e: std::io::Error| StatsError::Io(format!("cannot write the NeuronStats state: {e}"));
        let enc = |e: bincode::Error| StatsError::Io(format!("cannot write the NeuronStats state: {e}"));
        w.write_all(MAGIC).map_err(io)?;
        bincode::serialize_into(&mut w, &(&self.config, &self.layer_rows, &self.data)).map_err(enc)?;
        for (accs, pos) in self.layers.iter().zip(&self.positions) {
            bincode::serialize_into(&mut w, &(accs, pos)).map_err(enc)?;
        }
        w.flush().map_err(io)
    }

    pub fn read_from<R: std::io::Read>(mut r: R) -> Result<Self, StatsError> {
        let (config, layer_rows, data) = read_header(&mut r)?;
        let (mut layers, mut positions) = (Vec::with_capacity(config.n_layers), Vec::with_capacity(config.n_layers));
        for _ in 0..config.n_layers {
            let (accs, pos) = read_layer(&mut r, &config)?;
            layers.push(accs);
            positions.push(pos);
        }
        Ok(NeuronStats { config, layers, positions, layer_rows, data })
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, StatsError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StatsError> {
        Self::read_from(bytes)
    }

    /// Write the state to a file (checkpoints of big models: tens of GB, never copied in memory).
    pub fn save(&self, path: &std::path::Path) -> Result<(), StatsError> {
        let f = std::fs::File::create(path).map_err(|e| StatsError::Io(format!("cannot create {}: {e}", path.display())))?;
        self.write_to(std::io::BufWriter::with_capacity(1 << 20, f))
    }

    pub fn load(path: &std::path::Path) -> Result<Self, StatsError> {
        let f = std::fs::File::open(path).map_err(|e| StatsError::Io(format!("cannot open {}: {e}", path.display())))?;
        Self::read_from(std::io::BufReader::with_capacity(1 << 20, f))
    }

    /// `merge` of a state streamed by `write_to` (a saved file, say), holding one of its layers in
    /// memory at a time: rank 0 of a data-parallel run of a big model never holds two whole states.
    /// Settings are checked before anything is added; a stream that breaks off midway leaves this
    /// state partly merged (an error the caller cannot recover from, so it must stop).
    pub fn merge_from<R: std::io::Read>(&mut self, mut r: R) -> Result<(), StatsError> {
        let (config, layer_rows, data) = read_header(&mut r)?;
        self.merge_totals(&config, &layer_rows, &data)?;
        drop(data);
        for l in 0..config.n_layers {
            let (accs, pos) = read_layer(&mut r, &config)?;
            self.merge_layer(l, &accs, &pos);
        }
        Ok(())
    }

    pub fn merge_file(&mut self, path: &std::path::Path) -> Result<(), StatsError> {
        let f = std::fs::File::open(path).map_err(|e| StatsError::Io(format!("cannot open {}: {e}", path.display())))?;
        self.merge_from(std::io::BufReader::with_capacity(1 << 20, f))
    }
}
