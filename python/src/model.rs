//! `cnnc.compile`, `cnnc.Model` (run, profile) and `cnnc.interpret`.
use crate::array::{self, Input};
use crate::errors::{input, to_py};
use crate::graph::{item_dims, Graph};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use std::sync::Arc;

/// `0`, `1`, `2` or `"O2"`-style strings.
pub fn opt_level(level: &Bound<'_, PyAny>) -> PyResult<cnnc::OptLevel> {
    let text = match level.extract::<i64>() {
        Ok(n) => n.to_string(),
        Err(_) => level
            .extract::<String>()
            .map_err(|_| input("opt_level must be 0, 1, 2 or a string such as \"O2\""))?,
    };
    text.parse().map_err(to_py)
}

/// A network compiled to machine code for this CPU.
///
/// ``model(x)`` (or ``model.run(x)``) runs it on a float32 array of shape
/// ``(N, C, H, W)`` or ``(C, H, W)``; several Python threads may call one model at once
/// (the GIL is released while it runs).
#[pyclass(frozen, module = "cnnc")]
pub struct Model {
    pub model: Arc<cnnc::Model>,
    input_shape: Vec<usize>,
    outputs: Vec<String>,
    threads: usize,
}

impl Model {
    /// Runs the network on `x`; the outputs in graph order.
    pub fn run_tensors(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<Vec<cnnc::Tensor>> {
        let x = array::read(x)?;
        let (shape, data) = x.view();
        let model = &self.model;
        // The array stays borrowed (numpy's borrow flag is held by `x`) while the GIL
        // is released; callers must not write to it from another thread meanwhile.
        py.detach(|| model.run_slice(shape, data)).map_err(to_py)
    }
}

#[pymethods]
impl Model {
    /// Runs the network on ``x`` (float32, ``(N, C, H, W)`` or ``(C, H, W)``).
    ///
    /// Returns a numpy array, or a list of arrays if the network has several outputs,
    /// each ``(N, ...)``. A C-contiguous float32 array is read in place; other strides
    /// are copied first; other dtypes raise ``cnnc.InputError``. The array is read while
    /// the network runs: do not write to it from another thread meanwhile.
    fn run<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let outs = self.run_tensors(py, x)?;
        array::outputs(py, outs)
    }

    /// Same as ``run(x)``.
    fn __call__<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.run(py, x)
    }

    /// Times each layer on ``x``: after a warm-up run, ``runs`` timed runs, each layer's
    /// median. Returns a ``Profile`` (``str(profile)`` is the table of
    /// ``cnnc run --profile``; ``profile.layers`` the rows as dicts).
    #[pyo3(signature = (x, runs = 5))]
    fn profile(&self, py: Python<'_>, x: &Bound<'_, PyAny>, runs: usize) -> PyResult<Profile> {
        let x = array::read(x)?.tensor()?;
        let model = &self.model;
        let (_, layers) = py
            .detach(|| cnnc::runtime::profile::median(model, &x, runs))
            .map_err(to_py)?;
        Ok(Profile { layers })
    }

    /// The shape of one input item, ``(C, H, W)``.
    #[getter]
    fn input_shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.input_shape)
    }

    /// The names of the outputs, in the order ``run`` returns them.
    #[getter]
    fn outputs(&self) -> Vec<String> {
        self.outputs.clone()
    }

    /// Images per kernel call (larger batches run in chunks of this many).
    #[getter]
    fn batch(&self) -> usize {
        self.model.batch()
    }

    /// Threads that share each large layer's work.
    #[getter]
    fn threads(&self) -> usize {
        self.threads
    }

    /// Seconds the compilation took (code generation and weight packing).
    #[getter]
    fn compile_seconds(&self) -> f64 {
        self.model.compile_time().as_secs_f64()
    }

    fn __repr__(&self) -> String {
        format!(
            "<cnnc.Model '{}': input {:?}, batch {}, {} threads>",
            self.model.name(),
            self.input_shape,
            self.model.batch(),
            self.threads
        )
    }
}

/// Per-layer times of a model (``Model.profile``): ``str(p)`` is the table, ``p.layers``
/// a list of dicts (name, op, time_ms, flops, share), ``p.total_ms`` the sum.
#[pyclass(frozen, module = "cnnc")]
pub struct Profile {
    layers: Vec<cnnc::runtime::LayerTime>,
}

#[pymethods]
impl Profile {
    /// One dict per layer, in execution order.
    #[getter]
    fn layers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let total = self.total_ms();
        let rows = self
            .layers
            .iter()
            .map(|l| {
                let d = PyDict::new(py);
                let ms = l.time.as_secs_f64() * 1e3;
                d.set_item("name", &l.name)?;
                d.set_item("op", &l.op)?;
                d.set_item("time_ms", ms)?;
                d.set_item("flops", l.flops)?;
                d.set_item("share", if total > 0.0 { ms / total } else { 0.0 })?;
                Ok(d)
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, rows)
    }

    /// Milliseconds of all layers together.
    #[getter]
    fn total_ms(&self) -> f64 {
        self.layers.iter().map(|l| l.time.as_secs_f64() * 1e3).sum()
    }

    /// The table ``cnnc run --profile`` prints.
    #[getter]
    fn table(&self) -> String {
        cnnc::runtime::profile::table(&self.layers)
    }

    fn __str__(&self) -> String {
        self.table()
    }

    fn __repr__(&self) -> String {
        format!(
            "<cnnc.Profile: {} layers, {:.3} ms>",
            self.layers.len(),
            self.total_ms()
        )
    }
}

/// Compiler options from the Python arguments.
pub struct CompileArgs {
    pub opt_level: cnnc::OptLevel,
    pub threads: Option<usize>,
    pub winograd: bool,
    pub batch: usize,
    pub passes: Option<Vec<String>>,
    pub disable_passes: Vec<String>,
}

impl CompileArgs {
    fn options(&self) -> PyResult<cnnc::Options> {
        if self.batch == 0 {
            return Err(input("batch must be at least 1"));
        }
        let mut opts = cnnc::Options::level(self.opt_level);
        opts.batch = self.batch;
        if let Some(t) = self.threads {
            opts.threads = t;
        }
        opts.winograd = self.winograd;
        opts.passes = self.passes.clone();
        opts.disabled = self.disable_passes.clone();
        Ok(opts)
    }
}

/// Optimises and compiles `g` (releasing the GIL).
pub fn build(py: Python<'_>, g: &Graph, args: &CompileArgs) -> PyResult<Model> {
    let opts = args.options()?;
    let (model, outputs) = py
        .detach(|| -> cnnc::Result<_> {
            let mut opt = g.graph.clone();
            cnnc::passes::optimize(&mut opt, &opts)?;
            let model = cnnc::runtime::compile(&opt, &opts)?;
            let outputs = opt.outputs.iter().map(|&o| opt.node(o).name.clone());
            Ok((model, outputs.collect()))
        })
        .map_err(to_py)?;
    Ok(Model {
        model: Arc::new(model),
        input_shape: item_dims(g.graph.input_shape()),
        outputs,
        threads: opts.threads,
    })
}

/// Optimises ``graph`` and compiles it to machine code for this CPU.
///
/// ``opt_level``: 0, 1 or 2 (the pass pipeline, as ``-O``); ``threads``: threads per
/// layer (default: the machine's cores; results are bit-identical for any count);
/// ``winograd``: 3x3 convolutions with Winograd F(4x4, 3x3); ``batch``: images per
/// kernel call (any batch runs, in chunks of this many; 1 is fastest for single images);
/// ``passes`` / ``disable_passes``: exactly these passes, or the level's without these.
#[pyfunction]
#[pyo3(signature = (graph, opt_level = None, threads = None, winograd = true, batch = 1, passes = None, disable_passes = None))]
#[allow(clippy::too_many_arguments)]
pub fn compile(
    py: Python<'_>,
    graph: &Graph,
    opt_level: Option<&Bound<'_, PyAny>>,
    threads: Option<usize>,
    winograd: bool,
    batch: usize,
    passes: Option<Vec<String>>,
    disable_passes: Option<Vec<String>>,
) -> PyResult<Model> {
    let args = CompileArgs {
        opt_level: opt_level
            .map(self::opt_level)
            .transpose()?
            .unwrap_or_default(),
        threads,
        winograd,
        batch,
        passes,
        disable_passes: disable_passes.unwrap_or_default(),
    };
    build(py, graph, &args)
}

/// Runs ``graph`` as loaded with the reference interpreter (plain, slow, the
/// correctness oracle). ``x`` as for ``Model.run``; returns the same.
#[pyfunction]
pub fn interpret<'py>(
    py: Python<'py>,
    graph: &Graph,
    x: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let x: Input = array::read(x)?;
    let t = x.tensor()?;
    let g = &graph.graph;
    let outs = py.detach(|| cnnc::interp::run(g, t)).map_err(to_py)?;
    array::outputs(py, outs)
}

/// Collapses into huge pages, now and on this thread, every chunk of packed weights and
/// arena that a compile or a first run faulted in on small pages; how many it collapsed. A
/// background thread does the same between runs; call this after a model's first run to
/// time or serve it at full speed at once, as `cnnc bench` does.
#[pyfunction]
pub fn settle_huge_pages(py: Python<'_>) -> usize {
    py.detach(cnnc::memory::settle_huge_pages)
}
