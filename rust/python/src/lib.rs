//! Thin PyO3 binding of `opt_neurons_core`: numpy in (zero-copy), numpy out, GIL released
//! while the core works. No statistics are computed here.

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use opt_neurons_core::stats::{CountedLayer, STATE_FORMAT_VERSION, STATE_MAGIC};
use opt_neurons_core::summary::DEFAULT_CAPACITY;
use opt_neurons_core::{DetectorParams, NeuronStats, PositionalParams, StatsConfig};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

mod convert;
mod examples;

use convert::{
    contiguous, err, key_counts, layer_args, per_layer, CountedArrays, IncompatibleStateError, IntArg, OptionError,
    ShapeError,
};

#[pyclass(name = "NeuronStats", module = "opt_neurons._core")]
struct PyNeuronStats {
    inner: NeuronStats,
}

impl PyNeuronStats {
    /// The state, unless a failed merge left it unusable (then every method raises).
    fn stats(&self) -> PyResult<&NeuronStats> {
        self.inner.check_usable().map_err(err)?;
        Ok(&self.inner)
    }

    fn stats_mut(&mut self) -> PyResult<&mut NeuronStats> {
        self.inner.check_usable().map_err(err)?;
        Ok(&mut self.inner)
    }
}

#[pymethods]
impl PyNeuronStats {
    #[new]
    #[pyo3(signature = (n_layers, n_neurons, vocab_size, max_positions, *, bos_token_id=Some(IntArg::of(2)), ngram_capacity=IntArg::of(DEFAULT_CAPACITY), n_sources=IntArg::of(0)))]
    fn new(
        n_layers: IntArg,
        n_neurons: IntArg,
        vocab_size: IntArg,
        max_positions: IntArg,
        bos_token_id: Option<IntArg>,
        ngram_capacity: IntArg,
        n_sources: IntArg,
    ) -> PyResult<Self> {
        let bos_token_id = match bos_token_id {
            None => None,
            Some(b) => Some(
                u32::try_from(b.size("bos_token_id")?)
                    .map_err(|_| OptionError::new_err("bos_token_id must fit in 32 bits"))?,
            ),
        };
        let config = StatsConfig {
            n_layers: n_layers.size("n_layers")?,
            n_neurons: n_neurons.size("n_neurons")?,
            vocab_size: vocab_size.size("vocab_size")?,
            max_positions: max_positions.size("max_positions")?,
            bos_token_id,
            ngram_capacity: ngram_capacity.size("ngram_capacity")?,
        };
        let inner = NeuronStats::with_sources(config, n_sources.size("n_sources")?).map_err(err)?;
        Ok(PyNeuronStats { inner })
    }

    /// bits: (rows, ceil(n_neurons/64)) uint64; token_ids, positions: (rows,) uint32.
    fn update(
        &mut self,
        py: Python<'_>,
        layer: IntArg,
        bits: PyReadonlyArray2<'_, u64>,
        token_ids: PyReadonlyArray1<'_, u32>,
        positions: PyReadonlyArray1<'_, u32>,
    ) -> PyResult<()> {
        let layer = layer.index("layer")?;
        let n_words = bits.shape()[1];
        let b = contiguous(&bits, "bits")?;
        let t = contiguous(&token_ids, "token_ids")?;
        let p = contiguous(&positions, "positions")?;
        let inner = self.stats_mut()?;
        py.allow_threads(|| inner.update(layer, b, n_words, t, p)).map_err(err)
    }

    /// Activation counts only (frequency, dead): bits (rows, ceil(n_neurons/64)) uint64.
    fn update_activity(&mut self, py: Python<'_>, layer: IntArg, bits: PyReadonlyArray2<'_, u64>) -> PyResult<()> {
        let layer = layer.index("layer")?;
        let n_words = bits.shape()[1];
        let b = contiguous(&bits, "bits")?;
        let inner = self.stats_mut()?;
        py.allow_threads(|| inner.update_activity(layer, b, n_words)).map_err(err)
    }

    /// `update` for several layers of the same rows in one parallel pass: layers[i] gets bits[i], a
    /// list of (rows, words) arrays that together hold the rows in order (no joined copy needed).
    fn update_layers(
        &mut self,
        py: Python<'_>,
        layers: Vec<IntArg>,
        bits: Vec<Vec<PyReadonlyArray2<'_, u64>>>,
        token_ids: PyReadonlyArray1<'_, u32>,
        positions: PyReadonlyArray1<'_, u32>,
    ) -> PyResult<()> {
        let layers = layer_args(layers)?;
        let n_words = bits.iter().flatten().next().map_or(0, |b| b.shape()[1]);
        if let Some(b) = bits.iter().flatten().find(|b| b.shape()[1] != n_words) {
            return Err(ShapeError::new_err(format!(
                "bitmasks of {} and {n_words} words per row in one update",
                b.shape()[1]
            )));
        }
        let chunks = per_layer(&layers, &bits, "bitmask lists", |c| {
            c.iter().map(|a| contiguous(a, "bitmasks")).collect::<PyResult<Vec<_>>>()
        })?;
        let pairs: Vec<(usize, &[&[u64]])> = chunks.iter().map(|(l, c)| (*l, c.as_slice())).collect();
        let t = contiguous(&token_ids, "token_ids")?;
        let p = contiguous(&positions, "positions")?;
        let inner = self.stats_mut()?;
        py.allow_threads(|| inner.update_layers(&pairs, n_words, t, p)).map_err(err)
    }

    /// Activation counts summed elsewhere (the GPU): layers[i] gets counts[i] (n_neurons,) over n_rows rows.
    fn add_activity_counts(
        &mut self,
        py: Python<'_>,
        layers: Vec<IntArg>,
        counts: Vec<PyReadonlyArray1<'_, u64>>,
        n_rows: IntArg,
    ) -> PyResult<()> {
        let layers = layer_args(layers)?;
        let n_rows = n_rows.index("n_rows")? as u64;
        let pairs = per_layer(&layers, &counts, "count arrays", |a| contiguous(a, "count arrays"))?;
        let inner = self.stats_mut()?;
        py.allow_threads(|| inner.add_activity_counts(&pairs, n_rows)).map_err(err)
    }

    /// Activations per (source, neuron) summed elsewhere (the GPU): layers[i] gets counts[i] (n_sources,
    /// n_neurons) over rows[s] rows of each source s.
    fn add_source_counts(
        &mut self,
        py: Python<'_>,
        layers: Vec<IntArg>,
        counts: Vec<PyReadonlyArray2<'_, u64>>,
        rows: PyReadonlyArray1<'_, u64>,
    ) -> PyResult<()> {
        let layers = layer_args(layers)?;
        let pairs = per_layer(&layers, &counts, "count arrays", |a| contiguous(a, "count arrays"))?;
        let rows = contiguous(&rows, "rows")?;
        let inner = self.stats_mut()?;
        py.allow_threads(|| inner.add_source_counts(&pairs, rows)).map_err(err)
    }

    /// One layer's activations per source: (n_sources, n_neurons) uint64 ((0, n_neurons) without sources).
    fn source_counts<'py>(&self, py: Python<'py>, layer: IntArg) -> PyResult<Bound<'py, PyArray2<u64>>> {
        let layer = layer.index("layer")?;
        let s = self.stats()?;
        let counts = s.source_counts(layer).map_err(err)?;
        PyArray1::from_slice(py, counts).reshape([s.n_sources(), s.config().n_neurons])
    }

    /// Tokens counted per source.
    fn source_rows<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<u64>>> {
        Ok(PyArray1::from_slice(py, self.stats()?.source_rows()))
    }

    #[getter]
    fn n_sources(&self) -> PyResult<usize> {
        Ok(self.stats()?.n_sources())
    }

    /// Blocks of detail rows counted elsewhere (the device): layers[i] gets counted[i] = (activation
    /// counts (n_neurons,), then (neurons, keys, counts) of tokens, bigrams and trigrams, each sorted by neuron).
    fn merge_counted_layers(
        &mut self,
        py: Python<'_>,
        layers: Vec<IntArg>,
        counted: Vec<CountedArrays<'_>>,
        token_ids: PyReadonlyArray1<'_, u32>,
        positions: PyReadonlyArray1<'_, u32>,
    ) -> PyResult<()> {
        let layers = layer_args(layers)?;
        let views = per_layer(&layers, &counted, "counted blocks", |(a, t, b, c)| {
            Ok(CountedLayer {
                active: contiguous(a, "activation counts")?,
                tokens: key_counts(t)?,
                bigrams: key_counts(b)?,
                trigrams: key_counts(c)?,
            })
        })?;
        let t = contiguous(&token_ids, "token_ids")?;
        let p = contiguous(&positions, "positions")?;
        let inner = self.stats_mut()?;
        py.allow_threads(|| inner.merge_counted_layers(&views, t, p)).map_err(err)
    }

    /// One layer's position counts counted elsewhere: (max_positions, n_neurons) uint32.
    fn add_position_counts(
        &mut self,
        py: Python<'_>,
        layer: IntArg,
        counts: PyReadonlyArray2<'_, u32>,
    ) -> PyResult<()> {
        let layer = layer.index("layer")?;
        let c = contiguous(&counts, "position counts")?;
        let inner = self.stats_mut()?;
        py.allow_threads(|| inner.add_position_counts(layer, c)).map_err(err)
    }

    /// `merge` of a state saved with `save`, verified whole and then read one layer at a time.
    fn merge_file(&mut self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let inner = self.stats_mut()?;
        py.allow_threads(|| inner.merge_file(&path)).map_err(err)
    }

    fn merge(slf: &Bound<'_, Self>, py: Python<'_>, other: &Bound<'_, PyNeuronStats>) -> PyResult<()> {
        if slf.is(other) {
            return Err(IncompatibleStateError::new_err(
                "cannot merge a NeuronStats into itself; to double its counts, merge a copy (NeuronStats.from_bytes(s.to_bytes()))",
            ));
        }
        let mut me = slf.borrow_mut();
        let o = other.borrow();
        let inner = me.stats_mut()?;
        let o = o.stats()?;
        py.allow_threads(|| inner.merge(o)).map_err(err)
    }

    /// Thresholds not given take the core's defaults (`DEFAULT_THRESHOLDS`).
    #[pyo3(signature = (*, coverage=None, token_hit_rate=None, detector_share=None, max_tokens=None, max_trigrams=None,
        min_count=None, mi_threshold=None, active_level=None, low=None, strong_low=None, high=None, strong_high=None,
        min_oscillations=None, smoothing_half_width=None, thin_spread=None))]
    #[allow(clippy::too_many_arguments)]
    fn finalize<'py>(
        &self,
        py: Python<'py>,
        coverage: Option<f64>,
        token_hit_rate: Option<f64>,
        detector_share: Option<f64>,
        max_tokens: Option<u32>,
        max_trigrams: Option<u32>,
        min_count: Option<u64>,
        mi_threshold: Option<f64>,
        active_level: Option<f64>,
        low: Option<f64>,
        strong_low: Option<f64>,
        high: Option<f64>,
        strong_high: Option<f64>,
        min_oscillations: Option<usize>,
        smoothing_half_width: Option<usize>,
        thin_spread: Option<f64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let (mut dp, mut pp) = (DetectorParams::default(), PositionalParams::default());
        macro_rules! set {
            ($s:ident: $($f:ident),*) => { $( if let Some(v) = $f { $s.$f = v; } )* };
        }
        set!(dp: coverage, token_hit_rate, detector_share, max_tokens, max_trigrams, min_count);
        set!(
            pp: mi_threshold,
            active_level,
            low,
            strong_low,
            high,
            strong_high,
            min_oscillations,
            smoothing_half_width,
            thin_spread
        );
        let inner = self.stats()?;
        let f = py.allow_threads(|| inner.finalize(&dp, &pp)).map_err(err)?;
        let d = PyDict::new(py);
        macro_rules! put {
            ($($name:ident),*) => { $( d.set_item(stringify!($name), PyArray1::from_vec(py, f.$name))?; )* };
        }
        put!(
            layer,
            neuron,
            n_active,
            frequency,
            dead,
            cover_1,
            cover_1_max,
            cover_2,
            cover_2_max,
            cover_3,
            cover_3_max,
            token_detector,
            detected_tokens,
            detected_tokens_offsets,
            trigram_detector,
            detected_trigrams,
            detected_trigrams_offsets,
            mi_position,
            positional,
            positional_strong,
            positional_spread,
            interval_start,
            interval_end,
            intervals_offsets
        );
        d.set_item("positional_kind", f.positional_kind)?;
        Ok(d)
    }

    fn position_counts<'py>(
        &self,
        py: Python<'py>,
        layer: IntArg,
        neuron: IntArg,
    ) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let (layer, neuron) = (layer.index("layer")?, neuron.index("neuron")?);
        Ok(PyArray1::from_vec(py, self.stats()?.position_counts(layer, neuron).map_err(err)?))
    }

    /// (token ids, counts, slack) of one neuron on non-BOS rows, heaviest first.
    #[allow(clippy::type_complexity)]
    fn token_counts<'py>(
        &self,
        py: Python<'py>,
        layer: IntArg,
        neuron: IntArg,
    ) -> PyResult<(Bound<'py, PyArray1<u32>>, Bound<'py, PyArray1<u32>>, u64)> {
        let (layer, neuron) = (layer.index("layer")?, neuron.index("neuron")?);
        let (pairs, slack) = self.stats()?.token_counts(layer, neuron).map_err(err)?;
        let (t, c): (Vec<u32>, Vec<u32>) = pairs.into_iter().unzip();
        Ok((PyArray1::from_vec(py, t), PyArray1::from_vec(py, c), slack))
    }

    fn position_totals<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<u64>>> {
        Ok(PyArray1::from_slice(py, self.stats()?.position_totals()))
    }

    fn token_occurrences<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<u64>>> {
        Ok(PyArray1::from_slice(py, self.stats()?.token_occurrences()))
    }

    fn layer_rows<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<u64>>> {
        Ok(PyArray1::from_slice(py, self.stats()?.layer_rows()))
    }

    #[getter]
    fn rows(&self) -> PyResult<u64> {
        Ok(self.stats()?.rows())
    }

    #[getter]
    fn detail_rows(&self) -> PyResult<u64> {
        Ok(self.stats()?.detail_rows())
    }

    fn memory_bytes(&self) -> PyResult<usize> {
        Ok(self.stats()?.memory_bytes())
    }

    fn memory_bound(&self) -> PyResult<usize> {
        Ok(self.stats()?.memory_bound())
    }

    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.stats()?.config();
        let d = PyDict::new(py);
        d.set_item("n_layers", c.n_layers)?;
        d.set_item("n_neurons", c.n_neurons)?;
        d.set_item("vocab_size", c.vocab_size)?;
        d.set_item("max_positions", c.max_positions)?;
        d.set_item("bos_token_id", c.bos_token_id)?;
        d.set_item("ngram_capacity", c.ngram_capacity)?;
        Ok(d)
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let inner = self.stats()?;
        let b = py.allow_threads(|| inner.to_bytes()).map_err(err)?;
        Ok(PyBytes::new(py, &b))
    }

    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let inner = py.allow_threads(|| NeuronStats::from_bytes(data)).map_err(err)?;
        Ok(PyNeuronStats { inner })
    }

    fn save(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let inner = self.stats()?;
        py.allow_threads(|| inner.save(&path)).map_err(err)
    }

    #[staticmethod]
    fn load(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let inner = py.allow_threads(|| NeuronStats::load(&path)).map_err(err)?;
        Ok(PyNeuronStats { inner })
    }
}

/// Every finalize threshold with its default: the core's `Default` impls, the one place they are set
/// (opt_neurons.params.Thresholds is built from this).
fn default_thresholds(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let (dp, pp) = (DetectorParams::default(), PositionalParams::default());
    let d = PyDict::new(py);
    macro_rules! put {
        ($s:ident: $($f:ident),*) => { $( d.set_item(stringify!($f), $s.$f)?; )* };
    }
    put!(dp: coverage, token_hit_rate, detector_share, max_tokens, max_trigrams, min_count);
    put!(
        pp: mi_threshold,
        active_level,
        low,
        strong_low,
        high,
        strong_high,
        min_oscillations,
        smoothing_half_width,
        thin_spread
    );
    Ok(d)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNeuronStats>()?;
    m.add_class::<examples::PyExamples>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_CAPACITY", DEFAULT_CAPACITY)?;
    m.add("DEFAULT_THRESHOLDS", default_thresholds(m.py())?)?;
    m.add("STATE_MAGIC", PyBytes::new(m.py(), STATE_MAGIC))?;
    m.add("STATE_FORMAT_VERSION", STATE_FORMAT_VERSION)?;
    Ok(())
}
