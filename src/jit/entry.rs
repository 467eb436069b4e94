//! [`Entry`]: the one place that calls generated code.
//!
//! Every function [`KernelModule::define`](super::KernelModule) generates has the same
//! signature, `extern "C" fn(bufs: *const *mut f32, begin: i64, end: i64)`: it loads its
//! buffer pointers from the array `bufs` and computes the work units `begin..end`. An `Entry`
//! is made when a kernel is bound to its finalized code, from the same spec the code was
//! generated from: the function, its number of work units and, for each slot of `bufs`, what
//! the code does with it ([`Slot`]). Its safe methods check the caller's buffers against the
//! slots and the range against the units, then make the call. The kernel families
//! (`ConvKernel`, `FcKernel`, `PoolKernel`, `EltKernel`) are typed front ends to entries.
use std::ops::Range;
use std::sync::Arc;

use super::module::{Compiled, PendingId};
use super::threads::ThreadPool;
use crate::error::{Error, Result};
use crate::lower::memory::ALIGN_FLOATS as ALIGN;

/// The uniform signature of generated functions.
type KernelFn = unsafe extern "C" fn(*const *mut f32, i64, i64);

/// What the generated code does with one buffer slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Reads up to `len` floats.
    Read,
    /// Reads and writes up to `len` floats; the units of disjoint ranges write disjoint
    /// elements (so ranges may run on different threads with one shared buffer).
    Write,
    /// Reads and writes up to `len` floats whatever the range (temporary storage): on a thread
    /// pool every part gets its own `len` floats.
    Temp,
    /// Not touched: the slot holds null.
    Absent,
}

/// One slot of a kernel function's buffer array.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    /// For error messages, e.g. "conv input".
    name: &'static str,
    /// Floats the code may touch (for `Temp`, per part).
    len: usize,
    access: Access,
    /// Whether the buffer must hold exactly `len` floats (tensors) or may hold more (scratch).
    exact: bool,
}

impl Slot {
    /// A tensor of exactly `len` floats the code only reads.
    pub(crate) fn read(name: &'static str, len: usize) -> Self {
        Slot {
            name,
            len,
            access: Access::Read,
            exact: true,
        }
    }
    /// `read` when `present`, else `absent` (an optional operand such as a residual).
    pub(crate) fn read_if(present: bool, name: &'static str, len: usize) -> Self {
        if present {
            Slot::read(name, len)
        } else {
            Slot::absent(name)
        }
    }
    /// A tensor of exactly `len` floats the code writes, disjoint elements per unit.
    pub(crate) fn write(name: &'static str, len: usize) -> Self {
        Slot {
            name,
            len,
            access: Access::Write,
            exact: true,
        }
    }
    /// Scratch memory of at least `len` floats that each call uses whole (per thread on a
    /// pool: the buffer then holds `len * threads` floats).
    pub(crate) fn temp(name: &'static str, len: usize) -> Self {
        Slot {
            name,
            len,
            access: Access::Temp,
            exact: false,
        }
    }
    /// A slot the code does not touch.
    pub(crate) fn absent(name: &'static str) -> Self {
        Slot {
            name,
            len: 0,
            access: Access::Absent,
            exact: true,
        }
    }
    /// Accepts a longer buffer (scratch shared between the units of a split).
    pub(crate) fn or_longer(mut self) -> Self {
        self.exact = false;
        self
    }
}

/// A kernel family's buffer array, in slot order: a struct with one field per slot, generic
/// over what each slot holds (the [`Slot`] the entry is bound with, the caller's [`Buf`], the
/// generated code's pointer `Value`), so that the order is written once, in its declaration.
pub(crate) trait Layout<T>: Sized {
    /// Number of slots.
    const LEN: usize;
    /// The layout of the slots `s` (in order; `s.len() == LEN`).
    fn from_slice(s: &[T]) -> Self;
}

/// Declares a [`Layout`]: `slot_layout! { /// docs \n pub(crate) struct Name { a, b, c } }`
/// makes `Name<T>` with the fields `a`, `b`, `c` (slots 0, 1, 2) and `into_array`.
macro_rules! slot_layout {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($(#[$fmeta:meta])* $field:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug)]
        $vis struct $name<T> {
            $($(#[$fmeta])* pub(crate) $field: T,)+
        }
        impl<T> $name<T> {
            /// The slots in order.
            pub(crate) fn into_array(self) -> [T; [$(stringify!($field)),+].len()] {
                [$(self.$field),+]
            }
        }
        impl<T: Copy> $crate::jit::entry::Layout<T> for $name<T> {
            const LEN: usize = [$(stringify!($field)),+].len();
            fn from_slice(s: &[T]) -> Self {
                let mut it = s.iter().copied();
                let layout = $name {
                    $($field: it.next().expect("one value per slot"),)+
                };
                debug_assert!(it.next().is_none(), "one value per slot");
                layout
            }
        }
    };
}
pub(crate) use slot_layout;

/// A caller's buffer for one slot.
pub(crate) enum Buf<'a> {
    In(&'a [f32]),
    Out(&'a mut [f32]),
    None,
}

impl<'a> Buf<'a> {
    /// `In` when given, else `None`.
    pub(crate) fn opt(x: Option<&'a [f32]>) -> Self {
        x.map_or(Buf::None, Buf::In)
    }
}

/// A generated function bound to the lengths it may touch; see the module docs.
pub(crate) struct Entry {
    /// Keeps the code alive.
    _code: Arc<Compiled>,
    f: KernelFn,
    units: usize,
    slots: Box<[Slot]>,
    /// Chunks per thread on a pool ([`ThreadPool::split_in_chunks`]).
    chunks_per_part: usize,
    /// On a pool, thread `t`'s part of a `Temp` buffer starts at `t` times the buffer's
    /// length over the threads (whole cache lines): the same place for every kernel given
    /// the same whole buffer (not the polyphase convs, which get a tail of it, nor a
    /// buffer too short for the rounded share: the stride falls back to the slot's), so
    /// that no thread overwrites lines another thread's part held in another kernel
    /// (`CNNC_SCRATCH_FIXED=0`: at `t` times the slot's length, as before session 14).
    temp_fixed: bool,
}

/// Buffer arrays up to this length live on the stack (an elementwise kernel's inputs on the
/// stack and its output: a run allocates nothing).
const INLINE: usize = super::elementwise::STACK_INPUTS + 1;

impl Entry {
    /// Binds the function `id` of `code` to `units` and `slots`. This is the contract between
    /// a code generator and the `unsafe` call below: each kernel family's `bind` derives the
    /// slots from the same spec its generator emitted the function from, so that they state
    /// every buffer the code touches, how, and how many floats at most.
    pub(crate) fn new(
        code: &Arc<Compiled>,
        id: PendingId,
        units: usize,
        slots: impl Into<Vec<Slot>>,
    ) -> Result<Self> {
        let slots = slots.into();
        if slots.len() != id.n_bufs {
            return Err(Error::Internal(format!(
                "kernel function reads {} buffers, bound with {}",
                id.n_bufs,
                slots.len()
            )));
        }
        let ptr = code.ptr(id)?;
        #[allow(unsafe_code)] // The one conversion of generated code to a Rust function.
        // SAFETY: every function a `KernelModule` defines has the signature of `KernelFn`
        // (`define_fn`: three i64 parameters, no result, the platform's C calling convention),
        // and `ptr` is its finalized address in `code`, which `_code` keeps mapped.
        let f = unsafe { std::mem::transmute::<*const u8, KernelFn>(ptr) };
        Ok(Entry {
            _code: code.clone(),
            f,
            units,
            slots: slots.into(),
            chunks_per_part: super::threads::CHUNKS_PER_PART,
            temp_fixed: !crate::knobs::off("CNNC_SCRATCH_FIXED"),
        })
    }

    /// On a pool, each thread's part in `n` chunks (each call of the code costs something
    /// whatever its range: fewer, larger chunks for code whose fixed cost is large).
    pub(crate) fn with_chunks_per_part(mut self, n: usize) -> Self {
        self.chunks_per_part = n.max(1);
        self
    }

    /// Work units: `run` computes those in a range of `0..units()`.
    pub(crate) fn units(&self) -> usize {
        self.units
    }

    /// Computes the units in `range` on the calling thread.
    pub(crate) fn run(&self, bufs: &mut [Buf], range: Range<usize>) -> Result<()> {
        check_range(&range, self.units)?;
        let (addrs, strides) = self.addresses(bufs, 1)?;
        self.call(&addrs, &strides, 0, range);
        Ok(())
    }

    /// Computes all units, split across `pool`'s threads (a `temp` slot needs `len` floats
    /// per thread).
    pub(crate) fn run_parallel(&self, pool: &ThreadPool, bufs: &mut [Buf]) -> Result<()> {
        let (addrs, strides) = self.addresses(bufs, pool.threads())?;
        pool.split_in_chunks(self.units, self.chunks_per_part, |part, range| {
            self.call(&addrs, &strides, part, range)
        });
        Ok(())
    }

    /// Checks `bufs` against the slots for a split into `parts`; returns their addresses
    /// (as integers, so that the pool's threads may share them) and for each `Temp` slot the
    /// bytes between consecutive parts' scratch (0 for the others).
    fn addresses(&self, bufs: &mut [Buf], parts: usize) -> Result<(Addrs, Addrs)> {
        if bufs.len() != self.slots.len() {
            return Err(Error::Internal(format!(
                "kernel takes {} buffers, got {}",
                self.slots.len(),
                bufs.len()
            )));
        }
        let mut addrs = Addrs::new(bufs.len());
        let mut strides = Addrs::new(bufs.len());
        for (((buf, slot), a), stride) in (bufs.iter_mut().zip(&self.slots))
            .zip(addrs.slice_mut())
            .zip(strides.slice_mut())
        {
            let (ptr, len) = match (slot.access, buf) {
                (Access::Absent, Buf::None) => {
                    *a = 0;
                    continue;
                }
                (Access::Absent, _) => {
                    return Err(Error::Input(format!(
                        "{}: none expected, but one was given",
                        slot.name
                    )))
                }
                (_, Buf::None) => return Err(Error::Input(format!("{} missing", slot.name))),
                (Access::Read, Buf::In(x)) => (x.as_ptr() as usize, x.len()),
                (Access::Write | Access::Temp, Buf::Out(x)) => (x.as_mut_ptr() as usize, x.len()),
                (access, _) => {
                    return Err(Error::Internal(format!(
                        "{}: wrong kind of buffer for {access:?}",
                        slot.name
                    )))
                }
            };
            let need = if slot.access == Access::Temp {
                slot.len
                    .checked_mul(parts)
                    .ok_or_else(|| Error::Input(format!("{}: scratch size overflows", slot.name)))?
            } else {
                slot.len
            };
            if slot.exact && len != need {
                return Err(Error::Input(format!(
                    "{}: expected {need} floats, got {len}",
                    slot.name
                )));
            }
            if len < need {
                return Err(Error::Input(format!(
                    "{}: need {need} floats, got {len}",
                    slot.name
                )));
            }
            *a = ptr;
            if slot.access == Access::Temp {
                *stride = temp_stride(len, parts, slot.len, self.temp_fixed) * 4;
            }
        }
        Ok((addrs, strides))
    }

    /// The one call into generated code: part `part` of a split, units `range`.
    fn call(&self, addrs: &Addrs, strides: &Addrs, part: usize, range: Range<usize>) {
        let mut ptrs = Addrs::new(self.slots.len());
        for ((p, &a), &stride) in ptrs
            .slice_mut()
            .iter_mut()
            .zip(addrs.slice())
            .zip(strides.slice())
        {
            *p = a + part * stride;
        }
        let bufs = ptrs.slice().as_ptr() as *const *mut f32;
        #[allow(unsafe_code)] // The one call into generated code.
        // SAFETY: `addresses` checked every buffer against its slot and `run` checked the
        // range (`split` gives parts of `0..units`). The code was generated from the same spec
        // as the slots, so for the units in `range` it touches only the first `len` floats of
        // each slot's buffer (reading `Read` slots only; `Absent` slots are null and never
        // dereferenced), and reads only the `slots.len()` entries of `bufs`. Written buffers
        // (`Write`, `Temp`) came from `&mut` slices, so nothing else aliases them while the
        // call runs. With a pool, concurrent calls get disjoint ranges, whose units write
        // disjoint elements of `Write` buffers, and disjoint `len`-float parts of `Temp`
        // buffers (part `part`, below the pool's thread count as `split_in_chunks` gives
        // it, starts at `part` strides of at least `len` floats, the last part ending
        // within the buffer: `addresses`).
        unsafe {
            (self.f)(bufs, range.start as i64, range.end as i64)
        };
    }
}

/// Floats from one thread's part of a `Temp` buffer of `len` floats to the next, for parts
/// of `part` floats on `parts` threads (`len >= part * parts`, checked before): the buffer's
/// share per thread in whole cache lines (`fixed`), else `part`. Part `p` is floats
/// `p * stride..p * stride + part`: disjoint from the others since `stride >= part`, and
/// within `len` since `parts * stride <= len`.
fn temp_stride(len: usize, parts: usize, part: usize, fixed: bool) -> usize {
    let share = len / parts.max(1) / ALIGN * ALIGN;
    if fixed && share >= part {
        share
    } else {
        part
    }
}

/// Buffer addresses, on the stack when few.
enum Addrs {
    Inline([usize; INLINE], usize),
    Heap(Vec<usize>),
}

impl Addrs {
    fn new(n: usize) -> Self {
        if n <= INLINE {
            Addrs::Inline([0; INLINE], n)
        } else {
            Addrs::Heap(vec![0; n])
        }
    }
    fn slice(&self) -> &[usize] {
        match self {
            Addrs::Inline(a, n) => &a[..*n],
            Addrs::Heap(v) => v,
        }
    }
    fn slice_mut(&mut self) -> &mut [usize] {
        match self {
            Addrs::Inline(a, n) => &mut a[..*n],
            Addrs::Heap(v) => v,
        }
    }
}

/// Checks a buffer length against the length its spec implies.
pub(crate) fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Input(format!(
            "{what}: expected {want} floats, got {got}"
        )));
    }
    Ok(())
}

fn check_range(range: &Range<usize>, units: usize) -> Result<()> {
    if range.start > range.end || range.end > units {
        return Err(Error::Input(format!(
            "work range {range:?} outside 0..{units}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_parts_are_disjoint_in_bounds_and_fixed_per_thread() {
        for parts in 1..=5 {
            for part in [0, 1, 15, 16, 17, 1000, 120_768] {
                for extra in [0, 1, 37, 5000, 400_000] {
                    let len = part * parts + extra;
                    for fixed in [false, true] {
                        let stride = temp_stride(len, parts, part, fixed);
                        assert!(stride >= part, "{len} {parts} {part}");
                        assert!((parts - 1) * stride + part <= len, "{len} {parts} {part}");
                    }
                }
            }
        }
        // Two kernels of different parts sharing one buffer: each thread's part starts at
        // the same place for both (on whole cache lines), so neither thread writes where the
        // other's part was.
        let len = 408_960 + 7;
        let (a, b) = (
            temp_stride(len, 2, 120_768, true),
            temp_stride(len, 2, 89_168, true),
        );
        assert_eq!(a, b);
        assert_eq!(a % ALIGN, 0);
        assert_eq!(temp_stride(len, 2, 89_168, false), 89_168);
    }
}
