//! Winograd F(4x4, 3x3) convolution for 3x3, stride-1 layers (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016).
//!
//! Output channel `k` of a 4x4 block of output pixels (a *tile*) is
//! `Y = Aᵀ [ Σ_c (G g_kc Gᵀ) ⊙ (Bᵀ d_c B) ] A`, where `d_c` is the tile's 6x6 input patch in
//! channel `c` and `g_kc` the 3x3 filter. At each of the 36 positions `ξ` of the transformed
//! tile the sum over `c` is a matrix product `M[ξ] = U[ξ] · V[ξ]` (`[K x C]` by `[C x tiles]`):
//! 36 multiply-adds per tile and channel pair where the direct convolution needs 144. With
//! 128-bit vectors capping the multiply-add rate (see `docs/jit.md`), doing 4x fewer of them is
//! the way to go faster.
//!
//! The generated code, all of it specialised to the layer's shapes:
//! 1. a *prologue* per input channel (threads split the channels): copy the plane into a
//!    zero-bordered scratch plane, then transform every tile, `V[ξ][c][t] = (Bᵀ d B)[ξ]`, four
//!    neighbouring tiles of a tile row at a time (one f32x4 lane each);
//! 2. the *products*, per position `ξ` and block of output channels: the pointwise GEMM's
//!    micro-kernel ([`super::gemm`]) over all tiles;
//! 3. the *output transform* per output channel: `Aᵀ m A`, four tiles at a time, with the
//!    epilogue ([`super::epilogue`]) and the stores; tiles that overhang the output's right
//!    or bottom edge store only their inside.
//!
//! A *compute* function per range of channel blocks calls 2 then 3 for its blocks (the
//! kernel's own work units, after the whole prologue); a thread pool instead runs 1, 2 and 3
//! one after another, each split over its own units, so that both threads get equal parts
//! (a 64-channel layer is 5 blocks of 14 at avx512: split by blocks, 3 against 2).
//!
//! At avx512, where `U` fits L2 and tile rows fill vectors of 16, the layer instead runs
//! tile group by tile group ([`Groups`]): per group of 1-2 tile rows, the input transform,
//! the products and the output transform, in the thread's own scratch, with the transforms
//! on 16 tiles per zmm register ([`super::x86::winograd`]).
//!
//! Small outputs, where F(4x4)'s tiles are few (an 8x8 output is 2x2 tiles: GEMMs over 4
//! columns), run F(2x2, 3x3) instead ([`WinogradPlan::small_tiles`], [`F2`]): 16 positions
//! per tile of 2x2 outputs, the same whole layout and f32x4 transforms (a tile's 4x4 patch
//! is one f32x4 load per row), 4x as many tiles, and `U` of 16 values per filter.
//!
//! `U = G g Gᵀ` is computed once, when the weights are packed. Rounding differs from the
//! direct convolution (the transforms scale values by up to 8 and 1/24); tests compare both
//! with the f64 reference at the same tolerance.
//!
//! Bounds (what keeps every access inside the buffers `ConvKernel` checks): a tile row `ty <
//! th` reads padded rows `4 ty .. 4 ty + 5 < hp = 4 th + 2`; a group of tiles starting at tile
//! column `tx0 <= tw4 - 4` reads columns below `4 tx0 + 20 <= wp` (dense groups: below
//! `4 tx + 8 <= wp`). Groups store lanes `t .. t + 3` of a `V` row and the GEMM and output
//! transform read the same `M` indices, all below `tp` (`T + tw4 - tw` rounded up to 4; dense:
//! `T` rounded up). The GEMM writes `M` rows of real output channels only, and the output
//! transform stores only the inside part of each tile, into the `K x oh x ow` output. The x86
//! layouts set their own `tp`, `hp` and `wp` for their vectors of 8 or 16 tiles (`ymm_layout`,
//! `wide_layout`, `Groups`), each bound stated where it is set.
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value};

use super::cg::{fits, off, F32, F32X4};
use super::conv::{ConvBufs, ConvSpec, PROLOGUE_USES};
use super::epilogue::Epilogue;
use super::gemm::{PixelGemm, PixelGemmSpec, Ptrs};
use super::host_fma::ZmmFma;
use super::implicit::STREAMED_WEIGHTS_BYTES;
use super::module::{Emit, KernelModule, MicroId, PendingId};
use super::x86::winograd::{OutputStore, WinogradInput, WinogradOutput, LANES};
use super::x86::winograd_ymm::{YmmInput, YmmOutput, YMM_LANES};
use crate::error::Result;
use crate::options::Isa;

/// Output tile edge (`m`), transformed tile edge (`m + r - 1`) and positions per tile.
const TILE: usize = 4;
const ALPHA: usize = 6;
const POS: usize = ALPHA * ALPHA;

/// Input transform `Bᵀ` of F(4x4, 3x3) (interpolation points 0, ±1, ±2, ∞).
pub(crate) const BT: [[f32; ALPHA]; ALPHA] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];
/// Output transform `Aᵀ`.
pub(crate) const AT: [[f32; ALPHA]; TILE] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];
/// `24 G` for the filter transform `G` (6x3) of F(4x4, 3x3): small integers, so that the
/// weight transform needs one scaling at the end and no division per weight.
const G24: [[f32; 3]; ALPHA] = [
    [6.0, 0.0, 0.0],
    [-4.0, -4.0, -4.0],
    [-4.0, 4.0, -4.0],
    [1.0, 2.0, 4.0],
    [1.0, -2.0, 4.0],
    [0.0, 0.0, 24.0],
];

/// The matrices of one Winograd algorithm F(m x m, 3x3), padded to F(4x4, 3x3)'s sizes
/// (entries past `alpha` and `tile` are zero and never read).
#[derive(Clone, Copy, Debug)]
struct Algo {
    /// Output tile edge `m` and transformed tile edge `m + 2`.
    tile: usize,
    alpha: usize,
    bt: [[f32; ALPHA]; ALPHA],
    at: [[f32; ALPHA]; TILE],
    /// `s G` with small integer coefficients, and `s`.
    g: [[f32; 3]; ALPHA],
    g_scale: f32,
}

impl Algo {
    fn pos(&self) -> usize {
        self.alpha * self.alpha
    }
}

const F4: Algo = Algo {
    tile: TILE,
    alpha: ALPHA,
    bt: BT,
    at: AT,
    g: G24,
    g_scale: 24.0,
};

/// F(2x2, 3x3) (interpolation points 0, ±1, ∞): 16 positions per tile of 2x2 outputs, 4
/// multiply-adds per output against F(4x4)'s 2.25, but 4x as many tiles. It serves small
/// outputs, where F(4x4)'s tiles are few (an 8x8 output is 2x2 tiles of 4x4: GEMMs of 4
/// columns, against 16 of 2x2), and reads 16 values per 3x3 filter instead of 36.
const F2: Algo = Algo {
    tile: 2,
    alpha: 4,
    bt: [
        [1.0, 0.0, -1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
        [0.0, -1.0, 1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, -1.0, 0.0, 0.0],
        [0.0; ALPHA],
        [0.0; ALPHA],
    ],
    at: [
        [1.0, 1.0, 1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, -1.0, -1.0, 0.0, 0.0],
        [0.0; ALPHA],
        [0.0; ALPHA],
    ],
    g: [
        [2.0, 0.0, 0.0],
        [1.0, 1.0, 1.0],
        [1.0, -1.0, 1.0],
        [0.0, 0.0, 2.0],
        [0.0; 3],
        [0.0; 3],
    ],
    g_scale: 2.0,
};

/// The distance between two planes of `n` floats that are read or written together (the 36
/// positions of a tile): `n` rounded up to a whole, odd number of cache lines, so that
/// consecutive planes start in different cache sets. Planes a multiple of 4 KB apart (512
/// channels x 8 tiles) all fall into the same sets and evict each other.
fn skewed(n: usize) -> usize {
    let lines = n.div_ceil(16);
    (lines | 1) * 16
}

/// Tile grids up to this size whose rows are not whole groups of 4 use the dense grouping,
/// unrolled at compile time (a 14x14 output, 4x4 tiles, loses nothing by rows and compiled
/// in 10 ms instead of 4.5 when unrolled).
const DENSE_TILES: usize = 16;

/// Channels below which the products are too thin for the GEMM micro-kernel to pay for the
/// transforms (the direct kernel takes those layers).
const MIN_CHANNELS: usize = 16;

#[derive(Clone, Debug)]
pub(crate) struct WinogradPlan {
    spec: ConvSpec,
    /// F(4x4, 3x3) or F(2x2, 3x3).
    algo: &'static Algo,
    /// Tile rows and columns.
    th: usize,
    tw: usize,
    /// How the transforms group tiles by 4: along tile rows (then `tw4` is `tw` rounded up to
    /// a multiple of 4, and the last group of a row runs over into the next row's slots or the
    /// end of the plane: computed, never stored), or, for grids of at most 16 tiles with rows not a whole group, in dense
    /// order with each tile's position laid out at compile time (a 7x7 output is 2x2 tiles:
    /// by rows, half of every GEMM would be padding).
    dense: bool,
    tw4: usize,
    /// Floats per `(ξ, channel)` row of `V` and `M` (tiles, rounded up to a group of 4).
    tp: usize,
    /// The zero-bordered plane: `4 th + 2` rows (each tile reads 6), and columns for the last
    /// group's reads (`4 tw4 + 4`: 5 vectors of a row from each group's first tile; dense:
    /// 2 vectors from each tile).
    hp: usize,
    wp: usize,
    gemm: PixelGemm,
    /// The tile-group-major schedule, where it pays ([`Groups`]; boxed: a second GEMM).
    groups: Option<Box<Groups>>,
    /// The whole layout on the AVX-512 transforms ([`Wide`]).
    wide: Option<Box<Wide>>,
    /// The whole layout on the AVX2 transforms ([`Ymm`]).
    ymm: Option<Box<Ymm>>,
}

/// The tile-group-major schedule (session 8): per group of `rows` tile rows, the padded
/// rows of every input channel, their input transform, the 36 products on the group's
/// tiles and the output transform, one after the other, all in the calling thread's part
/// of the scratch. The group's `V` and `M` (and its padded rows) are rewritten by every
/// group, so they stay in L2 (with `U`, read once per group) instead of making a round trip
/// to memory: `V` and `M` of the whole 64 -> 64 layer at 56x56 are 1.8 MB each. The tile
/// rows are the kernel's work units (`by_rows`), a call's range covered in groups, so two
/// threads each take whole groups (and a shorter one) and share only `U`.
#[derive(Clone, Debug)]
struct Groups {
    /// Tile rows per group. With `by_rows` a call's last group is cut at its range's end
    /// (the grid's last tile row at most); without, the last group may reach past the
    /// grid's last tile row (those rows are transformed from zeros, computed, never stored).
    rows: usize,
    /// Groups of `rows` tile rows in the grid (the last one shorter, or without `by_rows`
    /// reaching past the grid, where `rows` does not divide the tile rows).
    n: usize,
    /// The work units are tile rows, and each call covers its range in groups of `rows`,
    /// the last one shorter where the range ends first (the groups of the GEMMs in
    /// `short`); else the units are the `n` groups. Why: 64 -> 64 at 56x56 is 7 groups of
    /// 2 tile rows, which two threads split 4 / 3 (the caller waited a group, 60-70 us,
    /// on each of ResNet-50's three); by tile rows each thread takes 3 groups and a group
    /// of one row (`CNNC_WINOGRAD_SHORT=0`: by groups, to measure). A call's groups start
    /// at its own range's start, and the pool's parts (`units * i / parts`) do not follow
    /// `rows`, so how many short groups run depends on the split: one chunk per thread
    /// ([`WinogradPlan::chunks_per_part`]) keeps it at one per thread on 2 threads (3
    /// threads cut more). False where a short group's GEMM cannot be made (the groups stay
    /// the units).
    by_rows: bool,
    /// Floats per `(ξ, channel)` row of the group's `V` and `M`: `rows` tile rows of
    /// whole vectors of 16 tiles (`tw` rounded up: every vector starts on a cache line).
    cols: usize,
    /// Tiles per tile row in `V` and `M` (`tw` rounded up to 16).
    row_tiles: usize,
    /// The GEMM of the 36 positions over `cols` tiles (packing as the plan's `gemm`).
    gemm: PixelGemm,
    /// With `by_rows`, the GEMMs of groups of `r = 1 .. rows` tile rows (at `r - 1`): over
    /// their `r row_tiles` tiles of the same `V` and `M` rows (`cols` floats apart).
    short: Vec<PixelGemm>,
    /// Floats per padded row (the input transform's vectors of 16 tiles read 80 columns).
    wp: usize,
    /// The input transform of one tile row of one channel, from the padded rows, and
    /// from the input rows themselves (groups whose rows all lie inside the input: no copy).
    input: WinogradInput,
    direct: WinogradInput,
    /// The output transforms of a tile row of 4 output rows, and of the last tile row
    /// when it has fewer.
    output: WinogradOutput,
    last_output: Option<WinogradOutput>,
}

/// The whole layout's transforms on zmm (avx512, layers not grouped, rows of up to 8
/// tiles: 28x28, 27x27, 14x14 outputs): the AVX-512 input transform of each input
/// channel's padded plane and the output transform of each output channel, the grouped
/// schedule's code with 2 or 4 tile rows stacked in each vector of 16 tiles
/// ([`WinogradInput::stack`]).
#[derive(Clone, Debug)]
struct Wide {
    /// Tile rows per vector ([`WinogradInput::stack`]).
    stack: usize,
    /// Floats of a tile row in a `V` or `M` row (`16 / stack`, or whole vectors).
    row_tiles: usize,
    input: WinogradInput,
    /// The output transforms of `stack` tile rows of 4 output rows, and of the last ones.
    output: WinogradOutput,
    last_output: Option<WinogradOutput>,
}

/// The whole layout's transforms on ymm (AVX2 code: at avx2, and at avx512 where neither zmm
/// layout applies; F(4x4), grids not dense; session 13): per
/// tile row, the input transform of an input channel's padded rows and the output transform
/// of an output channel's `M` rows, 8 tiles per vector ([`super::x86::winograd_ymm`]), with
/// the operations of the f32x4 transforms in their order, so the same bits. The tile rows
/// follow each other in `V` and `M` `tw` tiles apart as in the f32x4 layout: a row's last
/// vector runs over into the next row's first slots (which the next call, for the same
/// channel, writes after it) or, on the last row, past the grid (`tp` covers it).
#[derive(Clone, Debug)]
struct Ymm {
    /// Tile rows per call ([`YmmInput::stack`]).
    stack: usize,
    input: YmmInput,
    /// The output transforms of the calls whose tile rows have 4 output rows, and of the
    /// last call when its have fewer (or its second lies past the grid).
    output: YmmOutput,
    last_output: Option<YmmOutput>,
}

/// The AVX-512 output transform of a layer `s` whose `M` rows hold `cols` tiles, for
/// calls of `vectors` vectors of `stack` tile rows, of `rows` output rows each.
fn output_spec(
    s: &ConvSpec,
    (vectors, stack): (usize, usize),
    rows: [usize; 4],
    cols: usize,
) -> WinogradOutput {
    WinogradOutput {
        vectors,
        stack,
        rows,
        store: output_store(s, skewed(s.out_c * cols)),
    }
}

/// What the x86 output transforms of a layer `s` read and store besides `M`'s tile rows,
/// `M`'s positions `m_stride` floats apart.
fn output_store(s: &ConvSpec, m_stride: usize) -> OutputStore {
    let ep = s.epilogue();
    OutputStore {
        ow: s.out_w(),
        m_stride,
        bias: ep.bias,
        residual: ep.residual,
        relu: ep.relu,
        clip: ep.clip.map(|c| (c.min.to_bits(), c.max.to_bits())),
    }
}

/// Output rows of each of the `N` tile rows of a call of the x86 output transforms that
/// covers `stack` tile rows (4, 0 past `stack`), and of the last call's where they differ
/// (fewer than 4, or 0 past the grid) on an output of `oh` rows.
fn call_rows<const N: usize>(oh: usize, stack: usize) -> ([usize; N], Option<[usize; N]>) {
    let full = std::array::from_fn(|j| if j < stack { TILE } else { 0 });
    let per_call = TILE * stack;
    let last = (!oh.is_multiple_of(per_call)).then(|| {
        let first = oh / per_call * per_call;
        std::array::from_fn(|j| {
            (oh.saturating_sub(first + TILE * j)).min(TILE) * usize::from(j < stack)
        })
    });
    (full, last)
}

/// The whole layout's GEMM over `tp` tiles: [`gemm_spec`], on blocks of
/// [`SINGLE_VECTOR_ROWS`] channels where `tp` is one zmm vector, prefetching the weights
/// where `U` exceeds L2 (read once, from memory; `CNNC_WINOGRAD_PF=0` turns it off, to
/// measure).
fn whole_gemm(s: &ConvSpec, tp: usize, isa: Isa, pos: usize) -> PixelGemm {
    let mut gemm = PixelGemm::new(gemm_spec(s, tp), isa);
    if isa == Isa::Avx512 && tp <= LANES {
        let (rows, default) = (SINGLE_VECTOR_ROWS, gemm.mr());
        if s.out_c.next_multiple_of(rows) <= s.out_c.next_multiple_of(default) {
            gemm = gemm.with_tile(rows, LANES);
        }
    }
    let streams = pos * s.in_c * s.out_c * 4 > STREAMED_WEIGHTS_BYTES;
    if streams && !crate::knobs::off("CNNC_WINOGRAD_PF") {
        return gemm.prefetching_weights();
    }
    gemm
}

/// Output channels per block of the zmm GEMMs over at most 16 tiles (14x14 and 13x13
/// outputs: a column is one vector, each multiply-add has its own broadcast, so taller
/// blocks reuse nothing more) where they pad `out_c` no more than the default 14 do: 256
/// channels are 16 blocks of 16 against 19 of 14 (the last 4 rows), 32 (DenseNet-121's)
/// 2 against 3 (the last 4). Measured on the Intel host (session 22, `examples/convab.rs`,
/// `U` from 20 copies, one thread): 256 -> 256 at 14x14 0.966x the time on 14 rows (24
/// rows: 0.964, 28: 0.999); `examples/modelab.rs` one / two threads: DenseNet-121
/// 0.986 / 0.985, ResNet-50 0.993 / 1.002, SqueezeNet 1.000, VGG-19 0.999. Not over
/// wider grids, whose two-vector columns reuse each broadcast (128 -> 128 at 28x28 on
/// 16 x 16: 1.078).
const SINGLE_VECTOR_ROWS: usize = 16;

/// The GEMM of the 36 positions of a layer `s` over `pixels` tiles (the epilogue comes
/// after the output transform).
fn gemm_spec(s: &ConvSpec, pixels: usize) -> PixelGemmSpec {
    PixelGemmSpec {
        in_c: s.in_c,
        out_c: s.out_c,
        pixels,
        epilogue: Epilogue::default(),
    }
}

/// Floats from one plane of a group's `V` and `M` to the next: the two share `POS + 1`
/// planes of `max(in_c, out_c)` rows of `cols` floats ([`WinogradPlan::v_base`]), which
/// halves what a group keeps in L2 besides `U`.
fn rotated_stride(s: &ConvSpec, cols: usize) -> usize {
    skewed(s.in_c.max(s.out_c) * cols)
}

/// Planes of a group's `V` and `M` beyond `POS`: 1 where they share planes; `POS` with
/// `CNNC_WINOGRAD_SHARE=0` (`V[ξ]` at plane `POS + ξ`: apart, as before session 10, to
/// measure).
fn extra_planes() -> usize {
    if crate::knobs::off("CNNC_WINOGRAD_SHARE") {
        POS
    } else {
        1
    }
}

/// The largest transformed weights `U` (read by every group) of a grouped layer.
const GROUPED_U_BYTES: usize = 1 << 20;
/// ... and of a grouped layer of at least [`MANY_GROUPS`] groups, whose whole layout would
/// send `V` and `M` through memory (VGG-19's 128 -> 128 at 112x112: 14 MB each), while the
/// groups read `U` from L2 and L3 (session 10, `examples/convab.rs`, whole layout against
/// grouped, weights from 4 copies, load 6: 128 -> 128 at 112x112 0.61-0.65 at one thread,
/// 0.62 at two; 64 -> 128 at 112x112 0.71; 256 -> 256 at 56x56, 9.4 MB of `U`, 0.99-1.07;
/// 128 -> 128 at 56x56, 7 groups, 0.95 at one thread but 1.16 at two).
const GROUPED_U_BYTES_MANY: usize = 5 << 19;
const MANY_GROUPS: usize = 16;

/// Where the transforms read and write `V` and `M`: floats per `(ξ, channel)` row, and
/// from one position `ξ` to the next in `V` and in `M`.
#[derive(Clone, Copy)]
struct Layout {
    row: usize,
    v_stride: usize,
    m_stride: usize,
}

/// What the output transform of one output channel shares: its `M` row, output and
/// residual planes, and bias (scalar and splat).
struct Channel {
    m: Value,
    out: Value,
    res: Value,
    bias: Option<(Value, Value)>,
}

/// The functions of a Winograd layer ([`WinogradPlan::emit`]).
pub(crate) struct WinogradFns {
    /// Input channels: padded copy and input transform.
    pub prologue: PendingId,
    /// Channel blocks: their products, then their output transform.
    pub compute: PendingId,
    /// [`WinogradPlan::product_units`].
    pub products: PendingId,
    /// Output channels: output transform, epilogue, stores.
    pub output: PendingId,
}

/// How much faster than the direct convolution the cost model must find Winograd. Winograd
/// reads 4x the weights, so where the estimates are close it is the one that loses most when
/// other cores contend for memory bandwidth (a second thread, or other processes).
const WINOGRAD_MARGIN: f64 = 1.25;

/// Multiply-adds per second of the wide GEMM and of the implicit-GEMM direct kernel at
/// `isa`, measured on whole layers (one thread), and the lanes of a vector. The avx512
/// rates were measured on hosts with full-width 512-bit FMA units; where the host splits
/// them ([`ZmmFma::Split`], Zen 4) the zmm kernels compute at the ymm kernels' FLOP/s, so
/// the model takes avx2's rates with zmm vectors. Measured there (session 23, `convab`,
/// weights from 8 copies): F(2x2, 3x3) in 0.67-0.73x the direct kernel's time on every 7x7
/// layer shape of our networks (32 -> 32, 64 -> 64, 128 -> 32, 256 -> 256, 512 -> 512),
/// which the full-width rates kept direct.
fn rates(isa: Isa, zmm: ZmmFma) -> (f64, f64, usize) {
    match (isa, zmm) {
        (Isa::Sse, _) => (17e9, 16e9, 4),
        (Isa::Avx2, _) => (40e9, 30e9, 8),
        (Isa::Avx512, ZmmFma::Split) => (40e9, 30e9, 16),
        (Isa::Avx512, ZmmFma::Full) => (60e9, 65e9, 16),
    }
}
/// One core's memory bandwidth (bytes per second), for the weights.
const BYTES_PER_SECOND: f64 = 10e9;
/// The input and output transforms of F(4x4, 3x3), per tile and channel, as measured on
/// the f32x4 code (the ymm and zmm transforms cost less: the model errs towards the direct
/// kernel at the boundary; session 13).
const TRANSFORM_SECONDS: f64 = 8e-9;

impl WinogradPlan {
    /// Whether `s` is a 3x3 stride-1 convolution large enough for Winograd to pay, with a
    /// scratch space the generated code can address.
    pub(crate) fn for_spec(s: &ConvSpec, isa: Isa) -> Option<Self> {
        Self::with_algo(s, isa, &F4)
    }

    /// [`Self::for_spec`] with F(2x2, 3x3) ([`F2`]).
    pub(crate) fn small_tiles(s: &ConvSpec, isa: Isa) -> Option<Self> {
        Self::with_algo(s, isa, &F2)
    }

    /// Whether `s` has the filter Winograd computes: 3x3, stride 1.
    pub(crate) fn has_shape(s: &ConvSpec) -> bool {
        s.kernel_h == 3 && s.kernel_w == 3 && s.stride_h == 1 && s.stride_w == 1
    }

    fn with_algo(s: &ConvSpec, isa: Isa, algo: &'static Algo) -> Option<Self> {
        let shape = Self::has_shape(s);
        let big = s.in_c >= MIN_CHANNELS && s.out_c >= MIN_CHANNELS;
        if !(shape && big && s.out_h() >= algo.tile && s.out_w() >= algo.tile) {
            return None;
        }
        let plan = Self::new(*s, isa, algo);
        (fits(&[plan.scratch_len()]) && fits(&[plan.packed_len()])).then_some(plan)
    }

    /// Whether this plan is expected to run faster than the direct convolution (the implicit
    /// GEMM at avx2 / avx512) inside a network, where a layer's weights come from memory: a
    /// cost model of `multiply-adds / rate + weight bytes / bandwidth + transforms`.
    ///
    /// Winograd does a quarter of the direct convolution's multiply-adds per tile but reads
    /// 4x its weights (36 values per 3x3 filter), and its GEMMs run on `tp` tile columns
    /// rounded up to whole vectors. On a large output the multiply-adds dominate and Winograd
    /// wins 2-3x; on a 7x7 output (2x2 tiles: one vector, mostly masked, per row) it reads
    /// 37.7 MB for ResNet-50's 512->512 layer where the direct kernel reads 9.4 MB, and
    /// loses 2x. Measured (`examples/convperf.rs`, `CNNC_COPIES=20` so that the weights come
    /// from memory, one thread, Intel Xeon, load 3-5; Winograd / direct, ms): avx512 512->512
    /// at 7x7 5.7 / 3.4, 256->256 at 10x10 1.51 / 1.14, at 12x12 1.52 / 1.67, at 14x14 1.52 /
    /// 1.95, 64->64 at 8x8 0.039 / 0.030; avx2 256->256 at 10x10 1.76 / 2.35, 512->512 at 7x7
    /// 10.8 / 5.4; sse (the f32x4 direct kernel is slower, so Winograd keeps the 7x7 layers)
    /// 512->512 at 7x7 6.6 / 8.6, 128->32 at 7x7 0.045 / 0.094. The model picks the faster of
    /// each pair but two close ones (avx2 16->16 at 8x8, 3 / 4 us; sse 256->256 at 10x10, 3.6 /
    /// 3.3 ms).
    ///
    /// Since the implicit GEMM prefetches its weights, its time is the larger of computing and
    /// reading them, and Winograd must win by [`WINOGRAD_MARGIN`]. Measured 2026-11-30 with
    /// `examples/convab.rs` (alternating pairs, weights from memory, avx512): 256->256 at 14x14,
    /// quiet machine, Winograd 1.53-1.67 ms / direct 1.57-1.66 ms; while other processes
    /// loaded memory (load 7), Winograd took 2.8-3.3x the direct kernel's time on 256->256 and
    /// 2.3-3.3x on 512->512 at 14x14, and about the same on 128->128 at 28x28.
    ///
    /// At avx2 / avx512 both Winograd algorithms are estimated with reading `U` overlapped by
    /// their multiply-adds ([`Self::estimate`]): the wide GEMMs read `U` in order, prefetched
    /// in software where it is over `STREAMED_WEIGHTS_BYTES` (`whole_gemm`) and by the
    /// hardware prefetchers below that and in the grouped schedule, and measured to overlap.
    /// Until session 12 F(4x4)'s was added to them, which kept every 13x13 and 14x14 layer
    /// direct at avx512. On the Zen 5 host (session 12, `convab`, weights from 20 copies,
    /// load 7.5-10) F(4x4) took 0.51-0.76x the direct kernel's time on the
    /// nine such layer shapes of our networks (ResNet's 256 -> 256 0.54x, VGG's 512 -> 512
    /// 0.70x, SqueezeNet's 64 -> 256 at 13x13 0.67x, DenseNet's 128 -> 32 0.76x): 0.94-1.16x
    /// the speedup the overlapped estimate gives (512 -> 512 at 14x14, memory contended:
    /// 0.78x), where the summed one gave 0.86-1.11x, never Winograd's margin.
    /// `CNNC_WINOGRAD_OVERLAP=0` adds it again (to measure).
    pub(crate) fn beats_direct(&self, isa: Isa, zmm: ZmmFma) -> bool {
        let (_, direct_rate, _) = rates(isa, zmm);
        let s = &self.spec;
        let pairs = (s.in_c * s.out_c) as f64;
        let pixels = (s.out_h() * s.out_w()) as f64;
        let taps = (s.kernel_h * s.kernel_w) as f64;
        let (compute, memory) = (
            taps * pairs * pixels / direct_rate,
            4.0 * taps * pairs / BYTES_PER_SECOND,
        );
        // The implicit GEMM prefetches weights that stream from memory while it computes
        // (`implicit.rs`, `STREAM_PREFETCH_BYTES`); the f32x4 direct kernel does not.
        let direct = match isa {
            Isa::Sse => compute + memory,
            Isa::Avx2 | Isa::Avx512 => compute.max(memory),
        };
        // `CNNC_WINOGRAD_FORCE=14,7`: Winograd wherever it can run at those output heights
        // (to measure a network both ways, `examples/modelab.rs`).
        if crate::knobs::numbers("CNNC_WINOGRAD_FORCE").contains(&s.out_h()) {
            return true;
        }
        // The f32x4 GEMM's reading of `U` does not overlap its multiply-adds (measured).
        let overlapped = isa != Isa::Sse
            && (self.has_small_tiles() || !crate::knobs::off("CNNC_WINOGRAD_OVERLAP"));
        self.estimate(isa, zmm, overlapped) * WINOGRAD_MARGIN < direct
    }

    /// Seconds the cost model of [`Self::beats_direct`] expects this plan to take at `isa`:
    /// its GEMMs' multiply-adds, reading `U` and the transforms. With `overlapped`, reading
    /// `U` takes no time beyond the multiply-adds' (the wide GEMMs read it in order, with
    /// software prefetches above 1 MB), else it is added. F(2x2, 3x3) is chosen on small
    /// outputs, measured against the direct kernel with `examples/convab.rs` (weights from
    /// 4-8 copies, avx512, load 5-7): 256 -> 256 at 8x8 0.273 / 0.476 ms, 128 -> 256 at 8x8
    /// 0.139 / 0.252 (avx2 0.397 / 0.700 and 0.179 / 0.348), 512 -> 512 at 7x7 1.65 / 1.53
    /// (the model keeps it direct).
    fn estimate(&self, isa: Isa, zmm: ZmmFma, overlapped: bool) -> f64 {
        let (gemm_rate, _, lanes) = rates(isa, zmm);
        let s = &self.spec;
        let pairs = (s.in_c * s.out_c) as f64;
        let pos = self.algo.pos() as f64;
        let columns = self.tp.next_multiple_of(lanes) as f64;
        // The transforms' work per tile goes with its positions.
        let per_tile = TRANSFORM_SECONDS * pos / POS as f64;
        let transforms = self.tp as f64 * (s.in_c + s.out_c) as f64 * per_tile;
        let (gemm, weights) = (
            pos * pairs * columns / gemm_rate,
            4.0 * pos * pairs / BYTES_PER_SECOND,
        );
        match overlapped {
            true => gemm.max(weights) + transforms,
            false => gemm + weights + transforms,
        }
    }

    /// F(4x4, 3x3) or F(2x2, 3x3), whichever the cost model expects to be faster (both
    /// GEMMs prefetching `U`: so F(4x4) on 16x16 and 32x32 outputs, which
    /// `examples/convab.rs` measured in 0.63-0.68x F(2x2)'s time, and F(2x2) on 8x8), if
    /// either can run `s`.
    /// F(2x2, 3x3) only with the wide kernels (where it was measured), and not with
    /// `CNNC_WINOGRAD_SMALL=0` (to measure). Only the plan picked here is compared with the
    /// direct kernel ([`Self::beats_direct`]).
    pub(crate) fn fastest(s: &ConvSpec, isa: Isa, zmm: ZmmFma) -> Option<Self> {
        let small = isa != Isa::Sse && !crate::knobs::off("CNNC_WINOGRAD_SMALL");
        let plans = [
            Self::for_spec(s, isa),
            Self::small_tiles(s, isa).filter(|_| small),
        ];
        plans.into_iter().flatten().min_by(|a, b| {
            let estimate = |p: &Self| p.estimate(isa, zmm, true);
            estimate(a).total_cmp(&estimate(b))
        })
    }

    /// Whether this plan is F(2x2, 3x3) ([`Self::small_tiles`]).
    pub(crate) fn has_small_tiles(&self) -> bool {
        self.algo.tile == F2.tile
    }

    fn new(spec: ConvSpec, isa: Isa, algo: &'static Algo) -> Self {
        let mut plan = Self::f32x4_layout(spec, isa, algo);
        if algo.tile != TILE {
            return plan;
        }
        plan.groups = plan.grouped_schedule(isa);
        if plan.groups.is_none() && isa == Isa::Avx512 {
            plan.wide = plan.wide_layout(isa).map(Box::new);
        }
        if plan.groups.is_none() && plan.wide.is_none() && isa != Isa::Sse {
            plan.ymm = plan.ymm_layout(isa).map(Box::new);
        }
        plan
    }

    /// The whole layout on the AVX2 transforms ([`Ymm`]) at avx2 and avx512 (where
    /// [`Self::wide_layout`] and the groups did not take the layer), and the plan's `tp`, `hp`,
    /// `wp` and GEMM for it: rows of `V` and `M` as the f32x4 layout's, but vectors of 8
    /// tiles (the last row's runs `8 vectors - tw` tiles past the grid), and padded rows of
    /// `32 vectors + 8` floats (each vector reads 5 ymm from its first tile's column). Rows
    /// of 4 tiles two to a vector (an even number of tile rows, the last past the grid
    /// where `th` is odd). `None` for F(2x2), dense grids, rows of fewer than 4 tiles, and
    /// with `CNNC_WINOGRAD_YMM=0` (the f32x4 transforms, to measure).
    fn ymm_layout(&mut self, isa: Isa) -> Option<Ymm> {
        let (th, tw, spec) = (self.th, self.tw, self.spec);
        #[cfg(test)]
        let off = tests::NO_YMM.with(|f| f.get());
        #[cfg(not(test))]
        let off = false;
        let f4 = self.algo.tile == TILE;
        if !f4 || self.dense || tw < TILE || off || crate::knobs::off("CNNC_WINOGRAD_YMM") {
            return None;
        }
        let stack = if tw == TILE { 2 } else { 1 };
        let vectors = tw.div_ceil(YMM_LANES);
        let rows = th.next_multiple_of(stack);
        let (tp, wp) = match stack {
            1 => (
                th * tw + YMM_LANES * vectors - tw,
                TILE * YMM_LANES * vectors + 8,
            ),
            _ => (rows * tw, 24),
        };
        let tp = tp.next_multiple_of(4);
        let gemm = whole_gemm(&spec, tp, isa, POS);
        if gemm.mr() != self.gemm.mr() {
            return None;
        }
        (self.tp, self.hp, self.wp, self.gemm) = (tp, TILE * rows + 2, wp, gemm);
        let lay = self.layout();
        let output = |rows| YmmOutput {
            vectors,
            stack,
            rows,
            store: output_store(&spec, lay.m_stride),
        };
        let (full, last) = call_rows(spec.out_h(), stack);
        Some(Ymm {
            stack,
            input: YmmInput {
                vectors,
                stack,
                wp,
                v_stride: lay.v_stride,
            },
            output: output(full),
            last_output: last.map(output),
        })
    }

    /// The whole layout on the AVX-512 transforms (not grouped, at avx512) where its tile
    /// rows stack in vectors of 16: 2 (4) tile rows of up to 8 (4) tiles in each, and the
    /// plan's `tp`, `hp`, `wp` and GEMM for that layout. The GEMMs then run on as many
    /// vectors of columns as the f32x4 layout's (28x28: 64 columns for 49 tiles), and the
    /// transforms cost less to compile (no 2,000-instruction Cranelift functions). `None`
    /// for dense grids (f32x4 transforms) and rows of 9 tiles or more (rows of whole vectors
    /// made the GEMMs longer than the f32x4 layout, whose tile rows follow each other: 256 ->
    /// 256 at 56x56 took 1.11x the time; those now take [`Self::ymm_layout`]);
    /// `CNNC_WINOGRAD_WIDE=0` (to measure: then the ymm layout where it applies).
    fn wide_layout(&mut self, isa: Isa) -> Option<Wide> {
        let (th, tw, spec) = (self.th, self.tw, self.spec);
        let stack = match tw {
            _ if self.dense => return None,
            1..=4 => 4,
            5..=8 => 2,
            _ => return None,
        };
        if crate::knobs::off("CNNC_WINOGRAD_WIDE") {
            return None;
        }
        let (vectors, row_tiles) = (1, LANES / stack);
        let rows = th.next_multiple_of(stack);
        let tp = rows * row_tiles;
        // The gather reads 4 floats past a row's last tile.
        let wp = row_tiles * TILE + 4;
        let gemm = whole_gemm(&spec, tp, isa, POS);
        if gemm.mr() != self.gemm.mr() {
            return None;
        }
        (self.tp, self.hp, self.wp, self.gemm) = (tp, TILE * rows + 2, wp, gemm);
        let input = WinogradInput {
            vectors,
            wp,
            v_stride: self.layout().v_stride,
            direct: None,
            stack,
        };
        let (full, last) = call_rows(spec.out_h(), stack);
        let output = |rows| output_spec(&spec, (vectors, stack), rows, tp);
        Some(Wide {
            stack,
            row_tiles,
            input,
            output: output(full),
            last_output: last.map(output),
        })
    }

    fn f32x4_layout(spec: ConvSpec, isa: Isa, algo: &'static Algo) -> Self {
        let t = algo.tile;
        let (th, tw) = (spec.out_h().div_ceil(t), spec.out_w().div_ceil(t));
        let dense = tw % 4 != 0 && th * tw <= DENSE_TILES;
        let tw4 = if dense { tw } else { tw.next_multiple_of(4) };
        let tp = (th * tw + tw4 - tw).next_multiple_of(4);
        let gemm = whole_gemm(&spec, tp, isa, algo.pos());
        WinogradPlan {
            spec,
            algo,
            th,
            tw,
            dense,
            tw4,
            tp,
            hp: t * th + 2,
            wp: t * tw4 + 4,
            gemm,
            groups: None,
            wide: None,
            ymm: None,
        }
    }

    /// The tile-group-major schedule ([`Groups`]) where it pays ([`Self::group_rows`]).
    fn grouped_schedule(&self, isa: Isa) -> Option<Box<Groups>> {
        let (spec, th, tw) = (self.spec, self.th, self.tw);
        // The input transform on 16 tiles per vector is AVX-512 code.
        let rows = self.group_rows().filter(|_| isa == Isa::Avx512);
        rows.and_then(|rows| {
            let vectors = tw.div_ceil(LANES);
            let row_tiles = vectors * LANES;
            let cols = rows * row_tiles;
            let gemm = PixelGemm::new(gemm_spec(&spec, cols), isa);
            let wp = vectors * LANES * TILE + 16;
            let stride = rotated_stride(&spec, cols);
            let input = WinogradInput {
                vectors,
                wp,
                v_stride: stride,
                direct: None,
                stack: 1,
            };
            let output = |rows| WinogradOutput {
                vectors,
                stack: 1,
                rows: [rows, 0, 0, 0],
                store: output_store(&spec, stride),
            };
            let last = spec.out_h() % TILE;
            let by_rows = !crate::knobs::off("CNNC_WINOGRAD_SHORT");
            #[cfg(test)]
            let by_rows = tests::SHORT.with(|f| f.get()).unwrap_or(by_rows);
            // Where a short group's GEMM cannot be made, the groups stay the work units
            // (grouped, without short groups), not the whole layout.
            let short = match by_rows {
                true => (1..rows)
                    .map(|r| {
                        PixelGemm::new(gemm_spec(&spec, r * row_tiles), isa).with_plane_stride(cols)
                    })
                    .collect::<Result<Vec<_>>>()
                    .ok(),
                false => None,
            };
            let by_rows = short.is_some();
            let short = short.unwrap_or_default();
            // The same packing of `U` as the whole layout's GEMM (the f32x4 fallback of a
            // wide GEMM would pack otherwise).
            let mr = self.gemm.mr();
            let packs = gemm.mr() == mr && short.iter().all(|g| g.mr() == mr);
            packs.then_some(Box::new(Groups {
                rows,
                n: th.div_ceil(rows),
                by_rows,
                cols,
                row_tiles,
                gemm,
                short,
                wp,
                input,
                direct: WinogradInput {
                    direct: Some((spec.in_w, spec.pad_w)),
                    ..input
                },
                output: output(TILE),
                last_output: (last != 0).then(|| output(last)),
            }))
        })
    }

    /// Tile rows per group of the tile-group-major schedule, or `None` where the whole
    /// layout is better: 2 rows where a row is one vector of 16 tiles (the GEMM's 32-column
    /// zmm tile; 64 -> 64 at 56x56: 0.95x the time of 1 row, at 1 and 2 threads, once the
    /// input transform read the input rows in place; with the padded copy of every group,
    /// 1 row had been faster), else 1. Only where `U`, which every
    /// group reads, stays in L2 ([`GROUPED_U_BYTES`]: 64 -> 64 at 56x56, 0.6 MB, took 0.79x
    /// the time grouped; 128 -> 128 and 256 -> 256 at 56x56, 2.4 and 9.4 MB, 1.2x), or is at
    /// most [`GROUPED_U_BYTES_MANY`] in a layer of at least [`MANY_GROUPS`] groups, and where
    /// the transforms' vectors of 16 tiles are at least 4/5 full (a row of 8 tiles, 32x32
    /// outputs, ran 1.5x slower grouped: half of every vector and a GEMM tile of 24
    /// columns). Small grids (dense) keep the whole layout. `CNNC_WINOGRAD_ROWS=n` sets the
    /// rows per group (`0`: the whole layout), to measure.
    fn group_rows(&self) -> Option<usize> {
        let (c, k) = (self.spec.in_c, self.spec.out_c);
        let spare = self.tw.next_multiple_of(LANES) - self.tw;
        if self.dense || self.th < 2 || 4 * spare > self.tw {
            return None;
        }
        #[cfg(test)]
        if let Some(r) = tests::ROWS.with(|r| r.get()) {
            return (r > 0 && r < self.th).then_some(r);
        }
        if let Some(r) = crate::knobs::number::<usize>("CNNC_WINOGRAD_ROWS") {
            return (r > 0 && r < self.th).then_some(r);
        }
        // Two rows of one vector each make the GEMM's 32-column zmm tile.
        let rows = (2 * LANES / self.tw.next_multiple_of(LANES)).clamp(1, self.th - 1);
        let u = POS * c * k * 4;
        // `CNNC_WINOGRAD_MANY=0`: not for many groups either (to measure).
        let many =
            self.th.div_ceil(rows) >= MANY_GROUPS && !crate::knobs::off("CNNC_WINOGRAD_MANY");
        (u <= GROUPED_U_BYTES || (u <= GROUPED_U_BYTES_MANY && many)).then_some(rows)
    }

    /// Whether the layer runs tile group by tile group ([`Groups`]).
    pub(crate) fn grouped(&self) -> bool {
        self.groups.is_some()
    }

    fn plane_len(&self) -> usize {
        self.hp * self.wp
    }
    /// Floats from one position `ξ` of `U` to the next.
    fn u_stride(&self) -> usize {
        skewed(self.gemm.weights_len())
    }
    /// The whole layout: padded planes, then `V` (`[ξ][c][tp]`), then `M` (`[ξ][k][tp]`).
    /// Grouped, per thread ([`Self::scratch_per_thread`]): the group's padded rows
    /// (`[c][4 rows + 2][wp]`), then its `V` (`[ξ][c][cols]`) and `M` (`[ξ][k][cols]`).
    pub(crate) fn scratch_len(&self) -> usize {
        let lay = self.layout();
        let planes = match self.groups {
            Some(_) => (POS + extra_planes()) * lay.v_stride,
            None => self.algo.pos() * (lay.v_stride + lay.m_stride),
        };
        self.window_len() * self.spec.in_c + planes
    }
    /// Whether each thread of a pool needs a scratch of its own (`scratch_len` each).
    pub(crate) fn scratch_per_thread(&self) -> bool {
        self.grouped()
    }
    /// Floats of one channel's padded plane (grouped: of its group's rows).
    fn window_len(&self) -> usize {
        match &self.groups {
            Some(g) => (TILE * g.rows + 2) * g.wp,
            None => self.plane_len(),
        }
    }
    /// Where the transforms keep `V` and `M`.
    fn layout(&self) -> Layout {
        match &self.groups {
            Some(g) => Layout {
                row: g.cols,
                v_stride: rotated_stride(&self.spec, g.cols),
                m_stride: rotated_stride(&self.spec, g.cols),
            },
            None => Layout {
                row: self.tp,
                v_stride: skewed(self.spec.in_c * self.tp),
                m_stride: skewed(self.spec.out_c * self.tp),
            },
        }
    }
    /// `U[ξ]` packed for the GEMM micro-kernel, for each `ξ`, then the bias.
    pub(crate) fn packed_len(&self) -> usize {
        // The weight prefetches of the last blocks reach past `U`, into the bias and the
        // padding after it.
        let prefetched = self.gemm.weight_prefetch().div_ceil(4) + 16;
        let pos = self.algo.pos();
        pos * self.u_stride() + self.gemm.channel_blocks() * self.gemm.mr() + prefetched
    }
    /// Blocks of output channels (grouped: the tile rows, or the groups).
    pub(crate) fn work_units(&self) -> usize {
        match &self.groups {
            Some(g) if g.by_rows => self.th,
            Some(g) => g.n,
            None => self.gemm.channel_blocks(),
        }
    }
    /// Chunks per thread on a pool. Grouped by tile rows, one: a call's groups start at its
    /// own range's start, so each chunk boundary inside a group cuts a short group (2
    /// threads on 4 tile rows or fewer: chunks of one row, every group short; 20 tile rows
    /// in groups of 2: chunks of 5, a short group in each, against none). Without
    /// the finer chunks' balancing, ResNet-50 (the same groups either way) and VGG-19 (groups
    /// of 1 row) at 2 threads took the same time (2026-12-01, B/A 0.99-1.01 both orders;
    /// `CNNC_WINOGRAD_CHUNKS=n`: `n` chunks, to measure). Else the pool's default.
    pub(crate) fn chunks_per_part(&self) -> usize {
        match &self.groups {
            Some(g) if g.by_rows => crate::knobs::number::<usize>("CNNC_WINOGRAD_CHUNKS")
                .filter(|&n| n > 0)
                .unwrap_or(1),
            _ => crate::jit::threads::CHUNKS_PER_PART,
        }
    }
    /// For profiles: the GEMM's micro-kernel, and the groups.
    pub(crate) fn micro_kernel(&self) -> String {
        match (&self.groups, &self.wide) {
            (Some(g), _) => format!(
                "{}, zmm transforms, {} groups of {} tile rows",
                self.gemm.micro_kernel(),
                g.n,
                g.rows
            ),
            (None, Some(w)) => format!(
                "{}, zmm transforms of {} tile rows a vector",
                self.gemm.micro_kernel(),
                w.stack
            ),
            (None, None) if self.ymm.is_some() => {
                format!("{}, ymm transforms", self.gemm.micro_kernel())
            }
            (None, None) => self.gemm.micro_kernel(),
        }
    }
    /// Input channels (the prologue's work units).
    pub(crate) fn prologue_units(&self) -> usize {
        self.spec.in_c
    }

    /// `U[ξ][k][c] = (G g_kc Gᵀ)[ξ]` from PyTorch-layout weights, packed per `ξ` in the
    /// GEMM micro-kernel's order, then the bias. Computed as `(24 G) g (24 G)ᵀ / 576` (small
    /// integer coefficients) one output channel at a time, with loops along the input
    /// channels, which the compiler vectorises: a 512->512 layer has 9.4 M values to make.
    /// Into `out`, `packed_len()` zeros.
    pub(crate) fn pack_into(&self, w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
        let (k, c) = (self.spec.out_c, self.spec.in_c);
        let (wl, mr) = (self.u_stride(), self.gemm.mr());
        // By blocks of `mr` output channels (the packed layout's rows) and chunks of
        // `CHUNK` input channels, all arrays `[..][ci][r]`: each step of the transform is
        // one elementwise pass over `CHUNK x mr` floats, and each of the 36 results is
        // already in the packed order, so it is stored with one copy. (Output channel by
        // output channel, every value was a separate store `mr` floats from the last, and
        // those stores took most of the compile time of ResNet-18.)
        const CHUNK: usize = 16;
        let len = CHUNK * mr;
        let mut g = vec![0.0f32; 9 * len]; // [tap][ci][r]
        let Algo {
            alpha,
            g: gs,
            g_scale,
            ..
        } = *self.algo;
        let gs = &gs[..alpha];
        let mut gg = vec![0.0f32; alpha * 3 * len]; // [i][b][ci][r]: (s G g)[i][b]
        let mut u = vec![0.0f32; len]; // [ci][r]
                                       // Zipped slices, so that the compiler vectorises it.
        let combine = |dst: &mut [f32], coef: [f32; 3], rows: [&[f32]; 3], scale: f32| {
            let terms = rows[0].iter().zip(rows[1]).zip(rows[2]);
            for (d, ((&r0, &r1), &r2)) in dst.iter_mut().zip(terms) {
                *d = (coef[0] * r0 + coef[1] * r1 + coef[2] * r2) * scale;
            }
        };
        for block in (0..k).step_by(mr) {
            let rows_in_block = mr.min(k - block);
            for c0 in (0..c).step_by(CHUNK) {
                let n = CHUNK.min(c - c0);
                let len = n * mr;
                for r in 0..rows_in_block {
                    let taps = &w[((block + r) * c + c0) * 9..][..9 * n];
                    for (ci, t9) in taps.chunks_exact(9).enumerate() {
                        for (t, &v) in t9.iter().enumerate() {
                            g[(t * n + ci) * mr + r] = v;
                        }
                    }
                }
                for b in 0..3 {
                    let rows = [0, 1, 2].map(|a| &g[(3 * a + b) * len..][..len]);
                    for (i, &coef) in gs.iter().enumerate() {
                        combine(&mut gg[(i * 3 + b) * len..][..len], coef, rows, 1.0);
                    }
                }
                let base = self.gemm.packed_index(block, c0);
                for i in 0..alpha {
                    let rows = [0, 1, 2].map(|b| &gg[(i * 3 + b) * len..][..len]);
                    for (j, &coef) in gs.iter().enumerate() {
                        combine(&mut u[..len], coef, rows, 1.0 / (g_scale * g_scale));
                        let dst = &mut out[(i * alpha + j) * wl + base..][..len];
                        if rows_in_block == mr {
                            dst.copy_from_slice(&u[..len]);
                        } else {
                            // A partial last block keeps its padding rows as they are (zero).
                            for (d, s) in dst.chunks_exact_mut(mr).zip(u.chunks_exact(mr)) {
                                d[..rows_in_block].copy_from_slice(&s[..rows_in_block]);
                            }
                        }
                    }
                }
            }
        }
        if let Some(b) = bias {
            let pos = self.algo.pos();
            out[pos * wl..pos * wl + k].copy_from_slice(b);
        }
    }

    /// Emits the prologue over input channels `begin..end` (reading `input`, writing their
    /// part of `scratch`), the products over [`Self::product_units`], the output transform
    /// over output channels, and the compute function over output channel blocks
    /// `begin..end` that calls those two, all over the conv buffers (`conv::define_entry`
    /// chains the prologue and the compute function; a thread pool runs the prologue, the
    /// products and the output transform one after another, each split). The transforms
    /// are unrolled straight-line code (2,000 instructions): without the Cranelift optimiser
    /// ([`KernelModule::quickly`]) they compile 3-4x faster and run as fast. Grouped, see
    /// [`Self::emit_grouped`] instead.
    pub(crate) fn emit(&self, km: &mut KernelModule) -> Result<WinogradFns> {
        let plan = self.clone();
        let (inputs, outputs) = self.wide_micros(km)?;
        let prologue = km.quickly(|km| {
            km.define_using_micros(
                &PROLOGUE_USES.into_array(),
                &inputs,
                move |e, b: ConvBufs<_>, begin, end| {
                    plan.prologue(e, b.input, b.scratch, begin, end)
                },
            )
        })?;
        let plan = self.clone();
        let micros = self.gemm.add_micros(km)?;
        let products = km.quickly(|km| {
            km.define_with_micros(&micros, move |e, b, begin, end| {
                plan.products(e, &b, begin, end)
            })
        })?;
        let plan = self.clone();
        let output = km.quickly(|km| {
            km.define_with_micros(&outputs, move |e, b: ConvBufs<_>, begin, end| {
                let mbase = plan.m_base(e, b.scratch);
                plan.output_transform(e, &b, mbase, (begin, end))
            })
        })?;
        let (nmb, mr, k) = (self.gemm.channel_blocks(), self.gemm.mr(), self.spec.out_c);
        let pos = self.algo.pos();
        // Blocks `begin..end`: their units of each position, then their channels.
        let compute =
            km.define_calling::<ConvBufs<Value>>(&[products, output], move |e, begin, end| {
                let (products, output, bufs) = (e.callees[0], e.callees[1], e.bufs);
                e.for_const(0, pos as i64, 1, |e, xi| {
                    let first = e.mul_imm(xi, nmb as i64);
                    let (u0, u1) = (e.b.ins().iadd(first, begin), e.b.ins().iadd(first, end));
                    e.b.ins().call(products, &[bufs, u0, u1]);
                    Ok(())
                })?;
                let k0 = e.mul_imm(begin, mr as i64);
                let k1 = e.mul_imm(end, mr as i64);
                let kmax = e.iconst(k as i64);
                let k1 = e.b.ins().smin(k1, kmax);
                e.b.ins().call(output, &[bufs, k0, k1]);
                Ok(())
            })?;
        Ok(WinogradFns {
            prologue,
            compute,
            products,
            output,
        })
    }

    /// The kernel of the tile-group-major schedule ([`Groups`]): a function over its units
    /// `begin..end` (tile rows, or groups) calling, for each group of tile rows `t0..t1`, the
    /// input side (input transform of every input channel, from the input rows or, at the
    /// top and bottom, from a padded copy of them), the 36 products (on the GEMM of
    /// `t1 - t0` rows) and the output transform of every output channel, each a function of
    /// its own (compiled [`KernelModule::quickly`]) over `t0..t1`. All of them use only the
    /// calling thread's scratch (a `Temp` slot).
    pub(crate) fn emit_grouped(&self, km: &mut KernelModule) -> Result<PendingId> {
        let Some(groups) = self.groups.clone() else {
            return Err(crate::Error::Internal(
                "a Winograd plan without groups".into(),
            ));
        };
        let plan = self.clone();
        let transforms = [
            km.add_micro_once(2, "winograd input", &groups.input, |i| i.emit())?,
            km.add_micro_once(2, "winograd input", &groups.direct, |i| i.emit())?,
        ];
        let input = km.quickly(|km| {
            km.define_with_micros(&transforms, move |e, b: ConvBufs<_>, t0, t1| {
                plan.group_input(e, b.input, b.scratch, (t0, t1))
            })
        })?;
        let mut fns = vec![input];
        for gemm in std::iter::once(&groups.gemm).chain(&groups.short) {
            let (plan, gemm) = (self.clone(), gemm.clone());
            let micros = gemm.add_micros(km)?;
            fns.push(km.quickly(|km| {
                km.define_with_micros(&micros, move |e, b, _, _| plan.group_products(e, &b, &gemm))
            })?);
        }
        let plan = self.clone();
        let mut transforms =
            vec![km.add_micro_once(4, "winograd output", &groups.output, |o| o.emit())?];
        if let Some(last) = &groups.last_output {
            transforms.push(km.add_micro_once(4, "winograd output", last, |o| o.emit())?);
        }
        let output = km.quickly(|km| {
            km.define_with_micros(&transforms, move |e, b: ConvBufs<_>, t0, t1| {
                plan.group_output(e, &b, (t0, t1))
            })
        })?;
        fns.push(output);
        let (rows, by_rows) = (groups.rows as i64, groups.by_rows);
        km.define_calling::<ConvBufs<Value>>(&fns, move |e, begin, end| {
            let bufs = e.bufs;
            let callees = e.callees.clone();
            let (input, output, full) = (callees[0], callees[callees.len() - 1], callees[1]);
            let group = |e: &mut Emit, t0: Value, t1: Value| -> Result<()> {
                e.b.ins().call(input, &[bufs, t0, t1]);
                if by_rows {
                    // Bounds: `t1 - t0` is 1 ..= rows (the loop below); the GEMM of that
                    // many rows reads and writes only their columns of `V` and `M`.
                    let r = e.b.ins().isub(t1, t0);
                    let whole = e.b.ins().icmp_imm_s(IntCC::Equal, r, rows);
                    e.when(whole, |e| {
                        e.b.ins().call(full, &[bufs, t0, t1]);
                        Ok(())
                    })?;
                    for (k, &f) in callees[2..callees.len() - 1].iter().enumerate() {
                        let is = e.b.ins().icmp_imm_s(IntCC::Equal, r, k as i64 + 1);
                        e.when(is, |e| {
                            e.b.ins().call(f, &[bufs, t0, t1]);
                            Ok(())
                        })?;
                    }
                } else {
                    e.b.ins().call(full, &[bufs, t0, t1]);
                }
                e.b.ins().call(output, &[bufs, t0, t1]);
                Ok(())
            };
            if by_rows {
                // Groups of `rows` tile rows from `begin`, the last one cut at `end`.
                e.for_range(begin, end, rows, |e, t0| {
                    let t1 = e.add_imm(t0, rows);
                    let t1 = e.b.ins().smin(t1, end);
                    group(e, t0, t1)
                })
            } else {
                // Group g: tile rows `rows g .. rows g + rows` (past the grid at the end).
                e.for_range(begin, end, 1, |e, g| {
                    let t0 = e.mul_imm(g, rows);
                    let t1 = e.add_imm(t0, rows);
                    group(e, t0, t1)
                })
            }
        })
    }

    /// The x86 transforms of the whole layout ([`Ymm`] or [`Wide`]; none with the f32x4
    /// ones): the input transform, and the output transforms (full calls, then the last
    /// one's).
    fn wide_micros(&self, km: &mut KernelModule) -> Result<(Vec<MicroId>, Vec<MicroId>)> {
        if let Some(y) = &self.ymm {
            let input = km.add_micro_once(2, "winograd ymm input", &y.input, |i| i.emit())?;
            let mut outputs =
                vec![km.add_micro_once(4, "winograd ymm output", &y.output, |o| o.emit())?];
            if let Some(last) = &y.last_output {
                outputs.push(km.add_micro_once(4, "winograd ymm output", last, |o| o.emit())?);
            }
            return Ok((vec![input], outputs));
        }
        let Some(w) = &self.wide else {
            return Ok((Vec::new(), Vec::new()));
        };
        let input = km.add_micro_once(2, "winograd input", &w.input, |i| i.emit())?;
        let mut outputs = vec![km.add_micro_once(4, "winograd output", &w.output, |o| o.emit())?];
        if let Some(last) = &w.last_output {
            outputs.push(km.add_micro_once(4, "winograd output", last, |o| o.emit())?);
        }
        Ok((vec![input], outputs))
    }

    fn prologue(
        &self,
        e: &mut Emit,
        inp: Value,
        scratch: Value,
        begin: Value,
        end: Value,
    ) -> Result<()> {
        let s = self.spec;
        let vbase = self.v_base(e, scratch);
        let lay = self.layout();
        e.for_range(begin, end, 1, |e, c| {
            let pc = e.pad_channel(
                inp,
                scratch,
                c,
                (s.in_h, s.in_w),
                (self.hp, self.wp),
                (s.pad_h, s.pad_w),
                0.0,
            )?;
            let vc = e.addr(vbase, c, lay.row * 4);
            // The x86 transforms: a call per `stack` tile rows, `row_tiles` apart in `V`.
            let calls = match (&self.wide, &self.ymm) {
                (Some(w), _) => Some((w.stack, w.row_tiles)),
                (None, Some(y)) => Some((y.stack, self.tw)),
                (None, None) => None,
            };
            if let Some((stack, row_tiles)) = calls {
                // Bounds: call i reads padded rows `4 stack i .. 4 stack i + 4 stack + 2 <=
                // hp`, floats below `wp` of each, and writes `V` floats `stack i row_tiles
                // ..` of its `stack` tile rows (its vectors within `tp`) of each position's
                // row of channel c.
                let n = (self.hp - 2) / (TILE * stack);
                return e.for_const(0, n as i64, 1, |e, i| {
                    let prow = e.addr(pc, i, TILE * stack * self.wp * 4);
                    let vrow = e.addr(vc, i, stack * row_tiles * 4);
                    e.b.ins().call(e.micros[0], &[prow, vrow]);
                    Ok(())
                });
            }
            if self.dense {
                for (g, tiles) in self.dense_groups().iter().enumerate() {
                    let t = self.algo.tile;
                    let origins = tiles.map(|(ty, tx)| (ty * t * self.wp + tx * t) * 4);
                    let vp = e.add_imm(vc, (g * 4 * 4) as i64);
                    self.input_group(
                        e,
                        (pc, vp, lay.v_stride),
                        &origins.map(|o| o as i64),
                        &origins.map(|o| o as i64 + 16),
                    );
                }
                return Ok(());
            }
            self.input_rows(e, pc, vc, self.th)
        })
    }

    /// The input side of the group of tile rows `t0..t1` (`1 ..= rows` of them): for every
    /// input channel, the padded rows its tile rows read (`4 (t1 - t0) + 2` rows from padded
    /// row `4 t0`: input rows from `r0 = 4 t0 - pad_h`, zeros outside the input), then
    /// their input transform into the group's `V`, a call of the AVX-512 transform
    /// (`e.micros[0]`) per tile row.
    fn group_input(
        &self,
        e: &mut Emit,
        inp: Value,
        scratch: Value,
        (t0, t1): (Value, Value),
    ) -> Result<()> {
        let s = self.spec;
        let n = e.b.ins().isub(t1, t0);
        let r0 = e.mul_imm(t0, TILE as i64);
        let r0 = e.add_imm(r0, -(s.pad_h as i64));
        // Rows `r0 .. r0 + 4 n + 2` all inside the input: the transform reads them in place.
        let below = e.b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, r0, 0);
        let r1 = e.mul_imm(t1, TILE as i64);
        let r1 = e.add_imm(r1, 2 - s.pad_h as i64);
        let above =
            e.b.ins()
                .icmp_imm_s(IntCC::SignedLessThanOrEqual, r1, s.in_h as i64);
        let inside = e.b.ins().band(below, above);
        e.if_else(
            inside,
            |e| self.group_input_direct(e, inp, scratch, (r0, n)),
            |e| self.group_input_padded(e, inp, scratch, (r0, n)),
        )
    }

    /// [`Self::group_input`] of a group of `n` tile rows whose rows `r0 .. r0 + 4 n + 2` lie
    /// inside the input: the AVX-512 transform (`e.micros[1]`) of each tile row from the
    /// input rows (from column `-pad_w`: the lanes left and right of the row are masked).
    fn group_input_direct(
        &self,
        e: &mut Emit,
        inp: Value,
        scratch: Value,
        (r0, n): (Value, Value),
    ) -> Result<()> {
        let Some(gr) = &self.groups else {
            return Ok(());
        };
        let s = self.spec;
        let vbase = self.v_base(e, scratch);
        let first = e.mul_imm(r0, (s.in_w * 4) as i64);
        let first = e.add_imm(first, -((s.pad_w * 4) as i64));
        let first = e.b.ins().iadd(inp, first);
        e.for_const(0, s.in_c as i64, 1, |e, c| {
            let src = e.addr(first, c, s.in_h * s.in_w * 4);
            let vc = e.addr(vbase, c, gr.cols * 4);
            let zero = e.iconst(0);
            e.for_range(zero, n, 1, |e, j| {
                let row = e.addr(src, j, TILE * s.in_w * 4);
                let vrow = e.addr(vc, j, gr.row_tiles * 4);
                e.b.ins().call(e.micros[1], &[row, vrow]);
                Ok(())
            })
        })
    }

    /// [`Self::group_input`] of a group of `n <= rows` tile rows at the input's top or
    /// bottom: for every input channel, the padded rows a group of `rows` would read (input
    /// rows `r0 .. r0 + 4 rows + 2`, zeros outside the input), then the input transform of
    /// its `n` tile rows into the group's `V`, a call of the AVX-512 transform
    /// (`e.micros[0]`) per tile row.
    fn group_input_padded(
        &self,
        e: &mut Emit,
        inp: Value,
        scratch: Value,
        (r0, n): (Value, Value),
    ) -> Result<()> {
        let Some(gr) = &self.groups else {
            return Ok(());
        };
        let (s, rows, wp) = (self.spec, gr.rows, gr.wp);
        let wh = TILE * rows + 2;
        let vbase = self.v_base(e, scratch);
        let zero = e.iconst(0);
        let y0 = e.b.ins().smax(r0, zero);
        let y1 = e.add_imm(r0, wh as i64);
        let h = e.iconst(s.in_h as i64);
        let y1 = e.b.ins().smin(y1, h);
        e.for_const(0, s.in_c as i64, 1, |e, c| {
            // Bounds: window rows `y - r0` lie in `0..wh` for `y` in `max(r0, 0)..min(r0 +
            // wh, in_h)`; columns `pad_w + in_w <= 4 tw + 2 <= wp`.
            let wc = e.addr(scratch, c, wh * wp * 4);
            e.fill(wc, wh * wp, 0.0)?;
            let src = e.addr(inp, c, s.in_h * s.in_w * 4);
            e.for_range(y0, y1, 1, |e, y| {
                let sp = e.addr(src, y, s.in_w * 4);
                let wy = e.b.ins().isub(y, r0);
                let dp = e.addr(wc, wy, wp * 4);
                let dp = e.add_imm(dp, (s.pad_w * 4) as i64);
                e.copy(sp, dp, s.in_w)
            })?;
            let vc = e.addr(vbase, c, gr.cols * 4);
            e.for_range(zero, n, 1, |e, j| {
                let prow = e.addr(wc, j, TILE * wp * 4);
                let vrow = e.addr(vc, j, gr.row_tiles * 4);
                e.b.ins().call(e.micros[0], &[prow, vrow]);
                Ok(())
            })
        })
    }

    /// The input transform of `rows` tile rows of the padded rows at `pc` into the `V` rows
    /// at `vc`, a group of 4 tiles along a row at a time.
    fn input_rows(&self, e: &mut Emit, pc: Value, vc: Value, rows: usize) -> Result<()> {
        let (v_stride, t) = (self.layout().v_stride, self.algo.tile);
        e.for_const(0, rows as i64, 1, |e, ty| {
            let prow = e.addr(pc, ty, t * self.wp * 4);
            let vrow = e.addr(vc, ty, self.tw * 4);
            e.for_const(0, self.tw4 as i64, 4, |e, tx0| {
                let pp = e.addr(prow, tx0, t * 4);
                let vp = e.addr(vrow, tx0, 4);
                // Tile l's columns 0-3 start `t l` floats in, columns 4-5 (F(4x4)) 4 on.
                let lo: [i64; 4] = std::array::from_fn(|l| (t * l * 4) as i64);
                let hi = lo.map(|o| o + 16);
                self.input_group(e, (pp, vp, v_stride), &lo, &hi);
                Ok(())
            })
        })
    }

    /// The tiles `(ty, tx)` of each dense group of 4, the last group padded with the last tile
    /// (its extra lanes are computed and stored into the plane's padding, never read back).
    fn dense_groups(&self) -> Vec<[(usize, usize); 4]> {
        let n = self.th * self.tw;
        (0..n.div_ceil(4))
            .map(|g| {
                std::array::from_fn(|l| {
                    let t = (4 * g + l).min(n - 1);
                    (t / self.tw, t % self.tw)
                })
            })
            .collect()
    }

    /// Transforms 4 tiles of the padded plane at `pp` (which this function wrote: ordinary
    /// loads), whose columns 0-3 start at byte offset `lo[l]` and 4-5 at `hi[l]` for tile
    /// `l`, and stores lane `l` of `V[ξ]` for tile `l` at `vp`.
    fn input_group(
        &self,
        e: &mut Emit,
        (pp, vp, v_stride): (Value, Value, usize),
        lo: &[i64; 4],
        hi: &[i64; 4],
    ) {
        let (wp, alpha) = (self.wp, self.algo.alpha);
        let bts = &self.algo.bt[..alpha];
        for (i, bt) in bts.iter().enumerate() {
            // Row i of Bᵀ d on 4 columns starting at byte offset `o` (each once: with tiles
            // along a row, one tile's columns 4-5 are the next one's 0-1).
            let mut memo: Vec<(i64, Value)> = Vec::with_capacity(8);
            let mut row = |e: &mut Emit, o: i64| {
                if let Some(&(_, v)) = memo.iter().find(|m| m.0 == o) {
                    return v;
                }
                let terms: Vec<(f32, Value)> = (0..alpha)
                    .filter(|&r| bt[r] != 0.0)
                    .map(|r| (bt[r], e.load_rw(F32X4, pp, off(r * wp * 4) + o as i32)))
                    .collect();
                let v = e.lincomb(&terms);
                memo.push((o, v));
                v
            };
            let zl: Vec<Value> = lo.iter().map(|&o| row(e, o)).collect();
            // Transposed: d[s] holds column s of the 4 tiles (F(2x2): 4 columns).
            let mut d = e.transpose4(&zl).to_vec();
            if alpha > 4 {
                let zh: Vec<Value> = hi.iter().map(|&o| row(e, o)).collect();
                d.extend_from_slice(&e.transpose4(&zh)[..alpha - 4]);
            }
            for (j, bj) in bts.iter().enumerate() {
                let terms: Vec<(f32, Value)> = (0..alpha)
                    .filter(|&s| bj[s] != 0.0)
                    .map(|s| (bj[s], d[s]))
                    .collect();
                let v = e.lincomb(&terms);
                e.store(v, vp, off((i * alpha + j) * v_stride * 4));
            }
        }
    }

    /// Where `V` and `M` start in the scratch (after the padded planes or rows). Grouped,
    /// they share `POS + 1` planes ([`rotated_stride`]): `M[ξ]` is plane `ξ` and `V[ξ]`
    /// plane `ξ + 1`, so the product of position `ξ` writes over `V[ξ - 1]`, which no later
    /// product reads (a group's products run in position order on one thread).
    fn v_base(&self, e: &mut Emit, scratch: Value) -> Value {
        let (v, _) = self.v_m_planes();
        e.add_imm(scratch, (v * 4) as i64)
    }
    fn m_base(&self, e: &mut Emit, scratch: Value) -> Value {
        let (_, m) = self.v_m_planes();
        e.add_imm(scratch, (m * 4) as i64)
    }
    /// Floats from the scratch's start to `V[0]` and to `M[0]`.
    fn v_m_planes(&self) -> (usize, usize) {
        let (planes, stride) = (self.spec.in_c * self.window_len(), self.layout().v_stride);
        match self.groups {
            Some(_) => (planes + extra_planes() * stride, planes),
            None => (planes, planes + self.algo.pos() * stride),
        }
    }

    /// Units of the products: one per position and channel block, position major, so
    /// that a range keeps one `V[ξ]` in cache for all its blocks, and two threads read
    /// half of `V` and of `U` each, in parts equal to a unit (a 64-channel layer has 5
    /// blocks of 14 at avx512: split by blocks, one thread did 3 and the other 2).
    pub(crate) fn product_units(&self) -> usize {
        self.algo.pos() * self.gemm.channel_blocks()
    }

    /// The GEMM of position `ξ` over `V`, `U` and `M`.
    fn position(&self, e: &mut Emit, b: &ConvBufs<Value>, xi: Value) -> Ptrs {
        let lay = self.layout();
        let vbase = self.v_base(e, b.scratch);
        let mbase = self.m_base(e, b.scratch);
        Ptrs {
            inp: e.addr(vbase, xi, lay.v_stride * 4),
            w: e.addr(b.packed, xi, self.u_stride() * 4),
            res: b.residual,
            out: e.addr(mbase, xi, lay.m_stride * 4),
            last_full_col_bytes: None,
        }
    }

    /// `M[ξ] = U[ξ] V[ξ]` for channel block `mb` for the units `ξ nmb + mb` in
    /// `begin..end`.
    fn products(&self, e: &mut Emit, b: &ConvBufs<Value>, begin: Value, end: Value) -> Result<()> {
        let nmb = self.gemm.channel_blocks() as i64;
        e.for_range(begin, end, 1, |e, u| {
            let xi = e.b.ins().udiv_imm_s(u, nmb);
            let first = e.mul_imm(xi, nmb);
            let mb = e.b.ins().isub(u, first);
            let ptr = self.position(e, b, xi);
            self.gemm.block_row(e, &ptr, mb)
        })
    }

    /// The 36 products of one group ([`Groups`]) on `gemm` (its GEMM or, for fewer tile
    /// rows, one of its `short` ones), every channel block of a position in turn (the
    /// position's `V` rows of the group, `in_c x cols` floats, stay in L1 for all).
    fn group_products(&self, e: &mut Emit, b: &ConvBufs<Value>, gemm: &PixelGemm) -> Result<()> {
        e.for_const(0, POS as i64, 1, |e, xi| {
            let ptr = self.position(e, b, xi);
            let nmb = gemm.channel_blocks() as i64;
            e.for_const(0, nmb, 1, |e, mb| gemm.block_row(e, &ptr, mb))
        })
    }

    /// `Aᵀ M A`, the epilogue and the stores for the output channels `k0..k1`, a group of 4
    /// tiles at a time.
    fn output_transform(
        &self,
        e: &mut Emit,
        b: &ConvBufs<Value>,
        mbase: Value,
        (k0, k1): (Value, Value),
    ) -> Result<()> {
        let s = self.spec;
        let (w, res, out, row) = (b.packed, b.residual, b.out, self.layout().row);
        let wl = self.u_stride();
        let (oh, ow) = (s.out_h(), s.out_w());
        e.for_range(k0, k1, 1, |e, kk| {
            let bp = e.addr(w, kk, 4);
            let bp = e.add_imm(bp, (self.algo.pos() * wl * 4) as i64);
            let bias = match (s.bias, &self.wide) {
                (true, None) if self.ymm.is_none() => {
                    let b = e.load(F32, bp, off(0));
                    Some((b, e.b.ins().splat(F32X4, b)))
                }
                _ => None,
            };
            let ch = Channel {
                m: e.addr(mbase, kk, row * 4),
                out: e.addr(out, kk, oh * ow * 4),
                res: e.addr(res, kk, oh * ow * 4),
                bias,
            };
            if let Some(w) = &self.wide {
                let calls = (w.stack, w.row_tiles, w.last_output.is_some());
                return self.output_calls(e, &ch, bp, calls);
            }
            if let Some(y) = &self.ymm {
                let calls = (y.stack, self.tw, y.last_output.is_some());
                return self.output_calls(e, &ch, bp, calls);
            }
            if self.dense {
                self.output_dense(e, &ch);
                return Ok(());
            }
            let t = self.algo.tile;
            let partial = oh % t;
            e.for_const(0, (oh / t) as i64, 1, |e, ty| {
                self.output_band(e, &ch, ty, t)
            })?;
            if partial != 0 {
                let ty = e.iconst((oh / t) as i64);
                self.output_band(e, &ch, ty, partial)?;
            }
            Ok(())
        })
    }

    /// The output transform of one output channel on the x86 transforms ([`Wide`],
    /// [`Ymm`]): a call per `stack` tile rows (`e.micros[0]`; the last, when its tile rows
    /// have fewer than 4 output rows or lie past the grid (`last`), `e.micros[1]`), the tile
    /// rows `row_tiles` apart in `M`, `bp` the channel's bias.
    fn output_calls(
        &self,
        e: &mut Emit,
        ch: &Channel,
        bp: Value,
        (stack, row_tiles, last): (usize, usize, bool),
    ) -> Result<()> {
        let (oh, ow) = (self.spec.out_h(), self.spec.out_w());
        // Bounds: call i reads the `M` floats of its tile rows (`stack i row_tiles ..`, its
        // vectors within `tp`), and stores output rows `4 stack i + 4 j + a` for `a <
        // rows[j]`, all below `oh` (the full calls: `4 stack (i + 1) <= oh`), columns below
        // `ow`.
        let per_call = TILE * stack;
        let at = |e: &mut Emit, i: Value| {
            [
                e.addr(ch.m, i, stack * row_tiles * 4),
                e.addr(ch.out, i, per_call * ow * 4),
                e.addr(ch.res, i, per_call * ow * 4),
                bp,
            ]
        };
        e.for_const(0, (oh / per_call) as i64, 1, |e, i| {
            let args = at(e, i);
            e.b.ins().call(e.micros[0], &args);
            Ok(())
        })?;
        if last {
            let i = e.iconst((oh / per_call) as i64);
            let args = at(e, i);
            e.b.ins().call(e.micros[1], &args);
        }
        Ok(())
    }

    /// The output side of the group of tile rows `t0..t1` (`1 ..= rows` of them): for every
    /// output channel, each of its tile rows inside the output by a call of the AVX-512
    /// output transform (`e.micros[0]`; the last tile row, when it has fewer than 4 output
    /// rows, `e.micros[1]`).
    fn group_output(
        &self,
        e: &mut Emit,
        b: &ConvBufs<Value>,
        (first, t1): (Value, Value),
    ) -> Result<()> {
        let Some(gr) = &self.groups else {
            return Ok(());
        };
        let (s, wl) = (self.spec, self.u_stride());
        let (oh, ow) = (s.out_h(), s.out_w());
        let mbase = self.m_base(e, b.scratch);
        let n = e.b.ins().isub(t1, first);
        let zero = e.iconst(0);
        let bias0 = e.add_imm(b.packed, (POS * wl * 4) as i64);
        e.for_const(0, s.out_c as i64, 1, |e, k| {
            let mk = e.addr(mbase, k, gr.cols * 4);
            let ok = e.addr(b.out, k, oh * ow * 4);
            let rk = e.addr(b.residual, k, oh * ow * 4);
            let bias = e.addr(bias0, k, 4);
            e.for_range(zero, n, 1, |e, j| {
                // Bounds: tile rows past the output's last are the group's overrun.
                let ty = e.b.ins().iadd(first, j);
                let args = [
                    e.addr(mk, j, gr.row_tiles * 4),
                    e.addr(ok, ty, TILE * ow * 4),
                    e.addr(rk, ty, TILE * ow * 4),
                    bias,
                ];
                let full = (oh / TILE) as i64;
                let inside = e.b.ins().icmp_imm_s(IntCC::SignedLessThan, ty, full);
                e.when(inside, |e| {
                    e.b.ins().call(e.micros[0], &args);
                    Ok(())
                })?;
                if gr.last_output.is_some() {
                    let last = e.b.ins().icmp_imm_s(IntCC::Equal, ty, full);
                    e.when(last, |e| {
                        e.b.ins().call(e.micros[1], &args);
                        Ok(())
                    })?;
                }
                Ok(())
            })
        })
    }

    /// The output transform of a dense grid (every tile's place laid out at compile time).
    fn output_dense(&self, e: &mut Emit, ch: &Channel) {
        let (oh, ow) = (self.spec.out_h(), self.spec.out_w());
        let (n, t) = (self.th * self.tw, self.algo.tile);
        for (g, tiles) in self.dense_groups().iter().enumerate() {
            let lanes = std::array::from_fn(|l| {
                let (ty, tx) = tiles[l];
                Lane {
                    at: (t * ty * ow + t * tx) * 4,
                    rows: if 4 * g + l < n {
                        (oh - t * ty).min(t)
                    } else {
                        0
                    },
                    cols: (ow - t * tx).min(t),
                }
            });
            let m = e.add_imm(ch.m, (g * 4 * 4) as i64);
            self.output_group(e, m, (ch.out, ch.res), ch.bias, lanes);
        }
    }

    /// The `rows` output rows of tile row `ty`, groups of 4 tiles inside the output, then
    /// the group at the right edge.
    fn output_band(&self, e: &mut Emit, ch: &Channel, ty: Value, rows: usize) -> Result<()> {
        let (ow, t) = (self.spec.out_w(), self.algo.tile);
        let mrow = e.addr(ch.m, ty, self.tw * 4);
        let orow = e.addr(ch.out, ty, t * ow * 4);
        let rrow = e.addr(ch.res, ty, t * ow * 4);
        let at = |e: &mut Emit, tx0: Value| {
            let m = e.addr(mrow, tx0, 4);
            let o = e.addr(orow, tx0, t * 4);
            let r = e.addr(rrow, tx0, t * 4);
            (m, o, r)
        };
        let full = ow / (4 * t);
        let lanes = |cols: &dyn Fn(usize) -> usize| {
            std::array::from_fn(|l| Lane {
                at: t * l * 4,
                rows,
                cols: cols(l),
            })
        };
        e.for_const(0, (4 * full) as i64, 4, |e, tx0| {
            let (m, o, r) = at(e, tx0);
            self.output_group(e, m, (o, r), ch.bias, lanes(&|_| t));
            Ok(())
        })?;
        if 4 * full < self.tw {
            let tx0 = e.iconst((4 * full) as i64);
            let (m, o, r) = at(e, tx0);
            let cols = |l| ow.saturating_sub(t * (4 * full + l)).min(t);
            self.output_group(e, m, (o, r), ch.bias, lanes(&cols));
        }
        Ok(())
    }

    /// `Aᵀ m A` for the 4 tiles whose `M` values start at `mp`, then the epilogue and
    /// the stores of each lane's tile (its inside part) at `op`, `rp`.
    fn output_group(
        &self,
        e: &mut Emit,
        mp: Value,
        (op, rp): (Value, Value),
        bias: Option<(Value, Value)>,
        lanes: [Lane; 4],
    ) {
        let plane = self.layout().m_stride * 4;
        let Algo {
            alpha, tile, at, ..
        } = *self.algo;
        let ats = &at[..tile];
        let rows = lanes.iter().map(|l| l.rows).max().unwrap_or(0);
        for (a, at) in ats.iter().enumerate().take(rows) {
            // Row a of Aᵀ m, then of (Aᵀ m) A: y[b] holds output (a, b) of the 4 tiles.
            let t: Vec<Value> = (0..alpha)
                .map(|j| {
                    let terms: Vec<(f32, Value)> = (0..alpha)
                        .filter(|&i| at[i] != 0.0)
                        .map(|i| (at[i], e.load_rw(F32X4, mp, off((i * alpha + j) * plane))))
                        .collect();
                    e.lincomb(&terms)
                })
                .collect();
            let y: Vec<Value> = ats
                .iter()
                .map(|ab| {
                    let terms: Vec<(f32, Value)> = (0..alpha)
                        .filter(|&j| ab[j] != 0.0)
                        .map(|j| (ab[j], t[j]))
                        .collect();
                    e.lincomb(&terms)
                })
                .collect();
            self.store_row(e, &y, a, (op, rp), bias, &lanes);
        }
    }

    /// Row `a` of the 4 tiles (`y[b]`: output `(a, b)` of each, a lane per tile) with the
    /// epilogue: F(4x4) transposed so that each tile's row is one vector of 4 consecutive
    /// pixels, F(2x2) interleaved into two such vectors (tiles 0-1 and 2-3). A vector is
    /// stored whole where its tiles lie side by side inside the output, else pixel by pixel
    /// (the inside ones).
    fn store_row(
        &self,
        e: &mut Emit,
        y: &[Value],
        a: usize,
        (op, rp): (Value, Value),
        bias: Option<(Value, Value)>,
        lanes: &[Lane; 4],
    ) {
        let (ep, ow, t) = (self.spec.epilogue(), self.spec.out_w(), self.algo.tile);
        let px = match t {
            TILE => e.transpose4(y).to_vec(),
            _ => e.zip2(y[0], y[1]).to_vec(),
        };
        for (q, tiles) in lanes.chunks_exact(TILE / t).enumerate() {
            let inside = tiles.iter().all(|l| l.cols == t && a < l.rows);
            if inside && tiles.windows(2).all(|w| w[1].at == w[0].at + 4 * t) {
                let bv = bias.map(|(_, bv)| bv);
                e.epilogue_store(&ep, px[q], bv, (rp, op), off(tiles[0].at + a * ow * 4));
                continue;
            }
            for (h, lane) in tiles.iter().enumerate().filter(|(_, l)| a < l.rows) {
                for b in 0..lane.cols {
                    let x = e.b.ins().extractlane(px[q], (h * t + b) as u8);
                    let bs = bias.map(|(bs, _)| bs);
                    e.epilogue_store(&ep, x, bs, (rp, op), off(lane.at + a * ow * 4 + 4 * b));
                }
            }
        }
    }
}

/// Where one lane (tile) of an output group goes: the byte offset of its top-left output
/// from the group's base, and how many of its rows and columns lie inside the output.
#[derive(Clone, Copy)]
struct Lane {
    at: usize,
    rows: usize,
    cols: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jit::test_values as values;
    use crate::jit::ConvMethod;

    thread_local! {
        /// Tile rows per group for the plans this thread makes (`None`: the default).
        pub(super) static ROWS: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
        /// Whether the plans this thread makes cut a range's last group short
        /// (`CNNC_WINOGRAD_SHORT`; `None`: the knob).
        pub(super) static SHORT: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
        /// Whether the plans this thread makes keep the f32x4 transforms (no [`Ymm`]).
        pub(super) static NO_YMM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Which layers run tile group by tile group ([`WinogradPlan::group_rows`]): where `U`
    /// fits L2, or is at most 2.5 MB and the layer has many groups.
    #[test]
    fn layers_group_where_u_stays_near_or_the_groups_are_many() {
        let grouped = |c, hw, k, isa| {
            WinogradPlan::new(ConvSpec::square(c, hw, k, 3, 1, 1), isa, &F4).grouped()
        };
        for (c, hw, k, yes) in [
            (64, 56, 64, true),
            (64, 224, 64, true),
            (128, 112, 128, true),
            (64, 112, 128, true),
            (128, 56, 128, false),
            (256, 56, 256, false),
            (128, 28, 128, false),
        ] {
            assert_eq!(grouped(c, hw, k, Isa::Avx512), yes, "{c} -> {k} at {hw}");
            assert!(!grouped(c, hw, k, Isa::Avx2), "{c} -> {k} at {hw}");
        }
    }

    /// Groups of several tile rows give the bits of groups of one row: each tile's values
    /// go through the same operations whatever its group. The whole range's last group is
    /// shorter where the tile rows are not a whole number of groups (a GEMM over its own
    /// columns), or, with `CNNC_WINOGRAD_SHORT=0`, reaches past the grid (those rows
    /// computed from zeros, never stored). At avx512, the only level that groups; with and
    /// without bias and residual; tile rows of 1 and 2 vectors; pads 0-2.
    #[test]
    fn groups_of_several_tile_rows_give_the_bits_of_one() {
        if !Isa::host_levels().contains(&Isa::Avx512) {
            return;
        }
        for (c, h, w, k, pad) in [
            (16, 21, 50, 20, 1),
            (17, 34, 59, 16, 0),
            (16, 17, 118, 18, 1),
            (16, 26, 50, 17, 2),
        ] {
            let mut s = ConvSpec::square(c, h, k, 3, 1, pad);
            s.in_w = w;
            (s.bias, s.relu, s.residual) = (k % 2 == 0, true, k % 2 == 0);
            let by_rows = |rows, short| {
                ROWS.with(|r| r.set(Some(rows)));
                SHORT.with(|f| f.set(Some(short)));
                let plan = WinogradPlan::new(s, Isa::Avx512, &F4);
                let g = plan.groups.as_ref().expect("grouped");
                assert_eq!((g.rows, g.by_rows), (rows, short), "{s:?}");
                let out = run(&s, Isa::Avx512, true).0;
                ROWS.with(|r| r.set(None));
                SHORT.with(|f| f.set(None));
                out
            };
            let one = by_rows(1, true);
            assert!(one.iter().all(|v| v.is_finite()), "{s:?}");
            for (rows, short) in [(2, true), (3, true), (2, false), (3, false)] {
                let other = by_rows(rows, short);
                assert!(
                    one.iter()
                        .zip(&other)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{s:?}: groups of {rows} tile rows (short {short}) give other bits"
                );
            }
        }
    }

    /// Grouped, the work units are tile rows and a range cut inside a group computes its
    /// rows as a shorter group, on a GEMM over their columns only (at the top, in the
    /// middle where the input is read in place, and at the bottom); with
    /// `CNNC_WINOGRAD_SHORT=0` the units are whole groups, the last one reaching past the
    /// grid. For every way of cutting the units in two and in three, each range run into
    /// its own NaN-poisoned output writes exactly its own output rows (`4 t0 .. 4 t1`, every
    /// channel: a short group writing a row of another range's would show) with the bits of
    /// the whole range. ResNet-50's 64 -> 64 at 56x56 (14 tile rows: 7 groups of 2), an odd
    /// number of tile rows (7: the whole range's last group short), groups of 3 rows (2
    /// short GEMMs), pad 2, with and without residual (odd `k`).
    #[test]
    fn ranges_cut_inside_groups_give_the_bits_of_the_whole() {
        if !Isa::host_levels().contains(&Isa::Avx512) {
            return;
        }
        for ((c, h, w, k, pad, rows), short) in [
            (64, 56, 56, 64, 1, None),
            (17, 30, 59, 17, 0, None),
            (16, 21, 50, 20, 1, Some(3)),
            (16, 26, 50, 17, 2, Some(3)),
        ]
        .into_iter()
        .flat_map(|shape| [(shape, true), (shape, false)])
        {
            let mut s = ConvSpec::square(c, h, k, 3, 1, pad);
            s.in_w = w;
            (s.bias, s.relu, s.residual) = (true, true, k % 2 == 0);
            ROWS.with(|r| r.set(rows));
            SHORT.with(|f| f.set(Some(short)));
            let plan = WinogradPlan::new(s, Isa::Avx512, &F4);
            let mut km = KernelModule::new().unwrap();
            km.set_isa(Isa::Avx512).unwrap();
            let p = km.add_conv_with(&s, ConvMethod::Winograd).unwrap();
            km.compile_pending(None).unwrap();
            ROWS.with(|r| r.set(None));
            SHORT.with(|f| f.set(None));
            let g = plan.groups.as_ref().expect("grouped");
            assert!(g.by_rows == short && g.rows >= 2, "{s:?}: {g:?}");
            // One chunk a thread by tile rows: fewer chunk boundaries, fewer short groups.
            let chunks = if short {
                1
            } else {
                crate::jit::threads::CHUNKS_PER_PART
            };
            if crate::knobs::number::<usize>("CNNC_WINOGRAD_CHUNKS").is_none() {
                assert_eq!(plan.chunks_per_part(), chunks, "{s:?}");
            }
            assert_eq!(g.short.len(), if short { g.rows - 1 } else { 0 }, "{s:?}");
            let (w, b) = (values(s.weight_len(), 1), values(s.out_c, 2));
            let packed = p.pack_weights(&w, Some(&b)).unwrap();
            let (x, r) = (values(s.input_len(), 4), values(s.output_len(), 3));
            let res = s.residual.then_some(r.as_slice());
            let k = km.finalize().unwrap().get(p).unwrap();
            // Tile rows per work unit.
            let (units, step) = match short {
                true => (plan.th, 1),
                false => (plan.th.div_ceil(g.rows), g.rows),
            };
            assert_eq!(k.work_units(), units, "{s:?}");
            let mut scratch = vec![f32::NAN; k.scratch_len()];
            let (out_h, out_w) = (s.out_h(), s.out_w());
            let mut whole = vec![f32::NAN; s.output_len()];
            k.run(&x, &packed, res, &mut whole, &mut scratch, 0..units)
                .unwrap();
            assert!(whole.iter().all(|v| v.is_finite()), "{s:?}");
            for a in 0..=units {
                for b in a..=units {
                    for (u0, u1) in [(0, a), (a, b), (b, units)] {
                        let mut out = vec![f32::NAN; s.output_len()];
                        k.run(&x, &packed, res, &mut out, &mut scratch, u0..u1)
                            .unwrap();
                        let mine = 4 * step * u0..4 * step * u1;
                        for (i, (u, v)) in whole.iter().zip(&out).enumerate() {
                            let row = i / out_w % out_h;
                            assert!(
                                match mine.contains(&row) {
                                    true => u.to_bits() == v.to_bits(),
                                    false => v.is_nan(),
                                },
                                "{s:?} (short {short}): units {u0}..{u1}, output row {row}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The AVX2 transforms ([`Ymm`]) give the bits of the f32x4 ones they replace: the same
    /// operations on every value. Grids of 1-3 vectors of 8 tiles a row, rows of 4 tiles
    /// two to a vector, every remainder of tiles in the last vector, output widths at every
    /// remainder of 8 (the masked right edge) and of 4 (overhanging tiles), last tile rows
    /// of 1-4 output rows, padding 0-2, channel counts off the GEMM's blocks, every
    /// epilogue (ReLU6, and a clip without ReLU below zero). NaN-poisoned outputs: every
    /// output written, and finite. At avx2, and at avx512 (not grouped here) where the rows
    /// have 9 tiles or more.
    #[test]
    fn ymm_transforms_give_the_bits_of_the_f32x4_ones() {
        let mut shapes = 0;
        for (c, h, w, k, pad) in [
            (16, 18, 18, 16, 1),
            (17, 23, 33, 19, 0),
            (16, 21, 50, 20, 1),
            (20, 10, 66, 17, 2),
            (16, 13, 70, 16, 1),
            (18, 9, 35, 22, 1),
            (16, 17, 95, 18, 0),
            (24, 31, 14, 24, 1),
            (16, 14, 20, 16, 1),
            // Rows of 4 tiles, two to a vector: an even number of tile rows (the last of 1
            // output row), an odd one (the last call's second row past the grid), output
            // widths 13-16.
            (20, 13, 13, 17, 1),
            (16, 18, 15, 18, 1),
            (17, 22, 16, 16, 0),
            (16, 30, 14, 16, 1),
        ] {
            for (ep, isa) in (0..5).flat_map(|ep| [(ep, Isa::Avx2), (ep, Isa::Avx512)]) {
                if !Isa::host_levels().contains(&isa) {
                    continue;
                }
                let mut s = ConvSpec::square(c, h, k, 3, 1, pad);
                s.in_w = w;
                (s.bias, s.relu, s.residual) = (ep != 1, (2..4).contains(&ep), ep % 2 == 1);
                s.clip = match ep {
                    3 => Some(crate::jit::Clip::RELU6),
                    // A clip alone, with a negative lower bound.
                    4 => Some(crate::jit::Clip {
                        min: -0.25,
                        max: 0.3,
                    }),
                    _ => None,
                };
                ROWS.with(|r| r.set(Some(0)));
                let ymm = WinogradPlan::new(s, isa, &F4).ymm.is_some();
                assert_eq!(ymm, isa == Isa::Avx2 || s.out_w() > 32, "{s:?} at {isa}");
                if !ymm {
                    ROWS.with(|r| r.set(None));
                    continue;
                }
                NO_YMM.with(|f| f.set(true));
                assert!(WinogradPlan::new(s, isa, &F4).ymm.is_none());
                let f32x4 = run(&s, isa, true).0;
                NO_YMM.with(|f| f.set(false));
                let ymm = run(&s, isa, true).0;
                ROWS.with(|r| r.set(None));
                assert!(ymm.iter().all(|v| v.is_finite()), "{s:?} at {isa}");
                let same = ymm.iter().zip(&f32x4);
                assert!(
                    same.into_iter().all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{s:?} at {isa}: the ymm transforms give other bits"
                );
                shapes += 1;
            }
        }
        assert!(shapes >= 65, "{shapes}");
    }

    /// The output of `s` by Winograd at `isa`, with the transforms compiled without the
    /// optimiser (`quick`) or with it, and the bytes of machine code.
    fn run(s: &ConvSpec, isa: Isa, quick: bool) -> (Vec<f32>, usize) {
        let mut km = KernelModule::new().unwrap();
        km.set_isa(isa).unwrap();
        km.keep_listings();
        km.quick_allowed = quick;
        let p = km.add_conv_with(s, ConvMethod::Winograd).unwrap();
        km.compile_pending(None).unwrap();
        let code_bytes = km.take_listings().iter().map(|l| l.code_bytes).sum();
        let (w, b) = (values(s.weight_len(), 1), values(s.out_c, 2));
        let packed = p.pack_weights(&w, s.bias.then_some(b.as_slice())).unwrap();
        let r = values(s.output_len(), 3);
        let k = km.finalize().unwrap().get(p).unwrap();
        let mut out = vec![f32::NAN; s.output_len()];
        let res = s.residual.then_some(r.as_slice());
        k.run_all(&values(s.input_len(), 4), &packed, res, &mut out)
            .unwrap();
        (out, code_bytes)
    }

    /// Compiling the transforms without Cranelift's optimiser changes no bit of the
    /// result, at any ISA level (Cranelift neither reassociates nor contracts floats).
    #[test]
    fn transforms_compiled_without_the_optimiser_give_the_same_bits() {
        for (c, h, w, k) in [
            (16, 9, 11, 20),
            (20, 14, 14, 18),
            (33, 6, 17, 16),
            (24, 28, 28, 32),
        ] {
            let mut s = ConvSpec::square(c, h, k, 3, 1, 1);
            s.in_w = w;
            (s.bias, s.relu, s.residual) = (true, true, true);
            for isa in Isa::host_levels() {
                let ((quick, bytes), (optimised, bytes_optimised)) =
                    (run(&s, isa, true), run(&s, isa, false));
                assert_ne!(bytes, bytes_optimised, "{s:?} at {isa}: the same code");
                assert!(quick.iter().all(|v| v.is_finite()), "{s:?} at {isa}");
                let same = quick.iter().zip(&optimised);
                assert!(
                    same.into_iter().all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{s:?} at {isa}: the optimised transforms give other bits"
                );
            }
        }
    }
}
