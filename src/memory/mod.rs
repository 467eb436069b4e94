//! What a run will need in memory, what the machine can give, and fallible allocation.
//!
//! A run whose estimate exceeds what is available is refused before any work, with the
//! figure and what it is for; the large buffers themselves are reserved with
//! `try_reserve`, so a wrong estimate still ends in an error, never an allocator abort.
use crate::error::{Error, Result};
use crate::ir::{stats::layer_stats, Graph, Op};
use std::fmt;

mod collapse;
mod huge_buf;

pub use collapse::{
    huge_chunk_counts, huge_collapse_supported, settle_huge_pages, HugeChunkCounts,
};
pub(crate) use collapse::{settle_later, RunGuard};
pub(crate) use huge_buf::forget_fault_costs;
pub use huge_buf::{release_spare_memory, HugeBuf, Mapping, HUGE_FAULT_LIMIT_US};

/// The engine a run uses: the interpreter keeps every activation of the whole batch;
/// the JIT keeps the activations of `chunk` images in its arena, plus packed weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Interp,
    Jit { chunk: usize },
}

/// A conservative estimate of a run's memory, in bytes, by what it is for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Need {
    pub parts: Vec<(String, u64)>,
}

impl Need {
    pub fn total(&self) -> u64 {
        self.parts
            .iter()
            .fold(0u64, |t, (_, b)| t.saturating_add(*b))
    }
    fn add(&mut self, what: impl Into<String>, bytes: u64) {
        if bytes > 0 {
            self.parts.push((what.into(), bytes));
        }
    }
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", bytes(self.total()))?;
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(what, b)| format!("{what} {}", bytes(*b)))
            .collect();
        if !parts.is_empty() {
            write!(f, " ({})", parts.join(", "))?;
        }
        Ok(())
    }
}

/// `1536` -> `1.5 KiB`, up to TiB; exact below 1 KiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Parses a size such as `512M`, `4G`, `1.5GiB` or a plain number of bytes.
pub fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("`{s}` is not a size; write e.g. 512M or 4G")),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size; write e.g. 512M or 4G"))?;
    if !(v.is_finite() && v * scale as f64 >= 1.0) {
        return Err(format!("`{s}` is not a size of at least one byte"));
    }
    Ok((v * scale as f64).min(u64::MAX as f64) as u64)
}

const F32: u64 = 4;

/// The memory of running `g` (shapes inferred) on `batch` images with `engine`.
/// Counts the input batch, the outputs, the weights (and, for the JIT, a packed copy,
/// four times the size for Winograd-eligible 3x3 convolutions), and the activations.
pub fn estimate(g: &Graph, batch: usize, engine: Engine) -> Need {
    let batch = batch as u64;
    let mut need = Need::default();
    let (mut weights, mut packed, mut activations) = (0u64, 0u64, 0u64);
    for id in g.dag.node_indices() {
        let node = g.node(id);
        let params = layer_stats(g, id).params.saturating_mul(F32);
        weights = weights.saturating_add(params);
        let packing = match &node.op {
            Op::Conv(c) if c.size.h == 3 && c.size.w == 3 => 4,
            Op::Conv(_) | Op::Fc(_) | Op::Gemm(_) => 1,
            _ => 0,
        };
        let layer_packed = params.saturating_mul(packing);
        // A packed buffer from 2 MiB up is a mapping of its own with a huge page of slack
        // (see `HugeBuf`): address space, counted against `ulimit -v`.
        let slack = if layer_packed >= HUGE_PAGE as u64 {
            HUGE_PAGE as u64
        } else {
            0
        };
        packed = packed.saturating_add(layer_packed).saturating_add(slack);
        if id != g.input {
            activations = activations.saturating_add((node.shape.len() as u64).saturating_mul(F32));
        }
    }
    let input = (g.input_shape().len() as u64).saturating_mul(F32);
    let outputs: u64 = g
        .outputs
        .iter()
        .map(|&o| g.node(o).shape.len() as u64 * F32)
        .sum();
    need.add("input batch", input.saturating_mul(batch));
    need.add("weights", weights);
    match engine {
        Engine::Interp => {
            need.add(
                format!("activations of {batch} image(s)"),
                activations.saturating_mul(batch),
            );
        }
        Engine::Jit { chunk } => {
            let chunk = (chunk as u64).clamp(1, batch.max(1));
            need.add("packed weights", packed);
            need.add(
                format!("activations of {chunk} image(s) per call"),
                activations.saturating_mul(chunk),
            );
            need.add("outputs", outputs.saturating_mul(batch));
        }
    }
    need
}

/// Bytes of decoding and resizing one image for an input of `c x h x w`: the resized
/// 8-bit image, its float copy and the tensor.
pub fn image_need(g: &Graph) -> u64 {
    let s = g.input_shape();
    let plane = (s.h as u64).saturating_mul(s.w as u64);
    plane.saturating_mul(3 + 3 * F32 + s.c as u64 * F32)
}

/// How much memory this process may still take, and where that figure comes from:
/// the smaller of `MemAvailable` (`/proc/meminfo`) and the room left under an
/// address-space limit (`ulimit -v`, `prlimit --as`). `None` when neither is known.
pub fn available() -> Option<(u64, &'static str)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let mem = meminfo
        .as_deref()
        .and_then(|m| kib_field(m, "MemAvailable:"))
        .map(|b| (b, "MemAvailable in /proc/meminfo"));
    let limits = std::fs::read_to_string("/proc/self/limits").ok();
    let status = std::fs::read_to_string("/proc/self/status").ok();
    let address_space = limits
        .as_deref()
        .and_then(address_space_limit)
        .map(|limit| {
            let used = status
                .as_deref()
                .and_then(|s| kib_field(s, "VmSize:"))
                .unwrap_or(0);
            (
                limit.saturating_sub(used),
                "the room left under the address-space limit (ulimit -v)",
            )
        });
    match (mem, address_space) {
        (Some(m), Some(a)) => Some(if a.0 < m.0 { a } else { m }),
        (m, a) => m.or(a),
    }
}

/// A `Name:   1234 kB` line of a /proc file, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// The soft `Max address space` of `/proc/self/limits`, unless unlimited.
fn address_space_limit(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    line["Max address space".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Refuses a run that needs more than `limit` (the user's `--max-memory`) or, without
/// one, more than [`available`] reports.
pub fn check(need: &Need, limit: Option<u64>) -> Result<()> {
    let (have, source) = match limit {
        Some(l) => (l, "the --max-memory limit"),
        None => match available() {
            Some(a) => a,
            None => return Ok(()),
        },
    };
    if need.total() > have {
        return Err(Error::Input(format!(
            "this run needs about {need}, more than the {} of {source}; use a smaller batch or input, or a smaller graph",
            bytes(have)
        )));
    }
    Ok(())
}

/// A vector of `n` copies of `value`, or an error naming `what` if the memory cannot
/// be reserved (instead of the allocator aborting the process).
pub fn try_vec<T: Clone>(n: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| out_of_memory(what, n, size_of::<T>()))?;
    v.resize(n, value);
    Ok(v)
}

/// `n` zeros, or an error naming `what` if the memory cannot be reserved. Unlike
/// `try_vec(n, 0.0, ..)` it writes nothing: the allocator hands out zeroed memory (pages
/// fresh from the system are zero), so a buffer filled afterwards, such as packed weights,
/// has its pages touched once instead of twice.
pub fn try_zeros(n: usize, what: &str) -> Result<Vec<f32>> {
    // Reserving (and releasing) first makes a failure an error, where `vec!` would abort.
    Vec::<f32>::new()
        .try_reserve_exact(n)
        .map_err(|_| out_of_memory(what, n, size_of::<f32>()))?;
    Ok(vec![0.0; n])
}

/// An empty vector with room for `n` floats, or an error naming `what`: for packed weights
/// written once, in order, padding included. Unlike [`try_zeros`] nothing is zeroed first:
/// in a process that compiles again, the allocator hands out memory it had before, which
/// calloc must clear (SqueezeNet's warm compile: 7% of its time in that `memset`).
pub fn try_with_capacity(n: usize, what: &str) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| out_of_memory(what, n, size_of::<f32>()))?;
    Ok(v)
}

/// The size of a transparent huge page on x86-64 (and most 64-bit) Linux.
const HUGE_PAGE: usize = 2 << 20;

/// Empties the process's caches of compiled code: the Cranelift functions and the x86
/// micro-kernels of the models compiled so far, by default up to 16 MiB each
/// (`CNNC_CODE_CACHE_MB` sets the first), thanks to which a model compiled again skips
/// Cranelift. For an embedder that compiles no more models for a while. Models compiled
/// later fill them again (`CNNC_CODE_CACHE=0`: the Cranelift functions never). Models
/// already compiled keep their own code.
pub fn release_compile_caches() {
    crate::jit::module::clear_code_caches();
}

/// The error for a failed reservation of `n` elements of `size` bytes.
pub fn out_of_memory(what: &str, n: usize, size: usize) -> Error {
    Error::Input(format!(
        "not enough memory for {what}: {} could not be allocated",
        bytes((n as u64).saturating_mul(size as u64))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_are_zero_and_absurd_sizes_an_error() {
        let v = try_zeros(300_000, "a test").unwrap();
        assert_eq!(v.len(), 300_000);
        assert!(v.iter().all(|x| x.to_bits() == 0));
        assert!(try_zeros(0, "a test").unwrap().is_empty());
        let err = try_zeros(usize::MAX / 2, "the weights").unwrap_err();
        assert!(
            err.to_string()
                .contains("not enough memory for the weights"),
            "{err}"
        );
    }

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("-1G").is_err());
        assert!(parse_bytes("4Q").is_err());
        assert_eq!(bytes(1000), "1000 bytes");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn a_failed_reservation_is_an_error() {
        let e = try_vec(usize::MAX / 8, 0f32, "the test").unwrap_err();
        assert!(e.to_string().starts_with("not enough memory for the test"));
    }
}
