//! Explores the x86 micro-kernel tile shapes on the pointwise GEMM `out[K][P] = W[K][C] x[C][P]`
//! (default: ResNet's 256 -> 64 at 56x56), driven from Rust through `MicroGemm::call`, against
//! the FMA peak measured in the same run. Prints GFLOP/s and the fraction of the peak.
//!
//! `cargo run --release --example microperf [C K P]`
use cnnc::jit::x86::{self, peak, MicroGemm, Width};
use cnnc::jit::KernelModule;
use cnnc::Isa;
use std::time::Instant;

fn run(w: Width, mr: usize, nv: usize, c: usize, k: usize, p: usize, panel: usize) -> f64 {
    let np = nv * w.lanes();
    let nmb = k.div_ceil(mr);
    let x: Vec<f32> = (0..c * p).map(|i| (i % 7) as f32 * 0.1).collect();
    let wt: Vec<f32> = (0..nmb * c * mr).map(|i| (i % 5) as f32 * 0.1).collect();
    let bias = vec![0.5f32; nmb * mr];
    let mut out = vec![0.0f32; nmb * mr * p];
    let mk = |cols: usize| MicroGemm {
        width: w,
        rows: mr,
        cols,
        k: c,
        w_stride: mr,
        ldx: p,
        ldo: p,
        accumulate: false,
        bias: true,
        bias_per_col: false,
        residual: false,
        relu: true,
        clip: None,
        prefetch_every: 0,
        prefetch_w: 0,
    };
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
    let mut once = || {
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
    once();
    let mut best = f64::MAX;
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < 1.0 {
        let t = Instant::now();
        once();
        best = best.min(t.elapsed().as_secs_f64());
    }
    (2 * k * c * p) as f64 / best / 1e9
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
    for isa in Isa::host_levels() {
        let Some(w) = x86::width(isa) else { continue };
        let pk = peak::measure(w, 200_000, 300).unwrap();
        println!("{isa}: peak {pk:.1} GFLOP/s");
        let tiles: &[(usize, usize)] = if w == Width::Z512 {
            &[(14, 2), (8, 3), (6, 4), (8, 2), (12, 2), (4, 6)]
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
    let np = nv * w.lanes();
    let s = MicroGemm {
        width: w,
        rows: mr,
        cols: np,
        k,
        w_stride: mr,
        ldx: np,
        ldo: np,
        accumulate: false,
        bias: false,
        bias_per_col: false,
        residual: false,
        relu: false,
        clip: None,
        prefetch_every: 0,
        prefetch_w: 0,
    };
    let mut km = KernelModule::new().unwrap();
    let id = km.add_micro_gemm(&s).unwrap();
    let k = km.finalize().unwrap().get(id).unwrap();
    let (nx, nw, no, _) = s.operand_lens();
    let (x, wt, mut out) = (vec![0.5f32; nx], vec![0.25f32; nw], vec![0.0f32; no]);
    let mut best = f64::MAX;
    for _ in 0..2000 {
        let t = Instant::now();
        for _ in 0..20 {
            k.run(&x, &wt, &mut out, None, None).unwrap();
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    20.0 * s.flops() as f64 / best / 1e9
}
