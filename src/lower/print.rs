//! `cnnc compile --emit plan`: the steps, then the arena layout.
use super::{Kernel, Plan, Storage, ValueId};
use std::fmt;

impl Plan {
    /// `name@offset` of a value's first item, with its item stride when the items are
    /// not back to back (a slot of a concat).
    fn place(&self, v: ValueId) -> String {
        let value = &self.values[v];
        let view = value.view;
        if view.stride == view.item || self.batch == 1 {
            format!("{}@{}", value.name, view.region.offset)
        } else {
            format!("{}@{}/{}", value.name, view.region.offset, view.stride)
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let flops: u64 = self.steps.iter().map(|s| s.flops_per_item).sum();
        writeln!(
            f,
            "plan {}: batch {}, {} steps, {:.1} MFLOP per item, arena {} floats ({:.2} MiB)",
            self.name,
            self.batch,
            self.steps.len(),
            flops as f64 / 1e6,
            self.arena_len,
            self.arena_len as f64 * 4.0 / (1 << 20) as f64
        )?;
        let name_w = self.values.iter().map(|v| v.name.len()).max().unwrap_or(4);
        let op_w = self.steps.iter().map(|s| s.op.len()).max().unwrap_or(2);
        writeln!(
            f,
            "steps (kernel [algorithm] shapes; buffers as value@offset[/item stride]):"
        )?;
        for (i, s) in self.steps.iter().enumerate() {
            let kernel = match s.kernel.algorithm() {
                Some(a) => format!("{} [{a}]", s.kernel.family()),
                None => s.kernel.family().to_string(),
            };
            let shapes: Vec<String> = s
                .inputs
                .iter()
                .map(|&v| self.values[v].shape.to_string())
                .collect();
            let reads: Vec<String> = s.inputs.iter().map(|&v| self.place(v)).collect();
            let consts = match &s.kernel {
                Kernel::Elementwise { consts, .. } if !consts.is_empty() => {
                    format!(" +{} consts", consts.len())
                }
                _ => String::new(),
            };
            writeln!(
                f,
                "{i:>4} {:<name_w$} {:<op_w$}  {kernel:<26} {} -> {}  {} -> {}{consts}  {:.2} MFLOP",
                s.name,
                s.op,
                shapes.join(", "),
                self.values[s.output].shape,
                reads.join(", "),
                self.place(s.output),
                s.flops_per_item as f64 / 1e6,
            )?;
        }
        writeln!(
            f,
            "arena: {} floats, {}-byte aligned buffers (offset len buffer [values inside]):",
            self.arena_len,
            4 * super::memory::ALIGN_FLOATS
        )?;
        for (v, value) in self.values.iter().enumerate() {
            if value.storage != Storage::Buffer {
                continue;
            }
            let inside: Vec<String> = self
                .values
                .iter()
                .enumerate()
                .filter(|(_, w)| match w.storage {
                    Storage::Alias(of) => of == v,
                    Storage::Slot { concat, .. } => concat == v,
                    Storage::Buffer => false,
                })
                .map(|(w, _)| self.place(w))
                .collect();
            let r = value.view.region;
            write!(f, "{:>10} {:>10}  {}", r.offset, r.len, value.name)?;
            if !inside.is_empty() {
                write!(f, " [{}]", inside.join(", "))?;
            }
            writeln!(f)?;
        }
        // Graph outputs the steps write into the caller's tensors (full batch chunks):
        // their buffers above are used only by a last, partial chunk.
        let in_place = super::memory::outputs_written_in_place(self);
        let names: Vec<&str> = (self.outputs.iter().zip(in_place))
            .filter(|&(_, p)| p)
            .map(|(&o, _)| self.values[o].name.as_str())
            .collect();
        if !names.is_empty() {
            writeln!(
                f,
                "written in place into the caller's outputs: {}",
                names.join(", ")
            )?;
        }
        writeln!(
            f,
            "{} is read where the caller holds it (full batch chunks)",
            self.values[self.input].name
        )
    }
}
