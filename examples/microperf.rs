//! Explores the x86 micro-kernel tile shapes on the pointwise GEMM `out[K][P] = W[K][C] x[C][P]`
//! (default: ResNet's 256 -> 64 at 56x56), driven from Rust through `MicroGemm::call`, against
//! the FMA peak measured in the same run. Prints GFLOP/s and the fraction of the peak.
//!
//! `cargo run --release --example microperf [C K P]`
use cnnc::jit::x86::{self, peak, MicroGemm, Width};
use cnnc::jit::KernelModule;
use cnnc::Isa;
use std::time::Instant;

/// A `rows x cols` kernel over `k` steps, weights at stride `w_stride`, x and out rows at
/// `ldx` / `ldo`, with bias and ReLU (`epilogue`) or none.
fn spec(
    w: Width,
    (rows, cols, k): (usize, usize, usize),
    (w_stride, ldx, ldo): (usize, usize, usize),
    epilogue: bool,
) -> MicroGemm {
    MicroGemm {
        width: w,
        rows,
        cols,
        k,
        w_stride,
        ldx,
        ldo,
        accumulate: false,
        bias: epilogue,
        bias_per_col: false,
        residual: false,
        relu: epilogue,
        clip: None,
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

fn run(w: Width, mr: usize, nv: usize, c: usize, k: usize, p: usize, panel: usize) -> f64 {
    let np = nv * w.lanes();
    let nmb = k.div_ceil(mr);
    let x: Vec<f32> = (0..c * p).map(|i| (i % 7) as f32 * 0.1).collect();
    let wt: Vec<f32> = (0..nmb * c * mr).map(|i| (i % 5) as f32 * 0.1).collect();
    let bias = vec![0.5f32; nmb * mr];
    let mut out = vec![0.0f32; nmb * mr * p];
    let mk = |cols: usize| spec(w, (mr, cols, c), (mr, p, p), true);
    let full = mk(np);
    let tail = (!p.is_multiple_of(np)).then(|| mk(p % np));
    let mut km = KernelModule::new().unwrap();
    let fid = km.add_micro_gemm(&full).unwrap();
    let tid = tail.map(|t| km.add_micro_gemm(&t).unwrap());
    let code = km.finalize().unwrap();
    let (full, tail) = (code.get(fid).unwrap(), tid.map(|t| code.get(t).unwrap()));
    let nt = p / np;
    let pt = panel.max(1);
    let packed_k = mk(np);
    let packed_k = MicroGemm {
        ldx: np,
        ..packed_k
    };
    let mut km2 = KernelModule::new().unwrap();
    let pid = km2.add_micro_gemm(&packed_k).unwrap();
    let packed_k = km2.finalize().unwrap().get(pid).unwrap();
    let mut xp = vec![0.0f32; c * np];
    let once = || {
        if panel == 0 {
            for t in 0..nt {
                for ci in 0..c {
                    xp[ci * np..(ci + 1) * np]
                        .copy_from_slice(&x[ci * p + t * np..ci * p + t * np + np]);
                }
                for mb in 0..nmb {
                    let o = &mut out[mb * mr * p + t * np..];
                    packed_k
                        .run(&xp, &wt[mb * c * mr..], o, None, Some(&bias[mb * mr..]))
                        .unwrap();
                }
            }
            return;
        }
        for p0 in (0..nt).step_by(pt) {
            for mb in 0..nmb {
                let wb = &wt[mb * c * mr..];
                let b = &bias[mb * mr..];
                for t in p0..(p0 + pt).min(nt) {
                    let o = &mut out[mb * mr * p + t * np..];
                    full.run(&x[t * np..], wb, o, None, Some(b)).unwrap();
                }
            }
        }
        if let Some(t) = &tail {
            for mb in 0..nmb {
                let o = &mut out[mb * mr * p + nt * np..];
                t.run(
                    &x[nt * np..],
                    &wt[mb * c * mr..],
                    o,
                    None,
                    Some(&bias[mb * mr..]),
                )
                .unwrap();
            }
        }
    };
    (2 * k * c * p) as f64 / best_seconds(once) / 1e9
}

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let (c, k, p) = if a.len() == 3 {
        (a[0], a[1], a[2])
    } else {
        (256, 64, 3136)
    };
    println!("pointwise GEMM {c} -> {k}, {p} pixels, one thread");
    if std::env::var_os("GOTO").is_some() {
        for isa in Isa::host_levels() {
            let Some(w) = x86::width(isa) else { continue };
            let pk = peak::measure(w, 200_000, 300).unwrap();
            let (mr, nv) = if w == Width::Z512 { (14, 2) } else { (6, 2) };
            let np = nv * w.lanes();
            println!(
                "{isa}: peak {pk:.1}; L1 k=256 {:.0}%",
                100.0 * l1(w, mr, nv, 256) / pk
            );
            for kk in [64, 256, 1024] {
                for sx in [true, false] {
                    let g = l1x(w, mr, nv, kk, sx);
                    println!("  k {kk} step_x {sx}: {g:6.1} {:3.0}%", 100.0 * g / pk);
                }
            }
            if std::env::var_os("L1ONLY").is_some() {
                continue;
            }
            let modes: Vec<usize> = std::env::var("MODES").map_or((0..6).collect(), |m| {
                m.split(',').map(|v| v.parse().unwrap()).collect()
            });
            for nc in [np, 2 * np, 4 * np] {
                for &mode in &modes {
                    for tf in [false, true] {
                        let g = goto(w, mr, nv, c, k, p, nc, mode, tf);
                        println!(
                            "  nc {nc:4} mode {mode} t-first {tf:5}: {g:6.1} GFLOP/s {:3.0}%",
                            100.0 * g / pk
                        );
                    }
                }
            }
        }
        return;
    }
    for isa in Isa::host_levels() {
        let Some(w) = x86::width(isa) else { continue };
        let pk = peak::measure(w, 200_000, 300).unwrap();
        println!("{isa}: peak {pk:.1} GFLOP/s");
        let tiles: &[(usize, usize)] = if w == Width::Z512 {
            &[(14, 2), (8, 3), (7, 4), (6, 4), (8, 2), (12, 2), (4, 6)]
        } else {
            &[(6, 2), (4, 3), (5, 2)]
        };
        for &(mr, nv) in tiles {
            for kk in [64, 128, 256] {
                let g = l1(w, mr, nv, kk);
                println!(
                    "  {mr:2} x {:2} L1-resident k={kk}: {g:6.1} GFLOP/s, {:3.0}% of peak",
                    nv * w.lanes(),
                    100.0 * g / pk
                );
            }
            for panel in [0usize, 2] {
                let g = run(w, mr, nv, c, k, p, panel);
                println!(
                    "  {mr:2} x {:2} (panel {:>4} tiles): {g:6.1} GFLOP/s, {:3.0}% of peak",
                    nv * w.lanes(),
                    panel.min(99999),
                    100.0 * g / pk
                );
            }
        }
    }
}

/// The micro-kernel alone on L1-resident operands (`k` steps, packed x), best of many short
/// batches: the ceiling of the tile shape.
#[allow(dead_code)]
pub fn l1(w: Width, mr: usize, nv: usize, k: usize) -> f64 {
    l1x(w, mr, nv, k, true)
}

/// [`l1`], or with `step_x` false every step reading the same x row (no x traffic at all).
pub fn l1x(w: Width, mr: usize, nv: usize, k: usize, step_x: bool) -> f64 {
    let np = nv * w.lanes();
    let ldx = if step_x { np } else { 0 };
    let s = spec(w, (mr, np, k), (mr, ldx, np), false);
    let mut km = KernelModule::new().unwrap();
    let id = km.add_micro_gemm(&s).unwrap();
    let k = km.finalize().unwrap().get(id).unwrap();
    let (nx, nw, no, _) = s.operand_lens();
    let (mut xb, wt, mut ob) = (
        aligned(nx, |_| 0.5),
        vec![0.25f32; nw],
        aligned(no, |_| 0.0),
    );
    let (x, out) = (xb.as_mut_slice(), ob.as_mut_slice());
    let mut best = f64::MAX;
    for _ in 0..2000 {
        let t = Instant::now();
        for _ in 0..20 {
            k.run(x, &wt, out, None, None).unwrap();
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    20.0 * s.flops() as f64 / best / 1e9
}

/// 64-byte aligned floats (as the runtime's arena), filled by `f`.
/// The best time of `once` over about a second, after one warm-up call.
fn best_seconds(mut once: impl FnMut()) -> f64 {
    once();
    let mut best = f64::MAX;
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < 1.0 {
        let t = Instant::now();
        once();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn aligned(len: usize, f: impl Fn(usize) -> f32) -> cnnc::runtime::arena::AlignedBuf {
    let mut b = cnnc::runtime::arena::AlignedBuf::zeroed(len, "microperf").unwrap();
    for (i, v) in b.as_mut_slice().iter_mut().enumerate() {
        *v = f(i);
    }
    b
}

/// Goto-style experiment: per block of `nc` pixels, copy the input's rows into a packed panel
/// `[column][c][np]`, then every channel block over every column of the panel from the
/// packed copy. `mode`: 0 = input pre-packed once (compute ceiling), 1 = pack per block,
/// 2 = pack per block + prefetch (T1) the next block's rows between calls, 3 = same with T0.
#[allow(clippy::too_many_arguments)]
pub fn goto(
    w: Width,
    mr: usize,
    nv: usize,
    c: usize,
    k: usize,
    p: usize,
    nc: usize,
    mode: usize,
    order_t_first: bool,
) -> f64 {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
    let np = nv * w.lanes();
    assert!(p.is_multiple_of(np) && nc.is_multiple_of(np));
    let nmb = k.div_ceil(mr);
    let mut xb = aligned(c * p, |i| (i % 7) as f32 * 0.1);
    let x = xb.as_mut_slice();
    let wt: Vec<f32> = (0..nmb * c * mr).map(|i| (i % 5) as f32 * 0.1).collect();
    let bias = vec![0.5f32; nmb * mr];
    let mut ob = aligned(nmb * mr * p, |_| 0.0);
    let out = ob.as_mut_slice();
    let mk = |rows: usize| spec(w, (rows, np, c), (mr, np, p), true);
    let mut km = KernelModule::new().unwrap();
    let fid = km.add_micro_gemm(&mk(mr)).unwrap();
    let tid = (!k.is_multiple_of(mr)).then(|| km.add_micro_gemm(&mk(k % mr)).unwrap());
    let code = km.finalize().unwrap();
    let full = code.get(fid).unwrap();
    let tail = tid.map(|t| code.get(t).unwrap());
    let nt = p / np;
    let per = nc / np;
    let mut pre = if mode == 0 || mode >= 4 {
        aligned(c * p, |_| 0.0)
    } else {
        aligned(1, |_| 0.0)
    };
    let mut pkb = aligned(c * nc, |_| 0.0);
    let pack = |dst: &mut [f32], x: &[f32], t0: usize, cols: usize| {
        for ci in 0..c {
            for t in 0..cols {
                let s = ci * p + (t0 + t) * np;
                dst[(t * c + ci) * np..(t * c + ci + 1) * np].copy_from_slice(&x[s..s + np]);
            }
        }
    };
    if mode == 0 || mode >= 4 {
        for t0 in (0..nt).step_by(per) {
            let cols = per.min(nt - t0);
            pack(&mut pre.as_mut_slice()[t0 * c * np..], x, t0, cols);
        }
    }
    let lines = nc * 4 / 64;
    let pre_s: &[f32] = pre.as_mut_slice();
    let once = || {
        for t0 in (0..nt).step_by(per) {
            let cols = per.min(nt - t0);
            let panel: &[f32] = if mode == 0 || mode >= 4 {
                &pre_s[t0 * c * np..]
            } else {
                pack(pkb.as_mut_slice(), x, t0, cols);
                pkb.as_mut_slice()
            };
            // Prefetches of the next block: c rows x `lines` lines, spread over the calls.
            let next = t0 + per;
            let calls = nmb * cols;
            let total = if mode >= 2 && next < nt { c * lines } else { 0 };
            let mut issued = 0;
            let mut call = 0;
            let mut body = |mb: usize, t: usize, out: &mut [f32]| {
                call += 1;
                let upto = total * call / calls;
                while issued < upto {
                    let (row, line) = (issued / lines, issued % lines);
                    let a = if mode >= 4 {
                        // Pre-packed: the next panel is contiguous.
                        pre_s[next * c * np..].as_ptr().wrapping_add(issued * 16) as *const i8
                    } else {
                        x[row * p + next * np..].as_ptr().wrapping_add(line * 16) as *const i8
                    };
                    // SAFETY: prefetch is a hint.
                    #[allow(unsafe_code)]
                    unsafe {
                        if mode == 3 || mode == 5 {
                            _mm_prefetch::<_MM_HINT_T0>(a)
                        } else {
                            _mm_prefetch::<_MM_HINT_T1>(a)
                        }
                    }
                    issued += 1;
                }
                let o = &mut out[mb * mr * p + (t0 + t) * np..];
                let kern = if mb + 1 == nmb {
                    tail.as_ref().unwrap_or(&full)
                } else {
                    &full
                };
                kern.run(
                    &panel[t * c * np..],
                    &wt[mb * c * mr..],
                    o,
                    None,
                    Some(&bias[mb * mr..]),
                )
                .unwrap();
            };
            if order_t_first {
                for t in 0..cols {
                    for mb in 0..nmb {
                        body(mb, t, out);
                    }
                }
            } else {
                for mb in 0..nmb {
                    for t in 0..cols {
                        body(mb, t, out);
                    }
                }
            }
        }
    };
    (2 * k * c * p) as f64 / best_seconds(once) / 1e9
}
