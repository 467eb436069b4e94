//! Output buffers that several threads fill at once, each through its own work range.
use std::marker::PhantomData;

/// A kernel's output, written by concurrent calls with disjoint work ranges.
///
/// It is made from an exclusive borrow, so nothing outside the kernel calls can read or
/// write the buffer while it exists. Every kernel writes only the output elements of
/// the work units in the range it is given (documented on each kernel's `work_units`),
/// so calls with disjoint ranges never touch the same element, and sharing the buffer
/// between them is free of data races.
pub struct SharedOut<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: see the type's doc: concurrent users write disjoint elements only.
unsafe impl Send for SharedOut<'_> {}
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    pub fn new(out: &'a mut [f32]) -> Self {
        SharedOut {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            _borrow: PhantomData,
        }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub(crate) fn as_mut_ptr(&self) -> *mut f32 {
        self.ptr
    }
}

impl SharedOut<'_> {
    /// The `len` elements from `start`, for a kernel that fills one batch item.
    pub fn part(&self, start: usize, len: usize) -> Option<SharedOut<'_>> {
        (start.checked_add(len)? <= self.len).then(|| SharedOut {
            // SAFETY: `start + len <= self.len`, so the pointer stays inside the buffer.
            ptr: unsafe { self.ptr.add(start) },
            len,
            _borrow: PhantomData,
        })
    }
}
