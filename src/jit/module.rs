//! `KernelModule`: one Cranelift JIT module holding many kernels, finalized together.
//!
//! Usage: create a [`KernelModule`], add kernels with the `add_*` methods of the kernel
//! families (each returns a typed *pending* handle), call [`KernelModule::finalize`] once,
//! then turn each handle into a callable kernel with [`Compiled::get`]. The code memory is
//! owned by [`Compiled`] (shared through `Arc` by every kernel taken from it) and freed when
//! the last of them is dropped.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::incremental_cache::{compute_cache_key, CacheKeyHash};
use cranelift_codegen::ir::{
    types, AbiParam, Function, InstBuilder, MemFlagsData, Signature, UserFuncName, Value,
};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::{Context, FinalizedMachReloc};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module, ModuleReloc};

use super::entry::Layout;
use super::threads::{run_jobs, ThreadPool};
use crate::error::{Error, Result};
use crate::options::Isa;

static NEXT_MODULE_ID: AtomicU64 = AtomicU64::new(1);

/// The machine code of the x86 micro-kernels emitted in this process, by the key of
/// [`KernelModule::add_micro_once`] (which shows every field of the spec, and the code
/// depends on nothing else): a model compiled again, or another with layers of the same
/// shapes, installs the same bytes without emitting them (SqueezeNet's warm compile spent
/// ~10% of its time in `MicroGemm::emit`). The code is position-independent (relative
/// jumps, RIP-relative constants), so the same bytes serve every module. Bounded by
/// [`MICRO_CACHE_BYTES`]; once full, new kernels are emitted and not kept.
type MicroCache = CappedMap<String, [u8]>;

/// Code bytes the micro-kernel cache keeps at most (DenseNet-121's 418 kernels: ~1 MB).
const MICRO_CACHE_BYTES: usize = 16 << 20;

static MICRO_CACHE: std::sync::OnceLock<Mutex<MicroCache>> = std::sync::OnceLock::new();

/// The code of micro-kernel `key`, emitted by `emit` unless this process already has it.
fn micro_get_or_emit(key: &str, emit: impl FnOnce() -> Result<Vec<u8>>) -> Result<Arc<[u8]>> {
    let cache = MICRO_CACHE.get_or_init(Default::default);
    if let Some(code) = lock_unpoisoned(cache).get(key) {
        return Ok(code);
    }
    let code: Arc<[u8]> = emit()?.into();
    let size = code.len();
    lock_unpoisoned(cache).insert_capped(key.to_string(), code.clone(), size, MICRO_CACHE_BYTES);
    Ok(code)
}

/// The bookkeeping of both caches of compiled code ([`MicroCache`], [`CodeCache`]): values
/// by key, and the bytes they are counted for, kept within a cap.
struct CappedMap<K, V: ?Sized> {
    map: std::collections::HashMap<K, Arc<V>>,
    bytes: usize,
}

// Not derived: the derive would ask `K` and `V` for `Default` too.
impl<K, V: ?Sized> Default for CappedMap<K, V> {
    fn default() -> Self {
        Self {
            map: Default::default(),
            bytes: 0,
        }
    }
}

impl<K: std::hash::Hash + Eq, V: ?Sized> CappedMap<K, V> {
    fn get<Q>(&self, key: &Q) -> Option<Arc<V>>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.map.get(key).cloned()
    }

    /// Keeps `value`, counted as `size` bytes, if that stays within `cap` and `key` is not
    /// kept already (two threads that both missed insert the same key: counted once).
    fn insert_capped(&mut self, key: K, value: Arc<V>, size: usize, cap: usize) {
        if self.bytes + size <= cap && !self.map.contains_key(&key) {
            self.bytes += size;
            self.map.insert(key, value);
        }
    }

    /// Empties it, handing back what it held (for the caller to drop outside its lock).
    fn take(&mut self) -> std::collections::HashMap<K, Arc<V>> {
        self.bytes = 0;
        std::mem::take(&mut self.map)
    }
}

/// `cache`, locked. A thread that panicked while holding the lock left the cache
/// consistent (every change is one insert or one clear), so a poisoned lock is still usable.
fn lock_unpoisoned<T>(cache: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    cache.lock().unwrap_or_else(|p| p.into_inner())
}

/// The machine code of the Cranelift functions compiled in this process, by Cranelift's
/// incremental-cache key (`compute_cache_key`: a SHA-256 of the function's *stencil*, its
/// CLIF without its name and with the functions it calls numbered in the order it declared
/// them, and of the target's flags): a model compiled again, or another with layers of the
/// same specs, installs the code without compiling it (Cranelift was ~1.1 ms of Inception
/// 3a's 1.7 ms warm compile). The code is what Cranelift makes from the stencil and the
/// flags alone, so a hit is the bytes a fresh compile would give; the relocations are kept
/// as the stencil's (callee *k* of the function's declarations) and resolved against the
/// new function's own names, so a driver calls the micro-kernels of its own module.
/// Shared by every module and thread; a compile runs outside the lock. Bounded by
/// [`CodeCache::cap`]; once full, new code is compiled and not kept.
/// `release_compile_caches` empties it. `CNNC_CODE_CACHE_CHECK=1` compiles every hit
/// afresh and fails the compile if the code differs (Cranelift calls its incremental cache
/// experimental; tests/code_cache.rs runs with it on).
#[derive(Default)]
pub(crate) struct CodeCache {
    entries: CappedMap<CacheKeyHash, CachedCode>,
    /// The byte cap; `None`: `CNNC_CODE_CACHE_MB`, else [`CODE_CACHE_BYTES`] (a test's
    /// private cache sets it, independent of the environment).
    cap: Option<usize>,
}

/// How many of a module's (or model's) Cranelift functions were found in the process's
/// cache of compiled code, and how many Cranelift compiled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodeCacheCounts {
    pub hits: usize,
    pub compiled: usize,
}

/// A cached function: what [`PendingFunction::compile`] takes from Cranelift's result.
struct CachedCode {
    bytes: Box<[u8]>,
    alignment: u64,
    /// As the stencil has them: a callee is a `UserExternalNameRef`, an index into the
    /// declarations of the function being installed.
    relocs: Box<[FinalizedMachReloc]>,
}

/// Bytes counted per [`CodeCache`] entry besides the code and relocations: the map's slot,
/// the 32-byte key and the `Arc`'s header, rounded up.
const ENTRY_OVERHEAD: usize = 128;

impl CachedCode {
    /// What it holds, counted against the cache's cap (with the map's entry).
    fn footprint(&self) -> usize {
        self.bytes.len() + std::mem::size_of_val(&*self.relocs) + ENTRY_OVERHEAD
    }
}

/// Default bytes of [`CodeCache`] (`CNNC_CODE_CACHE_MB`): ResNet-50's 43 functions take
/// ~80 KB, DenseNet-121's 104 functions ~150 KB (session 16).
const CODE_CACHE_BYTES: usize = 16 << 20;

static CODE_CACHE: std::sync::OnceLock<Mutex<CodeCache>> = std::sync::OnceLock::new();

impl CodeCache {
    /// The process's cache.
    fn global() -> &'static Mutex<CodeCache> {
        CODE_CACHE.get_or_init(Default::default)
    }

    /// `cache`, locked (see [`lock_unpoisoned`]).
    fn lock(cache: &Mutex<CodeCache>) -> std::sync::MutexGuard<'_, CodeCache> {
        lock_unpoisoned(cache)
    }

    /// The byte cap: its own, else `CNNC_CODE_CACHE_MB`, else [`CODE_CACHE_BYTES`] (read
    /// once per compile, not per function).
    fn cap(&self) -> usize {
        self.cap.unwrap_or_else(|| {
            crate::knobs::number::<usize>("CNNC_CODE_CACHE_MB")
                .map_or(CODE_CACHE_BYTES, |mb| mb.saturating_mul(1 << 20))
        })
    }

    fn insert_capped(&mut self, key: CacheKeyHash, code: Arc<CachedCode>, cap: usize) {
        let size = code.footprint();
        self.entries.insert_capped(key, code, size, cap);
    }
}

/// Empties the process-wide caches of compiled code (Cranelift functions and x86
/// micro-kernels): models compiled later compile everything again.
pub(crate) fn clear_code_caches() {
    // Both maps are dropped outside their locks.
    let code = CodeCache::lock(CodeCache::global()).entries.take();
    drop(code);
    if let Some(m) = MICRO_CACHE.get() {
        let code = lock_unpoisoned(m).take();
        drop(code);
    }
}

/// `exp` for the generated code (softmax). Rust's `f32::exp` is correctly rounded to within
/// 1 ulp, which is what the tests compare against.
extern "C" fn cnnc_expf(x: f32) -> f32 {
    x.exp()
}

/// Bytes [`cnnc_prefetch`] asks the cache to fetch, from its argument on (16 lines: larger
/// bursts measured slower, see `fc::FC_PREFETCH`).
pub(crate) const PREFETCH_BYTES: usize = 1024;

/// Software prefetch (Cranelift has no prefetch instruction): asks for the
/// `PREFETCH_BYTES` from `p` into L1, one 64-byte line at a time. A prefetch never faults,
/// so `p` may point anywhere, including past the end of a buffer.
extern "C" fn cnnc_prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..PREFETCH_BYTES).step_by(64) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        #[allow(unsafe_code)] // `_mm_prefetch` takes a raw pointer.
        // SAFETY: prefetch instructions do not access memory architecturally and never
        // fault, whatever the address.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line) as *const i8)
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Fallback for `fma` on hosts without FMA. Never called on this machine: the generators
/// emit `fmul`+`fadd` instead when the ISA lacks FMA, but Cranelift may still reference it.
extern "C" fn cnnc_fmaf(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

pub(crate) fn codegen_err(e: impl std::fmt::Display) -> Error {
    Error::Codegen(e.to_string())
}

/// The host's Cranelift target at optimisation level `opt_level` (`speed` or `none`), with
/// register allocator `regalloc` (`backtracking` or `single_pass`).
fn host_isa(opt_level: &str, regalloc: &str) -> Result<OwnedTargetIsa> {
    let mut flags = settings::builder();
    flags.set("opt_level", opt_level).map_err(codegen_err)?;
    flags
        .set("regalloc_algorithm", regalloc)
        .map_err(codegen_err)?;
    let verify = if cfg!(debug_assertions) {
        "true"
    } else {
        "false"
    };
    flags.set("enable_verifier", verify).map_err(codegen_err)?;
    flags.set("is_pic", "false").map_err(codegen_err)?;
    // Functions with a large stack frame (the implicit GEMM's panel) touch it page by
    // page on entry, so that a thread short of stack hits its guard page.
    flags
        .set("enable_probestack", "true")
        .map_err(codegen_err)?;
    flags
        .set("probestack_strategy", "inline")
        .map_err(codegen_err)?;
    let isa_builder = cranelift_native::builder().map_err(codegen_err)?;
    isa_builder
        .finish(settings::Flags::new(flags))
        .map_err(codegen_err)
}

/// The module's targets, by [`Mode`]: `speed` with the backtracking register allocator,
/// `none` with it, `none` with the single-pass one. Made once per process (detecting the
/// host's features and building the flags was ~2% of a warm compile of Inception 3a);
/// `OwnedTargetIsa` is an `Arc`.
fn host_targets() -> Result<[OwnedTargetIsa; 3]> {
    static TARGETS: std::sync::OnceLock<[OwnedTargetIsa; 3]> = std::sync::OnceLock::new();
    if let Some(t) = TARGETS.get() {
        return Ok(t.clone());
    }
    let made = [
        host_isa("speed", "backtracking")?,
        host_isa("none", "backtracking")?,
        host_isa("none", "single_pass")?,
    ];
    Ok(TARGETS.get_or_init(|| made).clone())
}

/// Bytes of a [`CodeMemory`] mapping (more if one function needs more): address space,
/// its pages faulted in only as code is written (SqueezeNet's ~130 kernels: a few hundred
/// KB).
const CODE_CHUNK: usize = 1 << 20;

/// The module's code memory, a few large mappings filled in order, made executable at
/// `finalize` (one `mprotect` each) and unmapped with the module. Cranelift's
/// `SystemMemoryProvider` maps each function that does not fit what is left of the last
/// page afresh, page-sized: SqueezeNet's compile made ~52 mappings, each one an `mmap`, an
/// `mprotect` and an `munmap`. x86-64 only (no instruction cache to flush after writing
/// code); elsewhere Cranelift's provider.
#[derive(Default)]
struct CodeMemory {
    code: Chunks,
    readonly: Chunks,
    writable: Chunks,
}

/// Mappings of one kind of memory: the one being filled (`open`, bytes used), those
/// filled (`full`), and those already protected.
#[derive(Default)]
struct Chunks {
    open: Option<(memmap2::MmapMut, usize)>,
    full: Vec<memmap2::MmapMut>,
    protected: Vec<memmap2::Mmap>,
}

impl Chunks {
    /// `size` bytes aligned to `align` (a power of two): from the open mapping if they
    /// fit, else from a new one.
    fn allocate(&mut self, size: usize, align: u64) -> std::io::Result<*mut u8> {
        let align = usize::try_from(align)
            .ok()
            .filter(|a| a.is_power_of_two())
            .ok_or_else(|| std::io::Error::other("code alignment not a power of two"))?;
        if let Some((map, used)) = &mut self.open {
            let base = map.as_ptr() as usize;
            let start = (base + *used).next_multiple_of(align) - base;
            if start + size <= map.len() {
                *used = start + size;
                return Ok(map.as_mut_ptr().wrapping_add(start));
            }
        }
        // A mapping starts on a page boundary, which satisfies any alignment up to a page;
        // beyond that, room to align within it.
        let len = size.saturating_add(align).max(CODE_CHUNK);
        let mut map = memmap2::MmapMut::map_anon(len)?;
        let base = map.as_ptr() as usize;
        let start = base.next_multiple_of(align) - base;
        let ptr = map.as_mut_ptr().wrapping_add(start);
        if let Some((old, _)) = self.open.replace((map, start + size)) {
            self.full.push(old);
        }
        Ok(ptr)
    }

    /// Protects every mapping filled so far, executable or read-only; new allocations go
    /// to new mappings.
    fn protect(&mut self, exec: bool) -> std::io::Result<()> {
        let open = self.open.take().map(|(m, _)| m);
        for map in self.full.drain(..).chain(open) {
            let done = if exec {
                map.make_exec()?
            } else {
                map.make_read_only()?
            };
            self.protected.push(done);
        }
        Ok(())
    }
}

impl cranelift_jit::JITMemoryProvider for CodeMemory {
    fn allocate(
        &mut self,
        size: usize,
        align: u64,
        kind: cranelift_jit::JITMemoryKind,
    ) -> std::io::Result<*mut u8> {
        match kind {
            cranelift_jit::JITMemoryKind::Executable => self.code.allocate(size, align),
            cranelift_jit::JITMemoryKind::ReadOnly => self.readonly.allocate(size, align),
            cranelift_jit::JITMemoryKind::Writable => self.writable.allocate(size, align),
        }
    }

    /// Unmaps everything (the trait's contract: the caller guarantees that nothing in
    /// it is used again). Dropping the provider unmaps too: `KernelModule` and `Compiled`
    /// free the memory when they drop the module in any case.
    #[allow(unsafe_code)] // The trait's method is `unsafe`; the body is safe code.
    unsafe fn free_memory(&mut self) {
        *self = CodeMemory::default();
    }

    fn finalize(
        &mut self,
        _branch_protection: cranelift_jit::BranchProtection,
    ) -> cranelift_module::ModuleResult<()> {
        let err = |err| cranelift_module::ModuleError::Allocation { err };
        self.readonly.protect(false).map_err(err)?;
        self.code.protect(true).map_err(err)
    }
}

/// A module under construction: declare and define kernels, then [`finalize`](Self::finalize).
pub struct KernelModule {
    module: Option<JITModule>,
    /// The module's target, shared with the threads that compile the pending functions.
    target: OwnedTargetIsa,
    /// The same target without Cranelift's optimiser, for the functions defined in
    /// [`KernelModule::quickly`].
    quick_target: OwnedTargetIsa,
    /// The same without the optimiser and with the single-pass register allocator, for
    /// the functions that only drive x86 micro-kernels
    /// ([`KernelModule::define_with_micros`]).
    driver_target: OwnedTargetIsa,
    /// How the functions defined now compile.
    mode: Mode,
    /// Whether [`KernelModule::quickly`] and [`KernelModule::define_driver`] may skip the
    /// optimiser (tests compare both).
    pub(crate) quick_allowed: bool,
    /// Functions whose IR is built, to be compiled by [`KernelModule::compile_pending`].
    pending: Vec<PendingFunction>,
    ctx: Context,
    fctx: FunctionBuilderContext,
    id: u64,
    funcs: Vec<FuncId>,
    /// Read-only tables referenced by address from the generated code (kept alive by `Compiled`).
    tables: Vec<Box<[i32]>>,
    /// Set by [`KernelModule::add_table`], taken by the next function defined (the one
    /// that bakes the table's address in, conv.rs): cache hygiene only. The address is an
    /// `iconst` in the stencil, so it is part of the key and a hit can never be stale; such
    /// an entry would just never hit again, so it is not kept in the [`CodeCache`].
    next_uncacheable: bool,
    /// Whether functions compiled before in this process are taken from the [`CodeCache`]
    /// and new ones kept there (`CNNC_CODE_CACHE=0`: never; tests compare both).
    pub(crate) code_cache: bool,
    /// Which cache: the process's, or a test's own.
    pub(crate) cache: &'static Mutex<CodeCache>,
    /// Whether each hit is compiled afresh and compared (`CNNC_CODE_CACHE_CHECK=1`).
    pub(crate) code_cache_check: bool,
    /// Functions taken from the [`CodeCache`] and compiled, so far.
    cache_hits: usize,
    cache_misses: usize,
    /// Each function's code and relocations as installed, in order, and whether it came
    /// from the cache (tests compare them).
    #[cfg(test)]
    installed: Installed,
    exp_func: FuncId,
    prefetch_func: FuncId,
    has_fma: bool,
    build_time: Duration,
    /// Cranelift's time in the functions compiled so far, summed over the threads, and the
    /// time spent looking them up in the [`CodeCache`].
    compile_cpu: Duration,
    /// With [`KernelModule::keep_listings`]: each kernel's CLIF and machine code.
    listings: Option<Vec<KernelListing>>,
    /// What the next kernels are for (a layer name), for listings.
    label: String,
    /// Convolutions already generated, by spec and method: layers of
    /// the same shape share code (ResNet-18's 20 convolutions have 11 distinct specs).
    pub(crate) convs:
        std::collections::HashMap<(super::ConvSpec, super::ConvMethod, Isa), super::PendingConv>,
    /// Micro-kernels installed by [`KernelModule::add_micro_once`], by key.
    micros: std::collections::HashMap<String, MicroId>,
    /// Whether 3x3 stride-1 convolutions may use Winograd ([`KernelModule::set_winograd`]).
    pub(crate) winograd: bool,
    /// The vector ISA the kernels may use ([`KernelModule::set_isa`]).
    pub(crate) isa: Isa,
    /// Threads of the pool the kernels will run on ([`KernelModule::set_threads`]).
    pub(crate) threads: usize,
}

/// Everything a code generator needs while emitting one function.
pub(crate) struct Emit<'a> {
    pub b: FunctionBuilder<'a>,
    pub has_fma: bool,
    pub exp_ref: cranelift_codegen::ir::FuncRef,
    /// `cnnc_prefetch(p: *u8)`: software prefetch of `PREFETCH_BYTES` from `p`.
    pub prefetch_ref: cranelift_codegen::ir::FuncRef,
    /// The functions passed as `callees` to `define_calling`, callable with `call` as
    /// `call(callee, &[e.bufs, begin, end])`.
    pub callees: Vec<cranelift_codegen::ir::FuncRef>,
    /// The x86 micro-kernels passed to [`KernelModule::define_with_micros`], callable with
    /// their own arguments.
    pub micros: Vec<cranelift_codegen::ir::FuncRef>,
    /// The function's buffer array parameter, to pass on to `callees`.
    pub bufs: Value,
}

impl KernelModule {
    /// A module for the host CPU (`opt_level=speed`; the IR verifier runs only in debug builds).
    pub fn new() -> Result<Self> {
        let [isa, quick_target, driver_target] = host_targets()?;
        if isa.pointer_type() != types::I64 {
            return Err(Error::Unsupported(
                "the JIT supports only 64-bit targets".into(),
            ));
        }
        let has_fma = isa
            .isa_flags()
            .iter()
            .any(|v| v.name == "has_fma" && v.as_bool() == Some(true))
            || cfg!(target_arch = "aarch64");
        let target = isa.clone();
        let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
        // `CNNC_CODE_CHUNKS=0`: Cranelift's own code memory, a mapping per page or so (a
        // measuring knob).
        if cfg!(target_arch = "x86_64") && !crate::knobs::off("CNNC_CODE_CHUNKS") {
            jb.memory_provider(Box::new(CodeMemory::default()));
        }
        jb.symbol("cnnc_expf", cnnc_expf as *const u8);
        jb.symbol("fmaf", cnnc_fmaf as *const u8);
        jb.symbol("cnnc_prefetch", cnnc_prefetch as *const u8);
        let mut module = JITModule::new(jb);
        let mut sig = Signature::new(module.isa().default_call_conv());
        sig.params.push(AbiParam::new(types::F32));
        sig.returns.push(AbiParam::new(types::F32));
        let exp_func = module
            .declare_function("cnnc_expf", Linkage::Import, &sig)
            .map_err(codegen_err)?;
        let mut sig = Signature::new(module.isa().default_call_conv());
        sig.params.push(AbiParam::new(types::I64));
        let prefetch_func = module
            .declare_function("cnnc_prefetch", Linkage::Import, &sig)
            .map_err(codegen_err)?;
        let ctx = module.make_context();
        Ok(KernelModule {
            module: Some(module),
            target,
            quick_target,
            driver_target,
            mode: Mode::Speed,
            quick_allowed: true,
            pending: Vec::new(),
            ctx,
            fctx: FunctionBuilderContext::new(),
            id: NEXT_MODULE_ID.fetch_add(1, Ordering::Relaxed),
            funcs: Vec::new(),
            tables: Vec::new(),
            next_uncacheable: false,
            code_cache: !crate::knobs::off("CNNC_CODE_CACHE"),
            cache: CodeCache::global(),
            code_cache_check: crate::knobs::forced("CNNC_CODE_CACHE_CHECK") == Some(true),
            cache_hits: 0,
            cache_misses: 0,
            #[cfg(test)]
            installed: Vec::new(),
            exp_func,
            prefetch_func,
            has_fma,
            build_time: Duration::ZERO,
            compile_cpu: Duration::ZERO,
            listings: None,
            label: String::new(),
            convs: Default::default(),
            micros: Default::default(),
            winograd: true,
            isa: Isa::default_level(),
            threads: 1,
        })
    }

    /// The widest vector instructions kernels added from now on may use (default:
    /// [`crate::options::Isa::default_level`]). `Err` if the host lacks them.
    pub fn set_isa(&mut self, isa: Isa) -> Result<()> {
        isa.check_host()?;
        self.isa = isa;
        Ok(())
    }

    /// The ISA level of the kernels being added.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Whether convolutions added from now on may use Winograd F(4x4, 3x3) (default: yes).
    /// Pack their weights with [`crate::jit::PendingConv::pack_weights`], which follows it.
    pub fn set_winograd(&mut self, on: bool) {
        self.winograd = on;
    }

    /// The threads of the pool that will run the kernels added from now on (default 1):
    /// some order their work units so that the pool's contiguous parts keep each thread on
    /// its own pixels (`PixelGemm::in_parts`). Any kernel runs correctly, with the same
    /// results, on any pool.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// Keeps the CLIF and the disassembly of every kernel defined from now on.
    pub fn keep_listings(&mut self) {
        self.listings.get_or_insert_with(Vec::new);
    }

    /// Names what the next kernels are for (their layer), in listings.
    pub fn set_label(&mut self, label: &str) {
        label.clone_into(&mut self.label);
    }

    /// Runs `define` with the functions it defines compiled without Cranelift's
    /// optimiser (`opt_level=none`), for large straight-line code generated already in
    /// the form it should run (the Winograd transforms): there the optimiser finds
    /// nothing to hoist or merge, yet its passes and the register allocation of the
    /// rewritten code take 3-4x as long (2,000 instructions: 9-10 ms against 2.5 ms).
    /// Cranelift does not reassociate or contract floating-point arithmetic at any
    /// level, so the results are the same bits.
    pub(crate) fn quickly<T>(&mut self, define: impl FnOnce(&mut Self) -> T) -> T {
        let quick = if self.quick_allowed {
            Mode::Quick
        } else {
            Mode::Speed
        };
        let was = std::mem::replace(&mut self.mode, quick);
        let out = define(self);
        self.mode = was;
        out
    }

    /// The listings kept so far.
    pub fn take_listings(&mut self) -> Vec<KernelListing> {
        self.listings.take().unwrap_or_default()
    }

    /// Whether the generated code uses fused multiply-add.
    pub fn has_fma(&self) -> bool {
        self.has_fma
    }

    /// Time spent so far building IR and compiling functions (excludes `finalize`'s
    /// mapping of the code memory).
    pub fn build_time(&self) -> Duration {
        self.build_time
    }

    /// Cranelift's time in the functions compiled so far, summed over the threads that
    /// compiled them, plus the time spent looking every function up in the process's cache
    /// of compiled code (hashing its IR), hit or miss.
    pub fn compile_cpu(&self) -> Duration {
        self.compile_cpu
    }

    /// How many of the functions compiled so far were found in the process's cache of
    /// compiled code, and how many Cranelift compiled.
    pub fn code_cache_counts(&self) -> CodeCacheCounts {
        CodeCacheCounts {
            hits: self.cache_hits,
            compiled: self.cache_misses,
        }
    }

    /// Keeps `table` alive as long as the code and returns its address for the generated code.
    pub(crate) fn add_table(&mut self, table: Vec<i32>) -> i64 {
        let b: Box<[i32]> = table.into_boxed_slice();
        let addr = b.as_ptr() as i64;
        self.tables.push(b);
        self.next_uncacheable = true;
        addr
    }

    /// Defines one kernel function with the uniform signature of every generated function,
    /// `extern "C" fn(bufs: *const *mut f32, begin: i64, end: i64)` (see [`super::entry`]).
    /// `body` receives the buffer pointers of the layout `L` (loaded at the function start),
    /// then `begin` and `end`. Returns the kernel's handle for [`Compiled::ptr`].
    pub(crate) fn define<L: Layout<Value>>(
        &mut self,
        body: impl FnOnce(&mut Emit, L, Value, Value) -> Result<()>,
    ) -> Result<PendingId> {
        self.define_using(&vec![true; L::LEN], body)
    }

    /// `define` for a function that uses only the slots that `used` marks (a prologue sharing
    /// its kernel's buffer array): the others are not loaded, and null in `body`.
    pub(crate) fn define_using<L: Layout<Value>>(
        &mut self,
        used: &[bool],
        body: impl FnOnce(&mut Emit, L, Value, Value) -> Result<()>,
    ) -> Result<PendingId> {
        self.define_using_micros(used, &[], body)
    }

    /// `define_using` for a function that calls the x86 micro-kernels `micros`
    /// ([`Emit::micros`]).
    pub(crate) fn define_using_micros<L: Layout<Value>>(
        &mut self,
        used: &[bool],
        micros: &[MicroId],
        body: impl FnOnce(&mut Emit, L, Value, Value) -> Result<()>,
    ) -> Result<PendingId> {
        if used.len() != L::LEN {
            return Err(Error::Codegen(format!(
                "{} slots marked for a layout of {}",
                used.len(),
                L::LEN
            )));
        }
        if micros.iter().any(|m| m.module != self.id) {
            return Err(Error::Codegen(
                "micro-kernel handle belongs to a different KernelModule".into(),
            ));
        }
        self.define_fn(used, &[], micros, |e, p| {
            body(e, L::from_slice(&p[..L::LEN]), p[L::LEN], p[L::LEN + 1])
        })
    }

    /// `define` for a function that calls the x86 micro-kernels `micros` ([`Emit::micros`]).
    pub(crate) fn define_with_micros<L: Layout<Value>>(
        &mut self,
        micros: &[MicroId],
        body: impl FnOnce(&mut Emit, L, Value, Value) -> Result<()>,
    ) -> Result<PendingId> {
        self.define_using_micros(&vec![true; L::LEN], micros, body)
    }

    /// `define_with_micros` for a function that only drives the micro-kernels (loops,
    /// addresses and calls; the arithmetic is theirs): compiled without Cranelift's
    /// optimiser and with its single-pass register allocator, which take a fifth of the
    /// time and made no difference to the run time measured (docs/jit.md, "Compile time
    /// of a network"). Inside [`KernelModule::quickly`], as there.
    pub(crate) fn define_driver<L: Layout<Value>>(
        &mut self,
        micros: &[MicroId],
        body: impl FnOnce(&mut Emit, L, Value, Value) -> Result<()>,
    ) -> Result<PendingId> {
        self.as_driver(|km| km.define_with_micros(micros, body))
    }

    /// Runs `define` with the functions it defines compiled as drivers (see
    /// [`KernelModule::define_driver`]), unless inside [`KernelModule::quickly`] or with
    /// the optimiser required.
    fn as_driver<T>(&mut self, define: impl FnOnce(&mut Self) -> T) -> T {
        let was = self.mode;
        if was == Mode::Speed && self.quick_allowed {
            self.mode = Mode::Driver;
        }
        let out = define(self);
        self.mode = was;
        out
    }

    /// `define` for a function over `n_bufs` buffers whose number depends on the spec
    /// (elementwise kernels): `body` receives the `n_bufs` pointers, `begin` and `end`.
    pub(crate) fn define_n(
        &mut self,
        n_bufs: usize,
        body: impl FnOnce(&mut Emit, &[Value], Value, Value) -> Result<()>,
    ) -> Result<PendingId> {
        self.define_fn(&vec![true; n_bufs], &[], &[], |e, p| {
            body(e, &p[..n_bufs], p[n_bufs], p[n_bufs + 1])
        })
    }

    /// `define` for a function that calls the already defined functions `callees`, passing
    /// them its own buffer array ([`Emit::bufs`]), which must be as long as theirs: `body`
    /// receives `begin` and `end`. Such a function only calls (a conv's entry: prologue,
    /// then compute; Winograd's loop over positions), so it compiles as a driver: at
    /// `opt_level=speed` each took ~0.1 ms of Cranelift's time for 18-70 instructions
    /// (5 of SqueezeNet's 8).
    pub(crate) fn define_calling<L: Layout<Value>>(
        &mut self,
        callees: &[PendingId],
        body: impl FnOnce(&mut Emit, Value, Value) -> Result<()>,
    ) -> Result<PendingId> {
        if let Some(c) = callees.iter().find(|c| c.n_bufs != L::LEN) {
            return Err(Error::Codegen(format!(
                "a function with {} buffers calls one with {}",
                L::LEN,
                c.n_bufs
            )));
        }
        // The buffer pointers are not loaded: the callees load their own.
        self.as_driver(|km| {
            km.define_fn(&vec![false; L::LEN], callees, &[], |e, p| {
                body(e, p[L::LEN], p[L::LEN + 1])
            })
        })
    }

    /// Defines a function over a buffer array of `used.len()` pointers: `body` receives them
    /// (those `used` marks loaded, the others null), then `begin` and `end`.
    fn define_fn(
        &mut self,
        used: &[bool],
        callees: &[PendingId],
        micros: &[MicroId],
        body: impl FnOnce(&mut Emit, &[Value]) -> Result<()>,
    ) -> Result<PendingId> {
        let n_bufs = used.len();
        let t0 = Instant::now();
        let module = self.module.as_mut().expect("module present until finalize");
        let mut sig = Signature::new(module.isa().default_call_conv());
        for _ in 0..3 {
            sig.params.push(AbiParam::new(types::I64));
        }
        let name = format!("k{}", self.funcs.len());
        let fid = module
            .declare_function(&name, Linkage::Local, &sig)
            .map_err(codegen_err)?;
        self.ctx.func.signature = sig;
        self.ctx.func.name = UserFuncName::user(0, fid.as_u32());
        {
            let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
            let exp_ref = module.declare_func_in_func(self.exp_func, b.func);
            let prefetch_ref = module.declare_func_in_func(self.prefetch_func, b.func);
            let callees = callees
                .iter()
                .map(|c| module.declare_func_in_func(self.funcs[c.index], b.func))
                .collect();
            let micros = micros
                .iter()
                .map(|m| module.declare_func_in_func(self.funcs[m.index], b.func))
                .collect();
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let (bufs, begin, end) = {
                let p = b.block_params(entry);
                (p[0], p[1], p[2])
            };
            // The array is not written while the function runs (the caller holds it), is
            // 8-byte aligned and holds `n_bufs` pointers.
            let flags = MemFlagsData::new()
                .with_notrap()
                .with_aligned()
                .with_readonly();
            let mut params: Vec<_> = (used.iter().enumerate())
                .map(|(s, &u)| {
                    if u {
                        b.ins().load(types::I64, flags, bufs, (s * 8) as i32)
                    } else {
                        b.ins().iconst(types::I64, 0)
                    }
                })
                .collect();
            params.extend([begin, end]);
            let mut e = Emit {
                b,
                has_fma: self.has_fma,
                exp_ref,
                prefetch_ref,
                callees,
                micros,
                bufs,
            };
            if let Err(err) = body(&mut e, &params) {
                // Leave the reusable contexts clean for the next kernel.
                module.clear_context(&mut self.ctx);
                self.fctx = FunctionBuilderContext::new();
                return Err(err);
            }
            e.b.ins().return_(&[]);
            e.b.seal_all_blocks();
            e.b.finalize(module.target_config());
        }
        if let Some(dir) = std::env::var_os("CNNC_JIT_DUMP") {
            let path = std::path::Path::new(&dir).join(format!("{name}.clif"));
            let _ = std::fs::write(path, self.ctx.func.display().to_string());
        }
        let listing = self.listings.as_mut().map(|listings| {
            listings.push(KernelListing {
                label: self.label.clone(),
                symbol: name.clone(),
                clif: self.ctx.func.display().to_string(),
                asm: String::new(),
                code_bytes: 0,
                optimised: self.mode == Mode::Speed,
                compile_time: Duration::ZERO,
            });
            listings.len() - 1
        });
        let func = std::mem::replace(&mut self.ctx.func, Function::new());
        module.clear_context(&mut self.ctx);
        let cost_ns = func.dfg.num_insts() as u64 * self.mode.ns_per_inst();
        let cacheable = !std::mem::take(&mut self.next_uncacheable);
        self.pending.push(PendingFunction {
            fid,
            name,
            mode: self.mode,
            func: Mutex::new(func),
            listing,
            cost_ns,
            cacheable,
        });
        self.funcs.push(fid);
        self.build_time += t0.elapsed();
        Ok(PendingId {
            module: self.id,
            index: self.funcs.len() - 1,
            n_bufs,
        })
    }

    /// Compiles the functions defined since the last call, on `pool`'s threads (one
    /// Cranelift context each: code generation dominates the compile time of small
    /// networks), and installs their code in the module. [`KernelModule::finalize`] calls it;
    /// call it before to have the machine code in [`KernelModule::take_listings`] or to use
    /// threads.
    pub fn compile_pending(&mut self, pool: Option<&ThreadPool>) -> Result<()> {
        self.compile_pending_with(pool, &[], |_| Ok(()))?;
        Ok(())
    }

    /// [`KernelModule::compile_pending`], running `extra(j)` for each `j` of `extra_ns` (a
    /// job of about that many nanoseconds: packing weights) on the same threads, and
    /// returning their results in order. Jobs start longest first, compiles and extra jobs
    /// alike: each thread takes the next, so a long one taken last would leave the others
    /// idle at the end (Inception 3a's 5x5 driver, 0.45 ms of its ~1.2, was defined near
    /// the end). The functions are installed in the order they were defined, so the code
    /// is the same bytes at the same offsets whatever the threads.
    pub(crate) fn compile_pending_with<T: Send>(
        &mut self,
        pool: Option<&ThreadPool>,
        extra_ns: &[u64],
        extra: impl Fn(usize) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        let t0 = Instant::now();
        let pending = std::mem::take(&mut self.pending);
        let n = pending.len();
        let (mut compiled, keys) = self.take_from_cache(&pending);
        // Jobs `0..n` compile (those not found, and with the check those found too), `n..`
        // are the extra ones; longest first, ties in order.
        let check = self.code_cache_check;
        let mut order: Vec<usize> = (0..n).filter(|&i| compiled[i].is_none() || check).collect();
        order.extend(n..n + extra_ns.len());
        self.cache_misses += compiled.iter().filter(|c| c.is_none()).count();
        let cost = |i: usize| match i.checked_sub(n) {
            None => pending[i].cost_ns,
            Some(j) => extra_ns[j],
        };
        order.sort_by_key(|&i| std::cmp::Reverse(cost(i)));
        let targets = [&*self.target, &*self.quick_target, &*self.driver_target];
        let disasm = self.listings.is_some();
        // Read once here, not per function inside the jobs.
        let (cache, cap) = (self.cache, CodeCache::lock(self.cache).cap());
        // A thread makes a Cranelift context only for its first compile.
        let done = run_jobs(
            order.len(),
            pool,
            || None,
            |ctx, k| {
                let i = order[k];
                Ok(match i.checked_sub(n) {
                    None => {
                        let p = &pending[i];
                        let ctx = ctx.get_or_insert_with(Context::new);
                        let c = p.compile(ctx, targets[p.mode as usize], disasm)?;
                        if let Some(key) = &keys[i] {
                            CodeCache::lock(cache).insert_capped(key.clone(), c.code.clone(), cap);
                        }
                        Done::Code(c)
                    }
                    Some(j) => Done::Extra(extra(j)?),
                })
            },
        )?;
        let missing = || Error::Internal("a compile job left no result".into());
        let mut extras: Vec<Option<T>> = (0..extra_ns.len()).map(|_| None).collect();
        for (&i, d) in order.iter().zip(done) {
            match d {
                Done::Code(c) => match &compiled[i] {
                    // A hit, compiled again by the check.
                    Some(hit) => {
                        check_hit(&pending[i].name, &hit.code, &c.code)?;
                        self.compile_cpu += c.time;
                    }
                    None => compiled[i] = Some(c),
                },
                Done::Extra(t) => extras[i - n] = Some(t),
            }
        }
        for (p, c) in pending.iter().zip(compiled) {
            self.install(p, c.ok_or_else(missing)?)?;
        }
        self.build_time += t0.elapsed();
        extras.into_iter().map(|e| e.ok_or_else(missing)).collect()
    }

    /// The functions of `pending` this process compiled before, from the cache (a hit
    /// takes ~1 us per 1.3 KB of stencil hashed, a compile ~1.6 us per instruction), and
    /// the keys of those to keep there once compiled. Listings bypass the cache (a cached
    /// function has no disassembly), and so do functions that bake in a table's address.
    fn take_from_cache(
        &mut self,
        pending: &[PendingFunction],
    ) -> (Vec<Option<CompiledFunction>>, Vec<Option<CacheKeyHash>>) {
        let n = pending.len();
        let mut compiled: Vec<Option<CompiledFunction>> = (0..n).map(|_| None).collect();
        let mut keys: Vec<Option<CacheKeyHash>> = vec![None; n];
        if !self.code_cache || self.listings.is_some() {
            return (compiled, keys);
        }
        let targets = [&*self.target, &*self.quick_target, &*self.driver_target];
        for (i, p) in pending.iter().enumerate().filter(|(_, p)| p.cacheable) {
            let t = Instant::now();
            let func = p.func.lock().unwrap_or_else(|e| e.into_inner());
            let key = compute_cache_key(targets[p.mode as usize], &func);
            let hit = CodeCache::lock(self.cache).entries.get(&key);
            match hit {
                Some(code) => {
                    let relocs = resolve_relocs(&code, &func, p.fid);
                    let time = t.elapsed();
                    compiled[i] = Some(CompiledFunction {
                        code,
                        relocs,
                        asm: String::new(),
                        time,
                        hit: true,
                    });
                    self.cache_hits += 1;
                }
                None => {
                    keys[i] = Some(key);
                    // A miss's lookup counts too (a hit's is its whole cost, counted when
                    // it is installed).
                    self.compile_cpu += t.elapsed();
                }
            }
        }
        (compiled, keys)
    }

    /// Installs `c`, the code of `p`, in the module (and in the listings, the dump
    /// directory and, in tests, the record of what was installed).
    fn install(&mut self, p: &PendingFunction, c: CompiledFunction) -> Result<()> {
        self.compile_cpu += c.time;
        let module = self.module.as_mut().expect("module present until finalize");
        module
            .define_function_bytes(p.fid, c.code.alignment, &c.code.bytes, &c.relocs)
            .map_err(codegen_err)?;
        if let Some(dir) = std::env::var_os("CNNC_JIT_DUMP") {
            let path = std::path::Path::new(&dir).join(format!("{}.bin", p.name));
            let _ = std::fs::write(path, &c.code.bytes);
        }
        #[cfg(test)]
        self.installed
            .push((c.code.clone(), c.relocs.clone(), c.hit));
        if let (Some(listings), Some(i)) = (self.listings.as_mut(), p.listing) {
            listings[i].asm = c.asm;
            listings[i].code_bytes = c.code.bytes.len();
            listings[i].compile_time = c.time;
        }
        Ok(())
    }

    /// [`KernelModule::add_micro`] for the code `emit(spec)` makes, installed once per
    /// module: layers of different specs often call the same micro-kernels (DenseNet-121:
    /// 840 calls for 212 distinct ones), and emitting one costs about as much as compiling
    /// a small Cranelift function. The key is `what`, `n_params` and the spec's `Debug` form,
    /// which, derived, shows every field: `emit` must depend on nothing else.
    pub(crate) fn add_micro_once<S: std::fmt::Debug>(
        &mut self,
        n_params: usize,
        what: &str,
        spec: &S,
        emit: impl FnOnce(&S) -> Result<Vec<u8>>,
    ) -> Result<MicroId> {
        let key = format!("{what}/{n_params}: {spec:?}");
        if let Some(&id) = self.micros.get(&key) {
            return Ok(id);
        }
        let code = micro_get_or_emit(&key, || emit(spec))?;
        let id = self.add_micro(n_params, &code, what)?;
        self.micros.insert(key, id);
        Ok(id)
    }

    /// Installs machine code made outside Cranelift (an x86 micro-kernel from
    /// [`super::x86`]) as a function of `n_params` i64 arguments, System V: the module owns
    /// its memory like every other kernel's, and generated functions can call it.
    pub fn add_micro(&mut self, n_params: usize, code: &[u8], what: &str) -> Result<MicroId> {
        let t0 = Instant::now();
        let module = self.module.as_mut().expect("module present until finalize");
        let mut sig = Signature::new(module.isa().default_call_conv());
        sig.params
            .extend(std::iter::repeat_n(AbiParam::new(types::I64), n_params));
        let name = format!("k{}", self.funcs.len());
        let fid = module
            .declare_function(&name, Linkage::Local, &sig)
            .map_err(codegen_err)?;
        module
            .define_function_bytes(fid, 64, code, &[])
            .map_err(codegen_err)?;
        if let Some(listings) = self.listings.as_mut() {
            listings.push(KernelListing {
                label: self.label.clone(),
                symbol: name,
                clif: format!("; {what}: x86 machine code from iced-x86, no CLIF\n"),
                asm: super::x86::disassemble(code),
                code_bytes: code.len(),
                optimised: false,
                compile_time: Duration::ZERO,
            });
        }
        self.funcs.push(fid);
        self.build_time += t0.elapsed();
        Ok(MicroId {
            module: self.id,
            index: self.funcs.len() - 1,
        })
    }

    /// Finalizes every kernel at once (one `mprotect`), returning the executable code.
    pub fn finalize(mut self) -> Result<Arc<Compiled>> {
        self.compile_pending(None)?;
        let mut module = self.module.take().expect("module present until finalize");
        module.finalize_definitions().map_err(codegen_err)?;
        let ptrs = self
            .funcs
            .iter()
            .map(|&f| module.get_finalized_function(f) as usize)
            .collect();
        Ok(Arc::new(Compiled {
            module: Some(module),
            ptrs,
            id: self.id,
            _tables: std::mem::take(&mut self.tables),
        }))
    }
}

impl Drop for KernelModule {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            #[allow(unsafe_code)] // Unmapping the code memory.
            // SAFETY: nothing was finalized, so no function pointer into this memory escaped.
            unsafe {
                m.free_memory()
            };
        }
    }
}

/// How Cranelift compiles a function (the index of its target in `compile_pending`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `opt_level=speed`, the backtracking register allocator: loops Cranelift vectorises.
    Speed = 0,
    /// `opt_level=none` ([`KernelModule::quickly`]): straight-line code generated already
    /// in the form it should run.
    Quick = 1,
    /// `opt_level=none`, single-pass register allocation: loop nests whose work is done by
    /// the x86 micro-kernels they call.
    Driver = 2,
}

impl Mode {
    /// About what Cranelift takes per CLIF instruction (warm, Zen 5, session 15: SqueezeNet's
    /// drivers 0.08 ms for 167, its Winograd functions 0.14-0.27 ms for 81-151, the global
    /// pool at `speed` 0.22 ms for 141): to start the longest compiles first.
    fn ns_per_inst(self) -> u64 {
        match self {
            Mode::Speed | Mode::Quick => 1600,
            Mode::Driver => 500,
        }
    }
}

/// A function whose IR is built, waiting for [`KernelModule::compile_pending`].
struct PendingFunction {
    fid: FuncId,
    name: String,
    /// Which of the module's targets compiles it.
    mode: Mode,
    /// Taken by the thread that compiles it.
    func: Mutex<Function>,
    /// Its entry in the module's listings, to complete with the machine code.
    listing: Option<usize>,
    /// About what compiling it takes, in nanoseconds ([`Mode::ns_per_inst`]).
    cost_ns: u64,
    /// Whether its code may be kept in the [`CodeCache`] (it bakes in no table address).
    cacheable: bool,
}

/// What a job of [`KernelModule::compile_pending_with`] gives.
enum Done<T> {
    Code(CompiledFunction),
    Extra(T),
}

#[cfg(test)]
type Installed = Vec<(Arc<CachedCode>, Vec<ModuleReloc>, bool)>;

/// A compiled function's machine code, ready to install with `define_function_bytes`.
struct CompiledFunction {
    code: Arc<CachedCode>,
    /// `code`'s relocations, resolved against the function's own declarations.
    relocs: Vec<ModuleReloc>,
    /// The disassembly, when listings are kept.
    asm: String,
    time: Duration,
    /// Whether it came from the [`CodeCache`] (recorded for the tests only).
    #[cfg_attr(not(test), allow(dead_code))]
    hit: bool,
}

/// `code`'s relocations, resolved against the declarations of `func` (`fid`), whose
/// stencil it was compiled from: callee *k* of the stencil is `func`'s callee *k*.
fn resolve_relocs(code: &CachedCode, func: &Function, fid: FuncId) -> Vec<ModuleReloc> {
    (code.relocs.iter())
        .map(|r| ModuleReloc::from_mach_reloc(r, func, fid))
        .collect()
}

/// `CNNC_CODE_CACHE_CHECK`: an error unless `hit`, the cached code of function `name`, is
/// `fresh`, what Cranelift just compiled from the same IR.
fn check_hit(name: &str, hit: &CachedCode, fresh: &CachedCode) -> Result<()> {
    let differs = if hit.bytes != fresh.bytes {
        "bytes"
    } else if hit.alignment != fresh.alignment {
        "alignment"
    } else if hit.relocs != fresh.relocs {
        "relocations"
    } else {
        return Ok(());
    };
    Err(Error::Internal(format!(
        "kernel {name}: the code cache's {differs} differ from a fresh compile's"
    )))
}

impl PendingFunction {
    /// Compiles the function in `ctx` (what `Module::define_function` does, minus the
    /// installation, which needs the module and is done in order afterwards).
    fn compile(
        &self,
        ctx: &mut Context,
        target: &dyn cranelift_codegen::isa::TargetIsa,
        disasm: bool,
    ) -> Result<CompiledFunction> {
        ctx.clear();
        ctx.func = std::mem::replace(
            &mut *self.func.lock().unwrap_or_else(|e| e.into_inner()),
            Function::new(),
        );
        ctx.set_disasm(disasm);
        let t0 = Instant::now();
        ctx.compile(target, &mut ControlPlane::default())
            .map_err(|e| Error::Codegen(format!("kernel {}: {}", self.name, e.inner)))?;
        let code = ctx
            .compiled_code()
            .ok_or_else(|| Error::Internal(format!("kernel {}: no code", self.name)))?;
        let cached = CachedCode {
            bytes: code.code_buffer().into(),
            alignment: u64::from(code.buffer.alignment),
            relocs: code.buffer.relocs().into(),
        };
        let relocs = resolve_relocs(&cached, &ctx.func, self.fid);
        Ok(CompiledFunction {
            code: Arc::new(cached),
            relocs,
            asm: code.vcode.clone().unwrap_or_default(),
            time: t0.elapsed(),
            hit: false,
        })
    }
}

/// One generated function, for `cnnc compile --emit clif|asm`.
#[derive(Clone, Debug)]
pub struct KernelListing {
    /// The layer it was generated for.
    pub label: String,
    /// Its symbol in the module.
    pub symbol: String,
    /// Cranelift IR, before optimisation.
    pub clif: String,
    /// The machine code, as Cranelift prints it.
    pub asm: String,
    pub code_bytes: usize,
    /// Whether Cranelift's optimiser ran on it (`opt_level=speed`; see
    /// [`KernelModule::quickly`]); false for x86 micro-kernels.
    pub optimised: bool,
    /// What Cranelift took to compile it (with the disassembly listings ask for).
    pub compile_time: Duration,
}

/// Index of a kernel defined in a [`KernelModule`], before finalization.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingId {
    module: u64,
    index: usize,
    /// Length of the buffer array the function reads (it loads only slots below it).
    pub(crate) n_bufs: usize,
}

/// A function installed with [`KernelModule::add_micro`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MicroId {
    module: u64,
    index: usize,
}

/// A kernel that has been defined but not finalized; [`Compiled::get`] turns it into a kernel.
pub trait Pending {
    type Kernel;
    #[doc(hidden)]
    fn bind(self, code: &Arc<Compiled>) -> Result<Self::Kernel>;
}

/// Finalized, executable code of one [`KernelModule`].
pub struct Compiled {
    module: Option<JITModule>,
    ptrs: Vec<usize>,
    id: u64,
    _tables: Vec<Box<[i32]>>,
}

// `JITModule` is neither `Send` nor `Sync` (it holds raw pointers to the code memory).
// SAFETY: after finalization the module is never used again until `Drop`, which has exclusive
// access and only unmaps the memory: moving it to another thread with the last `Arc` is sound.
#[allow(unsafe_code)]
unsafe impl Send for Compiled {}
// SAFETY: through `&Compiled` only the immutable code addresses and tables are reachable, and
// the generated functions keep no state, so calling them from several threads at once is
// sound (each call writes only the output buffers it is given, see `Entry`).
#[allow(unsafe_code)]
unsafe impl Sync for Compiled {}

impl Compiled {
    /// The callable kernel for a handle returned by this module's `add_*` methods.
    pub fn get<P: Pending>(self: &Arc<Self>, pending: P) -> Result<P::Kernel> {
        pending.bind(self)
    }

    pub(crate) fn ptr(&self, id: PendingId) -> Result<*const u8> {
        if id.module != self.id {
            return Err(Error::Codegen(
                "kernel handle belongs to a different KernelModule".into(),
            ));
        }
        Ok(self.ptrs[id.index] as *const u8)
    }
}

impl Compiled {
    /// The entry point of a function installed with [`KernelModule::add_micro`].
    pub fn micro_ptr(&self, id: MicroId) -> Result<*const u8> {
        if id.module != self.id {
            return Err(Error::Codegen(
                "micro-kernel handle belongs to a different KernelModule".into(),
            ));
        }
        Ok(self.ptrs[id.index] as *const u8)
    }
}

impl Drop for Compiled {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            #[allow(unsafe_code)] // Unmapping the code memory.
            // SAFETY: `Compiled` is dropped when the last kernel holding its `Arc` is gone, so no
            // function pointer into this memory can be called any more.
            unsafe {
                m.free_memory()
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jit::test_values as values;
    use crate::jit::{ConvMethod, ConvSpec};

    #[test]
    fn code_memory_fills_few_mappings_in_order_aligned() {
        let mut c = Chunks::default();
        let a = c.allocate(100, 64).unwrap() as usize;
        let b = c.allocate(10, 64).unwrap() as usize;
        let d = c.allocate(3, 1).unwrap() as usize;
        let e = c.allocate(8, 16).unwrap() as usize;
        assert_eq!(a % 64, 0);
        assert_eq!(b, a + 128, "the next 64-byte boundary after the first");
        assert_eq!(d, b + 10);
        assert_eq!(e, (d + 3).next_multiple_of(16));
        assert!(c.full.is_empty(), "one mapping so far");
        // What does not fit goes to a mapping of its own, as large as it needs.
        let big = c.allocate(CODE_CHUNK + 1, 64).unwrap() as usize;
        assert_eq!(big % 64, 0);
        assert_eq!(c.full.len(), 1);
        let (open, used) = c.open.as_ref().unwrap();
        assert!(open.len() > CODE_CHUNK);
        assert_eq!(*used, big - open.as_ptr() as usize + CODE_CHUNK + 1);
        // Writable until protected (the last byte handed out, through the mapping).
        let (open, used) = c.open.as_mut().unwrap();
        open[*used - 1] = 0xc3;
        // Protected, executable; what comes next goes to a new mapping.
        c.protect(true).unwrap();
        assert_eq!((c.full.len(), c.protected.len()), (0, 2));
        assert!(c.open.is_none());
        let f = c.allocate(4, 4).unwrap() as usize;
        assert!(c.protected.iter().all(|m| {
            let base = m.as_ptr() as usize;
            f < base || f >= base + m.len()
        }));
        assert!(c.allocate(4, 3).is_err(), "an alignment not a power of two");
    }

    /// The outputs of `specs` (each by `method`, NaN-poisoned first) from one module at
    /// `isa`, its drivers compiled `quick`ly or not, and how many micro-kernels it holds.
    fn run(specs: &[(ConvSpec, ConvMethod)], isa: Isa, quick: bool) -> (Vec<Vec<f32>>, usize) {
        let mut km = KernelModule::new().unwrap();
        km.set_isa(isa).unwrap();
        km.keep_listings();
        km.quick_allowed = quick;
        let pending: Vec<_> = (specs.iter())
            .map(|(s, m)| km.add_conv_with(s, *m).unwrap())
            .collect();
        km.compile_pending(None).unwrap();
        let micros = km
            .take_listings()
            .iter()
            .filter(|l| l.clif.starts_with(';'))
            .count();
        let code = km.finalize().unwrap();
        let outs = specs.iter().zip(pending).map(|((s, _), p)| {
            let (w, b) = (values(s.weight_len(), 1), values(s.out_c, 2));
            let packed = p.pack_weights(&w, Some(&b)).unwrap();
            let k = code.get(p).unwrap();
            let mut out = vec![f32::NAN; s.output_len()];
            k.run_all(
                &values(s.input_len(), 4),
                &packed,
                Some(&values(s.output_len(), 3)),
                &mut out,
            )
            .unwrap();
            out
        });
        (outs.collect(), micros)
    }

    fn specs() -> Vec<(ConvSpec, ConvMethod)> {
        let mut v = Vec::new();
        // Pointwise GEMMs (channel tails, odd pixels), then direct convs on the implicit
        // GEMM (stride 2, 7x7, padding), twice each with another output count or input
        // size: the module shares the micro-kernels that come out the same.
        for (c, h, k, f, stride, pad, method) in [
            (37, 9, 45, 1, 1, 0, ConvMethod::PointwiseGemm),
            (37, 9, 19, 1, 1, 0, ConvMethod::PointwiseGemm),
            (64, 14, 70, 1, 1, 0, ConvMethod::PointwiseGemm),
            (24, 15, 33, 3, 2, 1, ConvMethod::Direct),
            (24, 15, 17, 3, 2, 1, ConvMethod::Direct),
            (3, 23, 16, 7, 2, 3, ConvMethod::Direct),
        ] {
            let mut s = ConvSpec::square(c, h, k, f, stride, pad);
            (s.bias, s.relu, s.residual) = (true, true, true);
            v.push((s, method));
        }
        v
    }

    /// Drivers compiled without the optimiser and with the single-pass register allocator
    /// give the same bits as optimised ones, at every ISA level; every output written.
    #[test]
    fn drivers_compiled_quickly_give_the_same_bits() {
        for isa in Isa::host_levels() {
            let ((quick, _), (optimised, _)) =
                (run(&specs(), isa, true), run(&specs(), isa, false));
            for ((q, o), (s, m)) in quick.iter().zip(&optimised).zip(specs()) {
                assert!(q.iter().all(|v| v.is_finite()), "{s:?} {m:?} at {isa}");
                let same = q.iter().zip(o).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{s:?} {m:?} at {isa}: the quick driver gives other bits"
                );
            }
        }
    }

    /// The batch-1 fc, compiled without the optimiser ([`KernelModule::quickly`]), gives
    /// the bits of the optimised one at every level: sse's f32x4 kernel (feature tails: not
    /// a multiple of 4 inputs, a partial last block of rows) and the wide kernel's driver;
    /// bias, ReLU and residual; every output written.
    #[test]
    fn fc_compiled_quickly_gives_the_same_bits() {
        let out = |quick: bool, spec: &crate::jit::FcSpec, isa: Isa| {
            let mut km = KernelModule::new().unwrap();
            km.set_isa(isa).unwrap();
            km.keep_listings();
            km.quick_allowed = quick;
            let p = km.add_fc(spec).unwrap();
            assert_quick_where_allowed(&mut km, quick, "CNNC_FC_OPT");
            let code = km.finalize().unwrap();
            let (w, b) = (
                values(spec.in_features * spec.out_features, 1),
                values(spec.out_features, 2),
            );
            let packed = p.pack_weights(&w, Some(&b)).unwrap();
            let k = code.get(p).unwrap();
            let mut o = vec![f32::NAN; spec.out_features];
            let res = values(spec.out_features, 3);
            k.run_all(&values(spec.in_features, 4), &packed, Some(&res), &mut o)
                .unwrap();
            o
        };
        for isa in Isa::host_levels() {
            for (c, k) in [(37, 19), (2048, 10), (5, 3), (64, 33)] {
                let mut spec = crate::jit::FcSpec::new(c, k, 1);
                (spec.bias, spec.relu, spec.residual) = (true, true, true);
                let (q, o) = (out(true, &spec, isa), out(false, &spec, isa));
                assert!(q.iter().all(|v| v.is_finite()), "{spec:?} at {isa}");
                let same = q.iter().zip(&o).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{spec:?} at {isa}: the quick fc gives other bits");
            }
        }
    }

    /// Compiles what `km` has pending and checks that some function skipped the optimiser
    /// exactly where `quick` allowed it (unless `knob` keeps the optimiser on), so that
    /// the same-bits tests compare two different compilations.
    fn assert_quick_where_allowed(km: &mut KernelModule, quick: bool, knob: &str) {
        km.compile_pending(None).unwrap();
        let listings = km.take_listings();
        if crate::knobs::forced(knob) == Some(true) {
            eprintln!("{knob}=1: both sides optimised");
            return;
        }
        let unoptimised = listings
            .iter()
            .any(|l| !l.optimised && !l.clif.starts_with(';'));
        assert_eq!(
            unoptimised, quick,
            "quick {quick}: a function without the optimiser"
        );
    }

    /// A network's softmax and global average pool, compiled without the optimiser, give
    /// the bits of the optimised ones (channel counts not a multiple of 4, planes of one
    /// pixel and of several); every output written.
    #[test]
    fn last_steps_compiled_quickly_give_the_same_bits() {
        use crate::jit::elementwise::EltSpec;
        let out = |quick: bool, spec: EltSpec, n_in: usize, n_out: usize| {
            let mut km = KernelModule::new().unwrap();
            km.keep_listings();
            km.quick_allowed = quick;
            let p = km.add_elementwise(&spec).unwrap();
            assert_quick_where_allowed(&mut km, quick, "CNNC_ELT_OPT");
            let code = km.finalize().unwrap();
            let k = code.get(p).unwrap();
            let mut o = vec![f32::NAN; n_out];
            k.run_all(&[&values(n_in, 5)], &mut o).unwrap();
            o
        };
        for (channels, hw) in [(10, 1), (1000, 1), (37, 9), (1000, 169), (6, 49)] {
            let n = channels * hw;
            for (spec, n_out) in [
                (EltSpec::Softmax { channels, hw }, n),
                (EltSpec::GlobalAvgPool { channels, hw }, channels),
            ] {
                let (q, o) = (out(true, spec, n, n_out), out(false, spec, n, n_out));
                assert!(q.iter().all(|v| v.is_finite()), "{spec:?}");
                let same = q.iter().zip(&o).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{spec:?}: quickly compiled, other bits");
            }
        }
    }

    /// A code cache of its own for one test (its cap fixed, whatever the environment and
    /// the other tests running in the process).
    fn private_cache() -> &'static Mutex<CodeCache> {
        Box::leak(Box::new(Mutex::new(CodeCache {
            cap: Some(CODE_CACHE_BYTES),
            ..Default::default()
        })))
    }

    /// A module of `specs` (each by `method`) at `isa`, taking functions from `cache` (each
    /// hit checked against a fresh compile) or compiling all, after `lead` other functions
    /// (so that the specs' functions have other `FuncId`s): its code, the pending kernels,
    /// each of the specs' functions as installed, and their cache counts.
    fn compile_specs(
        specs: &[(ConvSpec, ConvMethod)],
        isa: Isa,
        cache: Option<&'static Mutex<CodeCache>>,
        lead: usize,
    ) -> (
        Arc<Compiled>,
        Vec<super::super::PendingConv>,
        Installed,
        CodeCacheCounts,
    ) {
        let mut km = KernelModule::new().unwrap();
        km.set_isa(isa).unwrap();
        km.code_cache = cache.is_some();
        km.code_cache_check = true;
        if let Some(cache) = cache {
            km.cache = cache;
        }
        for c in 0..lead {
            km.define_n(1, |e, p, _, _| {
                let v = e.b.ins().iconst(types::I64, c as i64);
                e.b.ins()
                    .store(MemFlagsData::new().with_notrap(), v, p[0], 0);
                Ok(())
            })
            .unwrap();
        }
        km.compile_pending(None).unwrap();
        let (before, _) = (km.code_cache_counts(), std::mem::take(&mut km.installed));
        let pending: Vec<_> = (specs.iter())
            .map(|(s, m)| km.add_conv_with(s, *m).unwrap())
            .collect();
        km.compile_pending(None).unwrap();
        let (installed, after) = (std::mem::take(&mut km.installed), km.code_cache_counts());
        let counts = CodeCacheCounts {
            hits: after.hits - before.hits,
            compiled: after.compiled - before.compiled,
        };
        (km.finalize().unwrap(), pending, installed, counts)
    }

    /// `relocs` as text, with the module's own functions numbered as if `lead` functions
    /// declared before them were not there (`FuncId`s 0 and 1 are `exp` and `prefetch`).
    fn normalised(relocs: &[ModuleReloc], lead: u32) -> Vec<String> {
        use cranelift_module::ModuleRelocTarget as T;
        let own = |i: u32| if i >= 2 { i - lead } else { i };
        let r = relocs.iter().map(|r| {
            let target = match &r.name {
                T::User { namespace, index } => format!("user {namespace}:{}", own(*index)),
                T::FunctionOffset(f, o) => format!("func {} +{o}", own(f.as_u32())),
                other => format!("{other:?}"),
            };
            format!("{} {:?} {target} {}", r.offset, r.kind, r.addend)
        });
        r.collect()
    }

    /// The outputs of `pending` (compiled in `code`) on `specs`, NaN-poisoned first.
    fn run_specs(
        specs: &[(ConvSpec, ConvMethod)],
        code: &Arc<Compiled>,
        pending: Vec<super::super::PendingConv>,
    ) -> Vec<Vec<f32>> {
        let outs = specs.iter().zip(pending).map(|((s, _), p)| {
            let (w, b) = (values(s.weight_len(), 1), values(s.out_c, 2));
            let packed = p.pack_weights(&w, Some(&b)).unwrap();
            let k = code.get(p).unwrap();
            let mut out = vec![f32::NAN; s.output_len()];
            let res = values(s.output_len(), 3);
            k.run_all(&values(s.input_len(), 4), &packed, Some(&res), &mut out)
                .unwrap();
            assert!(out.iter().all(|v| v.is_finite()), "{s:?}");
            out
        });
        outs.collect()
    }

    /// A module compiled again takes its functions from the code cache, and they are the
    /// bytes, alignment and relocations (to the module's own micro-kernels and functions,
    /// at other addresses and with other `FuncId`s) of a fresh compile; the kernels give the
    /// same bits, also with the modules the code was first compiled for gone. At every ISA
    /// level; the f32x4 direct conv bakes a table's address in and is never cached.
    #[test]
    fn cached_functions_are_the_code_of_a_fresh_compile() {
        const LEAD: usize = 3;
        let mut specs = specs();
        // 3x3 stride 1 at 14x14: Winograd's transforms (`Quick`) and GEMM drivers.
        let mut w = ConvSpec::square(16, 14, 24, 3, 1, 1);
        (w.bias, w.relu, w.residual) = (true, true, true);
        specs.push((w, ConvMethod::Winograd));
        for isa in Isa::host_levels() {
            let cache = private_cache();
            let (fresh, fresh_p, fresh_code, counts) = compile_specs(&specs, isa, None, 0);
            assert_eq!(counts.hits, 0, "{isa}: the cache bypassed");
            let n = counts.compiled;
            let (first, first_p, _, counts) = compile_specs(&specs, isa, Some(cache), 0);
            assert_eq!((counts.hits, counts.compiled), (0, n), "{isa}");
            // Its functions are declared after `LEAD` others: other `FuncId`s.
            let (again, again_p, again_code, counts) =
                compile_specs(&specs, isa, Some(cache), LEAD);
            assert_eq!(counts.hits + counts.compiled, n);
            if isa == Isa::Sse {
                assert!(counts.hits > 0 && counts.compiled > 0, "{isa}: {counts:?}");
            } else {
                assert_eq!((counts.hits, counts.compiled), (n, 0), "{isa}");
            }
            assert_eq!(fresh_code.len(), again_code.len());
            // Those compiled again (a table's address baked in) differ.
            let mut remapped = 0;
            for (i, (f, a)) in fresh_code.iter().zip(&again_code).enumerate() {
                if !a.2 {
                    continue;
                }
                assert_eq!(f.0.bytes, a.0.bytes, "{isa}: function {i}'s bytes");
                assert_eq!(f.0.alignment, a.0.alignment, "{isa}: function {i}");
                let want = normalised(&f.1, 0);
                assert_eq!(want, normalised(&a.1, LEAD as u32), "{isa}: function {i}");
                remapped += usize::from(want != normalised(&a.1, 0));
            }
            assert!(remapped > 0, "{isa}: no relocation names another FuncId");
            let (want, first_out) = (
                run_specs(&specs, &fresh, fresh_p),
                run_specs(&specs, &first, first_p),
            );
            // The modules compiled first are unmapped: the cached code must call only its
            // own module's functions.
            drop((fresh, first));
            let got = run_specs(&specs, &again, again_p);
            for (j, ((w, g), f)) in want.iter().zip(&got).zip(&first_out).enumerate() {
                let same = |o: &[f32]| w.iter().zip(o).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same(g),
                    "{isa}: spec {j}, the module compiled from the cache"
                );
                assert!(same(f), "{isa}: spec {j}, the module that filled the cache");
            }
        }
    }

    /// A module of one function storing `c`, compiled with `cache` (and `check`ing hits):
    /// its cache counts.
    fn compile_constant(
        cache: &'static Mutex<CodeCache>,
        c: i64,
        check: bool,
    ) -> Result<CodeCacheCounts> {
        let mut km = KernelModule::new().unwrap();
        (km.code_cache, km.cache, km.code_cache_check) = (true, cache, check);
        km.define_n(1, |e, p, _, _| {
            let v = e.b.ins().iconst(types::I64, 0x5eed_c0de_0000 + c);
            let flags = MemFlagsData::new().with_notrap().with_aligned();
            e.b.ins().store(flags, v, p[0], 0);
            Ok(())
        })
        .unwrap();
        km.compile_pending(None)?;
        Ok(km.code_cache_counts())
    }

    /// A function that differs from a cached one only by a constant is compiled, not
    /// taken from the cache; the same function again is.
    #[test]
    fn a_function_with_another_constant_misses_the_code_cache() {
        let cache = private_cache();
        let counts = |c: i64| {
            let k = compile_constant(cache, c, false).unwrap();
            (k.hits, k.compiled)
        };
        assert_eq!(counts(1), (0, 1));
        assert_eq!(counts(1), (1, 0));
        assert_eq!(counts(2), (0, 1));
        assert_eq!(counts(2), (1, 0));
    }

    /// `CNNC_CODE_CACHE_CHECK`: a hit whose code is not what Cranelift compiles fails the
    /// compile with an error; the true code passes.
    #[test]
    fn the_check_finds_cached_code_that_differs() {
        let cache = private_cache();
        let counts = |check| {
            let k = compile_constant(cache, 3, check).map_err(|e| e.to_string());
            k.map(|k| (k.hits, k.compiled))
        };
        assert_eq!(counts(true), Ok((0, 1)));
        assert_eq!(counts(true), Ok((1, 0)));
        let corrupt = |f: &dyn Fn(&mut CachedCode)| {
            let mut c = CodeCache::lock(cache);
            let entry = c.entries.map.values_mut().next().unwrap();
            let mut code = CachedCode {
                bytes: entry.bytes.clone(),
                alignment: entry.alignment,
                relocs: entry.relocs.clone(),
            };
            f(&mut code);
            *entry = Arc::new(code);
        };
        corrupt(&|c| c.alignment *= 2);
        let err = counts(true).unwrap_err();
        assert!(err.contains("alignment differ"), "{err}");
        corrupt(&|c| c.bytes[0] ^= 1);
        let err = counts(true).unwrap_err();
        assert!(err.contains("bytes differ"), "{err}");
        // Without the check, the entry is taken as it is.
        assert_eq!(counts(false), Ok((1, 0)));
    }

    /// The code cache keeps what fits under its cap and no more.
    #[test]
    fn the_code_cache_holds_its_cap() {
        let isa = host_isa("none", "single_pass").unwrap();
        let key = |c: i64| {
            let mut func = Function::new();
            let mut fctx = FunctionBuilderContext::new();
            let mut b = FunctionBuilder::new(&mut func, &mut fctx);
            let block = b.create_block();
            b.switch_to_block(block);
            b.ins().iconst(types::I64, c);
            b.ins().return_(&[]);
            b.seal_all_blocks();
            b.finalize(isa.frontend_config());
            compute_cache_key(&*isa, &func)
        };
        let code = || {
            Arc::new(CachedCode {
                bytes: vec![0xC3; 1000].into(),
                alignment: 16,
                relocs: Box::new([]),
            })
        };
        let size = code().footprint();
        let mut cache = CodeCache::default();
        for c in 0..10 {
            cache.insert_capped(key(c), code(), 3 * size + size / 2);
        }
        let e = &cache.entries;
        assert_eq!((e.map.len(), e.bytes), (3, 3 * size));
        assert!(e.map.contains_key(&key(2)) && !e.map.contains_key(&key(3)));
        // The same key again is not counted twice.
        cache.insert_capped(key(0), code(), 10 * size);
        assert_eq!(
            (cache.entries.map.len(), cache.entries.bytes),
            (3, 3 * size)
        );
    }

    /// A micro-kernel is emitted once per process: a second module installs the bytes the
    /// first emitted, a spec never seen is emitted.
    #[test]
    fn micro_kernels_are_emitted_once_per_process() {
        let calls = std::cell::Cell::new(0);
        // `ret`, then a key unique to this test.
        let emit = |_: &String| {
            calls.set(calls.get() + 1);
            Ok(vec![0xC3])
        };
        let key = format!("micro cache test {:?}", std::thread::current().id());
        for _ in 0..2 {
            let mut km = KernelModule::new().unwrap();
            km.add_micro_once(0, "test", &key, emit).unwrap();
            km.add_micro_once(0, "test", &format!("{key} other"), emit)
                .unwrap();
            km.finalize().unwrap();
        }
        assert_eq!(calls.get(), 2);
    }

    /// Layers that call the same micro-kernels share them, and each layer's output is the
    /// same bits as from a module of its own.
    #[test]
    fn layers_share_identical_micro_kernels() {
        for isa in Isa::host_levels().into_iter().filter(|&i| i != Isa::Sse) {
            let (together, shared) = run(&specs(), isa, true);
            let mut alone_micros = 0;
            for (i, spec) in specs().into_iter().enumerate() {
                let (alone, micros) = run(&[spec], isa, true);
                alone_micros += micros;
                let same = alone[0].iter().zip(&together[i]);
                assert!(
                    same.into_iter().all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{spec:?}"
                );
            }
            assert!(
                shared < alone_micros,
                "{isa}: {shared} micro-kernels, {alone_micros} apart"
            );
        }
    }
}
