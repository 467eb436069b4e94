//! Wide-vector x86-64 code: AVX2 / AVX-512 GEMM micro-kernels assembled with iced-x86 at
//! compile time of a model and installed in the same Cranelift JIT module
//! ([`crate::jit::KernelModule::add_micro`]), where Cranelift-generated loop nests call them
//! like any function. Cranelift emits only 128-bit vectors on x86-64; these kernels use the
//! whole vector unit (see `docs/jit.md`).
pub mod copy;
pub mod eltwise;
pub mod fc_dot;
pub mod gemm;
pub mod peak;
pub mod pool;
mod vasm;
pub mod winograd;
pub mod winograd_ymm;

pub use gemm::{MicroGemm, MicroGemmKernel, PendingMicroGemm};
pub(crate) use vasm::Vasm;
pub use vasm::{disassemble, Width};

use crate::options::Isa;

/// The vector width of the micro-kernels at `isa` (`None`: Cranelift's f32x4 kernels).
pub fn width(isa: Isa) -> Option<Width> {
    match isa {
        Isa::Sse => None,
        Isa::Avx2 => Some(Width::Y256),
        Isa::Avx512 => Some(Width::Z512),
    }
}
