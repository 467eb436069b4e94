//! How fast the host's 512-bit multiply-adds are next to its 256-bit ones. Hosts with
//! AVX-512 come two ways: recent Xeons and Zen 5 have full-width FMA units (a zmm FMA does
//! twice a ymm one's work in the same time), Zen 4 splits each zmm FMA into two 256-bit
//! halves (the same FLOP/s at both widths). The AVX-512 kernels are the fastest either way;
//! what changes is the balance of multiply-adds against memory traffic that the cost models
//! weigh (Winograd, which reads more weights, against the direct convolution, which does
//! more multiply-adds): on a split host the direct kernel computes at half the rate they
//! assume at avx512.

use std::sync::OnceLock;

use super::x86::{peak, Width};

/// The host's 512-bit FMA throughput next to its 256-bit one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZmmFma {
    /// Twice the 256-bit FLOP/s (two full-width units), or no AVX-512 at all.
    Full,
    /// About the 256-bit FLOP/s: each zmm FMA runs as two 256-bit halves (AMD Zen 4).
    Split,
}

/// Below this ratio of 512-bit to 256-bit FLOP/s the host splits zmm FMAs (the ratio is
/// bimodal: 1.00 on Zen 4, 1.85-2.0 on Xeons and Zen 5).
const SPLIT_BELOW: f64 = 1.5;

/// Loop iterations of one timed call: 14 FMAs each, 5-20 us a call.
const ITERS: u64 = 4_000;

/// Timed calls per width (interleaved); the best counts. The first calls also wake the
/// upper halves of the vector units, which some CPUs power down when idle.
const ROUNDS: usize = 6;

/// `CNNC_ZMM_FMA=full|split` (a measuring knob), else measured once per process with the
/// FMA-throughput loop of [`peak`] (0.2-0.4 ms). A host without AVX-512, or a failed
/// measurement, counts as [`ZmmFma::Full`]: the cost models' avx512 figures are then never
/// used, or stay the ones measured on full-width hosts.
pub fn host_zmm_fma() -> ZmmFma {
    if crate::knobs::is("CNNC_ZMM_FMA", "full") {
        return ZmmFma::Full;
    }
    if crate::knobs::is("CNNC_ZMM_FMA", "split") {
        return ZmmFma::Split;
    }
    static MEASURED: OnceLock<ZmmFma> = OnceLock::new();
    *MEASURED.get_or_init(|| match zmm_to_ymm_ratio() {
        Some(ratio) if ratio < SPLIT_BELOW => ZmmFma::Split,
        _ => ZmmFma::Full,
    })
}

/// The host's 512-bit FLOP/s over its 256-bit FLOP/s, if it has AVX-512.
pub fn zmm_to_ymm_ratio() -> Option<f64> {
    let rates = peak::measure_each(&[Width::Y256, Width::Z512], ITERS, ROUNDS).ok()?;
    Some(rates[1] / rates[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two kinds of host are far apart; a ratio near the threshold means the
    /// measurement, not the host, is off.
    /// (Three tries: the other tests' threads share the two cores.)
    #[test]
    fn the_ratio_is_one_of_the_two_kinds() {
        let kind = |ratio: f64| (0.8..1.25).contains(&ratio) || (1.7..2.3).contains(&ratio);
        let mut ratios = Vec::new();
        for _ in 0..3 {
            match zmm_to_ymm_ratio() {
                None => return,
                Some(ratio) if kind(ratio) => return,
                Some(ratio) => ratios.push(ratio),
            }
        }
        panic!("512-bit over 256-bit FMA rates {ratios:.2?}");
    }
}
