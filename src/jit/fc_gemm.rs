//! The fully connected layer at batch > 1 as a GEMM with the batch items as rows:
//! `out[n][k] = Σ_c x[n][c] W[k][c]`, vectorised along the output features `k`.
//!
//! The weights are packed at compile time into *panels* of `np` features, `[K/np][C][np]`
//! (the last panel zero-padded), then the bias padded to the panels; a panel is the vector
//! operand of a tile, read row by row. The input is read in place: a tile of `mr` batch
//! items broadcasts `x[n][c]` from each item's row (the micro-kernel's `w_row`, the input's
//! row length), so nothing is transposed at run time. The output lands in `[batch][out]`,
//! the bias added per column.
//!
//! A tile is `mr` items by `np` features: at avx2 / avx512 a call to the x86 micro-kernel
//! ([`MicroGemm`], 6 x 16 in ymm, 14 x 32 in zmm), else a Cranelift tile of f32x4 vectors
//! (6 x 8). Either way every output is one fused multiply-add chain over `c` in order,
//! from zero, then `+ bias`, `+ residual`, ReLU, clip: the same operations in the same
//! order at every ISA level, so results are bit-identical across them.
//!
//! Work units: panels. A unit computes its panel for every batch tile, so the panel
//! (`C * np` floats: 512 KB at 4096 inputs in zmm) is read from memory once and from L2 for
//! the later tiles; outputs of different units are disjoint and computed by the same code
//! whatever the split.
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Type, Value};
use cranelift_frontend::Variable;

use super::cg::{off, F32, F32X4, I64};
use super::conv::bcast_flags;
use super::fc::{FcBufs, FcSpec};
use super::gemm::wide_tile;
use super::module::{Emit, KernelModule, MicroId, PendingId};
use super::x86::{self, MicroGemm, Width};
use crate::error::{Error, Result};
use crate::options::Isa;

/// Batch items per tile and features per panel of the f32x4 tile (12 accumulators, as the
/// pointwise GEMM's).
const MR: usize = 6;
const NP: usize = 8;

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FcGemm {
    s: FcSpec,
    /// Micro-kernel width, or `None` for the f32x4 tile.
    wide: Option<Width>,
    /// Batch items per tile (the tiles balanced: 64 items at up to 14 are 5 tiles of 13 and
    /// one of 12, not 4 of 14 and one of 8), and features per panel.
    mr: usize,
    np: usize,
}

impl FcGemm {
    pub(crate) fn new(s: FcSpec, isa: Isa) -> Self {
        let wide = x86::width(isa);
        let (max_rows, np) = wide.map_or((MR, NP), wide_tile);
        let tiles = s.batch.div_ceil(max_rows);
        let g = FcGemm {
            s,
            wide,
            mr: s.batch.div_ceil(tiles),
            np,
        };
        // What the generator cannot emit (offsets beyond i32) stays on the f32x4 tile,
        // which computes the same bits.
        if g.wide.is_some() && g.micro_variants().iter().any(|m| m.check().is_err()) {
            return Self::new(s, Isa::Sse);
        }
        g
    }

    /// What computes a tile, for profiles and plans: `avx512 8x32`.
    pub(crate) fn micro_kernel(&self) -> String {
        let isa = self.wide.map_or("f32x4", Width::isa_name);
        format!("{isa} {}x{}", self.mr, self.np)
    }
    fn panels(&self) -> usize {
        self.s.out_features.div_ceil(self.np)
    }
    pub(crate) fn work_units(&self) -> usize {
        self.panels()
    }
    fn weights_len(&self) -> usize {
        self.panels() * self.np * self.s.in_features
    }
    pub(crate) fn packed_len(&self) -> usize {
        self.weights_len() + self.panels() * self.np
    }

    /// `[K/np][C][np]` from PyTorch's `[K][C]`, then the bias, into `out` (`packed_len()`
    /// zeros).
    pub(crate) fn pack_into(&self, w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
        let (c, np) = (self.s.in_features, self.np);
        for (k, row) in w.chunks_exact(c).enumerate() {
            let panel = &mut out[(k / np) * c * np..];
            for (ci, &v) in row.iter().enumerate() {
                panel[ci * np + k % np] = v;
            }
        }
        if let Some(b) = bias {
            let base = self.weights_len();
            out[base..base + b.len()].copy_from_slice(b);
        }
    }

    /// Batch tiles: `full` of `mr` items, then one of `rem` (0: none).
    fn tiles(&self) -> (usize, usize) {
        (self.s.batch / self.mr, self.s.batch % self.mr)
    }

    fn micro(&self, width: Width, rows: usize, cols: usize) -> MicroGemm {
        let (s, ep) = (self.s, self.s.epilogue());
        MicroGemm {
            width,
            rows,
            cols,
            k: s.in_features,
            w_stride: 1,
            w_row: s.in_features,
            ldx: self.np,
            ldo: s.out_features,
            accumulate: false,
            bias: ep.bias,
            bias_per_col: true,
            residual: ep.residual,
            relu: ep.relu,
            clip: ep.clip.map(|c| (c.min.to_bits(), c.max.to_bits())),
        }
    }

    /// The (rows, cols) tile shapes that occur: full and tail batch tiles by full and tail
    /// panels.
    fn shapes(&self) -> Vec<(usize, usize)> {
        let (full, rem) = self.tiles();
        let k = self.s.out_features;
        let rows = [(full > 0).then_some(self.mr), (rem > 0).then_some(rem)];
        let cols = [(k >= self.np).then_some(self.np), (k % self.np > 0).then_some(k % self.np)];
        let mut v = Vec::new();
        for r in rows.into_iter().flatten() {
            for c in cols.into_iter().flatten() {
                v.push((r, c));
            }
        }
        v
    }

    /// The micro-kernels of a wide plan, in the order [`Self::emit`] installs them.
    fn micro_variants(&self) -> Vec<MicroGemm> {
        let Some(width) = self.wide else {
            return Vec::new();
        };
        (self.shapes().into_iter())
            .map(|(r, c)| self.micro(width, r, c))
            .collect()
    }

    /// Emits the fc function (with its micro-kernels at avx2 / avx512).
    pub(crate) fn emit(&self, km: &mut KernelModule) -> Result<PendingId> {
        let ids: Vec<MicroId> = (self.micro_variants().iter())
            .map(|m| km.add_micro(5, &m.emit()?, "fc micro-kernel"))
            .collect::<Result<_>>()?;
        let g = self.clone();
        km.define_with_micros(&ids, move |e, a: FcBufs<Value>, begin, end| {
            g.body(e, &a, begin, end)
        })
    }

    /// The panels `begin..end`, the last one (when `np` does not divide the features) with
    /// its own tile shapes.
    fn body(&self, e: &mut Emit, a: &FcBufs<Value>, begin: Value, end: Value) -> Result<()> {
        let (np, last) = (self.np, self.panels() as i64 - 1);
        let tail = self.s.out_features % np;
        e.for_range(begin, end, 1, |e, p| {
            if tail == 0 {
                return self.panel(e, a, p, np);
            }
            if last == 0 {
                return self.panel(e, a, p, tail);
            }
            let is_last = e.b.ins().icmp_imm_s(IntCC::Equal, p, last);
            e.when(is_last, |e| self.panel(e, a, p, tail))?;
            e.unless(is_last, |e| self.panel(e, a, p, np))
        })
    }

    /// Every batch tile of panel `p`, whose first `cols` features are real.
    fn panel(&self, e: &mut Emit, a: &FcBufs<Value>, p: Value, cols: usize) -> Result<()> {
        let (full, rem) = self.tiles();
        e.for_const(0, full as i64, 1, |e, t| {
            let n0 = e.mul_imm(t, self.mr as i64);
            self.tile(e, a, (p, n0), self.mr, cols)
        })?;
        if rem > 0 {
            let n0 = e.iconst((full * self.mr) as i64);
            self.tile(e, a, (p, n0), rem, cols)?;
        }
        Ok(())
    }

    /// Batch items `n0 .. n0 + rows` by the first `cols` features of panel `p`.
    fn tile(
        &self,
        e: &mut Emit,
        a: &FcBufs<Value>,
        (p, n0): (Value, Value),
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let (c, k, np) = (self.s.in_features, self.s.out_features, self.np);
        let at = TileAt {
            panel: e.addr(a.packed, p, c * np * 4),
            x: e.addr(a.input, n0, c * 4),
            out_off: {
                let o = e.mul_imm(n0, (k * 4) as i64);
                let q = e.mul_imm(p, (np * 4) as i64);
                e.b.ins().iadd(o, q)
            },
            bias: {
                let b = e.addr(a.packed, p, np * 4);
                e.add_imm(b, (self.weights_len() * 4) as i64)
            },
        };
        let out = e.b.ins().iadd(a.out, at.out_off);
        let res = e.b.ins().iadd(a.residual, at.out_off);
        let Some(width) = self.wide else {
            return self.f32x4_tile(e, &at, (res, out), rows, cols);
        };
        let m = self.micro(width, rows, cols);
        let i = (self.micro_variants().iter().position(|v| *v == m))
            .ok_or_else(|| Error::Codegen(format!("no fc micro-kernel {m:?}")))?;
        let f = e.micros[i];
        e.b.ins().call(f, &[at.panel, at.x, out, res, at.bias]);
        Ok(())
    }

    /// The Cranelift tile: `rows` accumulators per column group (f32x4 vectors of features,
    /// then single features), one input feature per iteration.
    fn f32x4_tile(
        &self,
        e: &mut Emit,
        at: &TileAt,
        (res, out): (Value, Value),
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let (c, k, np) = (self.s.in_features, self.s.out_features, self.np);
        let groups: Vec<(Type, usize)> = (0..cols / 4)
            .map(|v| (F32X4, v * 16))
            .chain((cols / 4 * 4..cols).map(|j| (F32, j * 4)))
            .collect();
        let ng = groups.len();
        let acc: Vec<Variable> = (0..rows * ng)
            .map(|i| {
                let ty = groups[i % ng].0;
                let v = e.b.declare_var(ty);
                let z = e.fzero(ty);
                e.b.def_var(v, z);
                v
            })
            .collect();
        // The panel row and the items' input feature advance together.
        let xvar = e.b.declare_var(I64);
        e.b.def_var(xvar, at.x);
        let pend = e.add_imm(at.panel, (c * np * 4) as i64);
        e.for_range(at.panel, pend, (np * 4) as i64, |e, wp| {
            let xp = e.b.use_var(xvar);
            let ws: Vec<Value> = (groups.iter()).map(|&(ty, o)| e.load(ty, wp, off(o))).collect();
            for i in 0..rows {
                for (g, &(ty, _)) in groups.iter().enumerate() {
                    // A fresh broadcast per FMA (see `conv::bcast_flags`).
                    let xs = e.b.ins().load(F32, bcast_flags(g), xp, off(i * c * 4));
                    let xv = if ty == F32 { xs } else { e.b.ins().splat(F32X4, xs) };
                    let av = e.b.use_var(acc[i * ng + g]);
                    let av = e.fmadd(xv, ws[g], av);
                    e.b.def_var(acc[i * ng + g], av);
                }
            }
            let xn = e.add_imm(xp, 4);
            e.b.def_var(xvar, xn);
            Ok(())
        })?;
        let ep = self.s.epilogue();
        for i in 0..rows {
            for (g, &(ty, o)) in groups.iter().enumerate() {
                let b = ep.bias.then(|| e.load(ty, at.bias, off(o)));
                let v = e.b.use_var(acc[i * ng + g]);
                e.epilogue_store(&ep, v, b, (res, out), off(i * k * 4 + o));
            }
        }
        Ok(())
    }
}

/// Where a tile's operands are: its panel, its first item's input row, the byte offset of
/// its first output (and residual) and its bias.
struct TileAt {
    panel: Value,
    x: Value,
    out_off: Value,
    bias: Value,
}
