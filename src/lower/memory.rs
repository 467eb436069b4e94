//! Memory planning, as passes over a [`Plan`]: channel shuffles read in place by the
//! depthwise convs after them ([`read_shuffles_in_place`]), concat inputs written in
//! place ([`place_concat_inputs`]), convs writing their output over a dead residual
//! ([`read_residuals_in_place`]), then liveness and arena offsets ([`assign_arena`]).
use super::{HostOp, Kernel, Plan, Storage, ValueId};
use crate::error::{Error, Result};

/// The most activation memory a plan may use (floats): 16 GiB.
pub const ARENA_LIMIT: u64 = 1 << 32;

/// Every buffer starts on a 64-byte cache line: offsets and lengths are multiples of
/// this many floats (and the runtime aligns the arena's base).
pub const ALIGN_FLOATS: usize = 16;

/// `len` floats at `offset` in the arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Region {
    pub offset: usize,
    pub len: usize,
}

impl Region {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
    pub fn end(&self) -> usize {
        self.offset + self.len
    }
    pub fn overlaps(&self, other: &Region) -> bool {
        self.offset < other.end() && other.offset < self.end()
    }
}

/// Where the `batch` items of one value are: item `n` is `item` floats at
/// `region.offset + n * stride`, `region` the span from the first item to the last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub region: Region,
    pub item: usize,
    pub stride: usize,
}

impl View {
    /// A buffer of its own: items back to back.
    pub fn whole(region: Region, item: usize) -> Self {
        View {
            region,
            item,
            stride: item,
        }
    }
    /// A value written in place into its concat's buffer `cat` (`cat_item` floats per
    /// item), at float offset `at` of every item.
    pub fn placed(cat: Region, at: usize, cat_item: usize, item: usize, batch: usize) -> Self {
        View {
            region: Region {
                offset: cat.offset + at,
                len: (batch - 1) * cat_item + item,
            },
            item,
            stride: cat_item,
        }
    }
    /// Item `n` within `span`, the slice of this view's region.
    pub fn item_of<'a>(&self, span: &'a [f32], n: usize) -> &'a [f32] {
        &span[n * self.stride..n * self.stride + self.item]
    }
}

/// Writes concat inputs straight into their place in the concat's buffer: in NCHW, input
/// `i` of a channel concat is one contiguous block of every item, so its producer can write
/// there and the concat copies nothing (GoogLeNet's inception blocks: all four branches).
/// A value is placed when
/// * a kernel that writes one item at a time makes it (not the graph input, an fc, a view
///   such as flatten, or another concat), and it is not a graph output (copied out whole);
/// * it fills one slot of one concat, and every reader takes it item by item (no fc, no
///   flatten or dropout view);
/// * with more than one item per chunk, it neither reads nor is read by a value placed in
///   the same concat: their items interleave, and a step's output span may not overlap its
///   inputs;
/// * it is not a concat holding another input of the same concat (DAGs that feed one value
///   to two nested concats).
///
/// The concat steps keep only the inputs left to copy; a concat with none left goes.
pub fn place_concat_inputs(plan: &mut Plan) {
    let producer = plan.producers();
    let readers = readers(plan);
    // Whether each value's kernel writes it one item at a time, and whether each value's
    // kernel reads its inputs one item at a time.
    let item_kernel = |v: ValueId, exclude_copy: bool| {
        producer[v].is_some_and(|s| match plan.steps[s].kernel {
            Kernel::Fc { .. } => false,
            Kernel::Copy { .. } => !exclude_copy,
            _ => true,
        })
    };
    let n = plan.values.len();
    // At batch 1 a concat may itself be placed in a later concat (DenseNet: each dense
    // layer's concat is the next one's first input), so a block's concats share one buffer
    // and none copies; with more items their strided views would interleave.
    let writes_items: Vec<bool> = (0..n).map(|v| item_kernel(v, plan.batch > 1)).collect();
    let reads_items: Vec<bool> = (0..n).map(|v| item_kernel(v, false)).collect();
    let mut slots = Vec::new();
    for s in 0..plan.steps.len() {
        if !matches!(plan.steps[s].kernel, Kernel::Copy { .. }) {
            continue;
        }
        let (cat, inputs) = (plan.steps[s].output, plan.steps[s].inputs.clone());
        let (mut at, mut copied, mut copied_at) = (0, Vec::new(), Vec::new());
        for &p in &inputs {
            let in_cat = |v: ValueId| matches!(plan.values[v].storage, Storage::Slot { concat, .. } if concat == cat);
            let operands = producer[p].map_or(&[][..], |s| &plan.steps[s].inputs[..]);
            let eligible = writes_items[p]
                && !plan.outputs.contains(&p)
                && plan.values[p].storage == Storage::Buffer
                && inputs.iter().filter(|&&q| q == p).count() == 1
                && readers[p].iter().all(|&r| r == cat || reads_items[r])
                && (plan.batch == 1 || !operands.iter().chain(&readers[p]).any(|&v| in_cat(v)))
                && !inputs.iter().any(|&q| q != p && placed_within(plan, q, p));
            if eligible {
                plan.values[p].storage = Storage::Slot { concat: cat, at };
            } else {
                copied.push(p);
                copied_at.push(at);
            }
            at += plan.values[p].shape.len();
        }
        slots.push((s, copied, copied_at));
    }
    for (s, copied, at) in slots {
        plan.steps[s].inputs = copied;
        plan.steps[s].kernel = Kernel::Copy { at };
    }
    plan.steps
        .retain(|s| !matches!(&s.kernel, Kernel::Copy { at } if at.is_empty()));
}

/// Whether `v` lives (through one or more concat slots) inside concat `c`'s buffer. A
/// concat `c` placed in `cat` may not hold another input of `cat`: that one is copied into
/// `cat`, and a copy's input may not lie inside its output.
fn placed_within(plan: &Plan, v: ValueId, c: ValueId) -> bool {
    match plan.values[v].storage {
        Storage::Slot { concat, .. } => concat == c || placed_within(plan, concat, c),
        Storage::Alias(of) => placed_within(plan, of, c),
        Storage::Buffer => false,
    }
}

/// A channel shuffle whose every reader is a depthwise conv (ShuffleNet's units: group
/// conv, shuffle, depthwise conv) moves no data: each reader reads its input planes in
/// the shuffled order ([`crate::jit::DepthwiseSpec::input_shuffle`]), and the shuffle's
/// value becomes a view of the unshuffled one. Not when the shuffle is a graph output
/// (copied out whole), has views, or a reader already reads through a shuffle.
pub fn read_shuffles_in_place(plan: &mut Plan) {
    let readers = readers(plan);
    let producer = plan.producers();
    let mut fold = Vec::new();
    for (s, step) in plan.steps.iter().enumerate() {
        let Kernel::Host(HostOp::Shuffle { groups, .. }) = step.kernel else {
            continue;
        };
        let v = step.output;
        let depthwise_readers: Option<Vec<usize>> = readers[v]
            .iter()
            .map(|&r| {
                producer[r].filter(|&rs| {
                    let st = &plan.steps[rs];
                    matches!(st.kernel, Kernel::Depthwise(d) if d.input_shuffle == 1)
                        && st.inputs.first() == Some(&v)
                        && !st.inputs[1..].contains(&v)
                })
            })
            .collect();
        match depthwise_readers {
            Some(rs) if !rs.is_empty() && !plan.outputs.contains(&v) => {
                fold.push((s, groups, rs));
            }
            _ => {}
        }
    }
    for &(s, groups, ref rs) in &fold {
        for &r in rs {
            if let Kernel::Depthwise(d) = &mut plan.steps[r].kernel {
                d.input_shuffle = groups;
            }
        }
        let (v, from) = (plan.steps[s].output, plan.steps[s].inputs[0]);
        plan.values[v].storage = Storage::Alias(from);
    }
    let folded: Vec<usize> = fold.iter().map(|f| f.0).collect();
    let mut i = 0;
    plan.steps.retain(|_| {
        i += 1;
        !folded.contains(&(i - 1))
    });
}

/// A conv whose fused residual is read by no later step writes its output over the
/// residual ([`crate::jit::ConvSpec::residual_in_place`]), where its method reads each
/// residual element before storing that output element
/// ([`crate::jit::ConvMethod::reads_residual_in_place`]: the pointwise GEMM). The output's
/// cache lines are then the residual's, which the kernel reads anyway, instead of a second
/// buffer of that size to fetch for ownership and write back (ResNet-50's 1x1 expansions
/// with their shortcut: 3.2 MB each in its first stage). The output becomes a view of the
/// residual's buffer. Not when that buffer is the graph's input or an output, holds
/// concat inputs, or is also the conv's input.
pub fn read_residuals_in_place(plan: &mut Plan) {
    let n = plan.values.len();
    let mut root: Vec<ValueId> = (0..n).map(|v| root_of(plan, v).0).collect();
    let mut pinned = vec![false; n];
    pinned[root[plan.input]] = true;
    for &o in &plan.outputs {
        pinned[root[o]] = true;
    }
    for (v, value) in plan.values.iter().enumerate() {
        if let Storage::Slot { .. } = value.storage {
            pinned[root[v]] = true;
        }
    }
    // The last step reading each buffer.
    let mut last_read = vec![None; n];
    for (s, step) in plan.steps.iter().enumerate() {
        for &i in &step.inputs {
            last_read[root[i]] = Some(s);
        }
    }
    for s in 0..plan.steps.len() {
        let step = &plan.steps[s];
        let Kernel::Conv { spec, method, isa } = step.kernel else {
            continue;
        };
        let (&[x, r], out) = (step.inputs.as_slice(), step.output) else {
            continue;
        };
        let rr = root[r];
        let fits = method.reads_residual_in_place(&spec, isa)
            && !pinned[rr]
            && root[x] != rr
            && last_read[rr] == Some(s)
            && plan.values[out].storage == Storage::Buffer;
        if !fits {
            continue;
        }
        if let Kernel::Conv { spec, .. } = &mut plan.steps[s].kernel {
            spec.residual_in_place = true;
        }
        plan.values[out].storage = Storage::Alias(r);
        // The buffer now lives as long as the output (and its views) and is pinned if it is.
        for v in &mut root {
            if *v == out {
                *v = rr;
            }
        }
        last_read[rr] = last_read[out];
        pinned[rr] = pinned[out];
    }
}

/// The values computed from each value: outputs of steps reading it, and its views that
/// something reads. A view nothing reads (a fused conv's output, now a name for the pool's
/// input inside the fused step: [`super::fuse::fuse_max_pool_into_conv`]) reads nothing.
fn readers(plan: &Plan) -> Vec<Vec<ValueId>> {
    let mut r = vec![Vec::new(); plan.values.len()];
    for s in &plan.steps {
        for &i in &s.inputs {
            if !r[i].contains(&s.output) {
                r[i].push(s.output);
            }
        }
    }
    // Latest first, so that a view of a view counts once the later one is known to be read.
    for (v, value) in plan.values.iter().enumerate().rev() {
        if let Storage::Alias(of) = value.storage {
            if !r[v].is_empty() || plan.outputs.contains(&v) {
                r[of].push(v);
            }
        }
    }
    r
}

/// The values each value's computation reads: its step's inputs, the value a view shows,
/// and for a concat the inputs written in place (which its buffer holds).
fn operands(plan: &Plan) -> Vec<Vec<ValueId>> {
    let mut ops = vec![Vec::new(); plan.values.len()];
    for s in &plan.steps {
        ops[s.output].extend(&s.inputs);
    }
    for (v, value) in plan.values.iter().enumerate() {
        match value.storage {
            Storage::Alias(of) => ops[v].push(of),
            Storage::Slot { concat, .. } => ops[concat].push(v),
            Storage::Buffer => {}
        }
    }
    ops
}

/// Gives every buffer its region of the arena, in execution order: a buffer is allocated
/// when its first value is computed and released after its last reader (graph outputs
/// live to the end), so later buffers reuse the space. Sets each value's view and the
/// plan's `arena_len`.
pub fn assign_arena(plan: &mut Plan) -> Result<()> {
    let b = plan.batch;
    let n = plan.values.len();
    // The buffer each value lives in (views and placed inputs: another value's) and where
    // in its items.
    let (root, at_in_root): (Vec<ValueId>, Vec<usize>) = (0..n).map(|v| root_of(plan, v)).unzip();
    let operands = operands(plan);
    // The position of the last value that reads each buffer.
    let mut last_use: Vec<Option<usize>> = vec![None; n];
    for (v, ops) in operands.iter().enumerate() {
        for &i in ops {
            last_use[root[i]] = Some(v);
        }
    }
    for &o in &plan.outputs {
        last_use[root[o]] = Some(usize::MAX);
    }

    let mut planner = ArenaPlanner::default();
    // `CNNC_ARENA_NO_REUSE=1` (a measuring knob): every buffer a region of its own, none
    // reused by a later buffer (which another split of threads may write).
    let reuse = crate::knobs::forced("CNNC_ARENA_NO_REUSE") != Some(true);
    let mut arena_len = 0;
    let mut region: Vec<Option<Region>> = vec![None; n];
    for v in 0..n {
        let buf = root[v];
        let r = match region[buf] {
            Some(r) => r,
            None => {
                // A placed concat input allocates its concat's buffer.
                let value = &plan.values[buf];
                crate::ir::shape::check_budget(
                    &value.name,
                    "batch of activations",
                    &[b, value.shape.len()],
                )?;
                let r = planner.alloc(b * value.shape.len());
                arena_len = arena_len.max(planner.top());
                region[buf] = Some(r);
                r
            }
        };
        let item = plan.values[v].shape.len();
        plan.values[v].view = match plan.values[v].storage {
            Storage::Buffer => View::whole(r, item),
            // Set again below when `of` comes later (a fused conv's output).
            Storage::Alias(of) => plan.values[of].view,
            Storage::Slot { .. } => {
                View::placed(r, at_in_root[v], plan.values[buf].shape.len(), item, b)
            }
        };
        // Free what this value read last (after allocating its buffer, so the two never
        // share memory). Each buffer once: a step may read one value in two slots (a conv
        // whose residual is its own input), or two views (flatten) of one buffer.
        let mut read: Vec<ValueId> = operands[v].iter().map(|&i| root[i]).collect();
        read.sort_unstable();
        read.dedup();
        for r in read {
            if let (Some(pos), Some(reg)) = (last_use[r], region[r]) {
                if pos == v && reuse {
                    planner.release(reg);
                }
            }
        }
        if last_use[buf].is_none() && buf == v && reuse {
            planner.release(r); // Dead value: nobody reads it.
        }
    }
    // A view shows the value it aliases, whose view the loop may have set after its own.
    for v in 0..n {
        let mut of = v;
        for _ in 0..n {
            match plan.values[of].storage {
                Storage::Alias(next) => of = next,
                _ => break,
            }
        }
        plan.values[v].view = plan.values[of].view;
    }
    if arena_len as u64 > ARENA_LIMIT {
        return Err(Error::Shape(format!(
            "the activations of a batch of {b} need {} MB, more than the limit of {} MB; use a smaller batch",
            (arena_len as u64 * 4) >> 20,
            (ARENA_LIMIT * 4) >> 20
        )));
    }
    plan.arena_len = arena_len;
    Ok(())
}

/// The buffer value `v` lives in and its float offset within each of that buffer's items:
/// a view lives in its value's buffer, a placed concat input at its slot of its concat's,
/// which may itself be placed in another concat.
pub fn root_of(plan: &Plan, v: ValueId) -> (ValueId, usize) {
    match plan.values[v].storage {
        Storage::Buffer => (v, 0),
        Storage::Alias(of) => root_of(plan, of),
        Storage::Slot { concat, at } => {
            let (root, base) = root_of(plan, concat);
            (root, base + at)
        }
    }
}

/// Which graph outputs the steps can write straight into the caller's output tensors
/// (for a full batch chunk), so that nothing is copied out of the arena: an output whose
/// buffer is its own (not the graph input, a view, or placed in a concat; it may be a
/// concat holding placed inputs, whose producers then write the caller's tensor too),
/// named by no other output, and read by no step, so that every step reads the arena or
/// the caller's input only.
pub fn outputs_written_in_place(plan: &Plan) -> Vec<bool> {
    let root = |v| root_of(plan, v).0;
    let read: Vec<ValueId> = plan
        .steps
        .iter()
        .flat_map(|s| s.inputs.iter().map(|&i| root(i)))
        .collect();
    plan.outputs
        .iter()
        .map(|&o| {
            plan.values[o].storage == Storage::Buffer
                && o != plan.input
                && plan.outputs.iter().filter(|&&p| root(p) == o).count() == 1
                && !read.contains(&o)
        })
        .collect()
}

/// First-fit allocation over a free list, coalescing on release.
#[derive(Default)]
pub struct ArenaPlanner {
    /// Free holes below `top`, sorted by offset, never adjacent.
    free: Vec<Region>,
    top: usize,
}

/// `len` rounded up to whole cache lines (at least one).
fn lines(len: usize) -> usize {
    len.max(1).div_ceil(ALIGN_FLOATS) * ALIGN_FLOATS
}

impl ArenaPlanner {
    pub fn alloc(&mut self, len: usize) -> Region {
        let len = lines(len);
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
            if last.end() == self.top {
                offset = last.offset;
                self.free.pop();
            }
        }
        self.top = offset + len;
        Region { offset, len }
    }

    pub fn release(&mut self, r: Region) {
        let mut r = Region {
            offset: r.offset,
            len: lines(r.len),
        };
        let i = self.free.partition_point(|h| h.offset < r.offset);
        // Merge with the hole after, then the one before.
        if i < self.free.len() && r.end() == self.free[i].offset {
            r.len += self.free[i].len;
            self.free.remove(i);
        }
        if i > 0 && self.free[i - 1].end() == r.offset {
            self.free[i - 1].len += r.len;
        } else {
            self.free.insert(i, r);
        }
        if let Some(last) = self.free.last() {
            if last.end() == self.top {
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
