//! The fused epilogue of the kernels that accumulate (convolutions, pointwise GEMM, Winograd,
//! fc): what happens to each accumulated value before its single store, `+ bias`,
//! `+ residual`, ReLU, clip, always in that order; and the guard that skips the channels past
//! the end of a partial last block of output channels.
use std::hash::{Hash, Hasher};

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{Endianness, InstBuilder, MemFlagsData, Value};

use super::cg::F32;
use super::module::Emit;
use crate::error::{Error, Result};

/// A clip activation, `min(max(x, min), max)` with NaN kept NaN (PyTorch's `clamp` and
/// `hardtanh`; ReLU6 is `0..6`), applied after ReLU.
#[derive(Clone, Copy, Debug)]
pub struct Clip {
    pub min: f32,
    pub max: f32,
}

impl Clip {
    /// ReLU6: `0..6`.
    pub const RELU6: Clip = Clip { min: 0.0, max: 6.0 };

    /// Checks that the bounds are numbers with `min <= max`.
    pub fn validate(&self) -> Result<()> {
        if self.min <= self.max {
            Ok(())
        } else {
            Err(Error::Shape(format!(
                "clip bounds must be numbers with min <= max, got min {} and max {}",
                self.min, self.max
            )))
        }
    }
}

// Specs are hashed to share the code of equal layers: bounds compare by their bits.
impl PartialEq for Clip {
    fn eq(&self, other: &Self) -> bool {
        (self.min.to_bits(), self.max.to_bits()) == (other.min.to_bits(), other.max.to_bits())
    }
}
impl Eq for Clip {}
impl Hash for Clip {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.min.to_bits(), self.max.to_bits()).hash(state);
    }
}

/// What a kernel does to an accumulated value before storing it, in this order: add the
/// bias of its output channel, add the residual element at the same index of the output's
/// shape, ReLU, clip.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Epilogue {
    pub bias: bool,
    pub residual: bool,
    pub relu: bool,
    pub clip: Option<Clip>,
}

impl Epilogue {
    pub(crate) fn new(bias: bool, residual: bool, relu: bool, clip: Option<Clip>) -> Self {
        Epilogue {
            bias,
            residual,
            relu,
            clip,
        }
    }

    /// Whether anything follows the bias.
    fn activates(&self) -> bool {
        self.relu || self.clip.is_some()
    }

    /// The part a kernel may apply to its accumulators before taking them apart for the
    /// stores: the bias, and the activation too when no residual comes between them.
    pub(crate) fn on_accumulators(&self) -> Epilogue {
        if self.residual {
            Epilogue {
                bias: self.bias,
                ..Epilogue::default()
            }
        } else {
            *self
        }
    }

    /// What is left for the stores after [`Epilogue::on_accumulators`].
    pub(crate) fn at_stores(&self) -> Epilogue {
        if self.residual {
            Epilogue {
                bias: false,
                ..*self
            }
        } else {
            Epilogue::default()
        }
    }
}

/// The channels of one block of output channels, the last block of a layer possibly partial.
pub(crate) struct ChannelBlock {
    /// Channels per block.
    width: usize,
    /// Real channels in the last block (`width` when the blocks divide the channels).
    last_width: usize,
    /// When the last block is partial: whether this block is it.
    is_last: Option<Value>,
}

impl ChannelBlock {
    /// Channels that every block has (all of them unless the last block is partial).
    pub(crate) fn in_every_block(&self) -> usize {
        self.last_width
    }
}

impl Emit<'_> {
    /// The activation: ReLU then clip, as `ep` asks.
    pub(crate) fn activate(&mut self, ep: &Epilogue, mut x: Value) -> Value {
        if ep.relu {
            x = self.relu(x);
        }
        if let Some(c) = ep.clip {
            x = self.clip(x, c);
        }
        x
    }

    /// `ep` on one accumulated value `x` (f32 or f32x4): `+ bias` (a value of the type of
    /// `x`, given when `ep.bias`), `+ residual` (given when `ep.residual`), the activation.
    pub(crate) fn epilogue(
        &mut self,
        ep: &Epilogue,
        mut x: Value,
        bias: Option<Value>,
        residual: Option<Value>,
    ) -> Value {
        debug_assert_eq!(ep.bias, bias.is_some());
        debug_assert_eq!(ep.residual, residual.is_some());
        if let Some(b) = bias {
            x = self.b.ins().fadd(x, b);
        }
        if let Some(r) = residual {
            x = self.b.ins().fadd(x, r);
        }
        if ep.activates() {
            x = self.activate(ep, x);
        }
        x
    }

    /// [`Emit::epilogue`] of `x`, the residual (when `ep.residual`) loaded from `res + o`,
    /// then the store at `out + o` (residual and output are laid out alike).
    pub(crate) fn epilogue_store(
        &mut self,
        ep: &Epilogue,
        x: Value,
        bias: Option<Value>,
        (res, out): (Value, Value),
        o: i32,
    ) {
        let ty = self.b.func.dfg.value_type(x);
        let r = ep.residual.then(|| self.load(ty, res, o));
        let y = self.epilogue(ep, x, bias, r);
        self.store(y, out, o);
    }

    /// `min(max(x, c.min), c.max)` for f32 or f32x4, NaN kept NaN: each bound replaces `x`
    /// only where the ordered comparison with it holds.
    pub(crate) fn clip(&mut self, x: Value, c: Clip) -> Value {
        let ty = self.b.func.dfg.value_type(x);
        let bound = |e: &mut Self, v: f32| {
            let k = e.b.ins().f32const(v);
            if ty == F32 {
                k
            } else {
                e.b.ins().splat(ty, k)
            }
        };
        let lo = bound(self, c.min);
        let hi = bound(self, c.max);
        let below = self.b.ins().fcmp(FloatCC::LessThan, x, lo);
        let x = self.select_lanes(below, lo, x);
        let above = self.b.ins().fcmp(FloatCC::GreaterThan, x, hi);
        self.select_lanes(above, hi, x)
    }

    /// `mask ? a : b`, lane by lane for vectors (`mask` from an `fcmp` of that type).
    fn select_lanes(&mut self, mask: Value, a: Value, b: Value) -> Value {
        let ty = self.b.func.dfg.value_type(a);
        if ty == F32 {
            self.b.ins().select(mask, a, b)
        } else {
            let le = MemFlagsData::new().with_endianness(Endianness::Little);
            let mask = self.b.ins().bitcast(ty, le, mask);
            self.b.ins().bitselect(mask, a, b)
        }
    }

    /// Block `blk` of `width` output channels out of `channels`.
    pub(crate) fn channel_block(
        &mut self,
        blk: Value,
        width: usize,
        channels: usize,
    ) -> ChannelBlock {
        let tail = channels % width;
        let is_last = (tail != 0).then(|| {
            let last = channels.div_ceil(width) - 1;
            self.b.ins().icmp_imm_s(IntCC::Equal, blk, last as i64)
        });
        ChannelBlock {
            width,
            last_width: if tail == 0 { width } else { tail },
            is_last,
        }
    }

    /// `each(e, i)` for the channels `i` in `from..` of block `blk`: those that exist in every
    /// block straight, the others behind a branch that skips them in a partial last block.
    pub(crate) fn each_channel(
        &mut self,
        blk: &ChannelBlock,
        from: usize,
        mut each: impl FnMut(&mut Self, usize),
    ) -> Result<()> {
        for i in from..blk.last_width {
            each(self, i);
        }
        if let Some(is_last) = blk.is_last {
            self.unless(is_last, |e| {
                for i in from.max(blk.last_width)..blk.width {
                    each(e, i);
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// `base + i * stride`: the address of element `i` of an array of `stride`-byte elements
    /// (a runtime index, a compile-time stride; a shift when it is a power of two).
    pub(crate) fn addr(&mut self, base: Value, i: Value, stride: usize) -> Value {
        let o = if stride.is_power_of_two() {
            self.b.ins().ishl_imm_s(i, stride.trailing_zeros() as i64)
        } else {
            self.mul_imm(i, stride as i64)
        };
        self.b.ins().iadd(base, o)
    }
}
