//! What a run will need in memory, what the machine can give, and fallible allocation.
//!
//! A run whose estimate exceeds what is available is refused before any work, with the
//! figure and what it is for; the large buffers themselves are reserved with
//! `try_reserve`, so a wrong estimate still ends in an error, never an allocator abort.
use crate::error::{Error, Result};
use crate::ir::{stats::layer_stats, Graph, Op};
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

/// Floats that a run streams through again and again (packed weights, the activation
/// arena): from 2 MiB up, in an anonymous mapping of their own that starts on a 2 MiB
/// boundary and is faulted in 2 MiB at a time, each chunk as a transparent huge page
/// (`madvise(MADV_HUGEPAGE)`, honoured where the system's THP mode is `madvise` or
/// `always`) unless huge pages have lately been the slower way ([`FaultCosts`]); below
/// 2 MiB, a plain vector.
///
/// Why huge pages: a large network's packed weights are read once per run from memory,
/// as long sequential streams, and on a virtual machine of the kind we measure on, one
/// core streams 4 KiB pages at 7-8 GB/s against 10-15 GB/s for 2 MiB pages (a plain
/// AVX-512 sweep of 400 MB): the hardware prefetchers stop at every 4 KiB boundary and
/// each TLB miss walks both the guest's and the host's page tables. Memory that the
/// allocator hands out cannot be relied on to be huge (it reuses pages it has touched
/// before), hence a mapping per buffer.
///
/// Why not always: on a guest whose free memory the host takes back (free page reporting:
/// the guest reports free blocks of 2 MiB and more, the host discards them), a huge page
/// is such a block, and its first touch makes the host fault in 512 pages of its own: 7-30
/// ms per 2 MiB on the Zen 5 host against 0.1-0.5 ms for a block freed moments before and
/// about 1 ms for 512 small pages, which the guest takes from its smaller free blocks (never
/// reported). VGG-19's first compile after the host idled took 7.9-12.4 s (session 14).
///
/// `CNNC_HUGE_PAGES=0` in the environment keeps every buffer a plain vector,
/// `CNNC_HUGE_PAGES=1` advises whole mappings huge and leaves the faults to the first
/// writer (as before session 14), and `CNNC_HUGE_FAULT_US=n` is the cost of a huge 2 MiB
/// fault above which small pages are tried (default [`HUGE_FAULT_LIMIT_US`]); measuring
/// knobs, read at each buffer.
///
/// Full chunks faulted in on small pages are collapsed into huge pages later, off the
/// compile's path ([`Collapses`]).
///
/// A dropped buffer's mapping is kept for a later buffer of the same size ([`Mapping`]),
/// unless some of it went to small pages or it is over what [`Spares`] keeps.
pub enum HugeBuf {
    Small(Vec<f32>),
    Mapped {
        map: Mapping,
        /// Bytes from the mapping's start to the first float (a 2 MiB boundary).
        offset: usize,
        len: usize,
    },
}

impl HugeBuf {
    /// `len` zeros (a fresh mapping is zero; a mapped one is faulted in here, a zero
    /// written per page or per huge page: [`fault_in`]).
    pub fn zeroed(len: usize, what: &str) -> Result<Self> {
        match Self::mapping(len, what)? {
            Some((mut buf, fresh)) => {
                if !fresh {
                    buf.fill(0.0);
                }
                Ok(buf)
            }
            None => Ok(HugeBuf::Small(try_zeros(len, what)?)),
        }
    }

    /// `v`'s floats, copied into a mapping when they are large enough.
    pub fn from_vec(v: Vec<f32>, what: &str) -> Result<Self> {
        match Self::mapping(v.len(), what)? {
            Some((mut buf, _)) => {
                buf.copy_from_slice(&v);
                Ok(buf)
            }
            None => Ok(HugeBuf::Small(v)),
        }
    }

    /// A mapping for `len` floats whose every float the caller writes (packed weights
    /// written in order, padding included): fresh (zero) or a dropped buffer's (its
    /// floats); `None` where [`HugeBuf::from_vec`] would keep a vector.
    pub fn to_overwrite(len: usize, what: &str) -> Result<Option<Self>> {
        Ok(Self::mapping(len, what)?.map(|(buf, _)| buf))
    }

    /// A mapping for `len` floats, unless they are too few (or huge pages are turned off)
    /// to be worth one, and whether it is fresh (zero, faulted in here) rather than the
    /// mapping of a dropped buffer, whose pages are in and hold its floats.
    fn mapping(len: usize, what: &str) -> Result<Option<(Self, bool)>> {
        let bytes = len.saturating_mul(size_of::<f32>());
        if bytes < HUGE_PAGE {
            return Ok(None);
        }
        // The knobs are read only for a buffer large enough to be mapped.
        let small_only = std::env::var("CNNC_HUGE_PAGES").is_ok_and(|v| v.trim() == "small");
        let faults = match crate::knobs::forced("CNNC_HUGE_PAGES") {
            Some(false) => return Ok(None),
            Some(true) => None,
            None if small_only => Some((&ALWAYS_SMALL, 0)),
            None => Some((
                &FAULT_COSTS,
                crate::knobs::number("CNNC_HUGE_FAULT_US").unwrap_or(HUGE_FAULT_LIMIT_US),
            )),
        };
        if let Some(map) = bytes.checked_add(HUGE_PAGE).and_then(Spares::take) {
            return Ok(Some((Self::at_huge_boundary(map, len), false)));
        }
        let mut buf = Self::mapped(len, what)?;
        if let (Some((costs, limit_us)), HugeBuf::Mapped { map, offset, .. }) = (faults, &mut buf) {
            // A mapping with chunks on small pages (faulted in while huge pages were slow)
            // is not kept for reuse: it would pin that moment's choice on every later
            // buffer of its size.
            let small = fault_in(map.bytes_mut(), *offset, bytes, costs, limit_us);
            map.spare = small.is_empty();
            if !small.is_empty() && !crate::knobs::off("CNNC_HUGE_COLLAPSE") {
                map.owner = Collapses::lock().add(&small);
            }
        }
        Ok(Some((buf, true)))
    }

    /// A zeroed mapping for `len` floats advised huge as a whole, its pages not yet
    /// faulted in.
    fn mapped(len: usize, what: &str) -> Result<Self> {
        let bytes = len.saturating_mul(size_of::<f32>());
        // One huge page more than needed, to start the floats on a 2 MiB boundary.
        let map = bytes
            .checked_add(HUGE_PAGE)
            .and_then(|n| memmap2::MmapMut::map_anon(n).ok())
            .ok_or_else(|| out_of_memory(what, len, size_of::<f32>()))?;
        #[cfg(target_os = "linux")]
        {
            // Advice only: where THP is off or unsupported the pages stay small.
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        Ok(Self::at_huge_boundary(map, len))
    }

    /// `len` floats from the first 2 MiB boundary of `map` (at least `len` floats and
    /// a huge page long).
    fn at_huge_boundary(map: memmap2::MmapMut, len: usize) -> Self {
        let offset = (HUGE_PAGE - map.as_ptr() as usize % HUGE_PAGE) % HUGE_PAGE;
        HugeBuf::Mapped {
            map: Mapping {
                map: Some(map),
                spare: true,
                owner: 0,
            },
            offset,
            len,
        }
    }
}

/// A [`HugeBuf`]'s mapping, which goes to the process's spares when the buffer is dropped
/// ([`Spares`]) if `spare` (all its chunks on huge pages, or never chosen chunk by chunk).
pub struct Mapping {
    /// Always `Some` but while it is being dropped.
    map: Option<memmap2::MmapMut>,
    spare: bool,
    /// Its key in [`Collapses`] while chunks of it wait there (0: none).
    owner: u64,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.owner != 0 {
            Collapses::forget(self.owner);
        }
        if let Some(map) = self.map.take().filter(|_| self.spare) {
            Spares::keep(map);
        }
    }
}

impl std::ops::Deref for Mapping {
    type Target = memmap2::MmapMut;
    fn deref(&self) -> &memmap2::MmapMut {
        self.map
            .as_ref()
            .expect("a mapping is present until dropped")
    }
}

impl Mapping {
    /// The mapping, writable. Not `DerefMut`: safe code outside this module could then
    /// swap the memory of two buffers under their [`Collapses`] keys, and a collapse
    /// queued for one would change the page policy of memory that is no longer its.
    fn bytes_mut(&mut self) -> &mut memmap2::MmapMut {
        self.map
            .as_mut()
            .expect("a mapping is present until dropped")
    }
}

/// Mappings of dropped buffers (packed weights, workspaces), kept for a later buffer of
/// the same size, most recently dropped last. A model compiled again, or another with
/// buffers of the same sizes, then takes memory whose pages are already in, where a fresh
/// mapping is faulted in 2 MiB (or 4 KiB) at a time: on the Zen 5 VM that cost 0.1-0.5 ms
/// per 2 MiB when the host still backs the block and 7-30 ms when it does not, which made
/// vgg_cifar's warm packing vary from 3 to 13 ms (session 15). What the allocator does
/// for smaller buffers (glibc keeps freed chunks below its mmap threshold for the next
/// `malloc`), bounded by [`SPARE_BYTES`] (the oldest go back to the system first).
struct Spares {
    maps: Vec<memmap2::MmapMut>,
    bytes: usize,
}

/// Bytes of mappings [`Spares`] keeps at most (`CNNC_SPARE_MB=n`: `n` MiB, 0 none; a
/// measuring knob): a small network's packed weights and workspace (vgg_cifar: ~30 MB).
const SPARE_BYTES: usize = 64 << 20;

static SPARES: std::sync::Mutex<Spares> = std::sync::Mutex::new(Spares {
    maps: Vec::new(),
    bytes: 0,
});

impl Spares {
    fn lock() -> std::sync::MutexGuard<'static, Spares> {
        // Every change is made whole under the lock: a panic elsewhere leaves it usable.
        SPARES.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A kept mapping of exactly `bytes`, the most recently dropped.
    fn take(bytes: usize) -> Option<memmap2::MmapMut> {
        Self::lock().take_from(bytes)
    }

    fn take_from(&mut self, bytes: usize) -> Option<memmap2::MmapMut> {
        let i = self.maps.iter().rposition(|m| m.len() == bytes)?;
        self.bytes -= bytes;
        Some(self.maps.remove(i))
    }

    /// Keeps `map` for a later buffer; the oldest kept ones that this puts over the
    /// limit are unmapped (outside the lock), or `map` itself if it alone is over it.
    fn keep(map: memmap2::MmapMut) {
        let limit = crate::knobs::number::<usize>("CNNC_SPARE_MB")
            .map_or(SPARE_BYTES, |mb| mb.saturating_mul(1 << 20));
        let released = Self::lock().keep_in(map, limit);
        drop(released);
    }

    /// Adds `map` (unless it alone is over `limit` bytes), and returns what is no longer
    /// kept under `limit`: `map` if it is over it, then the oldest kept ones (all of them
    /// where the limit was lowered to 0).
    fn keep_in(&mut self, map: memmap2::MmapMut, limit: usize) -> Vec<memmap2::MmapMut> {
        let mut released = Vec::new();
        if map.len() > limit {
            released.push(map);
        } else {
            self.bytes += map.len();
            self.maps.push(map);
        }
        // Stops at the end at the latest, where nothing is kept.
        let mut n = 0;
        while self.bytes > limit {
            self.bytes -= self.maps[n].len();
            n += 1;
        }
        released.extend(self.maps.drain(..n));
        released
    }
}

/// Chunks of live mappings that [`fault_in`] gave small pages (while huge faults were
/// slow), waiting to be collapsed into huge pages in place (`MADV_COLLAPSE`, Linux 6.1+),
/// oldest first, each with its mapping's key. A dropped [`Mapping`] removes its chunks
/// and waits out a collapse in flight in it before it is unmapped, so no collapse touches
/// memory that is not (or no longer) a live buffer's.
///
/// Why: the small chunks cost the runs up to 1-2% (streaming 4 KiB pages), for the
/// model's life. `MADV_COLLAPSE` keeps the contents and is transparent to threads reading
/// or writing the chunk (they wait at a page fault while it copies), as khugepaged's
/// collapses are; but it copies the 2 MiB into a new huge page and must get that page from
/// the host (7-30 ms where the guest had reported it free), so it is done off the
/// compile's path: by a background thread while no run is in progress ([`settle_later`]),
/// or by the caller ([`settle_huge_pages`]). `CNNC_HUGE_COLLAPSE=0` (read at each buffer) leaves the
/// chunks small.
///
/// The queue's lock is held only to change it, never across a system call (a collapse
/// takes 1-30 ms, more under compaction): a collapse marks its mapping `in_flight` and
/// runs unlocked, and only the drop of that one mapping waits for it ([`COLLAPSE_ENDED`]).
/// Collapses run one at a time ([`COLLAPSING`]), so one mark is enough.
struct Collapses {
    chunks: std::collections::VecDeque<(u64, usize)>,
    /// The next mapping's key (from 1).
    next_owner: u64,
    /// The key of the mapping a collapse is under way in (0: none).
    in_flight: u64,
}

static COLLAPSES: std::sync::Mutex<Collapses> = std::sync::Mutex::new(Collapses {
    chunks: std::collections::VecDeque::new(),
    next_owner: 1,
    in_flight: 0,
});
/// Signalled (under the [`COLLAPSES`] lock) when a collapse clears `in_flight`.
static COLLAPSE_ENDED: std::sync::Condvar = std::sync::Condvar::new();
/// Held for the whole of a collapse: the background thread and [`settle_huge_pages`]
/// callers take turns.
static COLLAPSING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Full chunks that [`fault_in`] gave small pages, collapsed chunks, and chunks whose
/// collapse failed, since the process started.
static SMALL_CHUNKS: AtomicU64 = AtomicU64::new(0);
static COLLAPSED: AtomicU64 = AtomicU64::new(0);
static COLLAPSE_FAILED: AtomicU64 = AtomicU64::new(0);

/// Whether chunks may be collapsed here, probed once: the kernel knows `MADV_COLLAPSE`
/// (Linux 6.1+; `madvise(0, 0, advice)` returns 0 iff the advice is supported, touching
/// nothing) and the system's THP mode is not `never` (`MADV_COLLAPSE` ignores that mode,
/// so the admin's `never` is respected here). Where not, nothing is queued and no page
/// policy changes. An error after that is one chunk's (EINVAL too: a range with no page
/// in, or write-protected after a fork), not the process's.
pub fn huge_collapse_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        #[cfg(target_os = "linux")]
        {
            let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
            thp.is_ok_and(|mode| !mode.contains("[never]")) && sys::collapse_known()
        }
        #[cfg(not(target_os = "linux"))]
        false
    })
}

impl Collapses {
    fn lock() -> std::sync::MutexGuard<'static, Collapses> {
        // Every change is made whole under the lock.
        COLLAPSES.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues the chunks at `starts` (2 MiB each, of one mapping); the mapping's key (0:
    /// none queued, where collapses are not supported: [`huge_collapse_supported`]).
    fn add(&mut self, starts: &[usize]) -> u64 {
        if starts.is_empty() || !huge_collapse_supported() {
            return 0;
        }
        let owner = self.next_owner;
        self.next_owner += 1;
        self.chunks.extend(starts.iter().map(|&at| (owner, at)));
        owner
    }

    /// Removes the chunks of mapping `owner`.
    fn remove(&mut self, owner: u64) {
        self.chunks.retain(|&(o, _)| o != owner);
    }

    /// Removes the chunks of mapping `owner` (being dropped) from the process's queue and
    /// waits for a collapse under way in it to end: after this no collapse touches the
    /// mapping, and it can be unmapped.
    fn forget(owner: u64) {
        let mut queue = Self::lock();
        queue.remove(owner);
        while queue.in_flight == owner {
            queue = COLLAPSE_ENDED
                .wait(queue)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// What became of the 2 MiB chunks of packed weights and arenas that were faulted in on
/// small pages because huge pages were slow to fault in (docs/runtime.md, "Faulted in by
/// the chunk"), since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HugeChunkCounts {
    /// Chunks faulted in on small pages.
    pub small: u64,
    /// Of those, collapsed into huge pages since.
    pub collapsed: u64,
    /// Collapses that failed (no huge page to be had, or unsupported).
    pub failed: u64,
    /// Chunks of live buffers waiting for a collapse.
    pub pending: usize,
}

/// The process's [`HugeChunkCounts`].
pub fn huge_chunk_counts() -> HugeChunkCounts {
    HugeChunkCounts {
        small: SMALL_CHUNKS.load(Ordering::Relaxed),
        collapsed: COLLAPSED.load(Ordering::Relaxed),
        failed: COLLAPSE_FAILED.load(Ordering::Relaxed),
        pending: Collapses::lock().chunks.len(),
    }
}

/// Collapses every chunk now waiting ([`Collapses`]) into huge pages, on the caller's
/// thread; how many it collapsed. For an embedder that wants its models at full speed
/// before serving, at a time of its choosing (each chunk may take the host 7-30 ms to
/// back; a run reading a chunk meanwhile waits for it). The background thread
/// ([`settle_later`]) does the same while no run is in progress.
pub fn settle_huge_pages() -> usize {
    let mut warm = WarmPage::new();
    let mut n = 0;
    while let Some(done) = collapse_next(&mut warm, &|| true) {
        n += usize::from(done);
    }
    n
}

/// The background collapse's state: whether its thread is started, and the condition it
/// waits on (chunks queued), signalled by [`settle_later`].
static SETTLER: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
static SETTLER_WAKE: std::sync::Condvar = std::sync::Condvar::new();
/// Set by the thread once its start-up (the only part of it that allocates: the knob's
/// read, thread-local set-up) is done; [`settle_later`] waits for it, so that no run in
/// progress (a steady `run_into` allocates nothing: tests/jit_run_no_alloc.rs) sees the
/// thread allocate.
static SETTLER_READY: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
static SETTLER_READY_WAKE: std::sync::Condvar = std::sync::Condvar::new();
/// Runs in progress in the process (`Model::run` and the like, [`RunGuard`]), and runs
/// started since it started.
static RUNS: AtomicUsize = AtomicUsize::new(0);
static RUNS_STARTED: AtomicU64 = AtomicU64::new(0);

/// How long no run must have been in progress before the background thread collapses a
/// chunk: a gap between requests, not the moment between two runs of a loop (there a
/// collapse would delay the next run, by up to 20 ms of a 28 ms ResNet-50 run).
const QUIET: Duration = Duration::from_millis(5);

/// While runs are seen, the background thread looks again after this, doubling up to
/// [`MAX_RECHECK`]: the runs' ends do not wake it (that cost every run of a loop a futex
/// wake and the thread a turn on a core where a pool worker spins, only to find no quiet
/// 5 ms), so after the last run it starts within this.
const RECHECK: Duration = Duration::from_millis(10);
const MAX_RECHECK: Duration = Duration::from_secs(1);

/// Counts a run (or a compile) in progress while it lives: the background collapse waits
/// for none to be, so that no run waits for a chunk it reads (a collapse takes 1-30 ms) or
/// shares its CPU, and no compile shares its CPUs. Two atomics, nothing else.
pub(crate) struct RunGuard(());

impl RunGuard {
    pub(crate) fn new() -> Self {
        RUNS_STARTED.fetch_add(1, Ordering::Relaxed);
        RUNS.fetch_add(1, Ordering::SeqCst);
        RunGuard(())
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        RUNS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wakes the process's background thread (started on the first call) to collapse the
/// chunks waiting, if any: after a compile, and after a run that made a workspace. The
/// thread collapses a chunk at a time while no run is in progress: between a server's
/// requests, not during a loop of runs back to back (for that, [`settle_huge_pages`]).
pub(crate) fn settle_later() {
    // The lock is held only briefly, to change the queue (then the thread is awake).
    if COLLAPSES.try_lock().is_ok_and(|q| q.chunks.is_empty()) {
        return;
    }
    let mut started = SETTLER.lock().unwrap_or_else(|p| p.into_inner());
    if !*started {
        let spawned = std::thread::Builder::new()
            .name("cnnc-settle".into())
            .spawn(|| {
                if crate::knobs::forced("CNNC_HUGE_COLLAPSE_IDLE") == Some(true) {
                    lower_own_priority();
                }
                let mut warm = WarmPage::new();
                *SETTLER_READY.lock().unwrap_or_else(|p| p.into_inner()) = true;
                SETTLER_READY_WAKE.notify_all();
                let mut recheck = RECHECK;
                loop {
                    wait_for_work();
                    let started = RUNS_STARTED.load(Ordering::Relaxed);
                    let quiet = || {
                        RUNS.load(Ordering::SeqCst) == 0
                            && RUNS_STARTED.load(Ordering::Relaxed) == started
                    };
                    std::thread::sleep(QUIET);
                    if quiet() {
                        collapse_next(&mut warm, &quiet);
                        recheck = RECHECK;
                    } else {
                        std::thread::sleep(recheck);
                        recheck = (recheck * 2).min(MAX_RECHECK);
                    }
                }
            });
        // Without the thread the chunks stay small (the runs are correct either way).
        *started = spawned.is_ok();
        if *started {
            // The caller (a compile, or a run that made its workspace) waits the thread's
            // start-up out, under SETTLER, which the start-up does not take.
            let mut ready = SETTLER_READY.lock().unwrap_or_else(|p| p.into_inner());
            while !*ready {
                ready = SETTLER_READY_WAKE
                    .wait(ready)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
    }
    SETTLER_WAKE.notify_all();
}

/// Returns once chunks wait (checked under [`SETTLER`], which [`settle_later`] holds to
/// wake the thread).
fn wait_for_work() {
    let mut started = SETTLER.lock().unwrap_or_else(|p| p.into_inner());
    while Collapses::lock().chunks.is_empty() {
        started = SETTLER_WAKE
            .wait(started)
            .unwrap_or_else(|p| p.into_inner());
    }
}

/// Puts the calling thread at `SCHED_IDLE` (Linux): it runs only on a CPU nothing else
/// wants. Best effort; a measuring knob (`CNNC_HUGE_COLLAPSE_IDLE=1`): a collapse holds
/// the process's mmap lock, and at idle priority the thread was starved with it held
/// while other processes ran (VGG-19 runs of 1.1-1.4 s against 0.07, load 3).
fn lower_own_priority() {
    #[cfg(target_os = "linux")]
    sys::idle_priority();
}

/// A scratch huge page that a collapse has the host back first: the page `MADV_COLLAPSE`
/// allocates is most often the one just freed on this CPU (the per-CPU lists keep huge
/// pages too), so its host fault (7-30 ms where the guest had reported the block free)
/// happens here, where no run waits for it, and the copy under the mmap lock is a copy.
/// (Measured: 27 against 3-6 ms per collapse, load 5; docs/jit-history.md.)
struct WarmPage {
    map: Option<memmap2::MmapMut>,
}

impl WarmPage {
    fn new() -> Self {
        let map = memmap2::MmapMut::map_anon(2 * HUGE_PAGE).ok();
        #[cfg(target_os = "linux")]
        if let Some(m) = &map {
            let _ = m.advise(memmap2::Advice::HugePage);
        }
        WarmPage { map }
    }

    /// Faults in the scratch huge page and frees it.
    fn warm(&mut self) {
        let Some(map) = &mut self.map else { return };
        let at = (HUGE_PAGE - map.as_ptr() as usize % HUGE_PAGE) % HUGE_PAGE;
        map[at] = 1;
        #[cfg(target_os = "linux")]
        #[allow(unsafe_code)]
        // SAFETY: a huge page inside this mapping, which only `warm` uses and nothing
        // borrows now; what it held (a 1) is not needed.
        let _ = unsafe { sys::madvise(map.as_ptr() as usize + at, HUGE_PAGE, libc::MADV_DONTNEED) };
    }
}

/// Collapses the oldest waiting chunk: `Some(true)` if it is now a huge page,
/// `Some(false)` if that failed or `go_on` said no after the scratch page was faulted in
/// (which can take the host 30 ms: a run may have started), `None` if none waits.
fn collapse_next(warm: &mut WarmPage, go_on: &dyn Fn() -> bool) -> Option<bool> {
    if Collapses::lock().chunks.is_empty() {
        return None;
    }
    warm.warm();
    if !go_on() {
        return Some(false);
    }
    let _turn = COLLAPSING.lock().unwrap_or_else(|p| p.into_inner());
    let at = {
        let mut queue = Collapses::lock();
        let (owner, at) = queue.chunks.pop_front()?;
        queue.in_flight = owner;
        at
    };
    // The chunk's mapping stays live until `in_flight` is cleared: its drop waits for that
    // (`Collapses::forget`).
    let result = collapse(at);
    Collapses::lock().in_flight = 0;
    COLLAPSE_ENDED.notify_all();
    let counter = match result {
        Collapse::Done => &COLLAPSED,
        Collapse::Failed(_) => &COLLAPSE_FAILED,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    Some(result == Collapse::Done)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Collapse {
    Done,
    /// This chunk, with the errno: no huge page to be had (ENOMEM, EAGAIN), its pages
    /// busy or changed meanwhile, or not collapsible (EINVAL: none in, write-protected
    /// after a fork, ...). It is advised small again.
    Failed(i32),
}

/// Advises the 2 MiB chunk at `at` huge again (undoing [`fault_in`]'s `MADV_NOHUGEPAGE`)
/// and collapses it into a huge page in place; where that fails, advises it small again,
/// so that khugepaged does not collapse it later at a time of its own (during runs).
/// Meant for a chunk of a live [`HugeBuf`] mapping (marked `in_flight` in [`Collapses`],
/// which its drop waits out), where only
/// `collapse_next` changes the page advice; called only where
/// [`huge_collapse_supported`].
fn collapse(at: usize) -> Collapse {
    #[cfg(target_os = "linux")]
    {
        #[allow(unsafe_code)]
        // SAFETY: `madvise` with these advices never changes memory contents, whatever the
        // range: at worst it fails (ENOMEM where nothing is mapped). That the chunk is a
        // live buffer's (the caller's side) keeps it from changing the page policy of
        // memory that is not ours.
        let done = unsafe {
            // Advice only (where it fails, so does the collapse).
            let _ = sys::madvise(at, HUGE_PAGE, libc::MADV_HUGEPAGE);
            let done = sys::madvise(at, HUGE_PAGE, sys::MADV_COLLAPSE);
            if done.is_err() {
                let _ = sys::madvise(at, HUGE_PAGE, libc::MADV_NOHUGEPAGE);
            }
            done
        };
        match done {
            Ok(()) => Collapse::Done,
            Err(errno) => Collapse::Failed(errno),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = at;
        Collapse::Failed(0)
    }
}

/// The system calls of the collapse, the crate's only ones outside `jit`.
#[cfg(target_os = "linux")]
mod sys {
    /// `MADV_COLLAPSE` (Linux 6.1+): the UAPI value, 25 on every architecture, spelled out
    /// here because libc defines it for glibc targets only (not musl).
    pub(super) const MADV_COLLAPSE: libc::c_int = 25;
    #[cfg(target_env = "gnu")]
    const _: () = assert!(MADV_COLLAPSE == libc::MADV_COLLAPSE);

    /// `madvise(advice)` on the `len` bytes at `at` (whole pages); the errno on failure.
    ///
    /// # Safety
    /// The range is mapped by this process for the call's duration, and the advice keeps
    /// what it holds (`MADV_HUGEPAGE`, `MADV_NOHUGEPAGE`; `MADV_COLLAPSE`, where the kernel copies the pages
    /// into a huge page and maps it in their place, any thread touching the range
    /// meanwhile waiting at a page fault, as with khugepaged), or is `MADV_DONTNEED` on
    /// memory whose contents no one needs (anonymous private memory then reads as zero).
    /// No reference is made to the range, so threads may hold `&` or `&mut` to it.
    #[allow(unsafe_code)]
    pub(super) unsafe fn madvise(
        at: usize,
        len: usize,
        advice: libc::c_int,
    ) -> Result<(), libc::c_int> {
        debug_assert!(matches!(
            advice,
            libc::MADV_HUGEPAGE | libc::MADV_NOHUGEPAGE | MADV_COLLAPSE | libc::MADV_DONTNEED
        ));
        // SAFETY: the caller's guarantee.
        match unsafe { libc::madvise(at as *mut libc::c_void, len, advice) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL)),
        }
    }

    /// Whether the kernel knows `MADV_COLLAPSE`: `madvise` on an empty range returns 0 iff
    /// the advice is supported (madvise(2)), and touches no memory.
    pub(super) fn collapse_known() -> bool {
        #[allow(unsafe_code)]
        // SAFETY: an empty range at 0: nothing is advised.
        let known = unsafe { libc::madvise(std::ptr::null_mut(), 0, MADV_COLLAPSE) };
        known == 0
    }

    /// Puts the calling thread at `SCHED_IDLE`: it runs only on a CPU nothing else wants.
    pub(super) fn idle_priority() {
        let param = libc::sched_param { sched_priority: 0 };
        #[allow(unsafe_code)]
        // SAFETY: a system call on the calling thread (0) with a valid parameter.
        let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    }
}

/// Gives the mappings kept for reuse ([`Spares`], up to 64 MiB of resident memory after
/// the models that used them are dropped) back to the system; for an embedder that
/// compiles no more models for a while. Buffers dropped later are kept again
/// (`CNNC_SPARE_MB=0`: never).
pub fn release_spare_memory() {
    let released = {
        let mut spares = Spares::lock();
        spares.bytes = 0;
        std::mem::take(&mut spares.maps)
    };
    // Unmapped outside the lock.
    drop(released);
}

/// Empties the process's caches of compiled code: the Cranelift functions and the x86
/// micro-kernels of the models compiled so far, by default up to 16 MiB each
/// (`CNNC_CODE_CACHE_MB` sets the first), thanks to which a model compiled again skips
/// Cranelift. For an embedder that compiles no more models for a while. Models compiled
/// later fill them again (`CNNC_CODE_CACHE=0`: the Cranelift functions never). Models
/// already compiled keep their own code.
pub fn release_compile_caches() {
    crate::jit::module::clear_code_caches();
}

/// The size of a small page on x86-64 Linux (a write per `SMALL_PAGE` faults in every
/// page of a range; on a system with larger pages it faults each one several times over).
const SMALL_PAGE: usize = 4096;

/// The cost of faulting in a huge page, in microseconds, above which [`HugeBuf`] tries
/// small pages. On the Zen 5 VM (session 14, load 4-6, docs/jit-history.md): a huge page
/// the host still backs 0.08-0.5 ms, 512 small pages 0.7-1 ms (one chunk in six or so
/// 8-9 ms), a huge page the host must fault in again 7-30 ms.
pub const HUGE_FAULT_LIMIT_US: u32 = 2000;

/// What faulting in the last 2 MiB chunk took, as one huge page and as 512 small ones,
/// in microseconds (0: not measured since the last [`FaultCosts::forget`]). The choice
/// is made chunk by chunk ([`choose_huge`]), so a compile pays for at most a huge page or
/// two before it turns to the cheaper kind, whatever the host's memory is doing.
#[derive(Debug, Default)]
pub(crate) struct FaultCosts {
    huge: AtomicU32,
    small: AtomicU32,
}

/// The process's fault costs, forgotten at the start of each compile and of each new
/// workspace ([`forget_fault_costs`]): what the host's memory costs changes within seconds (a
/// block freed by a previous model is cheap until the guest reports it, about 2 s later).
static FAULT_COSTS: FaultCosts = FaultCosts::new();

/// Costs under which every full chunk is faulted in on small pages, as after a first
/// compile while huge pages were slow: `CNNC_HUGE_PAGES=small` (a measuring knob, for
/// A/B runs of [`settle_huge_pages`] and the like). Huge pages are never measured here, so
/// they stay "slower" than any small chunk.
static ALWAYS_SMALL: FaultCosts = FaultCosts {
    huge: AtomicU32::new(u32::MAX),
    small: AtomicU32::new(0),
};

/// Starts the process's choice of page size afresh (at the start of a compile, and before
/// a run's new workspace: `Model::take_workspace`).
pub(crate) fn forget_fault_costs() {
    FAULT_COSTS.forget();
}

impl FaultCosts {
    pub(crate) const fn new() -> Self {
        FaultCosts {
            huge: AtomicU32::new(0),
            small: AtomicU32::new(0),
        }
    }

    /// Costs as if measured (for tests).
    #[cfg(test)]
    fn with(huge_us: u32, small_us: u32) -> Self {
        FaultCosts {
            huge: AtomicU32::new(huge_us),
            small: AtomicU32::new(small_us),
        }
    }

    pub(crate) fn forget(&self) {
        self.huge.store(0, Ordering::Relaxed);
        self.small.store(0, Ordering::Relaxed);
    }

    /// Adds a chunk's time to the running average of its kind (weight 1/4: one small chunk
    /// in six or so lands on memory the host must fault in again and takes 8-9 ms against
    /// 0.7; one such chunk should not turn the choice, two or three in a row should).
    /// Threads packing at once may lose each other's updates: an estimate either way.
    fn record(&self, huge: bool, took: Duration) {
        let us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        let cost = if huge { &self.huge } else { &self.small };
        let old = cost.load(Ordering::Relaxed);
        let new = if old == 0 {
            us
        } else {
            ((3 * u64::from(old) + u64::from(us)) / 4) as u32
        };
        // At least 1: 0 means "not measured".
        cost.store(new.max(1), Ordering::Relaxed);
    }
}

/// Whether the next 2 MiB chunk is faulted in as a huge page, given the last costs of
/// each kind (0: unknown): yes while huge pages cost at most `limit_us`, or while small
/// ones cost at least half as much (then the small pages would only lose the run its
/// huge-page speed); otherwise small pages, until they prove as slow.
pub(crate) fn choose_huge(huge_us: u32, small_us: u32, limit_us: u32) -> bool {
    huge_us <= limit_us || (small_us != 0 && small_us.saturating_mul(2) >= huge_us)
}

/// Faults in `bytes` of `map` from `start` (a 2 MiB boundary; the mapping advised huge as
/// a whole), 2 MiB at a time: a chunk that [`choose_huge`] gives to small pages is advised
/// `MADV_NOHUGEPAGE` and written once per small page, a huge one once (where the kernel
/// has no huge page to give, the writer faults in the rest). Each full chunk's time goes
/// into `costs`. Only bytes of the floats are written, and with the zero they
/// hold. The addresses of the full chunks given small pages (none: every chunk huge; a
/// partial last chunk, which has small pages anyway, is not listed).
fn fault_in(
    map: &mut memmap2::MmapMut,
    start: usize,
    bytes: usize,
    costs: &FaultCosts,
    limit_us: u32,
) -> Vec<usize> {
    let end = start + bytes;
    let mut at = start;
    let mut small = Vec::new();

    while at < end {
        let next = (at + HUGE_PAGE).min(end);
        let huge = choose_huge(
            costs.huge.load(Ordering::Relaxed),
            costs.small.load(Ordering::Relaxed),
            limit_us,
        );
        #[cfg(target_os = "linux")]
        if !huge {
            // Advice only: a kernel without it gives what the mapping's advice gives.
            let _ = map.advise_range(memmap2::Advice::NoHugePage, at, next - at);
        }
        let t = Instant::now();
        // A partial last chunk may not hold a huge page (the mapping's end): every page.
        let full = next - at == HUGE_PAGE;
        let step = if huge && full { HUGE_PAGE } else { SMALL_PAGE };
        for p in (at..next).step_by(step) {
            map[p] = 0;
        }
        if full {
            costs.record(huge, t.elapsed());
            if !huge {
                small.push(map.as_ptr() as usize + at);
            }
        }
        at = next;
    }
    SMALL_CHUNKS.fetch_add(small.len() as u64, Ordering::Relaxed);
    small
}

/// As the floats' slice, like a vector's.
impl std::fmt::Debug for HugeBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// Equal floats, wherever they are kept.
impl PartialEq for HugeBuf {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl std::ops::Deref for HugeBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            HugeBuf::Small(v) => v,
            HugeBuf::Mapped { map, offset, len } => {
                bytemuck::cast_slice(&map[*offset..*offset + len * size_of::<f32>()])
            }
        }
    }
}

impl std::ops::DerefMut for HugeBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        match self {
            HugeBuf::Small(v) => v,
            HugeBuf::Mapped { map, offset, len } => bytemuck::cast_slice_mut(
                &mut map.bytes_mut()[*offset..*offset + *len * size_of::<f32>()],
            ),
        }
    }
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
    fn large_buffers_start_on_a_huge_page_and_keep_their_values() {
        let mapped = !crate::knobs::off("CNNC_HUGE_PAGES");
        let n = (3 << 20) + 5; // 12 MiB and a bit: several huge pages and a ragged end
        let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut b = HugeBuf::from_vec(v.clone(), "a test").unwrap();
        assert_eq!(matches!(b, HugeBuf::Mapped { .. }), mapped);
        if mapped {
            assert_eq!(b.as_ptr() as usize % HUGE_PAGE, 0);
        }
        assert_eq!(b.len(), n);
        assert!(b.iter().zip(&v).all(|(x, y)| x.to_bits() == y.to_bits()));
        b[n - 1] = -1.0;
        assert_eq!(b[n - 1], -1.0);
        let z = HugeBuf::zeroed(n, "a test").unwrap();
        assert_eq!(z.len(), n);
        assert!(z.iter().all(|x| x.to_bits() == 0));
        let small = HugeBuf::from_vec(vec![1.5; 10], "a test").unwrap();
        assert!(matches!(small, HugeBuf::Small(_)));
        assert_eq!(&small[..], &[1.5; 10]);
        assert!(HugeBuf::zeroed(usize::MAX / 8, "the test").is_err());
    }

    #[test]
    fn spare_mappings_by_size_the_newest_first_the_oldest_released() {
        let page = |n: usize| memmap2::MmapMut::map_anon(n * SMALL_PAGE).unwrap();
        let mut s = Spares {
            maps: Vec::new(),
            bytes: 0,
        };
        let limit = 4 * SMALL_PAGE;
        let (a, b, c) = (page(1), page(1), page(2));
        let (pa, pb, pc) = (a.as_ptr(), b.as_ptr(), c.as_ptr());
        assert!(s.keep_in(a, limit).is_empty());
        assert!(s.keep_in(b, limit).is_empty());
        assert!(s.keep_in(c, limit).is_empty());
        assert_eq!(s.bytes, limit);
        assert!(s.take_from(3 * SMALL_PAGE).is_none(), "only the exact size");
        // Past the limit: the oldest goes.
        let d = page(1);
        let pd = d.as_ptr();
        let released = s.keep_in(d, limit);
        assert_eq!(
            released.iter().map(|m| m.as_ptr()).collect::<Vec<_>>(),
            [pa]
        );
        assert_eq!(s.take_from(SMALL_PAGE).map(|m| m.as_ptr()), Some(pd));
        assert_eq!(s.take_from(SMALL_PAGE).map(|m| m.as_ptr()), Some(pb));
        assert!(s.take_from(SMALL_PAGE).is_none());
        // One over the limit by itself is not kept.
        let released = s.keep_in(page(5), limit);
        assert_eq!(released.len(), 1);
        assert_eq!(s.bytes, 2 * SMALL_PAGE);
        // A lowered limit releases the kept ones too, the oldest first.
        let (e, f) = (page(1), page(1));
        let pe = e.as_ptr();
        assert!(s.keep_in(e, limit).is_empty());
        let released = s.keep_in(f, 0);
        assert_eq!(released.len(), 3);
        assert_eq!(released[1].as_ptr(), pc);
        assert_eq!(released[2].as_ptr(), pe);
        assert_eq!((s.bytes, s.maps.len()), (0, 0));
    }

    #[test]
    fn a_dropped_buffers_mapping_serves_the_next_of_its_size_zeroed_or_filled() {
        if crate::knobs::forced("CNNC_HUGE_PAGES") == Some(false)
            || crate::knobs::number::<usize>("CNNC_SPARE_MB").is_some()
        {
            eprintln!("skipped: the knobs turn mappings or their reuse off");
            return;
        }
        // A size no other test uses, so that no other thread takes the spare meanwhile.
        let n = (3 << 20) / 4 + 12_345;
        let mut a = HugeBuf::zeroed(n, "a test").unwrap();
        assert!(matches!(a, HugeBuf::Mapped { .. }));
        a.fill(f32::NAN);
        let at = a.as_ptr();
        // Where huge pages were slow to fault in just now, some chunks are small and the
        // mapping would not be kept: this test is about reuse, so it keeps it anyway.
        if let HugeBuf::Mapped { map, .. } = &mut a {
            map.spare = true;
        }
        let v: Vec<f32> = (0..n).map(|i| i as f32 - 0.5).collect();
        drop(a);
        let b = HugeBuf::zeroed(n, "a test").unwrap();
        assert_eq!(b.as_ptr(), at, "the dropped buffer's mapping");
        assert_eq!(b.as_ptr() as usize % HUGE_PAGE, 0);
        assert_eq!(b.len(), n);
        assert!(b.iter().all(|x| x.to_bits() == 0), "cleared");
        drop(b);
        let c = HugeBuf::from_vec(v.clone(), "a test").unwrap();
        assert_eq!(c.as_ptr(), at);
        assert!(c.iter().zip(&v).all(|(x, y)| x.to_bits() == y.to_bits()));
        // Another size gets a mapping of its own.
        let d = HugeBuf::zeroed(n + 1, "a test").unwrap();
        assert_ne!(d.as_ptr(), at);
        assert!(d.iter().all(|x| x.to_bits() == 0));
    }

    #[test]
    fn huge_pages_while_they_are_cheap_or_small_ones_no_cheaper() {
        let limit = HUGE_FAULT_LIMIT_US;
        assert!(choose_huge(0, 0, limit), "nothing measured: huge");
        assert!(choose_huge(limit, 0, limit));
        assert!(choose_huge(85, 700, limit));
        assert!(
            !choose_huge(limit + 1, 0, limit),
            "slow, small unknown: small"
        );
        assert!(!choose_huge(12_000, 700, limit));
        assert!(!choose_huge(12_000, 5_999, limit));
        assert!(
            choose_huge(12_000, 6_000, limit),
            "small as slow: huge again"
        );
        assert!(choose_huge(u32::MAX, u32::MAX, limit), "no overflow");
        assert!(!choose_huge(u32::MAX, u32::MAX / 2 - 1, limit));
    }

    #[test]
    fn fault_costs_are_running_averages() {
        let c = FaultCosts::default();
        c.record(true, Duration::from_micros(8000));
        assert_eq!(c.huge.load(Ordering::Relaxed), 8000, "the first sample");
        c.record(true, Duration::from_micros(0));
        assert_eq!(c.huge.load(Ordering::Relaxed), 6000);
        c.record(false, Duration::ZERO);
        assert_eq!(c.small.load(Ordering::Relaxed), 1, "measured, however fast");
        c.record(false, Duration::from_secs(1 << 40));
        // (3 * 1 + u32::MAX) / 4, the sample clamped to u32::MAX.
        assert_eq!(c.small.load(Ordering::Relaxed), 1 << 30);
        c.forget();
        assert_eq!(c.huge.load(Ordering::Relaxed), 0);
        assert_eq!(c.small.load(Ordering::Relaxed), 0);
    }

    /// The `/proc/self/smaps` entries of the mappings that overlap `[from, to)`: their
    /// `VmFlags` and their resident and `AnonHugePages` KiB.
    #[cfg(target_os = "linux")]
    fn vmas(from: usize, to: usize) -> Vec<(String, u64, u64)> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut out: Vec<(String, u64, u64)> = Vec::new();
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = a < to && b > from;
                    if inside {
                        out.push((String::new(), 0, 0));
                    }
                    continue;
                }
            }
            let Some(last) = out.last_mut().filter(|_| inside) else {
                continue;
            };
            let kib = |key: &str| {
                line.strip_prefix(key)
                    .and_then(|r| r.split_whitespace().next()?.parse().ok())
            };
            if let Some(f) = line.strip_prefix("VmFlags:") {
                last.0 = f.trim().to_string();
            } else if let Some(k) = kib("Rss:") {
                last.1 = k;
            } else if let Some(k) = kib("AnonHugePages:") {
                last.2 = k;
            }
        }
        out
    }

    /// A fresh mapping for `n` floats, not faulted in: the mapping, the floats' offset
    /// in it and their count.
    fn unfaulted(n: usize) -> (Mapping, usize, usize) {
        match HugeBuf::mapped(n, "a test") {
            Ok(HugeBuf::Mapped { map, offset, len }) => (map, offset, len),
            _ => panic!("not mapped"),
        }
    }

    /// Whether this kernel has transparent huge pages (without them `MADV_(NO)HUGEPAGE`
    /// fail and the page-size tests have nothing to see: they say they skip).
    #[cfg(target_os = "linux")]
    fn has_thp() -> bool {
        let has = std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists();
        if !has {
            eprintln!("skipped: this kernel has no transparent huge pages");
        }
        has
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn buffers_are_faulted_in_as_the_costs_say() {
        if !has_thp() {
            return;
        }
        let n = (5 << 20) / 4 + 7; // 5 MiB and a bit: two full chunks and a partial one
        let bytes = n * 4;
        for (costs, limit, small) in [
            // Huge pages never too slow: every chunk huge.
            (FaultCosts::default(), u32::MAX, false),
            // Huge pages far slower than small ones (whatever the chunks measure): small.
            (FaultCosts::with(u32::MAX, 1), HUGE_FAULT_LIMIT_US, true),
        ] {
            let (mut map, offset, len) = unfaulted(n);
            fault_in(map.bytes_mut(), offset, bytes, &costs, limit);
            let start = map.as_ptr() as usize + offset;
            let found = vmas(start, start + bytes);
            assert!(!found.is_empty());
            // Small chunks: every page of the floats resident (faulted in). Huge ones hold a
            // huge page only where the kernel has one to give (THP mode, fragmentation).
            let rss: u64 = found.iter().map(|v| v.1).sum();
            assert!(!small || rss * 1024 >= bytes as u64, "{found:?}");
            // Huge chunks: at least the page written in each full chunk, and every page of
            // the partial last chunk (written page by page), resident.
            let partial = (bytes % HUGE_PAGE) as u64;
            let written = (bytes / HUGE_PAGE) as u64 * SMALL_PAGE as u64 + partial;
            assert!(
                rss * 1024 >= written / SMALL_PAGE as u64 * SMALL_PAGE as u64,
                "{found:?}"
            );
            let flag = if small { "nh" } else { "hg" };
            let other = if small { "hg" } else { "nh" };
            // The mapping starts advised huge as a whole (its head before the floats stays
            // so); each small chunk is advised otherwise, and the kernel merges neighbours.
            for (flags, _, huge_kib) in &found {
                let has = |f: &str| flags.split_whitespace().any(|x| x == f);
                assert!(has(flag) && !has(other), "{found:?}");
                if small {
                    assert_eq!(*huge_kib, 0, "{found:?}");
                }
            }
            let buf = HugeBuf::Mapped { map, offset, len };
            assert_eq!(buf.len(), n);
            assert!(buf.iter().all(|x| x.to_bits() == 0));
        }
    }

    /// Within one mapping: nothing measured, the first chunk is huge; its cost (at least
    /// 1 us) is then over a limit of 0 and small pages are unmeasured, so the second chunk
    /// is small. (The partial third one depends on the measured times.)
    #[cfg(target_os = "linux")]
    #[test]
    fn a_mapping_turns_to_small_pages_when_huge_ones_prove_slow() {
        if !has_thp() {
            return;
        }
        let n = (5 << 20) / 4 + 7;
        let (mut map, offset, _) = unfaulted(n);
        fault_in(map.bytes_mut(), offset, n * 4, &FaultCosts::default(), 0);
        let start = map.as_ptr() as usize + offset;
        let flags = |at: usize| vmas(at, at + 1).pop().expect("mapped").0;
        let has = |flags: &str, f: &str| flags.split_whitespace().any(|x| x == f);
        let first = flags(start);
        assert!(has(&first, "hg") && !has(&first, "nh"), "{first}");
        let second = flags(start + HUGE_PAGE);
        assert!(has(&second, "nh") && !has(&second, "hg"), "{second}");
    }

    #[test]
    fn a_dropped_mappings_chunks_leave_the_collapse_queue() {
        let mut q = Collapses {
            chunks: std::collections::VecDeque::new(),
            next_owner: 1,
            in_flight: 0,
        };
        assert_eq!(q.add(&[]), 0, "nothing queued, no key");
        let a = q.add(&[1 << 21, 2 << 21]);
        let b = q.add(&[5 << 21]);
        assert!(a != 0 && b != 0 && a != b);
        q.remove(a);
        assert_eq!(q.chunks, [(b, 5 << 21)]);
        q.remove(b);
        assert!(q.chunks.is_empty());

        // The process's queue: a mapping with chunks waiting takes them along when dropped.
        if crate::knobs::forced("CNNC_HUGE_PAGES") == Some(false) {
            return;
        }
        let (mut map, offset, _) = unfaulted((4 << 20) / 4);
        let start = map.as_ptr() as usize + offset;
        let chunks = [start, start + HUGE_PAGE];
        map.spare = false;
        map.owner = Collapses::lock().add(&chunks);
        if map.owner == 0 {
            eprintln!("skipped: collapses not supported here");
            return;
        }
        let owner = map.owner;
        drop(map);
        let queue = Collapses::lock();
        assert!(queue.chunks.iter().all(|&(o, _)| o != owner));
    }

    /// The drop of a mapping whose chunk is being collapsed waits for the collapse to end
    /// (it must not unmap the range under it); the drops of other mappings do not.
    #[test]
    fn only_the_collapsed_mappings_drop_waits_for_the_collapse() {
        if crate::knobs::forced("CNNC_HUGE_PAGES") == Some(false) {
            return;
        }
        let queued = || {
            let (mut map, offset, _) = unfaulted((2 << 20) / 4);
            map.spare = false;
            map.owner = Collapses::lock().add(&[map.as_ptr() as usize + offset]);
            map
        };
        let (busy, other) = (queued(), queued());
        if busy.owner == 0 {
            eprintln!("skipped: collapses not supported here");
            return;
        }
        // As `collapse_next` does, without the system call: no real collapse runs
        // meanwhile (they take `COLLAPSING` first), so none clears this mark.
        let turn = COLLAPSING.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut queue = Collapses::lock();
            queue.remove(busy.owner);
            queue.in_flight = busy.owner;
        }
        let dropper = std::thread::spawn(move || drop(busy));
        drop(other);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !dropper.is_finished(),
            "the mapping was dropped during its collapse"
        );
        Collapses::lock().in_flight = 0;
        COLLAPSE_ENDED.notify_all();
        drop(turn);
        dropper.join().unwrap();
    }

    /// A buffer faulted in on small pages holds huge pages after [`collapse`], and the
    /// same floats; readers on other threads meanwhile see them unchanged.
    #[cfg(target_os = "linux")]
    #[test]
    fn small_chunks_collapse_into_huge_pages_and_keep_their_values() {
        if !has_thp() {
            return;
        }
        let n = (6 << 20) / 4 + 3; // three full chunks and a partial one
        let (mut map, offset, len) = unfaulted(n);
        let small = fault_in(
            map.bytes_mut(),
            offset,
            n * 4,
            &FaultCosts::with(u32::MAX, 1),
            0,
        );
        let start = map.as_ptr() as usize + offset;
        assert_eq!(small, [start, start + HUGE_PAGE, start + 2 * HUGE_PAGE]);
        let mut buf = HugeBuf::Mapped { map, offset, len };
        for (i, x) in buf.iter_mut().enumerate() {
            *x = i as f32 * 0.25 - 7.0;
        }
        let huge_kib = || -> u64 { vmas(start, start + n * 4).iter().map(|v| v.2).sum() };
        assert_eq!(huge_kib(), 0, "small pages");
        let expected = |i: usize| (i as f32 * 0.25 - 7.0).to_bits();
        let buf = &buf;
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut sweeps = 0;
                while !stop.load(Ordering::Relaxed) || sweeps == 0 {
                    for i in (0..n).step_by(97) {
                        assert_eq!(buf[i].to_bits(), expected(i), "float {i}");
                    }
                    sweeps += 1;
                }
            });
            let mut done = 0u64;
            let mut no_page = 0u64;
            for &at in &small {
                match collapse(at) {
                    Collapse::Done => done += 1,
                    // No free huge page in the system (or none now): only the values to check.
                    Collapse::Failed(libc::ENOMEM | libc::EAGAIN) => no_page += 1,
                    // Anything else (EINVAL: the chunk left advised small, ...) is a bug
                    // where the collapse is supported.
                    Collapse::Failed(errno) => {
                        stop.store(true, Ordering::Relaxed);
                        assert!(!huge_collapse_supported(), "errno {errno} at {at:#x}");
                        eprintln!("skipped: collapses not supported here");
                        return;
                    }
                }
            }
            stop.store(true, Ordering::Relaxed);
            reader.join().unwrap();
            // Each collapse that succeeded left a huge page.
            assert!(
                huge_kib() >= done * 2048,
                "{done}: {:?}",
                vmas(start, start + n * 4)
            );
            assert_eq!(done + no_page, small.len() as u64);
            if done == 0 {
                eprintln!("no chunk collapsed (no huge page to be had): only the values checked");
            }
        });
        assert!((0..n).all(|i| buf[i].to_bits() == expected(i)));
    }

    /// A chunk whose collapse fails (no page in it: EINVAL) is advised small again, and the
    /// failure is that chunk's: collapses stay supported and the next chunk collapses.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_collapse_leaves_its_chunk_small_and_others_collapsible() {
        if !has_thp() || !huge_collapse_supported() {
            eprintln!("skipped: collapses not supported here");
            return;
        }
        let n = (4 << 20) / 4;
        let (mut map, offset, _) = unfaulted(n);
        let start = map.as_ptr() as usize + offset;
        // The first chunk faulted in on small pages, the second never touched.
        fault_in(
            map.bytes_mut(),
            offset,
            HUGE_PAGE,
            &FaultCosts::with(u32::MAX, 1),
            0,
        );
        let empty = start + HUGE_PAGE;
        let flags = |at: usize| vmas(at, at + 1).pop().expect("mapped").0;
        let has = |flags: &str, f: &str| flags.split_whitespace().any(|x| x == f);
        assert!(matches!(collapse(empty), Collapse::Failed(_)));
        let left = flags(empty);
        assert!(has(&left, "nh") && !has(&left, "hg"), "{left}");
        assert!(huge_collapse_supported());
        match collapse(start) {
            Collapse::Done => {
                let now = flags(start);
                assert!(has(&now, "hg"), "{now}");
            }
            Collapse::Failed(libc::ENOMEM | libc::EAGAIN) => {
                eprintln!("no huge page to be had: only the failed chunk checked")
            }
            Collapse::Failed(errno) => panic!("errno {errno}"),
        }
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
