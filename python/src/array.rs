//! numpy arrays in and out: float32 inputs read in place when C-contiguous, outputs
//! handed to numpy without a copy.
use crate::errors::input;
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{
    IntoPyArray, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyList;

/// An input array: borrowed from numpy (float32, C-contiguous) or a row-major copy of a
/// float32 array with other strides.
pub enum Input<'py> {
    Borrowed(PyReadonlyArrayDyn<'py, f32>),
    Copied(Vec<usize>, Vec<f32>),
}

impl Input<'_> {
    /// The shape and the row-major values.
    pub fn view(&self) -> (&[usize], &[f32]) {
        match self {
            Input::Borrowed(a) => (
                a.shape(),
                // Checked C-contiguous in `input`, so the slice is in row-major order.
                a.as_slice().unwrap_or(&[]),
            ),
            Input::Copied(s, d) => (s, d),
        }
    }

    /// An owned tensor (for the interpreter and profiles).
    pub fn tensor(&self) -> PyResult<cnnc::Tensor> {
        let (shape, data) = self.view();
        cnnc::Tensor::new(shape.to_vec(), data.to_vec()).map_err(crate::errors::to_py)
    }
}

/// Reads `x` as a float32 array. Other dtypes are refused (converting float64 silently
/// would hide a 2x copy and a rounding); non-contiguous float32 arrays are copied.
pub fn read<'py>(x: &Bound<'py, PyAny>) -> PyResult<Input<'py>> {
    if let Ok(a) = x.cast::<PyArrayDyn<f32>>() {
        let ro = a
            .try_readonly()
            .map_err(|e| input(format!("the input array cannot be read: {e}")))?;
        if ro.is_c_contiguous() {
            return Ok(Input::Borrowed(ro));
        }
        let shape = ro.shape().to_vec();
        let data = ro.as_array().iter().copied().collect();
        return Ok(Input::Copied(shape, data));
    }
    if let Ok(a) = x.cast::<PyUntypedArray>() {
        return Err(input(format!(
            "the input array has dtype {}, but cnnc runs float32: convert it with x.astype(numpy.float32)",
            a.dtype()
        )));
    }
    Err(input(format!(
        "the input must be a numpy array of float32, not {}",
        x.get_type().name()?
    )))
}

/// A tensor as a numpy array (its buffer moves to numpy).
pub fn output<'py>(py: Python<'py>, t: cnnc::Tensor) -> PyResult<Bound<'py, PyAny>> {
    let shape = t.shape().to_vec();
    let a = ArrayD::from_shape_vec(IxDyn(&shape), t.into_data())
        .map_err(|e| crate::errors::InternalError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py).into_any())
}

/// The outputs of a network: the array itself when it has one output, else a list.
pub fn outputs<'py>(py: Python<'py>, mut ts: Vec<cnnc::Tensor>) -> PyResult<Bound<'py, PyAny>> {
    if ts.len() == 1 {
        return output(py, ts.remove(0));
    }
    list(py, ts)
}

/// Every output as a numpy array, in a list.
pub fn list<'py>(py: Python<'py>, ts: Vec<cnnc::Tensor>) -> PyResult<Bound<'py, PyAny>> {
    let arrays = ts
        .into_iter()
        .map(|t| output(py, t))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(PyList::new(py, arrays)?.into_any())
}
