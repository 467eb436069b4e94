//! Activation memory planned at compile time: every buffer gets an offset in one arena,
//! and a buffer's space is reused once its last reader has run.

/// A planned buffer: `len` floats at `offset` in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub offset: usize,
    pub len: usize,
}

impl Region {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
    pub fn overlaps(&self, other: &Region) -> bool {
        self.offset < other.offset + other.len && other.offset < self.offset + self.len
    }
}

/// First-fit allocation over a free list, coalescing on release.
#[derive(Default)]
pub struct ArenaPlanner {
    /// Free holes below `top`, sorted by offset, never adjacent.
    free: Vec<Region>,
    top: usize,
}

impl ArenaPlanner {
    pub fn alloc(&mut self, len: usize) -> Region {
        // Round to 16 floats (64 bytes) so every buffer starts on a cache line.
        let len = len.max(1).div_ceil(16) * 16;
        if let Some(i) = self.free.iter().position(|h| h.len >= len) {
            let hole = self.free[i];
            if hole.len == len {
                self.free.remove(i);
            } else {
                self.free[i] = Region {
                    offset: hole.offset + len,
                    len: hole.len - len,
                };
            }
            return Region {
                offset: hole.offset,
                len,
            };
        }
        // Grow the top, absorbing a free hole that ends there.
        let mut offset = self.top;
        if let Some(last) = self.free.last() {
            if last.offset + last.len == self.top {
                offset = last.offset;
                self.free.pop();
            }
        }
        self.top = offset + len;
        Region { offset, len }
    }

    pub fn release(&mut self, r: Region) {
        let len = r.len.max(1).div_ceil(16) * 16;
        let mut r = Region {
            offset: r.offset,
            len,
        };
        let i = self.free.partition_point(|h| h.offset < r.offset);
        // Merge with the hole after, then the one before.
        if i < self.free.len() && r.offset + r.len == self.free[i].offset {
            r.len += self.free[i].len;
            self.free.remove(i);
        }
        if i > 0 && self.free[i - 1].offset + self.free[i - 1].len == r.offset {
            self.free[i - 1].len += r.len;
        } else {
            self.free.insert(i, r);
        }
        if let Some(last) = self.free.last() {
            if last.offset + last.len == self.top {
                self.top = last.offset;
                self.free.pop();
            }
        }
    }

    /// The arena size needed so far (the high-water mark is tracked by the caller).
    pub fn top(&self) -> usize {
        self.top
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_space_is_reused_and_live_buffers_never_overlap() {
        let mut p = ArenaPlanner::default();
        let a = p.alloc(100);
        let b = p.alloc(50);
        assert!(!a.overlaps(&b));
        p.release(a);
        let c = p.alloc(60);
        assert_eq!(c.offset, a.offset, "the hole left by `a` is reused");
        assert!(!c.overlaps(&b));
        let d = p.alloc(200);
        assert!(!d.overlaps(&b) && !d.overlaps(&c));
        p.release(b);
        p.release(c);
        p.release(d);
        assert_eq!(
            p.top(),
            0,
            "everything released shrinks the arena to nothing"
        );
    }
}
