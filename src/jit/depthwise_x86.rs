//! The depthwise conv's rows on wide vectors: an AVX2 (ymm) or AVX-512 (zmm) row kernel
//! assembled with iced-x86 and called by the Cranelift depthwise kernel
//! ([`super::depthwise`]) once per output row, at stride 1.
//!
//! The f32x4 Cranelift loop spends about 36 instructions on four outputs of a 3x3 filter
//! (Cranelift redoes loop-invariant splats and addresses inside the loop and loads all
//! nine inputs before the first FMA, so the taps spill). Here the taps stay in registers
//! for the whole row and each of them costs one load and one FMA per 8 or 16 outputs.
//! The row kernel computes the first [`DwRow::cols`] outputs of the row (whole vectors);
//! the Cranelift code does the rest.
//!
//! Arguments (System V): `rdi` the row's first input (the padded plane's row `oy`),
//! `rsi` the output row, `rdx` the channel's taps (`kernel_h * kernel_w` floats), `rcx`
//! its bias (one float), `r8` the residual row. Taps are summed in the order of the
//! Cranelift code (row by row, fused multiply-adds), so both give the same bits.
use iced_x86::code_asm::{eax, r10, r8, rcx, rdi, rdx, rsi, AsmMemoryOperand};

use super::depthwise::DepthwiseSpec;
use super::x86::{width, Vasm, Width};
use crate::error::{Error, Result};
use crate::options::Isa;

/// The wide row kernel of one depthwise spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DwRow {
    width: Width,
    /// Byte offset of each tap from the row's first input, row by row.
    offsets: Vec<usize>,
    /// Outputs computed: whole vectors.
    pub cols: usize,
    bias: bool,
    residual: bool,
    relu: bool,
    clip: Option<(u32, u32)>,
}

/// Registers besides the taps: accumulator, loaded input, bias, zero, clip bounds.
const OTHER_REGS: usize = 6;

impl DwRow {
    /// The row kernel for `s` at `isa`, if it has one: stride 1, a vector ISA, taps that
    /// fit in registers, and a row of at least one whole vector.
    pub fn for_spec(s: &DepthwiseSpec, isa: Isa) -> Option<DwRow> {
        let width = width(isa)?;
        let taps = s.kernel_h * s.kernel_w;
        let cols = s.out_w() / width.lanes() * width.lanes();
        if s.stride_w != 1 || cols == 0 || taps + OTHER_REGS > width.registers() {
            return None;
        }
        let row = s.in_w + 2 * s.pad_w;
        let offsets = (0..s.kernel_h)
            .flat_map(|fy| {
                (0..s.kernel_w).map(move |fx| (fy * s.dilation_h * row + fx * s.dilation_w) * 4)
            })
            .collect();
        Some(DwRow {
            width,
            offsets,
            cols,
            bias: s.bias,
            residual: s.residual,
            relu: s.relu,
            clip: s.clip.map(|c| (c.min.to_bits(), c.max.to_bits())),
        })
    }

    /// The machine code.
    pub fn emit(&self) -> Result<Vec<u8>> {
        let mut v = Vasm::new(self.width)?;
        let taps = self.offsets.len();
        let (acc, x, bias, zero, lo, hi) = (taps, taps + 1, taps + 2, taps + 3, taps + 4, taps + 5);
        let err = |e| Error::Codegen(format!("x86 assembler: {e}"));
        for t in 0..taps {
            v.bcst(t, rdx + disp(t * 4)?)?;
        }
        if self.bias {
            v.bcst(bias, AsmMemoryOperand::from(rcx))?;
        }
        v.zero(zero)?;
        if let Some((l, h)) = self.clip {
            for (r, bits) in [(lo, l), (hi, h)] {
                v.a.mov(eax, bits as i32).map_err(err)?;
                v.splat_eax(r)?;
            }
        }
        v.a.xor(r10, r10).map_err(err)?;
        let mut top = v.a.create_label();
        v.a.set_label(&mut top).map_err(err)?;
        v.zero(acc)?;
        for (t, &o) in self.offsets.iter().enumerate() {
            v.load(x, rdi + r10 + disp(o)?)?;
            v.fma(acc, t, x)?;
        }
        if self.bias {
            v.add(acc, acc, bias)?;
        }
        if self.residual {
            v.add_mem(acc, acc, r8 + r10)?;
        }
        // `max(bound, x)` and `min(bound, x)` give `x` where it is NaN, as the Cranelift
        // epilogue does; ReLU keeps `-0.0` the same way.
        if self.relu {
            v.max(acc, zero, acc)?;
        }
        if self.clip.is_some() {
            v.max(acc, lo, acc)?;
            v.min(acc, hi, acc)?;
        }
        v.store(rsi + r10 + 0, acc)?;
        v.a.add(r10, disp(self.width.bytes())?).map_err(err)?;
        v.a.cmp(r10, disp(self.cols * 4)?).map_err(err)?;
        v.a.jl(top).map_err(err)?;
        v.a.vzeroupper().map_err(err)?;
        v.a.ret().map_err(err)?;
        v.finish()
    }
}

fn disp(bytes: usize) -> Result<i32> {
    i32::try_from(bytes)
        .map_err(|_| Error::Codegen(format!("depthwise row offset {bytes} exceeds i32")))
}
