//! Buffers placed right against an inaccessible guard page (after their end or before their
//! start), so a kernel's out-of-bounds load or store crashes the test (tests/jit_guard_pages.rs,
//! tests/jit_weight_major_parts.rs).

/// `n` floats whose end (or start) touches a PROT_NONE page.
pub struct Guarded {
    base: *mut libc::c_void,
    map_len: usize,
    ptr: *mut f32,
    n: usize,
}

impl Guarded {
    pub fn new(n: usize, guard_after: bool, fill: f32) -> Self {
        let page = 4096usize;
        let bytes = (n * 4).div_ceil(page) * page;
        let map_len = bytes + 2 * page;
        // SAFETY: plain anonymous mapping, then protection changes within it.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(base, libc::MAP_FAILED);
            let b = base as *mut u8;
            assert_eq!(libc::mprotect(base, page, libc::PROT_NONE), 0);
            assert_eq!(
                libc::mprotect(b.add(page + bytes) as *mut _, page, libc::PROT_NONE),
                0
            );
            let start = if guard_after {
                b.add(page + bytes - n * 4)
            } else {
                b.add(page)
            };
            let ptr = start as *mut f32;
            for i in 0..n {
                *ptr.add(i) = fill;
            }
            Guarded {
                base,
                map_len,
                ptr,
                n,
            }
        }
    }
    pub fn from(v: &[f32], guard_after: bool) -> Self {
        let g = Self::new(v.len(), guard_after, 0.0);
        // SAFETY: `g` holds v.len() writable floats.
        unsafe { std::slice::from_raw_parts_mut(g.ptr, g.n) }.copy_from_slice(v);
        g
    }
    pub fn s(&self) -> &[f32] {
        // SAFETY: n floats, initialised in `new`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.n) }
    }
    pub fn m(&mut self) -> &mut [f32] {
        // SAFETY: as above, and `&mut self` makes it exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.n) }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.base, self.map_len) };
    }
}
