//! cnnc: a small compiler for convolutional neural networks.
//!
//! The pipeline: [`format`] (YAML) -> [`ir`] (petgraph) -> [`passes`] -> [`interp`], or
//! [`lower`] (an execution plan) -> [`jit`] kernels -> [`runtime`].
//!
//! ```
//! // Load a graph (from a path with `format::load`, or from a string):
//! let mut graph = cnnc::format::parse_str(
//!     "input: [1, 8, 8]\nlayers:\n  - conv: {filters: 4, size: 3, pad: 1}\n  - relu\n  - fc: {units: 10}\n  - softmax\n",
//!     None,
//! )?;
//! // Bind weights: the graph's `weights:` file, a file of yours, or drawn from its seed.
//! cnnc::weights::bind(&mut graph, None)?;
//! // Run the reference interpreter on a batch of two images.
//! let x = cnnc::Tensor::zeros(vec![2, 1, 8, 8]);
//! let y = cnnc::interp::run(&graph, x.clone())?;
//! assert_eq!(y[0].shape(), &[2, 10]);
//! // Or optimise and compile it to machine code for this CPU, and run that.
//! let model = cnnc::compile(&graph, &cnnc::Options::default())?;
//! let z = model.run(&x)?;
//! assert!(cnnc::tensor::rel_l2(z[0].data(), y[0].data()) < 1e-5);
//! # Ok::<(), cnnc::Error>(())
//! ```
//!
//! `unsafe` code is denied, but for the items that call generated code, map and free it and
//! hand work to the thread pool (in `jit`), and the page-advice system calls of
//! `memory` (`madvise`, the settle thread's priority), each allowed where it stands with its
//! invariant in a `// SAFETY:` comment.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
pub mod error;
pub mod format;
pub mod interp;
pub mod io;
pub mod ir;
pub mod jit;
mod knobs;
pub mod lower;
pub mod memory;
pub mod onnx;
pub mod options;
pub mod passes;
pub mod runtime;
pub mod table;
pub mod tensor;
pub mod weights;

pub use error::{Error, Result};
pub use ir::Graph;
pub use options::{Isa, OptLevel, Options};
pub use runtime::Model;
pub use tensor::Tensor;

/// Optimises a copy of `graph` with the pass pipeline `opts` selects, then compiles it
/// to machine code for the host CPU. The graph's weights must be bound.
pub fn compile(graph: &Graph, opts: &Options) -> Result<Model> {
    let mut g = graph.clone();
    passes::optimize(&mut g, opts)?;
    runtime::compile(&g, opts)
}
