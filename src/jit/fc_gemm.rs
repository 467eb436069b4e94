//! The fully connected layer at batch > 1 as a GEMM with the batch items as rows:
//! `out[n][k] = Σ_c x[n][c] W[k][c]`, vectorised along the output features `k`.
//!
//! * The weights are packed at compile time into *panels* of `np` features, `[K/np][C][np]`
//!   (the last panel zero-padded), then the bias padded to the panels: a panel is the
//!   vector operand of a tile, read row by row.
//! * The reduction is cut into *chunks* of `kc` input features. For each chunk the function
//!   first copies the chunk's inputs of every item into a buffer on its stack, transposed
//!   per tile of `mr` items (`[tile][kc][mr]`, the micro-kernel's broadcast operand): read
//!   in place, the `mr` rows of a tile (16 KB apart at 4096 inputs) would fall into the same
//!   L1 sets. Then, for every panel of the range and every tile, one micro-kernel call over
//!   the chunk: the panel's chunk (`kc * np` floats) stays in L1 while the tiles use it.
//!   A later chunk continues the sums where the previous one stored them in the output
//!   ([`MicroGemm::accumulate`]); only the last applies the epilogue (bias per column,
//!   residual, ReLU, clip).
//! * A tile is `mr` items by `np` features: at avx2 / avx512 a call to the x86 micro-kernel
//!   (6 x 16 in ymm, 14 x 32 in zmm), else a Cranelift tile of f32x4 vectors (6 x 8). Either
//!   way every output is one fused multiply-add chain over `c` in order, from zero (a stored
//!   partial sum is the f32 the register held), then `+ bias`, `+ residual`, ReLU, clip:
//!   the same operations in the same order at every ISA level, so the results are
//!   bit-identical across them and across splits.
//!
//! Work units: panels. Each thread copies the chunks of all items (`B * C` floats in all,
//! small next to the `B * C * K` multiply-adds) and computes its panels.
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, StackSlotData, StackSlotKind, Type, Value};
use cranelift_frontend::Variable;

use super::cg::{off, F32, F32X4, I64};
use super::conv::bcast_flags;
use super::epilogue::Epilogue;
use super::fc::{FcBufs, FcSpec};
use super::gemm::wide_tile;
use super::module::{Emit, KernelModule, MicroId, PendingId, PREFETCH_BYTES};
use super::x86::gemm::KPos;
use super::x86::{self, MicroGemm, Width};
use crate::error::{Error, Result};
use crate::options::Isa;

/// Batch items per tile and features per panel of the f32x4 tile (12 accumulators, as the
/// pointwise GEMM's).
const MR: usize = 6;
const NP: usize = 8;
/// Bytes of the stack buffer holding one chunk of every item's inputs.
const CHUNK_BYTES: usize = 128 * 1024;

/// Prefetch the next panel's chunk while the batch tiles compute from cache
/// ([`FcGemm::prefetch_next`]). fc 2048->1000 at batch 64, avx512, paired runs on a loaded
/// machine: 98 -> 126, 98 -> 146, 127 -> 145 GFLOP/s; 4096->4096: 30 -> 30, 22 -> 41,
/// 42 -> 55.
const PREFETCH_NEXT: bool = true;

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FcGemm {
    s: FcSpec,
    /// Micro-kernel width, or `None` for the f32x4 tile.
    wide: Option<Width>,
    /// Batch items per tile (the tiles balanced: 64 items at up to 14 are 4 tiles of 13 and
    /// one of 12, not 4 of 14 and one of 8), and features per panel.
    mr: usize,
    np: usize,
    /// Input features per chunk, and chunks.
    kc: usize,
    nkc: usize,
}

impl FcGemm {
    pub(crate) fn new(s: FcSpec, isa: Isa) -> Self {
        let wide = x86::width(isa);
        let (max_rows, np) = wide.map_or((MR, NP), wide_tile);
        let tiles = s.batch.div_ceil(max_rows);
        let mr = s.batch.div_ceil(tiles);
        let kc = (CHUNK_BYTES / (4 * tiles * mr)).clamp(1, s.in_features);
        let nkc = s.in_features.div_ceil(kc);
        let g = FcGemm {
            s,
            wide,
            mr,
            np,
            kc: s.in_features.div_ceil(nkc),
            nkc,
        };
        // What the generator cannot emit (offsets beyond i32) stays on the f32x4 tile,
        // which computes the same bits.
        if g.wide.is_some() && g.micro_variants().iter().any(|m| m.check().is_err()) {
            return Self::new(s, Isa::Sse);
        }
        g
    }

    /// What computes a tile, for profiles and plans: `avx512 8x32` (items x features).
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
        // Panel by panel, so that the strided writes stay within one panel (in L2).
        let panels = out[..self.weights_len()].chunks_exact_mut(c * np);
        for (panel, rows) in panels.zip(w.chunks(c * np)) {
            for (kk, row) in rows.chunks_exact(c).enumerate() {
                for (ci, &v) in row.iter().enumerate() {
                    panel[ci * np + kk] = v;
                }
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

    /// The chunk positions that occur.
    fn kpositions(&self) -> Vec<KPos> {
        match self.nkc {
            1 => vec![KPos::Only],
            2 => vec![KPos::First, KPos::Last],
            _ => vec![KPos::First, KPos::Middle, KPos::Last],
        }
    }
    /// Input features of a chunk at `pos`.
    fn steps(&self, pos: KPos) -> usize {
        match pos {
            KPos::Only => self.s.in_features,
            KPos::First | KPos::Middle => self.kc,
            KPos::Last => self.s.in_features - (self.nkc - 1) * self.kc,
        }
    }
    /// What a chunk at `pos` does after its sums, and whether it starts from the output.
    fn chunk_epilogue(&self, pos: KPos) -> (Epilogue, bool) {
        let ep = match pos {
            KPos::Only | KPos::Last => self.s.epilogue(),
            _ => Epilogue::new(false, false, false, None),
        };
        (ep, matches!(pos, KPos::Middle | KPos::Last))
    }

    fn micro(&self, width: Width, pos: KPos, rows: usize, cols: usize) -> MicroGemm {
        let (ep, accumulate) = self.chunk_epilogue(pos);
        MicroGemm {
            width,
            rows,
            cols,
            k: self.steps(pos),
            w_stride: self.mr,
            ldx: self.np,
            ldo: self.s.out_features,
            accumulate,
            bias: ep.bias,
            bias_per_col: true,
            residual: ep.residual,
            relu: ep.relu,
            clip: ep.clip.map(|c| (c.min.to_bits(), c.max.to_bits())),
            prefetch_every: 0,
            prefetch_w: 0,
            pf_ldx: 0,
            prefetch_out: false,
            extra_x: 0,
            lanes: false,
            lane_blocks: 1,
            block_stride: 0,
            pack: false,
        }
    }

    /// The (rows, cols) tile shapes that occur: full and tail batch tiles by full and tail
    /// panels.
    fn shapes(&self) -> Vec<(usize, usize)> {
        let (full, rem) = self.tiles();
        let k = self.s.out_features;
        let rows = [(full > 0).then_some(self.mr), (rem > 0).then_some(rem)];
        let cols = [
            (k >= self.np).then_some(self.np),
            (!k.is_multiple_of(self.np)).then_some(k % self.np),
        ];
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
        let mut v = Vec::new();
        for pos in self.kpositions() {
            for (r, c) in self.shapes() {
                v.push(self.micro(width, pos, r, c));
            }
        }
        v
    }

    /// Emits the fc function (with its micro-kernels at avx2 / avx512).
    pub(crate) fn emit(&self, km: &mut KernelModule) -> Result<PendingId> {
        let ids: Vec<MicroId> = (self.micro_variants().iter())
            .map(|m| km.add_micro_once(5, "fc micro-kernel", m, MicroGemm::emit))
            .collect::<Result<_>>()?;
        let g = self.clone();
        km.define_with_micros(&ids, move |e, a: FcBufs<Value>, begin, end| {
            g.body(e, &a, begin, end)
        })
    }

    /// The chunks in order (the middle ones in a loop), each over the panels `begin..end`.
    fn body(&self, e: &mut Emit, a: &FcBufs<Value>, begin: Value, end: Value) -> Result<()> {
        // The chunk buffer: `[tile][kc][mr]` (its alignment only matters for speed). Packing
        // writes the chunk's `steps <= kc` rows of each tile's `mr` columns; the
        // micro-kernels read as much.
        let (full, rem) = self.tiles();
        let bytes = (full + usize::from(rem > 0)) * self.kc * self.mr * 4;
        let bytes =
            u32::try_from(bytes).map_err(|_| Error::Codegen("fc chunk buffer too large".into()))?;
        let slot = (e.b).create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            bytes,
            6,
        ));
        let buf = e.b.ins().stack_addr(I64, slot, 0);
        let at = Chunk { buf, begin, end };
        for pos in self.kpositions() {
            if pos == KPos::Middle {
                e.for_const(1, self.nkc as i64 - 1, 1, |e, j| {
                    let c0 = e.mul_imm(j, self.kc as i64);
                    self.chunk(e, a, &at, c0, pos)
                })?;
            } else {
                let c0 = if pos == KPos::Last {
                    (self.nkc - 1) * self.kc
                } else {
                    0
                };
                let c0 = e.iconst(c0 as i64);
                self.chunk(e, a, &at, c0, pos)?;
            }
        }
        Ok(())
    }

    /// One chunk from input feature `c0`: copies it, then every panel of the range (the last
    /// one, when `np` does not divide the features, with its own tile shapes).
    fn chunk(
        &self,
        e: &mut Emit,
        a: &FcBufs<Value>,
        at: &Chunk,
        c0: Value,
        pos: KPos,
    ) -> Result<()> {
        self.copy_chunk(e, a, at.buf, c0, self.steps(pos))?;
        let (np, last) = (self.np, self.panels() as i64 - 1);
        let tail = self.s.out_features % np;
        e.for_range(at.begin, at.end, 1, |e, p| {
            let t = TileAt {
                p,
                c0,
                buf: at.buf,
                pos,
            };
            if tail == 0 {
                return self.panel(e, a, &t, np);
            }
            if last == 0 {
                return self.panel(e, a, &t, tail);
            }
            let is_last = e.b.ins().icmp_imm_s(IntCC::Equal, p, last);
            e.if_else(
                is_last,
                |e| self.panel(e, a, &t, tail),
                |e| self.panel(e, a, &t, np),
            )
        })
    }

    /// Input features `c0 .. c0 + steps` of every item into the buffer: item `n` (row `i` of
    /// tile `t`), feature `c0 + j` at `buf + (t * kc + j) * mr + i` (floats). Reads inside
    /// the input (`c0 + steps <= C`), writes inside the buffer.
    fn copy_chunk(
        &self,
        e: &mut Emit,
        a: &FcBufs<Value>,
        buf: Value,
        c0: Value,
        steps: usize,
    ) -> Result<()> {
        let (c, mr) = (self.s.in_features, self.mr);
        let src0 = e.addr(a.input, c0, 4);
        let dvar = e.b.declare_var(I64);
        e.for_const(0, self.s.batch as i64, 1, |e, n| {
            let t = e.b.ins().udiv_imm_s(n, mr as i64);
            let i = e.b.ins().urem_imm_s(n, mr as i64);
            let d = e.addr(buf, t, self.kc * mr * 4);
            let d = e.addr(d, i, 4);
            e.b.def_var(dvar, d);
            let src = e.addr(src0, n, c * 4);
            let quad_end = e.add_imm(src, (steps / 4 * 16) as i64);
            e.for_range(src, quad_end, 16, |e, sp| {
                let d = e.b.use_var(dvar);
                for j in 0..4 {
                    let x = e.load(F32, sp, off(j * 4));
                    e.store(x, d, off(j * mr * 4));
                }
                let dn = e.add_imm(d, (4 * mr * 4) as i64);
                e.b.def_var(dvar, dn);
                Ok(())
            })?;
            let d = e.b.use_var(dvar);
            for j in 0..steps % 4 {
                let x = e.load(F32, quad_end, off(j * 4));
                e.store(x, d, off(j * mr * 4));
            }
            Ok(())
        })
    }

    /// Every batch tile of a panel, whose first `cols` features are real.
    fn panel(&self, e: &mut Emit, a: &FcBufs<Value>, t: &TileAt, cols: usize) -> Result<()> {
        let (full, rem) = self.tiles();
        e.for_const(0, full as i64, 1, |e, ti| {
            self.prefetch_next(e, a, t, ti)?;
            self.tile(e, a, t, (ti, self.mr), cols)
        })?;
        if rem > 0 {
            let ti = e.iconst(full as i64);
            self.prefetch_next(e, a, t, ti)?;
            self.tile(e, a, t, (ti, rem), cols)?;
        }
        Ok(())
    }

    /// With several batch tiles, the first tile of a panel waits for its weights from memory
    /// and the others compute from cache; so before each tile, the next panel's rows of the
    /// chunk are prefetched, a share per tile, overlapping the stream with the compute.
    /// (Past the last panel the prefetches reach beyond the weights: a prefetch never faults.)
    fn prefetch_next(&self, e: &mut Emit, a: &FcBufs<Value>, t: &TileAt, ti: Value) -> Result<()> {
        let (full, rem) = self.tiles();
        let ntiles = full + usize::from(rem > 0);
        if ntiles < 2 || !PREFETCH_NEXT {
            return Ok(());
        }
        let (c, np) = (self.s.in_features, self.np);
        let bytes = self.kc * np * 4;
        let share = bytes.div_ceil(ntiles).div_ceil(PREFETCH_BYTES) * PREFETCH_BYTES;
        let next = e.add_imm(t.p, 1);
        let panel = e.addr(a.packed, next, c * np * 4);
        let rows = e.addr(panel, t.c0, np * 4);
        let from = e.addr(rows, ti, share);
        let to = e.add_imm(from, share as i64);
        e.for_range(from, to, PREFETCH_BYTES as i64, |e, p| {
            e.b.ins().call(e.prefetch_ref, &[p]);
            Ok(())
        })
    }

    /// The `rows` items of tile `ti` by the first `cols` features of the panel, over the
    /// chunk.
    fn tile(
        &self,
        e: &mut Emit,
        a: &FcBufs<Value>,
        t: &TileAt,
        (ti, rows): (Value, usize),
        cols: usize,
    ) -> Result<()> {
        let (c, k, np, mr) = (self.s.in_features, self.s.out_features, self.np, self.mr);
        let panel = e.addr(a.packed, t.p, c * np * 4);
        let ops = TileOps {
            panel: e.addr(panel, t.c0, np * 4),
            x: e.addr(t.buf, ti, self.kc * mr * 4),
            out: {
                let o = e.mul_imm(ti, (mr * k * 4) as i64);
                let q = e.mul_imm(t.p, (np * 4) as i64);
                e.b.ins().iadd(o, q)
            },
            bias: {
                let b = e.addr(a.packed, t.p, np * 4);
                e.add_imm(b, (self.weights_len() * 4) as i64)
            },
        };
        let out = e.b.ins().iadd(a.out, ops.out);
        let res = e.b.ins().iadd(a.residual, ops.out);
        let Some(width) = self.wide else {
            return self.f32x4_tile(e, &ops, (res, out), (rows, cols), t.pos);
        };
        let m = self.micro(width, t.pos, rows, cols);
        let i = (self.micro_variants().iter().position(|v| *v == m))
            .ok_or_else(|| Error::Codegen(format!("no fc micro-kernel {m:?}")))?;
        let f = e.micros[i];
        e.b.ins().call(f, &[ops.panel, ops.x, out, res, ops.bias]);
        Ok(())
    }

    /// The Cranelift tile: `rows` accumulators per column group (f32x4 vectors of features,
    /// then single features), one input feature per iteration; as the micro-kernel, it
    /// starts from the output in a later chunk and applies the epilogue in the last.
    fn f32x4_tile(
        &self,
        e: &mut Emit,
        ops: &TileOps,
        (res, out): (Value, Value),
        (rows, cols): (usize, usize),
        pos: KPos,
    ) -> Result<()> {
        let (k, np, mr) = (self.s.out_features, self.np, self.mr);
        let (ep, accumulate) = self.chunk_epilogue(pos);
        let groups: Vec<(Type, usize)> = (0..cols / 4)
            .map(|v| (F32X4, v * 16))
            .chain((cols / 4 * 4..cols).map(|j| (F32, j * 4)))
            .collect();
        let ng = groups.len();
        let at = |i: usize, g: usize| off(i * k * 4 + groups[g].1);
        let acc: Vec<Variable> = (0..rows * ng)
            .map(|r| {
                let (i, g) = (r / ng, r % ng);
                let ty = groups[g].0;
                let v = e.b.declare_var(ty);
                let start = if accumulate {
                    e.load_rw(ty, out, at(i, g))
                } else {
                    e.fzero(ty)
                };
                e.b.def_var(v, start);
                v
            })
            .collect();
        // The panel row and the items' input feature advance together.
        let xvar = e.b.declare_var(I64);
        e.b.def_var(xvar, ops.x);
        let pend = e.add_imm(ops.panel, (self.steps(pos) * np * 4) as i64);
        e.for_range(ops.panel, pend, (np * 4) as i64, |e, wp| {
            let xp = e.b.use_var(xvar);
            let ws: Vec<Value> = (groups.iter())
                .map(|&(ty, o)| e.load(ty, wp, off(o)))
                .collect();
            for i in 0..rows {
                for (g, &(ty, _)) in groups.iter().enumerate() {
                    let xv = broadcast(e, ty, g, xp, off(i * 4));
                    let av = e.b.use_var(acc[i * ng + g]);
                    let av = e.fmadd(xv, ws[g], av);
                    e.b.def_var(acc[i * ng + g], av);
                }
            }
            let xn = e.add_imm(xp, (mr * 4) as i64);
            e.b.def_var(xvar, xn);
            Ok(())
        })?;
        for i in 0..rows {
            for (g, &(ty, o)) in groups.iter().enumerate() {
                let b = ep.bias.then(|| e.load(ty, ops.bias, off(o)));
                let v = e.b.use_var(acc[i * ng + g]);
                e.epilogue_store(&ep, v, b, (res, out), at(i, g));
            }
        }
        Ok(())
    }
}

/// The f32 at `p + o` as a `ty` (f32 or f32x4): a fresh load per FMA, the `g`-th kind of
/// equivalent flags, so that it stays single-use (see `conv::bcast_flags`).
fn broadcast(e: &mut Emit, ty: Type, g: usize, p: Value, o: i32) -> Value {
    let x = e.b.ins().load(F32, bcast_flags(g), p, o);
    if ty == F32 {
        x
    } else {
        e.b.ins().splat(F32X4, x)
    }
}

/// What every chunk shares: the buffer and the range of panels.
struct Chunk {
    buf: Value,
    begin: Value,
    end: Value,
}

/// A panel `p` within chunk `c0` (at `pos`), whose inputs are in `buf`.
struct TileAt {
    p: Value,
    c0: Value,
    buf: Value,
    pos: KPos,
}

/// A tile's operands: its panel rows of the chunk, its items' copied inputs, the byte
/// offset of its first output (and residual) and its bias.
struct TileOps {
    panel: Value,
    x: Value,
    out: Value,
    bias: Value,
}
