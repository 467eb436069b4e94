//! The per-channel scale and shift of one channel plane (inference batchnorm, DenseNet's
//! pre-activation BN + ReLU), `out[i] = relu(x[i] * scale + shift)`, on wide vectors: an
//! AVX2 (ymm) or AVX-512 (zmm) kernel assembled with iced-x86 and called by the Cranelift
//! elementwise kernel ([`crate::jit::elementwise`]) once per channel.
//!
//! The f32x4 Cranelift loop spends about 9 instructions per 4 floats; here 16 floats cost 5
//! (load, `vmulps`, `vaddps`, `vmaxps`, store), 4 vectors per loop iteration. A multiply
//! then an add (not fused) and `vmaxps r, zero, r` (NaN and -0.0 kept, as the f32x4 ReLU):
//! the same bits as the f32x4 kernel. The last `hw % lanes` floats are loaded and stored
//! under a mask (AVX-512 `k1`, AVX2 `vmaskmovps`), so the kernel reads and writes exactly
//! its plane.
//!
//! Arguments (System V): `rdi` the input plane, `rsi` the output plane, `rdx` the channel's
//! scale, `rcx` its shift.
use iced_x86::code_asm::{k1, r8, rcx, rdi, rdx, rsi};

use super::vasm::{asm_err, Masks, Vasm, Width};
use crate::error::{Error, Result};

/// Vectors per loop iteration.
const UNROLL: usize = 4;
/// Registers: the scale, the shift, zero, the AVX2 tail mask, then the values.
const SCALE: usize = 0;
const SHIFT: usize = 1;
const ZERO: usize = 2;
const MASK: usize = 3;
const VALUES: usize = 4;

/// The kernel of one plane size: everything baked in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScaleShiftPlane {
    pub width: Width,
    /// Floats in the plane.
    pub hw: usize,
    pub relu: bool,
}

impl ScaleShiftPlane {
    /// The machine code.
    pub fn emit(&self) -> Result<Vec<u8>> {
        let l = self.width.lanes();
        if self.width == Width::X128 || self.hw == 0 {
            return Err(Error::Codegen(format!(
                "no wide scale-shift kernel for {self:?}"
            )));
        }
        let mut v = Vasm::new(self.width)?;
        v.bcst(SCALE, rdx + 0)?;
        v.bcst(SHIFT, rcx + 0)?;
        if self.relu {
            v.zero(ZERO)?;
        }
        let full = self.hw / l;
        let vec_bytes = (l * 4) as i32;
        // Whole groups of UNROLL vectors in a loop (rdi, rsi advance), the rest after it.
        let groups = full / UNROLL;
        if groups > 0 {
            v.counted_loop(r8, groups, |v| {
                for j in 0..UNROLL {
                    self.vector(v, j as i32 * vec_bytes, VALUES + j, None)?;
                }
                v.a.add(rdi, UNROLL as i32 * vec_bytes).map_err(asm_err)?;
                v.a.add(rsi, UNROLL as i32 * vec_bytes).map_err(asm_err)
            })?;
        }
        for j in 0..full % UNROLL {
            self.vector(&mut v, j as i32 * vec_bytes, VALUES + j, None)?;
        }
        let tail = self.hw % l;
        let mut masks = Masks::default();
        if tail > 0 {
            let at = (full % UNROLL) as i32 * vec_bytes;
            masks.set(&mut v, (k1, MASK), 0, tail)?;
            self.vector(&mut v, at, VALUES, Some(tail))?;
        }
        v.a.vzeroupper().map_err(asm_err)?;
        v.a.ret().map_err(asm_err)?;
        masks.emit_data(&mut v)?;
        v.finish()
    }

    /// One vector at byte offset `at` of the planes into register `r`, the first `tail`
    /// lanes only when given.
    fn vector(&self, v: &mut Vasm, at: i32, r: usize, tail: Option<usize>) -> Result<()> {
        match (tail, self.width) {
            (None, _) => v.load(r, rdi + at)?,
            (Some(_), Width::Z512) => v.load_k1(r, rdi + at)?,
            (Some(_), _) => v.maskload(r, MASK, rdi + at)?,
        }
        v.mul(r, r, SCALE)?;
        v.add(r, r, SHIFT)?;
        if self.relu {
            v.max(r, ZERO, r)?;
        }
        match (tail, self.width) {
            (None, _) => v.store(rsi + at, r),
            (Some(_), Width::Z512) => v.store_k1(rsi + at, r),
            (Some(_), _) => v.maskstore(rsi + at, MASK, r),
        }
    }
}
