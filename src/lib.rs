//! cnnc: a small compiler for convolutional neural networks.
pub mod error;
pub mod jit;
pub mod tensor;

pub use error::{Error, Result};
pub use tensor::Tensor;
