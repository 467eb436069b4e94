//! `cnnc.Error` and one subclass per class of mistake, carrying the command line's
//! one-line messages.
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(cnnc, Error, PyException, "Any error cnnc reports.");
create_exception!(cnnc, IoError, Error, "A file could not be read or written.");
create_exception!(
    cnnc,
    FormatError,
    Error,
    "The file is not a valid YAML graph or ONNX model."
);
create_exception!(cnnc, GraphError, Error, "The graph is not a valid network.");
create_exception!(
    cnnc,
    ShapeError,
    Error,
    "Shape inference failed; the message shows the arithmetic."
);
create_exception!(
    cnnc,
    WeightsError,
    Error,
    "A weights file is missing a tensor or holds one of the wrong shape."
);
create_exception!(
    cnnc,
    InputError,
    Error,
    "An input array (or argument) does not fit the network."
);
create_exception!(
    cnnc,
    UnsupportedError,
    Error,
    "A feature cnnc does not support."
);
create_exception!(
    cnnc,
    OptionsError,
    Error,
    "Bad compiler options: an unknown pass or optimisation level."
);
create_exception!(
    cnnc,
    InternalError,
    Error,
    "A bug in cnnc, reported instead of crashing."
);

/// The Python exception for a core error, with its message.
pub fn to_py(e: cnnc::Error) -> PyErr {
    use cnnc::Error as E;
    let msg = e.to_string();
    match e {
        E::Io { .. } => IoError::new_err(msg),
        E::Format(_) => FormatError::new_err(msg),
        E::Graph(_) => GraphError::new_err(msg),
        E::Shape(_) => ShapeError::new_err(msg),
        E::Weights(_) => WeightsError::new_err(msg),
        E::Input(_) => InputError::new_err(msg),
        E::Unsupported(_) => UnsupportedError::new_err(msg),
        E::Options(_) => OptionsError::new_err(msg),
        _ => InternalError::new_err(msg),
    }
}

/// An [`InputError`] with `msg`.
pub fn input(msg: impl Into<String>) -> PyErr {
    InputError::new_err(msg.into())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("IoError", py.get_type::<IoError>())?;
    m.add("FormatError", py.get_type::<FormatError>())?;
    m.add("GraphError", py.get_type::<GraphError>())?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("WeightsError", py.get_type::<WeightsError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("UnsupportedError", py.get_type::<UnsupportedError>())?;
    m.add("OptionsError", py.get_type::<OptionsError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    Ok(())
}
