//! The weight-major pointwise GEMM made for a pool of 2, 3 or 5 threads
//! (`KernelModule::set_threads`: its units in pixel parts, one per thread, channel block by
//! channel block within a part; `PixelGemm::in_parts`) gives the bits of the kernel made for
//! one thread, at every ISA level, and the pool's part `p` of its units computes every
//! output channel of one run of pixels. The choice of which layers go in parts is read from
//! `CNNC_WEIGHT_MAJOR_PARTS` and `CNNC_PARTS_CONTRACTING` when a kernel is made, so this
//! file holds one test (its own process: no other test sees the knobs set): the default
//! choice first, then a contracting layer without its parts (`CNNC_PARTS_CONTRACTING=0`),
//! then every weight-major layer (`=1`), which takes the 48 + 1 pixel columns and 1 MB
//! weights too.
mod common;
use cnnc::jit::*;
#[cfg(unix)]
use common::guarded::Guarded;
use common::{assert_bits, xorshift_vec as rand_vec};
use std::time::Duration;

/// `(c, h, w, k, stride)`: a 1x1 conv of `c` channels in, `k` out, from `h x w` pixels.
type Shape = (usize, usize, usize, usize, usize);

/// A 1x1 conv `c -> k` over `h x w` with the `i`-th of a cycle of epilogues (bias, ReLU,
/// residual, clip).
fn pointwise(i: usize, (c, h, w, k, stride): Shape) -> ConvSpec {
    let mut s = ConvSpec::square(c, h, k, 1, stride, 0);
    s.in_w = w;
    s.bias = i.is_multiple_of(2);
    s.relu = i % 3 != 1;
    s.residual = i % 4 < 2;
    s.clip = (i % 5 == 3).then_some(Clip {
        min: -0.25,
        max: 0.5,
    });
    s
}

/// Checks `shapes` (with what the parts should be at avx2 / avx512: `Some(true)`, each of
/// the pool's parts of the units a run of pixels with all their channels; `Some(false)`,
/// not (one order for all pixels); `None`, either) against the kernel made for one thread.
/// Returns how many part checks ran.
fn check(shapes: &[(Shape, Option<bool>)], pools: &[ThreadPool]) -> usize {
    let mut checked = 0;
    for (i, &(shape, local)) in shapes.iter().enumerate() {
        let s = pointwise(i, shape);
        let (c, k) = (shape.0, shape.3);
        let px = s.out_h() * s.out_w();
        let seed = 8100 + 10 * i as u64;
        let x = rand_vec(s.input_len(), seed);
        let scale = 1.0 / (c as f32).sqrt();
        let wt: Vec<f32> = (rand_vec(s.weight_len(), seed + 1).iter())
            .map(|v| v * scale)
            .collect();
        let b = s.bias.then(|| rand_vec(k, seed + 2));
        let r = s.residual.then(|| rand_vec(s.output_len(), seed + 3));
        for isa in cnnc::Isa::host_levels() {
            let m = ConvMethod::PointwiseGemm;
            let made = |threads: usize, spec: &ConvSpec| {
                let mut km = KernelModule::new().unwrap();
                km.set_isa(isa).unwrap();
                km.set_threads(threads);
                let p = km.add_conv_with(spec, m).unwrap();
                let packed = p.pack_weights(&wt, b.as_deref()).unwrap();
                (km.finalize().unwrap().get(p).unwrap(), packed)
            };
            let (k1, packed) = without_l2_parts(|| made(1, &s));
            let mut want = vec![f32::NAN; s.output_len()];
            k1.run_all(&x, &packed, r.as_deref(), &mut want).unwrap();
            // Made for 5 threads too over 1024+ pixels (20+ columns: several short parts,
            // columns not a multiple of the parts), run on the smaller pools as well.
            // And for one thread (in parts only where its input outgrows L2).
            let counts: &[usize] = if px >= 1024 {
                &[1, 2, 3, 5]
            } else {
                &[1, 2, 3]
            };
            for &parts in counts {
                let what = format!("{s:?} at {isa:?} made for {parts} threads");
                let (kp, packed_p) = made(parts, &s);
                assert_bits(&packed_p, &packed, &format!("{what}: packed"));
                let mut out = vec![f32::NAN; s.output_len()];
                kp.run_all(&x, &packed, r.as_deref(), &mut out).unwrap();
                assert_bits(&out, &want, &what);
                // Unit by unit on a NaN-poisoned output: at most a tile each (14 x 49), and
                // together every output.
                let units = kp.work_units();
                // NaN scratch (a strided 1x1 copies its sampled input there).
                let mut scratch = vec![f32::NAN; kp.scratch_len()];
                let scratch_on =
                    |pool: &ThreadPool| vec![f32::NAN; kp.scratch_len_on(pool.threads())];
                let mut out = vec![f32::NAN; s.output_len()];
                let mut written = 0;
                for u in 0..units {
                    kp.run(&x, &packed, r.as_deref(), &mut out, &mut scratch, u..u + 1)
                        .unwrap();
                    let now = out.iter().filter(|v| !v.is_nan()).count();
                    assert!(now - written <= 14 * 49, "{what}: unit {u}");
                    written = now;
                }
                assert_bits(&out, &want, &format!("{what}, unit by unit"));
                for pool in pools {
                    let mut out = vec![f32::NAN; s.output_len()];
                    kp.run_parallel(
                        pool,
                        &x,
                        &packed,
                        r.as_deref(),
                        &mut out,
                        &mut scratch_on(pool),
                    )
                    .unwrap();
                    assert_bits(&out, &want, &format!("{what}, {} threads", pool.threads()));
                }
                #[cfg(unix)]
                guarded_runs(&kp, [&x, &packed], r.as_deref(), pools, &want, &what);
                // The pool's parts of the units, each on its own NaN output.
                if let Some(local) = local.filter(|_| isa != cnnc::Isa::Sse && parts > 1) {
                    checked += 1;
                    let mut next = 0;
                    let mut runs = true;
                    for p in 0..parts {
                        let mut out = vec![f32::NAN; s.output_len()];
                        let range = units * p / parts..units * (p + 1) / parts;
                        kp.run(&x, &packed, r.as_deref(), &mut out, &mut scratch, range)
                            .unwrap();
                        let done = |q: usize| (0..k).all(|ki| !out[ki * px + q].is_nan());
                        let none = |q: usize| (0..k).all(|ki| out[ki * px + q].is_nan());
                        let end = (next..px).find(|&q| !done(q)).unwrap_or(px);
                        runs &= end > next && (0..next).chain(end..px).all(none);
                        next = end;
                    }
                    runs &= next == px;
                    assert_eq!(runs, local, "{what}: parts by pixels");
                }
                if s.residual && m.reads_residual_in_place(&s, isa) {
                    let ip = ConvSpec {
                        residual_in_place: true,
                        ..s
                    };
                    let (kip, _) = made(parts, &ip);
                    // Unit by unit too: each output is read (its residual) and stored by
                    // one unit, so a unit that computed a tile another unit computes (a
                    // padding unit of a short part, say) would add its residual twice.
                    let mut out = r.clone().unwrap();
                    let mut scratch = vec![f32::NAN; kip.scratch_len()];
                    for u in 0..kip.work_units() {
                        kip.run(&x, &packed, None, &mut out, &mut scratch, u..u + 1)
                            .unwrap();
                    }
                    assert_bits(&out, &want, &format!("{what}, in place, unit by unit"));
                    for pool in pools {
                        let mut out = r.clone().unwrap();
                        kip.run_parallel(
                            pool,
                            &x,
                            &packed,
                            None,
                            &mut out,
                            &mut vec![f32::NAN; kip.scratch_len_on(pool.threads())],
                        )
                        .unwrap();
                        let t = pool.threads();
                        assert_bits(&out, &want, &format!("{what}, in place, {t} threads"));
                    }
                }
            }
        }
    }
    checked
}

/// `make()` with an L2 too large for any expansion to go in L2-sized pixel parts
/// (`CNNC_L2_KB`; restored after): the reference the kernels in parts must match.
fn without_l2_parts<T>(make: impl FnOnce() -> T) -> T {
    let set = std::env::var("CNNC_L2_KB").ok();
    std::env::set_var("CNNC_L2_KB", "1048576");
    let made = make();
    match set {
        Some(v) => std::env::set_var("CNNC_L2_KB", v),
        None => std::env::remove_var("CNNC_L2_KB"),
    }
    made
}

/// `kern` on buffers against guard pages (after their ends, then before their starts): all
/// units on one thread, unit by unit, and on each pool, every run giving `want`. Any load
/// or store outside the buffers, whatever the parts' order of the units, crashes the test
/// (the output prefetches are `prefetchw`, which cannot fault).
#[cfg(unix)]
fn guarded_runs(
    kern: &ConvKernel,
    [x, packed]: [&[f32]; 2],
    r: Option<&[f32]>,
    pools: &[ThreadPool],
    want: &[f32],
    what: &str,
) {
    for after in [true, false] {
        let (x, wp) = (Guarded::from(x, after), Guarded::from(packed, after));
        let r = r.map(|r| Guarded::from(r, after));
        let r = r.as_ref().map(|r| r.s());
        let nan = |n: usize| Guarded::new(n, after, f32::NAN);
        let units = kern.work_units();
        let (mut out, mut scratch) = (nan(want.len()), nan(kern.scratch_len()));
        kern.run(x.s(), wp.s(), r, out.m(), scratch.m(), 0..units)
            .unwrap();
        assert_bits(out.s(), want, &format!("{what}, guarded ({after})"));
        let mut out = nan(want.len());
        for u in 0..units {
            kern.run(x.s(), wp.s(), r, out.m(), scratch.m(), u..u + 1)
                .unwrap();
        }
        let what = format!("{what}, guarded ({after})");
        assert_bits(out.s(), want, &format!("{what}, unit by unit"));
        for pool in pools {
            let t = pool.threads();
            let (mut out, mut scratch) = (nan(want.len()), nan(kern.scratch_len_on(t)));
            kern.run_parallel(pool, x.s(), wp.s(), r, out.m(), scratch.m())
                .unwrap();
            assert_bits(out.s(), want, &format!("{what}, {t} threads"));
        }
    }
}

#[test]
fn weight_major_parts_give_the_bits_of_one_part() {
    let pools = [2, 3].map(|n| ThreadPool::new(n, Duration::from_micros(20)));
    // A part check per shape with an expected layout, wide level and thread count the
    // kernel is made for (2, 3; 5 over 1024+ pixels): per level, 18 in the first group
    // below, 12 in the second and 2 in the third, whichever wide levels the host has.
    let wide = (cnnc::Isa::host_levels().into_iter())
        .filter(|&i| i != cnnc::Isa::Sse)
        .count();
    // The default choice: parts where the plane has 16+ pixels per input channel, or where
    // a quarter of the channels go out or fewer (a bottleneck's reduction). 4x expansions
    // over 1024+ pixels (avx512 8 x 48, output prefetches; 23 and 24 columns), more output
    // channels than pixels over 14x14 (a last column of 4 pixels, a channel tail) and
    // 13x17; 3 tile columns at avx2 and avx512 at least, and 3x23 (at avx512 the third
    // part only the partial column of 5 pixels); the reduction 1024 -> 256 at 14x14. Then
    // layers the choice leaves in one order (under 16 pixels per channel in): 14x14 with
    // 1024 channels in and 512 out (half, not a quarter), an expansion at 14x14; 5x5, 7x7
    // and 17x2 (`None`: left unchecked here, see below).
    let shapes = [
        ((32, 33, 33, 130, 1), Some(true)),
        ((64, 56, 20, 256, 1), Some(true)),
        ((12, 14, 14, 300, 1), Some(true)),
        ((8, 13, 17, 250, 1), Some(true)),
        ((4, 3, 23, 250, 1), Some(true)),
        ((1024, 14, 14, 256, 1), Some(true)),
        ((1024, 14, 14, 512, 1), Some(false)),
        ((256, 14, 14, 1024, 1), Some(false)),
        ((2100, 5, 5, 130, 1), None),
        ((130, 7, 7, 61, 1), None),
        ((77, 17, 2, 50, 1), None),
    ];
    assert_eq!(check(&shapes, &pools), 18 * wide, "part checks");
    // `CNNC_PARTS_CONTRACTING=0`: the contracting layer by channel blocks over all pixels.
    std::env::set_var("CNNC_PARTS_CONTRACTING", "0");
    let n = check(&[((1024, 14, 14, 256, 1), Some(false))], &pools);
    std::env::remove_var("CNNC_PARTS_CONTRACTING");
    assert_eq!(n, 2 * wide, "part checks");
    // Every weight-major layer in parts where it has as many columns as threads: 14x14 with
    // 1 MB of weights (prefetched) and a 4-pixel last column, four columns of 48 + 1 pixels
    // (avx512; a channel tail), a 4x expansion over 13x13 and ResNet-50's 128 -> 512 at
    // 28x28 (25 columns of 14 x 32, output prefetches), a strided 1x1 into 14x14 (the
    // sampled input). Every kernel also runs on guarded buffers. 7x7 and 17x2 again
    // (`None`, as their columns depend on the level: at avx512 7x7 is one column of 48 + 1,
    // too few for the threads, and 17x2 goes in 2 parts; at avx2's 16-pixel columns 7x7
    // has 4 and 17x2 3, so both go in parts).
    std::env::set_var("CNNC_WEIGHT_MAJOR_PARTS", "1");
    let shapes = [
        ((1024, 14, 14, 256, 1), Some(true)),
        ((256, 14, 14, 300, 1), Some(true)),
        ((512, 14, 14, 523, 1), Some(true)),
        ((40, 13, 13, 161, 1), Some(true)),
        ((128, 28, 28, 512, 1), Some(true)),
        ((300, 28, 28, 400, 2), Some(true)),
        ((130, 7, 7, 61, 1), None),
        ((77, 17, 2, 50, 1), None),
    ];
    let n = check(&shapes, &pools);
    std::env::remove_var("CNNC_WEIGHT_MAJOR_PARTS");
    assert_eq!(n, 12 * wide, "part checks");
    // A 32 KB L2 (`CNNC_L2_KB`): expansions whose input, a thread's share of it, is over 16
    // KB go in parts of 8 KB per thread (`PixelGemm::l2_parts_per_thread`), made for one
    // thread too, against the kernel in one part: 33x33 (139 KB of input: 18 parts at one
    // thread, 69 columns at avx2), 56x20 with a residual (286 KB: 36 parts of 70 columns
    // at avx2; at avx512 too many for its 24 columns, left in the thread parts), 13x13
    // (27 KB: 4 parts for one thread, 11 columns at avx2, 6 at avx512). Part checks: made
    // for 2, 3 and 5 threads, of the first two.
    std::env::set_var("CNNC_L2_KB", "32");
    let shapes = [
        ((32, 33, 33, 130, 1), Some(true)),
        ((64, 56, 20, 256, 1), Some(true)),
        ((40, 13, 13, 161, 1), None),
    ];
    let n = check(&shapes, &pools);
    std::env::remove_var("CNNC_L2_KB");
    assert_eq!(n, 6 * wide, "part checks");
}
