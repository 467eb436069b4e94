//! `cnnc` for Python: load a YAML graph or an ONNX model, compile it for this CPU and run
//! it on numpy arrays; [`session::InferenceSession`] has onnxruntime's shape.
//!
//! The bindings only convert: every rule (shapes, errors, messages) is the core crate's.
mod array;
mod errors;
mod graph;
mod model;
mod session;

use pyo3::prelude::*;

/// cnnc: a compiler for convolutional neural networks, for numpy arrays.
///
/// ``load`` reads a graph, ``compile`` turns it into a ``Model`` for this CPU,
/// ``interpret`` runs the reference interpreter, and ``InferenceSession`` is a
/// drop-in for onnxruntime's session.
#[pymodule]
fn cnnc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    m.add_class::<graph::Graph>()?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::Profile>()?;
    m.add_class::<session::InferenceSession>()?;
    m.add_class::<session::NodeArg>()?;
    m.add_function(wrap_pyfunction!(graph::load, m)?)?;
    m.add_function(wrap_pyfunction!(model::compile, m)?)?;
    m.add_function(wrap_pyfunction!(model::interpret, m)?)?;
    m.add_function(wrap_pyfunction!(model::settle_huge_pages, m)?)?;
    Ok(())
}
