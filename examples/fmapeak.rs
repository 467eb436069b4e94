//! The FMA peak of one core at 128, 256 and 512 bits, measured with a generated
//! multiply-add throughput loop (`cnnc::jit::x86::peak`): the ceiling every kernel in
//! BENCHMARKS.md is reported against.
//!
//! `cargo run --release --example fmapeak [rounds]`; then the 512-bit over 256-bit ratio the
//! cost models classify the host by (`cnnc::jit::host_zmm_fma`).
use cnnc::jit::x86::{peak, Width};

fn main() -> cnnc::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
    println!("FMA peak, one thread, best of {rounds} short runs:");
    for w in [Width::X128, Width::Y256, Width::Z512] {
        match peak::measure(w, 400_000 / w.lanes() as u64 * 4, rounds) {
            Ok(g) => println!("  {:>3} bits: {g:7.1} GFLOP/s", w.bytes() * 8),
            Err(e) => println!("  {:>3} bits: {e}", w.bytes() * 8),
        }
    }
    // What the cost models see: one measurement as `cnnc::jit::host_zmm_fma` makes it.
    let t = std::time::Instant::now();
    let ratio = cnnc::jit::host_fma::zmm_to_ymm_ratio();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let kind = cnnc::jit::host_zmm_fma();
    match ratio {
        Some(r) => println!("512-bit over 256-bit FMA rate {r:.2} ({ms:.1} ms): {kind:?}"),
        None => println!("no AVX-512: {kind:?}"),
    }
    Ok(())
}
