//! cnnc: a small compiler for convolutional neural networks.
//!
//! The pipeline: [`format`] (YAML) -> [`ir`] (petgraph) -> passes -> interpreter / JIT.
pub mod error;
pub mod format;
pub mod ir;
pub mod tensor;

pub use error::{Error, Result};
pub use ir::Graph;
pub use tensor::Tensor;
