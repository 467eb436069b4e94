//! The FMA peak of one core at 128, 256 and 512 bits, measured with a generated
//! multiply-add throughput loop (`cnnc::jit::x86::peak`): the ceiling every kernel in
//! BENCHMARKS.md is reported against.
//!
//! `cargo run --release --example fmapeak [rounds]`
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
    Ok(())
}
