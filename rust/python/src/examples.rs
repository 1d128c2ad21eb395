//! Binding of `opt_neurons_core::examples::Examples`: numpy in and out, GIL released while it works.

use crate::convert::{contiguous as slice, err, ShapeError};

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use opt_neurons_core::examples::{scan_batch, Examples, ExamplesConfig};
use pyo3::prelude::*;
use pyo3::types::PyDict;

#[pyclass(name = "Examples", module = "opt_neurons._core")]
pub struct PyExamples {
    inner: Examples,
}

#[pymethods]
impl PyExamples {
    #[new]
    fn new(n_layers: usize, n_neurons: usize, k: usize, seed: u64) -> PyResult<Self> {
        Ok(PyExamples { inner: Examples::new(ExamplesConfig { n_layers, n_neurons, k, seed }).map_err(err)? })
    }

    /// layers[i] gets bits[i] (a list of (rows, words) uint64 arrays holding the rows in order).
    fn update_layers(
        &mut self,
        py: Python<'_>,
        layers: Vec<usize>,
        bits: Vec<Vec<PyReadonlyArray2<'_, u64>>>,
        sequences: PyReadonlyArray1<'_, u32>,
        positions: PyReadonlyArray1<'_, u32>,
    ) -> PyResult<()> {
        if layers.len() != bits.len() {
            return Err(ShapeError::new_err("Examples.update_layers: one bitmask list per layer"));
        }
        let n_words = bits.iter().flatten().next().map_or(0, |b| b.shape()[1]);
        if bits.iter().flatten().any(|b| b.shape()[1] != n_words) {
            return Err(ShapeError::new_err("Examples.update_layers: bitmasks of different widths in one update"));
        }
        let chunks: Vec<Vec<&[u64]>> = bits
            .iter()
            .map(|c| c.iter().map(|a| slice(a, "bits")).collect::<PyResult<_>>())
            .collect::<PyResult<_>>()?;
        let pairs: Vec<(usize, &[&[u64]])> = layers.iter().copied().zip(chunks.iter().map(|c| c.as_slice())).collect();
        let s = slice(&sequences, "sequences")?;
        let p = slice(&positions, "positions")?;
        let inner = &mut self.inner;
        py.allow_threads(|| inner.update_layers(&pairs, n_words, s, p)).map_err(err)
    }

    /// values (k, n) float32, ids (k, n) uint64, sums (n,) float64, maxima (n,) float32.
    fn set_device_state(
        &mut self,
        layer: usize,
        values: PyReadonlyArray2<'_, f32>,
        ids: PyReadonlyArray2<'_, u64>,
        sums: PyReadonlyArray1<'_, f64>,
        maxima: PyReadonlyArray1<'_, f32>,
    ) -> PyResult<()> {
        self.inner
            .set_device_state(
                layer,
                slice(&values, "values")?,
                slice(&ids, "ids")?,
                slice(&sums, "sums")?,
                slice(&maxima, "maxima")?,
            )
            .map_err(err)
    }

    /// (values, ids, sums, maxima) of one layer; values and ids flat, (k * n) row-major.
    #[allow(clippy::type_complexity)]
    fn device_state<'py>(
        &self,
        py: Python<'py>,
        layer: usize,
    ) -> PyResult<(
        Bound<'py, PyArray1<f32>>,
        Bound<'py, PyArray1<u64>>,
        Bound<'py, PyArray1<f64>>,
        Bound<'py, PyArray1<f32>>,
    )> {
        let (v, i, s, m) = self.inner.device_state(layer).map_err(err)?;
        Ok((PyArray1::from_vec(py, v), PyArray1::from_vec(py, i), PyArray1::from_vec(py, s), PyArray1::from_vec(py, m)))
    }

    /// Rows the device sums cover (the caller's count, saved with the state).
    fn set_summed_rows(&mut self, rows: u64) {
        self.inner.set_summed_rows(rows)
    }

    #[getter]
    fn summed_rows(&self) -> u64 {
        self.inner.summed_rows()
    }

    #[getter]
    fn sampled_rows(&self) -> u64 {
        self.inner.sampled_rows()
    }

    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.inner.config();
        let d = PyDict::new(py);
        d.set_item("n_layers", c.n_layers)?;
        d.set_item("n_neurons", c.n_neurons)?;
        d.set_item("k", c.k)?;
        d.set_item("seed", c.seed)?;
        Ok(d)
    }

    fn merge(&mut self, py: Python<'_>, other: PyRef<'_, PyExamples>) -> PyResult<()> {
        let inner = &mut self.inner;
        let o = &other.inner;
        py.allow_threads(|| inner.merge(o)).map_err(err)
    }

    /// Sampled ids (sequence << 32 | position) of one neuron, smallest priority first.
    fn sample<'py>(&self, py: Python<'py>, layer: usize, neuron: usize) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let s = self.inner.sample(layer, neuron).map_err(err)?;
        Ok(PyArray1::from_vec(py, s.into_iter().map(|x| x.1).collect()))
    }

    /// Columns of the examples table (kind 0 = top, 1 = random; value NaN for random).
    fn rows<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let inner = &self.inner;
        let r = py.allow_threads(|| inner.rows());
        let d = PyDict::new(py);
        d.set_item("layer", PyArray1::from_vec(py, r.layer))?;
        d.set_item("neuron", PyArray1::from_vec(py, r.neuron))?;
        d.set_item("kind", PyArray1::from_vec(py, r.kind))?;
        d.set_item("rank", PyArray1::from_vec(py, r.rank))?;
        d.set_item("sequence", PyArray1::from_vec(py, r.sequence))?;
        d.set_item("position", PyArray1::from_vec(py, r.position))?;
        d.set_item("value", PyArray1::from_vec(py, r.value))?;
        Ok(d)
    }

    /// (sums, maxima) per neuron, layer-major.
    fn sums_and_maxima<'py>(&self, py: Python<'py>) -> (Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<f32>>) {
        let (s, m) = self.inner.sums_and_maxima();
        (PyArray1::from_vec(py, s), PyArray1::from_vec(py, m))
    }

    fn memory_bytes(&self) -> usize {
        self.inner.memory_bytes()
    }

    fn memory_bound(&self) -> usize {
        self.inner.memory_bound()
    }

    fn save(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let inner = &self.inner;
        py.allow_threads(|| inner.save(&path)).map_err(err)
    }

    /// One layer's batch on the host: x (rows, n) float32, fired (rows, n) uint8 (the firing rule) ->
    /// (top values (k, n) float32, their rows (k, n) int64, sums (n,) float64, maxima (n,) float32).
    #[staticmethod]
    #[allow(clippy::type_complexity)]
    fn scan_batch<'py>(
        py: Python<'py>,
        x: PyReadonlyArray2<'_, f32>,
        fired: PyReadonlyArray2<'_, u8>,
        n_detail: usize,
        floor: PyReadonlyArray1<'_, f32>,
        k: usize,
    ) -> PyResult<(
        Bound<'py, PyArray2<f32>>,
        Bound<'py, PyArray2<i64>>,
        Bound<'py, PyArray1<f64>>,
        Bound<'py, PyArray1<f32>>,
    )> {
        if fired.shape() != x.shape() {
            return Err(ShapeError::new_err(format!(
                "Examples.scan_batch: a mask of shape {:?} for activations of shape {:?}",
                fired.shape(),
                x.shape()
            )));
        }
        let n = x.shape()[1];
        let (xs, fs, floors) = (slice(&x, "x")?, slice(&fired, "fired")?, slice(&floor, "floor")?);
        let r = py.allow_threads(|| scan_batch(xs, fs, n, n_detail, floors, k)).map_err(err)?;
        Ok((
            PyArray1::from_vec(py, r.values).reshape([k, n])?,
            PyArray1::from_vec(py, r.rows).reshape([k, n])?,
            PyArray1::from_vec(py, r.sums),
            PyArray1::from_vec(py, r.maxima),
        ))
    }

    #[staticmethod]
    fn load(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let inner = py.allow_threads(|| Examples::load(&path)).map_err(err)?;
        Ok(PyExamples { inner })
    }
}
