//! cnnc: a small compiler for convolutional neural networks.
//!
//! The pipeline: [`format`] (YAML) -> [`ir`] (petgraph) -> passes -> interpreter / JIT.
pub mod error;
pub mod format;
pub mod interp;
pub mod io;
pub mod ir;
pub mod options;
pub mod passes;
pub mod tensor;
pub mod weights;

pub use error::{Error, Result};
pub use ir::Graph;
pub use options::{OptLevel, Options};
pub use tensor::Tensor;
