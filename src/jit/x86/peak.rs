//! The FMA-throughput loop: the machine's multiply-add peak per core at 128, 256 and 512 bits,
//! against which every kernel is reported (`cargo run --release --example fmapeak`).
//!
//! `fn(iters: u64)`: `iters` times, [`CHAINS`] independent `vfmadd231ps acc_i, a, b` on
//! registers only (no memory access), enough independent chains to cover the FMA latency
//! on both FMA ports.
use iced_x86::code_asm::rdi;

use super::vasm::{asm_err, Vasm, Width};
use std::time::Instant;

use crate::error::Result;
use crate::jit::KernelModule;
use crate::options::Isa;

/// Independent accumulators (latency 4 x 2 ports needs 8; 14 also covers 5-6 cycle parts).
pub const CHAINS: usize = 14;

/// The loop's machine code.
pub fn fma_loop(width: Width) -> Result<Vec<u8>> {
    let mut v = Vasm::new(width)?;
    for r in 0..CHAINS + 2 {
        v.zero(r)?;
    }
    let mut top = v.a.create_label();
    v.a.set_label(&mut top).map_err(asm_err)?;
    for r in 0..CHAINS {
        v.fma(r, CHAINS, CHAINS + 1)?;
    }
    v.a.dec(rdi).map_err(asm_err)?;
    v.a.jnz(top).map_err(asm_err)?;
    v.a.vzeroupper().map_err(asm_err)?;
    v.a.ret().map_err(asm_err)?;
    v.finish()
}

/// Floating-point operations of one call with `iters` iterations.
pub fn flops(width: Width, iters: u64) -> f64 {
    (iters as f64) * (CHAINS * width.lanes() * 2) as f64
}

/// Measures the peak on the calling thread: GFLOP/s, best of `rounds` timed calls of the
/// loop with `iters` iterations each. `Err` if the host cannot run `width`.
pub fn measure(width: Width, iters: u64, rounds: usize) -> Result<f64> {
    Ok(measure_each(&[width], iters, rounds)?[0])
}

/// [`measure`] for several widths in one module, their rounds interleaved (so that a noisy
/// neighbour or a frequency change weighs on every width alike): GFLOP/s per width, in
/// order.
pub fn measure_each(widths: &[Width], iters: u64, rounds: usize) -> Result<Vec<f64>> {
    let mut km = KernelModule::new()?;
    let mut ids = Vec::with_capacity(widths.len());
    for &width in widths {
        let isa = match width {
            Width::X128 => Isa::Sse,
            Width::Y256 => Isa::Avx2,
            Width::Z512 => Isa::Avx512,
        };
        isa.check_host()?;
        ids.push(km.add_micro(1, &fma_loop(width)?, "fma peak loop")?);
    }
    let code = km.finalize()?;
    let mut loops = Vec::with_capacity(ids.len());
    for id in ids {
        let ptr = code.micro_ptr(id)?;
        // SAFETY: the loop reads and writes only vector registers and `rdi` (its argument),
        // runs `iters` iterations (at least one) and returns; `check_host` made sure the CPU
        // has its instructions. `code` keeps the memory alive for the calls.
        #[allow(unsafe_code)]
        let f: extern "C" fn(u64) = unsafe { std::mem::transmute(ptr) };
        loops.push(f);
    }
    let iters = iters.max(1);
    let mut best = vec![f64::MAX; loops.len()];
    for _ in 0..rounds.max(1) {
        for (f, best) in loops.iter().zip(&mut best) {
            let t = Instant::now();
            f(iters);
            *best = best.min(t.elapsed().as_secs_f64());
        }
    }
    Ok(widths
        .iter()
        .zip(best)
        .map(|(&w, secs)| flops(w, iters) / secs / 1e9)
        .collect())
}
