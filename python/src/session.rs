//! `cnnc.InferenceSession`: onnxruntime's session API over a compiled model, so code
//! written for onnxruntime switches by changing its import.
use crate::array;
use crate::errors::{input, to_py};
use crate::graph::{self, Graph};
use crate::model::{build, CompileArgs, Model};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::path::PathBuf;

/// The name, shape and type of an input or output, like onnxruntime's ``NodeArg``.
/// ``shape`` starts with the batch axis, ``"N"`` (any size).
#[pyclass(frozen, module = "cnnc")]
pub struct NodeArg {
    name: String,
    dims: Vec<usize>,
}

#[pymethods]
impl NodeArg {
    /// The input's or output's name.
    #[getter]
    fn name(&self) -> String {
        self.name.clone()
    }

    /// ``["N", d1, d2, ...]``: any batch size, then the item's dimensions.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        list.append("N")?;
        for d in &self.dims {
            list.append(d)?;
        }
        Ok(list)
    }

    /// Always ``"tensor(float)"``.
    #[getter]
    fn r#type(&self) -> &'static str {
        "tensor(float)"
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "NodeArg(name='{}', type='tensor(float)', shape={})",
            self.name,
            self.shape(py)?.repr()?
        ))
    }
}

/// An ONNX model (or YAML graph) compiled for this CPU, with onnxruntime's session API:
/// ``get_inputs()``, ``get_outputs()`` and ``run(output_names, {input_name: x})``.
///
/// ``path_or_bytes``: a ``.onnx`` or ``.yaml`` path, or the bytes of an ONNX model.
/// ``sess_options``, ``providers`` and ``provider_options`` are accepted for
/// compatibility and ignored; ``threads``, ``opt_level``, ``winograd`` and ``batch`` are
/// ``cnnc.compile``'s.
#[pyclass(frozen, module = "cnnc")]
pub struct InferenceSession {
    model: Model,
    input_name: String,
    input_dims: Vec<usize>,
    output_names: Vec<String>,
    output_dims: Vec<Vec<usize>>,
}

#[pymethods]
impl InferenceSession {
    #[new]
    #[pyo3(signature = (path_or_bytes, sess_options = None, providers = None, provider_options = None, *, threads = None, opt_level = None, winograd = true, batch = 1))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path_or_bytes: &Bound<'_, PyAny>,
        sess_options: Option<&Bound<'_, PyAny>>,
        providers: Option<&Bound<'_, PyAny>>,
        provider_options: Option<&Bound<'_, PyAny>>,
        threads: Option<usize>,
        opt_level: Option<&Bound<'_, PyAny>>,
        winograd: bool,
        batch: usize,
    ) -> PyResult<Self> {
        let _ = (sess_options, providers, provider_options);
        let g: Graph = if let Ok(bytes) = path_or_bytes.cast::<PyBytes>() {
            let bytes = bytes.as_bytes();
            py.detach(|| graph::import_onnx(bytes, "the model"))
                .map_err(to_py)?
        } else {
            let path: PathBuf = path_or_bytes.extract()?;
            graph::load(py, path, None)?
        };
        let args = CompileArgs {
            opt_level: opt_level
                .map(crate::model::opt_level)
                .transpose()?
                .unwrap_or_default(),
            threads,
            winograd,
            batch,
            passes: None,
            disable_passes: Vec::new(),
        };
        let model = build(py, &g, &args)?;
        let (input_name, output_names) = g.io_names();
        Ok(InferenceSession {
            model,
            input_name,
            input_dims: graph::item_dims(g.graph.input_shape()),
            output_names,
            output_dims: g.output_dims(),
        })
    }

    /// The model's input (one): a list of one ``NodeArg``.
    fn get_inputs(&self) -> Vec<NodeArg> {
        vec![NodeArg {
            name: self.input_name.clone(),
            dims: self.input_dims.clone(),
        }]
    }

    /// The model's outputs, in order, as ``NodeArg``s.
    fn get_outputs(&self) -> Vec<NodeArg> {
        self.output_names
            .iter()
            .zip(&self.output_dims)
            .map(|(name, dims)| NodeArg {
                name: name.clone(),
                dims: dims.clone(),
            })
            .collect()
    }

    /// Runs the model on ``input_feed`` (``{input_name: x}``, ``x`` float32
    /// ``(N, C, H, W)``) and returns the outputs named in ``output_names`` (all of them
    /// if it is ``None`` or empty), as a list of numpy arrays. ``run_options`` is
    /// accepted for compatibility and ignored.
    #[pyo3(signature = (output_names, input_feed, run_options = None))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        output_names: Option<Vec<String>>,
        input_feed: &Bound<'py, PyDict>,
        run_options: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = run_options;
        let picks = self.pick(output_names.unwrap_or_default())?;
        let x = self.feed(input_feed)?;
        let mut outs: Vec<Option<cnnc::Tensor>> = self
            .model
            .run_tensors(py, &x)?
            .into_iter()
            .map(Some)
            .collect();
        // `pick` refuses an output asked for twice, so each is taken once.
        let chosen = picks
            .iter()
            .map(|&i| {
                outs[i]
                    .take()
                    .ok_or_else(|| input("an output asked for twice"))
            })
            .collect::<PyResult<Vec<_>>>()?;
        array::list(py, chosen)
    }

    fn __repr__(&self) -> String {
        format!(
            "<cnnc.InferenceSession: input '{}', outputs {:?}>",
            self.input_name, self.output_names
        )
    }
}

impl InferenceSession {
    /// The indices of `names` among the outputs (all of them for an empty list).
    fn pick(&self, names: Vec<String>) -> PyResult<Vec<usize>> {
        if names.is_empty() {
            return Ok((0..self.output_names.len()).collect());
        }
        let mut picks = Vec::new();
        for name in names {
            let i = self
                .output_names
                .iter()
                .position(|o| *o == name)
                .ok_or_else(|| {
                    input(format!(
                        "the model has no output `{name}`; its outputs are {}",
                        quoted(&self.output_names)
                    ))
                })?;
            if picks.contains(&i) {
                return Err(input(format!("output `{name}` is asked for twice")));
            }
            picks.push(i);
        }
        Ok(picks)
    }

    /// The array fed to the model's input, refusing feeds naming anything else.
    fn feed<'py>(&self, feed: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyAny>> {
        for key in feed.keys() {
            let key: String = key.extract()?;
            if key != self.input_name {
                return Err(input(format!(
                    "the model has no input `{key}`; its input is `{}`",
                    self.input_name
                )));
            }
        }
        feed.get_item(&self.input_name)?.ok_or_else(|| {
            input(format!(
                "input_feed has no value for the model's input `{}`",
                self.input_name
            ))
        })
    }
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
