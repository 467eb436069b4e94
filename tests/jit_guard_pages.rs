//! The generated code touches only the buffers it is given: every buffer is placed right
//! against an inaccessible guard page (after its end, then before its start), so any
//! out-of-bounds load or store crashes the test.
#![cfg(unix)]
mod common;
use cnnc::jit::*;
use common::guarded::Guarded;

fn vals(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 % 101) as f32) / 101.0 - 0.5)
        .collect()
}

/// Every conv method at every ISA level the host has (the wide micro-kernels' masked
/// tails, the implicit GEMM's panels and reduction blocks, the f32x4 kernels).
#[test]
fn conv_stays_in_bounds() {
    for isa in cnnc::Isa::host_levels() {
        conv_stays_in_bounds_at(isa);
    }
}

fn conv_stays_in_bounds_at(isa: cnnc::Isa) {
    let (mut winograd_layers, mut in_place_layers, mut small_tiles) = (0, 0, 0);
    for &(c, h, w, k, f, s, p) in &[
        // Implicit GEMM (avx2 / avx512): unpadded strided convs reading up to the input's
        // last column (the stride-2 copies' row ends), the stem, reduction blocks, pixel
        // and channel tails.
        (5, 33, 33, 20, 3, 2, 0),
        (16, 14, 14, 15, 1, 2, 0),
        (3, 37, 35, 29, 7, 2, 3),
        (100, 9, 8, 15, 3, 2, 1),
        // Reduction blocks of the 192 KB panels: 3 at zmm (one strip), 7 at zmm and 3 at
        // ymm (strip by strip).
        (400, 9, 8, 15, 3, 2, 1),
        (700, 21, 21, 9, 3, 1, 1),
        // All strips at once (a 7x7 output: the lone pixel computed by the strip before it),
        // 3 reduction blocks; a 7x7 output from stride 2.
        (100, 7, 7, 30, 3, 1, 1),
        (20, 14, 13, 9, 3, 2, 1),
        // Weights over 1 MB, prefetched ahead (grouped, and strip by strip).
        (300, 7, 7, 131, 3, 1, 1),
        (290, 39, 41, 115, 3, 2, 1),
        // The same grouped at ymm too (7x7 from stride 2): 4 reduction blocks, the last one
        // a channel shorter, a channel tail of 5 rows; with the last unit run alone below,
        // the touch of the first weights of the last block (`warm_first_weights`) at avx2.
        (299, 13, 13, 131, 3, 2, 1),
        // Over 256 KB of weights (prefetched too), strip by strip.
        (70, 11, 12, 110, 3, 2, 1),
        (600, 5, 4, 7, 1, 2, 0),
        // Padding done by the panel copies, reading the unpadded input: masked loads at
        // its first and last columns and rows (a 5x5 with padding 2 on 3x4, stride 2 from
        // 57x57 with the last output's filter column 2 past the input).
        (40, 3, 4, 9, 5, 1, 2),
        (12, 57, 57, 9, 3, 2, 1),
        // Filter columns two by two at stride 2 (a 2x2/2 with padding 1, a pair only; on
        // an even width the last output's second column is the right padding).
        (20, 15, 17, 9, 2, 2, 1),
        (20, 15, 16, 9, 2, 2, 1),
        // Outputs over 1 MB: the first call of a strip prefetches the next strip's outputs
        // for writing (the plane's last strip its own): a stem, a channel tail with 2
        // reduction blocks.
        (3, 131, 129, 64, 7, 2, 3),
        (50, 62, 61, 70, 3, 1, 1),
        // The same on the im2col bands (few taps): a channel tail, a plane shorter than two
        // tiles.
        (3, 150, 149, 29, 3, 1, 1),
        (4, 7, 9, 4100, 3, 1, 1),
        (2, 5, 40, 6, 2, 1, 0),
        (3, 7, 9, 5, 3, 1, 1),
        (5, 13, 11, 9, 1, 1, 0),
        (4, 9, 10, 13, 1, 2, 0),
        (2, 12, 12, 3, 7, 2, 3),
        // Strips across rows: 14x14 (zmm: all at once), 28x28 from stride 2 unpadded (the
        // copies at the input's last column, groups of rows), 13x13, rows of 56.
        (9, 14, 14, 11, 3, 1, 1),
        (4, 57, 57, 9, 3, 2, 0),
        (3, 13, 13, 17, 3, 1, 1),
        (2, 7, 56, 5, 3, 1, 1),
        (6, 5, 5, 17, 3, 3, 0),
        (1, 1, 1, 1, 1, 1, 0),
        (9, 6, 33, 7, 2, 1, 2),
        // Pointwise GEMM: reduction chunks (130 and 200 channels), the last full tile
        // column's prefetches, a partial column at the input's end.
        (130, 7, 11, 29, 1, 1, 0),
        (200, 3, 23, 6, 1, 1, 0),
        // avx512 12x32 tiles (over 682 channels, 20 outputs): packed column, and chunks;
        // and a 48-pixel column packed at over 64 KB (8x48, 400 channels).
        (700, 7, 11, 20, 1, 1, 0),
        (1100, 5, 9, 20, 1, 1, 0),
        (400, 7, 11, 20, 1, 1, 0),
        // Weight-major order (more output channels than pixels): full and partial columns,
        // and a plane narrower than a zmm tile.
        (70, 6, 6, 45, 1, 1, 0),
        (20, 4, 5, 30, 1, 1, 0),
        // Weight major with a last tile column of 1-4 pixels (avx512: channels in the
        // lanes; a channel tail of 6 or 9 rows, the output's last pixel against the guard
        // page). With 280 = 20 x 14 channels and under 1 MB of weights (no prefetch
        // padding) the last block's masked bias load ends at the packed buffer's last float.
        (256, 14, 14, 300, 1, 1, 0),
        (64, 11, 3, 37, 1, 1, 0),
        (64, 14, 14, 280, 1, 1, 0),
        // Planes of 1-4 pixels only (the lanes kernel is the whole GEMM), and a strided
        // 1x1 into 14x14 (the lanes kernel on the sampled pixels).
        (300, 1, 1, 40, 1, 1, 0),
        (64, 2, 2, 70, 1, 1, 0),
        (300, 28, 28, 400, 1, 2, 0),
        // Weight major with over 1 MB of weights (prefetched ahead, into the packed
        // buffer's padding at its end).
        (520, 6, 6, 500, 1, 1, 0),
        // The same on avx512 12-row tiles (130 channels), weights prefetched ahead.
        (2100, 5, 5, 130, 1, 1, 0),
        // A bottleneck's 4x expansion from a small input: weight major too.
        (32, 12, 12, 130, 1, 1, 0),
        // The same over 1024 pixels: 8x48 tiles at avx512.
        (32, 33, 35, 130, 1, 1, 0),
        // Made for 3 threads (pixel parts), the last part only the partial column: 3 x 23
        // pixels, 16+ per channel in; at avx512 two columns of 32 pixels and a 5-pixel tail.
        (4, 3, 23, 250, 1, 1, 0),
        // Strided 1x1 (avx2 / avx512: the pointwise GEMM on the sampled pixels where it
        // goes weight major or has at most 36 input channels): the copy's last vector group
        // reading the input's last column, odd and even widths, rows narrower than a group;
        // weight major with prefetched weights. Else the implicit GEMM: stride 2 (the x86
        // copy) and stride 3 (its f32x4 copy), reading up to the input's last column.
        (8, 15, 17, 20, 1, 2, 0),
        (6, 16, 16, 9, 1, 2, 0),
        (5, 7, 3, 7, 1, 2, 0),
        (9, 12, 19, 11, 1, 3, 0),
        (600, 13, 13, 480, 1, 2, 0),
        (40, 57, 57, 20, 1, 2, 0),
        (64, 22, 31, 13, 1, 3, 0),
        // Weight major over a 7x7 plane (avx512: one 48-pixel column whose kernel computes
        // the 49th pixel too; the extra column's reads and stores at the planes' ends), a
        // channel tail; and over 1 MB of weights (prefetched).
        (37, 7, 7, 130, 1, 1, 0),
        (700, 7, 7, 400, 1, 1, 0),
        // The same in 4 columns of 48 + 1 (14x14, 512+ channels), the last column's lone
        // pixel the planes' last float; and strided (1x1/2 from 28x28).
        (512, 14, 14, 515, 1, 1, 0),
        (512, 28, 28, 520, 1, 2, 0),
        // Over 256 KB of output from packed columns (avx512: output prefetches of the next
        // full column), pixel tails.
        (64, 33, 33, 70, 1, 1, 0),
        (200, 23, 29, 120, 1, 1, 0),
        // Few taps (avx2 / avx512: the im2col bands): the stride-2 copy's last group reading
        // the input's last column, stride 1 with padding, a short last band, several bands.
        (3, 37, 35, 29, 3, 2, 0),
        (1, 20, 9, 15, 5, 1, 2),
        (3, 205, 30, 17, 3, 1, 1),
        (3, 111, 99, 7, 3, 2, 0),
        // Winograd: tiles overhanging the bottom and right edges, a partial tile group,
        // dense groups, and rows of 5 tiles whose last group runs over into the next row.
        (17, 11, 13, 19, 3, 1, 1),
        (16, 6, 6, 16, 3, 1, 0),
        (20, 9, 30, 23, 3, 1, 2),
        (16, 20, 20, 17, 3, 1, 1),
        // Winograd tile group by tile group (avx512): the input transform's vectors of 16
        // tiles reading the padded rows' last columns, a range's last group cut short (its
        // GEMM over its own columns of `V` and `M`: a subset of the full GEMM's; the 2- and
        // 3-thread splits cut inside groups), groups reaching past the last tile row (only
        // with `CNNC_WINOGRAD_SHORT=0` in the environment), the input's first and last rows
        // copied into a group's padded rows, and groups inside the input read in place
        // (masked lanes left of column 0 and right of the last: the first channel's row
        // before the buffer's start, the last channel's last row at its end).
        (16, 13, 50, 20, 3, 1, 1),
        (18, 36, 59, 16, 3, 1, 0),
        (16, 41, 61, 17, 3, 1, 1),
        // The whole layout with `U` above 1 MB: the GEMM prefetches its weights' stream.
        (96, 26, 30, 80, 3, 1, 1),
        (96, 14, 14, 80, 3, 1, 1),
        // The whole layout on the AVX-512 transforms (avx512): 2 tile rows of 7 and 8 tiles
        // a vector (the last vector's second row past the grid; a last row of 3 output
        // rows), 4 rows of 4 and 2 tiles (padded rows read to the plane's last column and
        // row), and one row of 16 tiles (the ymm transforms).
        (16, 28, 28, 20, 3, 1, 1),
        (20, 15, 30, 17, 3, 1, 1),
        (17, 22, 13, 18, 3, 1, 1),
        (19, 38, 10, 16, 3, 1, 0),
        (16, 4, 62, 16, 3, 1, 1),
        // The AVX2 transforms (avx2; every Winograd row above too): rows of 3 vectors of 8
        // tiles whose last has 2 (the output's last row's last vector masked to 6 lanes at
        // the buffer's end), rows of 32 pixels (unmasked stores up to the end), one tile
        // row of 4 output rows (2 input rows padded by 2) of 41 pixels (one lane).
        (17, 11, 70, 19, 3, 1, 1),
        (16, 9, 32, 16, 3, 1, 1),
        (18, 2, 39, 17, 3, 1, 2),
        // ... rows of 4 tiles two to a vector: 5 tile rows (the last call's second past the
        // grid: the padded plane's last rows), 15 pixels (the edge's vector of 7 lanes).
        (16, 18, 15, 18, 3, 1, 1),
        // Winograd F(2x2, 3x3) (every shape above too): 8x8 (VGG-CIFAR's), a dense grid of
        // 3x3 tiles with a last column and row of one pixel, rows of 9 tiles (a partial
        // last group of 4 running over into the next row), one tile row, and `U` above 1 MB
        // (the GEMM prefetches its stream, past `U` into the bias and padding).
        (24, 8, 8, 40, 3, 1, 1),
        (16, 5, 5, 17, 3, 1, 1),
        (18, 17, 19, 20, 3, 1, 0),
        (17, 3, 40, 20, 3, 1, 1),
        (96, 8, 8, 200, 3, 1, 1),
    ] {
        // The last: the residual read from the output buffer, where the method can.
        let epilogues = [
            (true, true, true, false),
            (false, false, false, false),
            (true, true, true, true),
        ];
        for (bias, residual, relu, in_place) in epilogues {
            let mut spec = ConvSpec::square(c, h, k, f, s, p);
            spec.in_w = w;
            spec.bias = bias;
            spec.residual = residual;
            spec.relu = relu;
            // The method picked for the shape, and Winograd wherever it can compute it (the
            // cost model leaves it to large outputs).
            let default = ConvMethod::for_spec(&spec, true, isa);
            if in_place && !default.reads_residual_in_place(&spec, isa) {
                continue;
            }
            spec.residual_in_place = in_place;
            in_place_layers += usize::from(in_place);
            let methods = if in_place {
                &[default][..]
            } else {
                &[default, ConvMethod::Winograd, ConvMethod::Winograd2]
            };
            for &method in methods {
                // Made for pools of 2 and 3 threads too: the weight-major pointwise GEMM then
                // orders its units by pixel parts (`KernelModule::set_threads`).
                let made_for: &[usize] = match method {
                    ConvMethod::PointwiseGemm => &[1, 2, 3],
                    _ => &[1],
                };
                for &threads in made_for {
                    let mut km = KernelModule::new().unwrap();
                    km.set_isa(isa).unwrap();
                    km.set_threads(threads);
                    let pk = match km.add_conv_with(&spec, method) {
                        Ok(pk) => pk,
                        Err(_) if method != default => continue,
                        Err(e) => panic!("{spec:?}: {e}"),
                    };
                    if threads == 1 {
                        winograd_layers += usize::from(method == ConvMethod::Winograd);
                        small_tiles += usize::from(method == ConvMethod::Winograd2);
                    }
                    conv_in_bounds(&spec, km, pk);
                }
            }
        }
    }
    // The Winograd rows of the table above, and the pointwise ones in place.
    assert!(winograd_layers >= 8, "{winograd_layers} Winograd layers");
    assert!(small_tiles >= 8, "{small_tiles} Winograd F(2x2) layers");
    assert!(in_place_layers >= 10, "{in_place_layers} in place");
}

/// Runs the kernel `pk` of `km` on guarded buffers, whole and split across threads.
fn conv_in_bounds(spec: &ConvSpec, km: KernelModule, pk: PendingConv) {
    let (k, bias) = (spec.out_c, spec.bias);
    // In place, the output holds the residual and no residual buffer is passed.
    let (residual, in_place) = (
        spec.residual && !spec.residual_in_place,
        spec.residual_in_place,
    );
    let packed = pk
        .pack_weights(&vals(spec.weight_len()), bias.then(|| vals(k)).as_deref())
        .unwrap();
    let code = km.finalize().unwrap();
    let kern = code.get(pk).unwrap();
    for after in [true, false] {
        let x = Guarded::from(&vals(spec.input_len()), after);
        let wp = Guarded::from(&packed, after);
        let r = Guarded::from(&vals(spec.output_len()), after);
        let out_for = || match in_place {
            true => Guarded::from(&vals(spec.output_len()), after),
            false => Guarded::new(kern.output_len(), after, f32::NAN),
        };
        let mut out = out_for();
        // NaN scratch: a kernel that read scratch it had not written would show it.
        let mut scratch = Guarded::new(kern.scratch_len(), after, f32::NAN);
        kern.run(
            x.s(),
            wp.s(),
            residual.then(|| r.s()),
            out.m(),
            scratch.m(),
            0..kern.work_units(),
        )
        .unwrap();
        assert!(out.s().iter().all(|v| v.is_finite()));
        let same_as_out = |o: &Guarded| {
            o.s()
                .iter()
                .zip(out.s())
                .all(|(a, b)| a.to_bits() == b.to_bits())
        };
        // The last unit alone, then the others: a range starting at the last block of
        // output channels (the implicit GEMM's grouped layers touch the first weights of
        // their range's first block, there into the bias and the padding after it).
        let units = kern.work_units();
        let mut out3 = out_for();
        for range in [units - 1..units, 0..units - 1] {
            kern.run(
                x.s(),
                wp.s(),
                residual.then(|| r.s()),
                out3.m(),
                scratch.m(),
                range,
            )
            .unwrap();
        }
        assert!(same_as_out(&out3), "{spec:?}, the last unit apart");
        // Split across threads: the prologue's and the compute's parts. Also with a longer
        // scratch, as a model passes one buffer to every step: each thread's own part (a
        // grouped Winograd layer's) then starts at the thread's share of the whole buffer.
        for (threads, len) in [(2, 1), (2, 2), (3, 1), (3, 3)].map(|(threads, times)| {
            let need = kern.scratch_len_on(threads);
            // Exactly what the kernel needs, or longer (the new stride's case).
            (threads, times * need + (times > 1) as usize * 37)
        }) {
            let pool = ThreadPool::new(threads, std::time::Duration::from_micros(50));
            let mut out2 = out_for();
            let mut scratch = Guarded::new(len, after, f32::NAN);
            kern.run_parallel(
                &pool,
                x.s(),
                wp.s(),
                residual.then(|| r.s()),
                out2.m(),
                scratch.m(),
            )
            .unwrap();
            assert!(
                same_as_out(&out2),
                "{spec:?}, {threads} threads, scratch of {len} floats"
            );
        }
    }
}

/// A conv and max pool fused (`KernelModule::add_conv_max_pool`) at the wide levels: the
/// conv's last input row and column, the pool's last output row (a shorter last unit) and
/// its masked row ends, against the guard page; the per-thread scratch split on 2 threads.
#[test]
fn conv_max_pool_stays_in_bounds() {
    for isa in cnnc::Isa::host_levels() {
        for (c, h, w, k, s, pool_k, pool_s, pool_pad) in [
            (3, 224, 224, 64, 2, 3, 2, 0),
            (3, 41, 37, 29, 1, 3, 2, 1),
            (1, 30, 33, 9, 1, 2, 2, 0),
            (4, 60, 21, 70, 1, 3, 1, 1),
        ] {
            let spec = ConvSpec {
                bias: true,
                relu: true,
                ..ConvSpec::square(c, 0, k, 3, s, 0)
            };
            let spec = ConvSpec {
                in_h: h,
                in_w: w,
                ..spec
            };
            let pool = PoolSpec {
                kind: PoolKind::Max,
                channels: k,
                in_h: spec.out_h(),
                in_w: spec.out_w(),
                kernel_h: pool_k,
                kernel_w: pool_k,
                stride_h: pool_s,
                stride_w: pool_s,
                pad_h: 0,
                pad_w: pool_pad,
            };
            if !cnnc::jit::conv_max_pool_fuses(&spec, &pool, isa) {
                assert_eq!(isa, cnnc::Isa::Sse, "{spec:?} then {pool:?}");
                continue;
            }
            let mut km = KernelModule::new().unwrap();
            km.set_isa(isa).unwrap();
            let pk = km.add_conv_max_pool(&spec, &pool).unwrap();
            conv_in_bounds(&spec, km, pk);
        }
    }
}

/// fc at every ISA level the host has: at batch > 1 the batch-row GEMM (the micro-kernels'
/// masked feature tails, batch-tile remainders, reductions in several chunks), at batch 1
/// the wide kernel at avx2 / avx512 (the input's masked last step, the masked last block's
/// residual and output, the last block's biases: the packed buffer's last floats) or the
/// f32x4 one, reading the input's last row and writing the output's last element against
/// the guard page.
#[test]
fn fc_stays_in_bounds() {
    for isa in cnnc::Isa::host_levels() {
        fc_stays_in_bounds_at(isa);
    }
}

fn fc_stays_in_bounds_at(isa: cnnc::Isa) {
    // Over 1 MB of weights at batch 1: chunks with software prefetches (which reach past the
    // buffers, harmlessly: a prefetch never faults).
    for (ci, co, n) in [
        (7, 3, 1),
        (33, 17, 2),
        (5, 9, 5),
        (4, 8, 1),
        (100, 2700, 1),
        (1030, 263, 1),
        (31, 45, 15),
        (2001, 33, 31),
        (3, 1, 3),
        (17, 33, 1),
        (2048 + 5, 17, 1),
        (16, 16, 1),
        (1, 1, 1),
        (9, 8, 1),
    ] {
        let mut spec = FcSpec::new(ci, co, n);
        spec.bias = true;
        spec.residual = true;
        let mut km = KernelModule::new().unwrap();
        km.set_isa(isa).unwrap();
        let pk = km.add_fc(&spec).unwrap();
        let packed = pk
            .pack_weights(&vals(spec.weight_len()), Some(&vals(co)))
            .unwrap();
        let code = km.finalize().unwrap();
        let kern = code.get(pk).unwrap();
        for after in [true, false] {
            let x = Guarded::from(&vals(spec.input_len()), after);
            let wp = Guarded::from(&packed, after);
            let r = Guarded::from(&vals(spec.output_len()), after);
            let mut out = Guarded::new(spec.output_len(), after, f32::NAN);
            kern.run_all(x.s(), wp.s(), Some(r.s()), out.m()).unwrap();
            assert!(out.s().iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn pool_elementwise_stay_in_bounds() {
    // At every level: max pools of horizontal stride 1 and 2 take the wide kernel at avx2
    // and avx512 (x86::pool), whose last group of a row loads under masks; rows of 33
    // and 40 floats end mid-vector at both widths.
    for (kind, isa) in [PoolKind::Max, PoolKind::Avg]
        .into_iter()
        .flat_map(|k| cnnc::Isa::host_levels().into_iter().map(move |i| (k, i)))
    {
        for &(c, h, w, k, s, p) in &[
            (2, 9, 9, 2, 2, 0),
            (3, 11, 13, 3, 2, 1),
            (1, 8, 17, 3, 1, 1),
            (2, 10, 10, 5, 3, 2),
            (2, 7, 33, 3, 2, 0),
            (2, 7, 40, 3, 1, 0),
            (1, 5, 37, 5, 2, 0),
            // avx512's even / odd lanes: `max_pool_even_odd_lanes_stay_in_bounds`.
        ] {
            let mut spec = PoolSpec::square(kind, c, h, k, s, p);
            spec.in_w = w;
            pool_in_bounds(&spec, isa);
        }
    }
    for (spec, isa) in [
        EltSpec::Add {
            inputs: 3,
            len: 13,
            relu: true,
        },
        EltSpec::Relu { len: 6 },
        EltSpec::ScaleShift {
            channels: 3,
            hw: 7,
            relu: false,
        },
        // The wide scale-shift (avx2 / avx512): masked tails after whole vectors and after
        // a loop of 4 vectors.
        EltSpec::ScaleShift {
            channels: 2,
            hw: 37,
            relu: true,
        },
        EltSpec::ScaleShift {
            channels: 3,
            hw: 75,
            relu: false,
        },
        // Planes in two halves (the last plane's second half, 256 + 275 floats, ends at
        // the guard page with a masked tail).
        EltSpec::ScaleShift {
            channels: 3,
            hw: 531,
            relu: true,
        },
        EltSpec::Softmax { channels: 5, hw: 3 },
        EltSpec::GlobalAvgPool { channels: 3, hw: 9 },
    ]
    .into_iter()
    .flat_map(|s| cnnc::Isa::host_levels().into_iter().map(move |i| (s, i)))
    {
        let mut km = KernelModule::new().unwrap();
        km.set_isa(isa).unwrap();
        let pk = km.add_elementwise(&spec).unwrap();
        let code = km.finalize().unwrap();
        let kern = code.get(pk).unwrap();
        let (ins, out_len): (Vec<usize>, usize) = match spec {
            EltSpec::Add { inputs, len, .. } => (vec![len; inputs], len),
            EltSpec::Relu { len } => (vec![len], len),
            EltSpec::ScaleShift { channels, hw, .. } => {
                (vec![channels * hw, channels, channels], channels * hw)
            }
            EltSpec::Softmax { channels, hw } => (vec![channels * hw], channels * hw),
            EltSpec::GlobalAvgPool { channels, hw } => (vec![channels * hw], channels),
        };
        for after in [true, false] {
            let bufs: Vec<Guarded> = ins
                .iter()
                .map(|&n| Guarded::from(&vals(n), after))
                .collect();
            let refs: Vec<&[f32]> = bufs.iter().map(|g| g.s()).collect();
            let mut out = Guarded::new(out_len, after, f32::NAN);
            kern.run_all(&refs, out.m()).unwrap();
            assert!(out.s().iter().all(|v| v.is_finite()));
        }
    }
}

/// avx512's even / odd lanes (max pools of 2- and 3-column windows at stride 2,
/// `x86::pool`): a group of 32 output columns reads 64 input columns, plus the 65th for
/// 3-column windows, and the groups at a row's ends load under masks. Widths 1-40 (groups
/// that end at, before and past the row's last float) and around 64 and 96, plane heights
/// of 1 to 7 rows, with and without padding, at every level.
#[test]
fn max_pool_even_odd_lanes_stay_in_bounds() {
    let widths = (1..=40).chain([47, 63, 64, 65, 66, 67, 95, 96, 97, 129]);
    for (isa, w) in cnnc::Isa::host_levels()
        .into_iter()
        .flat_map(|i| widths.clone().map(move |w| (i, w)))
    {
        for (h, k, p) in [(1, 2, 0), (3, 3, 0), (7, 3, 1), (4, 2, 1), (2, 3, 1)] {
            let mut spec = PoolSpec::square(PoolKind::Max, 2, h.max(k), k, 2, p);
            spec.in_w = w.max(k);
            pool_in_bounds(&spec, isa);
        }
    }
}

/// Runs the pool `spec` compiled at `isa` on every channel, its input, output and scratch
/// each against a guard page after and then before it: every output is written (no NaN
/// left) and no access faults.
fn pool_in_bounds(spec: &PoolSpec, isa: cnnc::Isa) {
    let mut km = KernelModule::new().unwrap();
    km.set_isa(isa).unwrap();
    let pk = km.add_pool(spec).unwrap();
    let code = km.finalize().unwrap();
    let kern = code.get(pk).unwrap();
    for after in [true, false] {
        let x = Guarded::from(&vals(spec.input_len()), after);
        let mut out = Guarded::new(spec.output_len(), after, f32::NAN);
        let mut scratch = Guarded::new(kern.scratch_len(), after, f32::NAN);
        kern.run(x.s(), out.m(), scratch.m(), 0..spec.channels)
            .unwrap();
        assert!(out.s().iter().all(|v| v.is_finite()), "{spec:?} at {isa}");
    }
}
