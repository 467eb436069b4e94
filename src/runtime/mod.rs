//! Running compiled networks: the activation arena, and the model that owns the
//! generated code and steps through it.
pub mod arena;
pub mod model;

pub use model::{compile, listings, LayerTime, Model};
