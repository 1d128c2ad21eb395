//! Conversions shared by the bindings: core errors to the package's named exceptions, numpy arrays to
//! slices, size and index arguments, per-layer argument lists.

use numpy::PyReadonlyArray1;
use opt_neurons_core::stats::KeyCounts;
use opt_neurons_core::StatsError;
use pyo3::exceptions::{PyOverflowError, PyTypeError};
use pyo3::prelude::*;

// The exception classes live in Python (opt_neurons/errors.py), where their hierarchy is documented.
pyo3::import_exception!(opt_neurons.errors, DataError);
pyo3::import_exception!(opt_neurons.errors, ShapeError);
pyo3::import_exception!(opt_neurons.errors, OptionError);
pyo3::import_exception!(opt_neurons.errors, IncompatibleStateError);
pyo3::import_exception!(opt_neurons.errors, StateFileError);
pyo3::import_exception!(opt_neurons.errors, StateIOError);
pyo3::import_exception!(opt_neurons.errors, UnusableStateError);

/// Each kind of core error is its own Python exception (all under OptNeuronsError).
pub(crate) fn err(e: StatsError) -> PyErr {
    match e {
        StatsError::Shape(m) => ShapeError::new_err(m),
        StatsError::Value(m) => DataError::new_err(m),
        StatsError::Config(m) => OptionError::new_err(m),
        StatsError::Incompatible(m) => IncompatibleStateError::new_err(m),
        StatsError::Decode(m) => StateFileError::new_err(m),
        StatsError::Io(m) => StateIOError::new_err(m),
        StatsError::Unusable(m) => UnusableStateError::new_err(m),
    }
}

pub(crate) fn contiguous<'a, T: numpy::Element, D: numpy::ndarray::Dimension>(
    a: &'a numpy::PyReadonlyArray<'_, T, D>,
    name: &str,
) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| ShapeError::new_err(format!("{name} must be a C-contiguous array (use np.ascontiguousarray)")))
}

/// A size or index argument, extracted without failing so that a bad one gets a named error with
/// the argument's name (pyo3's own conversion would raise OverflowError or TypeError).
pub(crate) struct IntArg(Result<usize, String>);

impl<'py> FromPyObject<'py> for IntArg {
    fn extract_bound(v: &Bound<'py, PyAny>) -> PyResult<Self> {
        Ok(IntArg(match v.extract::<i64>() {
            Ok(i) if i >= 0 => Ok(i as usize),
            Ok(i) => Err(format!("must not be negative, got {i}")),
            Err(e) if e.is_instance_of::<PyOverflowError>(v.py()) => {
                Err(format!("must fit in 64 bits and not be negative, got {}", v.str()?))
            }
            Err(e) if e.is_instance_of::<PyTypeError>(v.py()) => {
                Err(format!("must be an integer, got {}", v.get_type().name()?))
            }
            Err(e) => return Err(e),
        }))
    }
}

impl IntArg {
    pub(crate) const fn of(v: usize) -> Self {
        IntArg(Ok(v))
    }

    /// The value, or an error of class `error` naming the argument.
    fn get(self, what: &str, error: fn(String) -> PyErr) -> PyResult<usize> {
        self.0.map_err(|m| error(format!("{what} {m}")))
    }

    pub(crate) fn index(self, what: &str) -> PyResult<usize> {
        self.get(what, DataError::new_err)
    }

    pub(crate) fn size(self, what: &str) -> PyResult<usize> {
        self.get(what, OptionError::new_err)
    }
}

pub(crate) fn layer_args(layers: Vec<IntArg>) -> PyResult<Vec<usize>> {
    layers.into_iter().map(|l| l.index("layer")).collect()
}

/// (layer, view) pairs of a multi-layer call: one item per layer, each seen through `view`.
pub(crate) fn per_layer<'a, A, V>(
    layers: &[usize],
    items: &'a [A],
    what: &str,
    view: impl Fn(&'a A) -> PyResult<V>,
) -> PyResult<Vec<(usize, V)>> {
    if layers.len() != items.len() {
        return Err(ShapeError::new_err(format!(
            "{} layers but {} {what}: give one per layer",
            layers.len(),
            items.len()
        )));
    }
    layers.iter().zip(items).map(|(&l, a)| Ok((l, view(a)?))).collect()
}

/// (neurons, keys, counts) of one kind of k-gram.
pub(crate) type KeyArrays<'py, K> = (PyReadonlyArray1<'py, u32>, PyReadonlyArray1<'py, K>, PyReadonlyArray1<'py, u32>);
/// One layer's block counted elsewhere: activation counts, then token, bigram and trigram counts.
pub(crate) type CountedArrays<'py> =
    (PyReadonlyArray1<'py, u64>, KeyArrays<'py, u32>, KeyArrays<'py, u64>, KeyArrays<'py, u64>);

pub(crate) fn key_counts<'a, K: numpy::Element>(k: &'a KeyArrays<'_, K>) -> PyResult<KeyCounts<'a, K>> {
    Ok(KeyCounts {
        neurons: contiguous(&k.0, "neurons")?,
        keys: contiguous(&k.1, "keys")?,
        counts: contiguous(&k.2, "counts")?,
    })
}
