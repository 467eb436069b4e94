//! The activation arena at run time: floats whose first one sits on a cache line (the
//! plan's offsets are multiples of 64 bytes, so every buffer does), and a step's view of
//! it: its output region writable, the rest readable.
use crate::error::{Error, Result};
use crate::lower::memory::ALIGN_FLOATS;
use crate::lower::{Region, View};

/// Bytes of a cache line: where the arena's first float, and so every buffer, starts.
pub(crate) const LINE_BYTES: usize = 4 * ALIGN_FLOATS;

/// `len` zeroed floats starting on a 64-byte boundary (on huge pages when large: see
/// [`crate::memory::HugeBuf`]). Safe code: a buffer with up to 15 floats of slack, the
/// start chosen by the buffer's address (which never changes: it is never resized).
/// Allocated fallibly: too little memory is an error naming `what`, not an abort.
pub struct AlignedBuf {
    buf: crate::memory::HugeBuf,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn zeroed(len: usize, what: &str) -> Result<Self> {
        let buf = crate::memory::HugeBuf::zeroed(len + ALIGN_FLOATS - 1, what)?;
        // An f32 is 4-byte aligned, so the distance to the next line is whole floats.
        let start = (LINE_BYTES - buf.as_ptr() as usize % LINE_BYTES) % LINE_BYTES / 4;
        Ok(AlignedBuf { buf, start, len })
    }
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// What a step reads: the arena on either side of its output region, and the caller's
/// input when the run reads it in place (a full batch chunk: no copy into the arena).
pub struct Inputs<'a> {
    left: &'a [f32],
    right: &'a [f32],
    /// The output region's offset and end in the arena.
    start: usize,
    end: usize,
    model_input: Option<&'a [f32]>,
}

impl<'a> Inputs<'a> {
    /// The whole arena, for a step that writes a caller's output tensor instead.
    pub fn all(arena: &'a [f32]) -> Self {
        Inputs {
            left: arena,
            right: &[],
            start: arena.len(),
            end: arena.len(),
            model_input: None,
        }
    }

    /// Reads the graph input's values from `x` (the batch chunk in the caller's memory)
    /// rather than from the arena.
    pub fn with_model_input(self, x: Option<&'a [f32]>) -> Self {
        Inputs {
            model_input: x,
            ..self
        }
    }

    /// The items of `view` (`from_model_input`: a view of the graph input).
    pub fn span(&self, view: &View, from_model_input: bool) -> Result<&'a [f32]> {
        match self.model_input {
            Some(x) if from_model_input => Ok(x),
            _ => self.get(view.region),
        }
    }

    /// The input region `r` (the plan never lets it overlap the step's output, but for a
    /// residual read in place, which is not fetched).
    fn get(&self, r: Region) -> Result<&'a [f32]> {
        if r.end() <= self.start {
            Ok(&self.left[r.range()])
        } else if r.offset >= self.end {
            Ok(&self.right[r.offset - self.end..r.end() - self.end])
        } else {
            Err(Error::Internal(format!(
                "input region {r:?} overlaps the output {}..{}",
                self.start, self.end
            )))
        }
    }
}

/// The output region as `&mut` and the rest of the arena, from which the inputs are read.
pub fn split_io(arena: &mut [f32], output: Region) -> (Inputs<'_>, &mut [f32]) {
    let (left, rest) = arena.split_at_mut(output.offset);
    let (out, right) = rest.split_at_mut(output.len);
    let ins = Inputs {
        left,
        right,
        start: output.offset,
        end: output.end(),
        model_input: None,
    };
    (ins, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arena_starts_on_a_cache_line() {
        for len in [0, 1, 16, 1000] {
            let mut a = AlignedBuf::zeroed(len, "a test").unwrap();
            let s = a.as_mut_slice();
            assert_eq!(s.len(), len);
            assert_eq!(s.as_ptr() as usize % 64, 0);
        }
    }
}
