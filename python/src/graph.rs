//! `cnnc.load` and `cnnc.Graph`: a network with its weights bound, read from a YAML
//! graph or (in memory) an ONNX model.
use crate::errors::to_py;
use cnnc::onnx::proto::ModelProto;
use prost::Message;
use pyo3::exceptions::PyUserWarning;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// A network with its weights bound, as loaded (no optimisation pass has run).
///
/// ``input_shape`` is ``(C, H, W)`` (or ``(features,)``), ``outputs`` the output
/// layers' names; ``info()`` describes it layer by layer like ``cnnc info``.
#[pyclass(frozen, module = "cnnc")]
pub struct Graph {
    pub graph: cnnc::Graph,
    /// The names an ONNX model gives its input and outputs (sessions use them).
    pub onnx_names: Option<(String, Vec<String>)>,
}

/// An item's dims for a shape (without the batch axis).
pub fn item_dims(s: cnnc::ir::Shape) -> Vec<usize> {
    s.dims(1)[1..].to_vec()
}

impl Graph {
    /// The input's name and the outputs' names (ONNX names for imported models).
    pub fn io_names(&self) -> (String, Vec<String>) {
        self.onnx_names.clone().unwrap_or_else(|| {
            let g = &self.graph;
            let outs = g.outputs.iter().map(|&o| g.node(o).name.clone()).collect();
            (g.node(g.input).name.clone(), outs)
        })
    }

    /// Each output's item shape (without the batch axis).
    pub fn output_dims(&self) -> Vec<Vec<usize>> {
        let g = &self.graph;
        g.outputs
            .iter()
            .map(|&o| item_dims(g.node(o).shape))
            .collect()
    }
}

#[pymethods]
impl Graph {
    /// The network's name.
    #[getter]
    fn name(&self) -> String {
        self.graph.name.clone()
    }

    /// The shape of one input item: ``(C, H, W)``, or ``(features,)`` for a flat input.
    #[getter]
    fn input_shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, item_dims(self.graph.input_shape()))
    }

    /// The names of the output layers, in output order.
    #[getter]
    fn outputs(&self) -> Vec<String> {
        let g = &self.graph;
        g.outputs.iter().map(|&o| g.node(o).name.clone()).collect()
    }

    /// The shape of one item of each output, in output order.
    #[getter]
    fn output_shapes<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        self.output_dims()
            .into_iter()
            .map(|d| PyTuple::new(py, d))
            .collect()
    }

    /// The layer-by-layer description ``cnnc info`` prints: each layer's output shape
    /// with its arithmetic, parameters and MACs.
    ///
    /// With ``as_dicts=True``, a list of dicts instead (the layers of
    /// ``cnnc info --json``: name, op, output, output_shape, inputs, params, macs,
    /// activation_bytes, arithmetic, warning). ``opt_level`` describes the graph after
    /// that level's passes (default 0: as written, like ``cnnc info``).
    #[pyo3(signature = (as_dicts = false, opt_level = None))]
    fn info<'py>(
        &self,
        py: Python<'py>,
        as_dicts: bool,
        opt_level: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut g = self.graph.clone();
        let level = opt_level
            .map(crate::model::opt_level)
            .transpose()?
            .unwrap_or(cnnc::OptLevel::O0);
        cnnc::passes::optimize(&mut g, &cnnc::Options::level(level)).map_err(to_py)?;
        if !as_dicts {
            let table = cnnc::ir::info::table(&g).map_err(to_py)?;
            return Ok(table.into_pyobject(py)?.into_any());
        }
        let json = cnnc::ir::info::json(&g).map_err(to_py)?;
        let report = py.import("json")?.call_method1("loads", (json,))?;
        report.get_item("layers")
    }

    fn __repr__(&self) -> String {
        let g = &self.graph;
        format!(
            "<cnnc.Graph '{}': input {}, {} layers, outputs {:?}>",
            g.name,
            g.input_shape(),
            g.node_count().saturating_sub(1),
            self.outputs()
        )
    }
}

/// Whether `path` names an ONNX model (by its extension).
fn is_onnx(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// The names of an ONNX model's input (the graph input that is not an initializer)
/// and outputs.
fn onnx_names(bytes: &[u8]) -> Option<(String, Vec<String>)> {
    let model = ModelProto::decode(bytes).ok()?;
    let g = model.graph?;
    let input = g
        .input
        .iter()
        .map(|i| i.name().to_string())
        .find(|n| !g.initializer.iter().any(|t| t.name() == n))?;
    Some((
        input,
        g.output.iter().map(|o| o.name().to_string()).collect(),
    ))
}

/// Imports ONNX `bytes` in memory; errors name `origin` as the command line names the file.
pub fn import_onnx(bytes: &[u8], origin: &str) -> cnnc::Result<Graph> {
    use cnnc::Error as E;
    let graph = cnnc::onnx::import(bytes).map_err(|e| {
        let msg = format!("{origin}: {e}");
        match e {
            E::Unsupported(_) => E::Unsupported(msg),
            E::Shape(_) => E::Shape(msg),
            E::Weights(_) => E::Weights(msg),
            _ => E::Format(msg),
        }
    })?;
    Ok(Graph {
        graph,
        onnx_names: onnx_names(bytes),
    })
}

/// Reads a graph and binds its weights; returns the weight warnings.
fn read(path: &Path, weights: Option<&Path>) -> cnnc::Result<(Graph, Vec<String>)> {
    let onnx = is_onnx(path);
    let mut g = if onnx {
        let bytes = std::fs::read(path).map_err(|e| cnnc::Error::io(path, e))?;
        import_onnx(&bytes, &path.display().to_string())?
    } else {
        Graph {
            graph: cnnc::format::load(path)?,
            onnx_names: None,
        }
    };
    // An imported model has its weights bound already; a file given replaces them.
    let warnings = if onnx && weights.is_none() {
        Vec::new()
    } else {
        cnnc::weights::bind(&mut g.graph, weights)?
    };
    Ok((g, warnings))
}

/// Loads a network: a YAML graph (``.yaml``) or an ONNX model (``.onnx``, imported in
/// memory: no file is written).
///
/// ``weights`` is a ``.safetensors`` file that replaces the graph's own weights (a YAML
/// graph's ``weights:`` file, or weights drawn from its ``seed``). Weight warnings are
/// issued as ``UserWarning``. Raises ``cnnc.Error`` (a subclass) with the command
/// line's message.
#[pyfunction]
#[pyo3(signature = (path, weights = None))]
pub fn load(py: Python<'_>, path: PathBuf, weights: Option<PathBuf>) -> PyResult<Graph> {
    let (graph, warnings) = py
        .detach(|| read(&path, weights.as_deref()))
        .map_err(to_py)?;
    warn(py, &warnings)?;
    Ok(graph)
}

/// Issues each of `warnings` as a Python `UserWarning`.
pub fn warn(py: Python<'_>, warnings: &[String]) -> PyResult<()> {
    for w in warnings {
        let msg = CString::new(w.replace('\0', " ")).unwrap_or_default();
        PyErr::warn(py, &py.get_type::<PyUserWarning>(), &msg, 1)?;
    }
    Ok(())
}
