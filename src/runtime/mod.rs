//! Running compiled networks: instantiating a lowered [`crate::lower::Plan`] (one kernel
//! per distinct spec, packed weights) and stepping through it on the activation arena.
pub mod arena;
pub mod host;
mod kernels;
pub mod model;
pub mod profile;

pub use model::{compile, listings, LayerTime, Model};
