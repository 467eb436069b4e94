//! Buffers of floats that runs stream through (packed weights, the activation arena): from
//! 2 MiB up in mappings of their own, faulted in chunk by chunk on huge or small pages
//! (whichever the host serves faster just now), and kept for reuse when dropped.
use super::collapse::{Collapses, SMALL_CHUNKS};
use super::{out_of_memory, try_zeros, HUGE_PAGE};
use crate::error::Result;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

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
        let small_only = crate::knobs::is("CNNC_HUGE_PAGES", "small");
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
    pub(super) spare: bool,
    /// Its key in [`Collapses`] while chunks of it wait there (0: none).
    pub(super) owner: u64,
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
    pub(super) fn bytes_mut(&mut self) -> &mut memmap2::MmapMut {
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
    pub(super) fn with(huge_us: u32, small_us: u32) -> Self {
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
pub(super) fn fault_in(
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

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
    pub(in crate::memory) fn vmas(from: usize, to: usize) -> Vec<(String, u64, u64)> {
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
    pub(in crate::memory) fn unfaulted(n: usize) -> (Mapping, usize, usize) {
        match HugeBuf::mapped(n, "a test") {
            Ok(HugeBuf::Mapped { map, offset, len }) => (map, offset, len),
            _ => panic!("not mapped"),
        }
    }

    /// Whether this kernel has transparent huge pages (without them `MADV_(NO)HUGEPAGE`
    /// fail and the page-size tests have nothing to see: they say they skip).
    #[cfg(target_os = "linux")]
    pub(in crate::memory) fn has_thp() -> bool {
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
}
