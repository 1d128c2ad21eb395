//! Thin PyO3 binding of `opt_neurons_core`: numpy in (zero-copy), numpy out, GIL released
//! while the core works. No statistics are computed here.

use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use opt_neurons_core::summary::DEFAULT_CAPACITY;
use opt_neurons_core::{DetectorParams, NeuronStats, PositionalParams, StatsConfig, StatsError};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

mod examples;

fn err(e: StatsError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn contiguous<'a, T: numpy::Element, D: numpy::ndarray::Dimension>(
    a: &'a numpy::PyReadonlyArray<'_, T, D>,
    name: &str,
) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| PyValueError::new_err(format!("{name} must be a C-contiguous array (use np.ascontiguousarray)")))
}

/// (layer, view) pairs of a multi-layer call: one item per layer, each seen through `view`.
fn per_layer<'a, A, V>(
    layers: &[usize],
    items: &'a [A],
    what: &str,
    view: impl Fn(&'a A) -> PyResult<V>,
) -> PyResult<Vec<(usize, V)>> {
    if layers.len() != items.len() {
        return Err(PyValueError::new_err(format!("{} layers but {} {what}: give one per layer", layers.len(), items.len())));
    }
    layers.iter().zip(items).map(|(&l, a)| Ok((l, view(a)?))).collect()
}

#[pyclass(name = "NeuronStats", module = "opt_neurons._core")]
struct PyNeuronStats {
    inner: NeuronStats,
}

#[pymethods]
impl PyNeuronStats {
    #[new]
    #[pyo3(signature = (n_layers, n_neurons, vocab_size, max_positions, *, bos_token_id=Some(2), ngram_capacity=DEFAULT_CAPACITY))]
    fn new(
        n_layers: usize,
        n_neurons: usize,
        vocab_size: usize,
        max_positions: usize,
        bos_token_id: Option<u32>,
        ngram_capacity: usize,
    ) -> PyResult<Self> {
        let config = StatsConfig { n_layers, n_neurons, vocab_size, max_positions, bos_token_id, ngram_capacity };
        Ok(PyNeuronStats { inner: NeuronStats::new(config).map_err(err)? })
    }

    /// bits: (rows, ceil(n_neurons/64)) uint64; token_ids, positions: (rows,) uint32.
    fn update(
        &mut self,
        py: Python<'_>,
        layer: usize,
        bits: PyReadonlyArray2<'_, u64>,
        token_ids: PyReadonlyArray1<'_, u32>,
        positions: PyReadonlyArray1<'_, u32>,
    ) -> PyResult<()> {
        let n_words = bits.shape()[1];
        let b = contiguous(&bits, "bits")?;
        let t = contiguous(&token_ids, "token_ids")?;
        let p = contiguous(&positions, "positions")?;
        let inner = &mut self.inner;
        py.allow_threads(|| inner.update(layer, b, n_words, t, p)).map_err(err)
    }

    /// Activation counts only (frequency, dead): bits (rows, ceil(n_neurons/64)) uint64.
    fn update_activity(&mut self, py: Python<'_>, layer: usize, bits: PyReadonlyArray2<'_, u64>) -> PyResult<()> {
        let n_words = bits.shape()[1];
        let b = contiguous(&bits, "bits")?;
        let inner = &mut self.inner;
        py.allow_threads(|| inner.update_activity(layer, b, n_words)).map_err(err)
    }

    /// `update` for several layers of the same rows in one parallel pass: layers[i] gets bits[i], a
    /// list of (rows, words) arrays that together hold the rows in order (no joined copy needed).
    fn update_layers(
        &mut self,
        py: Python<'_>,
        layers: Vec<usize>,
        bits: Vec<Vec<PyReadonlyArray2<'_, u64>>>,
        token_ids: PyReadonlyArray1<'_, u32>,
        positions: PyReadonlyArray1<'_, u32>,
    ) -> PyResult<()> {
        let n_words = bits.iter().flatten().next().map_or(0, |b| b.shape()[1]);
        if let Some(b) = bits.iter().flatten().find(|b| b.shape()[1] != n_words) {
            return Err(PyValueError::new_err(format!("bitmasks of {} and {n_words} words per row in one update", b.shape()[1])));
        }
        let chunks = per_layer(&layers, &bits, "bitmask lists", |c| c.iter().map(|a| contiguous(a, "bitmasks")).collect::<PyResult<Vec<_>>>())?;
        let pairs: Vec<(usize, &[&[u64]])> = chunks.iter().map(|(l, c)| (*l, c.as_slice())).collect();
        let t = contiguous(&token_ids, "token_ids")?;
        let p = contiguous(&positions, "positions")?;
        let inner = &mut self.inner;
        py.allow_threads(|| inner.update_layers(&pairs, n_words, t, p)).map_err(err)
    }

    /// Activation counts summed elsewhere (the GPU): layers[i] gets counts[i] (n_neurons,) over n_rows rows.
    fn add_activity_counts(
        &mut self,
        py: Python<'_>,
        layers: Vec<usize>,
        counts: Vec<PyReadonlyArray1<'_, u64>>,
        n_rows: u64,
    ) -> PyResult<()> {
        let pairs = per_layer(&layers, &counts, "count arrays", |a| contiguous(a, "count arrays"))?;
        let inner = &mut self.inner;
        py.allow_threads(|| inner.add_activity_counts(&pairs, n_rows)).map_err(err)
    }

    /// `merge` of a state saved with `save`, read one layer at a time.
    fn merge_file(&mut self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let inner = &mut self.inner;
        py.allow_threads(|| inner.merge_file(&path)).map_err(err)
    }

    fn merge(&mut self, py: Python<'_>, other: PyRef<'_, PyNeuronStats>) -> PyResult<()> {
        let inner = &mut self.inner;
        let o = &other.inner;
        py.allow_threads(|| inner.merge(o)).map_err(err)
    }

    #[pyo3(signature = (*, coverage=0.95, token_hit_rate=0.95, detector_share=0.95, max_tokens=5, max_trigrams=50,
        mi_threshold=0.05, active_level=0.5, low=0.05, strong_low=0.01, high=0.95, strong_high=0.99,
        min_oscillations=3, smoothing_half_width=0))]
    #[allow(clippy::too_many_arguments)]
    fn finalize<'py>(
        &self,
        py: Python<'py>,
        coverage: f64,
        token_hit_rate: f64,
        detector_share: f64,
        max_tokens: u32,
        max_trigrams: u32,
        mi_threshold: f64,
        active_level: f64,
        low: f64,
        strong_low: f64,
        high: f64,
        strong_high: f64,
        min_oscillations: usize,
        smoothing_half_width: usize,
    ) -> PyResult<Bound<'py, PyDict>> {
        let dp = DetectorParams { coverage, token_hit_rate, detector_share, max_tokens, max_trigrams };
        let pp = PositionalParams {
            mi_threshold,
            active_level,
            low,
            strong_low,
            high,
            strong_high,
            min_oscillations,
            smoothing_half_width,
        };
        let inner = &self.inner;
        let f = py.allow_threads(|| inner.finalize(&dp, &pp)).map_err(err)?;
        let d = PyDict::new(py);
        macro_rules! put {
            ($($name:ident),*) => { $( d.set_item(stringify!($name), PyArray1::from_vec(py, f.$name))?; )* };
        }
        put!(layer, neuron, n_active, frequency, dead, cover_1, cover_1_max, cover_2, cover_2_max, cover_3, cover_3_max,
            token_detector, detected_tokens, detected_tokens_offsets, trigram_detector, detected_trigrams,
            detected_trigrams_offsets, mi_position, positional, positional_strong, interval_start, interval_end,
            intervals_offsets);
        d.set_item("positional_kind", f.positional_kind)?;
        Ok(d)
    }

    fn position_counts<'py>(&self, py: Python<'py>, layer: usize, neuron: usize) -> PyResult<Bound<'py, PyArray1<u32>>> {
        Ok(PyArray1::from_vec(py, self.inner.position_counts(layer, neuron).map_err(err)?))
    }

    /// (token ids, counts, slack) of one neuron on non-BOS rows, heaviest first.
    #[allow(clippy::type_complexity)]
    fn token_counts<'py>(
        &self,
        py: Python<'py>,
        layer: usize,
        neuron: usize,
    ) -> PyResult<(Bound<'py, PyArray1<u32>>, Bound<'py, PyArray1<u32>>, u64)> {
        let (pairs, slack) = self.inner.token_counts(layer, neuron).map_err(err)?;
        let (t, c): (Vec<u32>, Vec<u32>) = pairs.into_iter().unzip();
        Ok((PyArray1::from_vec(py, t), PyArray1::from_vec(py, c), slack))
    }

    fn position_totals<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_slice(py, self.inner.position_totals())
    }

    fn token_occurrences<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_slice(py, self.inner.token_occurrences())
    }

    fn layer_rows<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_slice(py, self.inner.layer_rows())
    }

    #[getter]
    fn rows(&self) -> u64 {
        self.inner.rows()
    }

    #[getter]
    fn detail_rows(&self) -> u64 {
        self.inner.detail_rows()
    }

    fn memory_bytes(&self) -> usize {
        self.inner.memory_bytes()
    }

    fn memory_bound(&self) -> usize {
        self.inner.memory_bound()
    }

    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.inner.config();
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
        let inner = &self.inner;
        let b = py.allow_threads(|| inner.to_bytes()).map_err(err)?;
        Ok(PyBytes::new(py, &b))
    }

    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let inner = py.allow_threads(|| NeuronStats::from_bytes(data)).map_err(err)?;
        Ok(PyNeuronStats { inner })
    }

    fn save(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let inner = &self.inner;
        py.allow_threads(|| inner.save(&path)).map_err(err)
    }

    #[staticmethod]
    fn load(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let inner = py.allow_threads(|| NeuronStats::load(&path)).map_err(err)?;
        Ok(PyNeuronStats { inner })
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNeuronStats>()?;
    m.add_class::<examples::PyExamples>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_CAPACITY", DEFAULT_CAPACITY)?;
    Ok(())
}
