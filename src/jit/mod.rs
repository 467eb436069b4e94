//! The Cranelift JIT: kernels generated for one layer's shapes, on raw NCHW f32 buffers.
//!
//! See `docs/jit.md` for the design and measured numbers.
mod cg;
pub mod conv;
pub mod depthwise;
mod depthwise_x86;
pub mod elementwise;
mod entry;
mod epilogue;
pub mod fc;
mod fc_gemm;
mod gemm;
mod host_cache;
pub mod host_fma;
mod im2col;
mod implicit;
pub mod module;
pub mod pool;
pub mod threads;
mod winograd;
pub mod x86;

pub use conv::{
    conv_max_pool_fuses, pack_conv_weights, ConvKernel, ConvMethod, ConvSpec, PendingConv,
};
pub use depthwise::{pack_depthwise_weights, DepthwiseKernel, DepthwiseSpec, PendingDepthwise};
pub use elementwise::{EltKernel, EltSpec, PendingElt};
pub use epilogue::Clip;
pub use fc::{pack_fc_weights, FcKernel, FcSpec, PendingFc};
pub use host_fma::{host_zmm_fma, ZmmFma};
pub use module::{CodeCacheCounts, Compiled, KernelListing, KernelModule, MicroId, Pending};
pub use pool::{PendingPool, PoolKernel, PoolKind, PoolSpec};
pub use threads::{release_idle_workers, ThreadPool};

/// Deterministic inputs in [-1, 1) for the unit tests of the kernels: `n` values, a different
/// sequence per `seed`.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}
