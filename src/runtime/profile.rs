//! Where a compiled network spends its time: per-layer times of a few runs (their
//! median), and the table `cnnc run --profile` prints.
use super::model::{LayerTime, Model};
use crate::error::Result;
use crate::table::pad_right;
use crate::tensor::Tensor;

/// After a warm-up run (which pays for first-touch page faults in weights and arena),
/// `runs` timed runs of `x`; each layer's median time. Returns the last run's outputs.
pub fn median(model: &Model, x: &Tensor, runs: usize) -> Result<(Vec<Tensor>, Vec<LayerTime>)> {
    model.run(x)?;
    let mut timed = Vec::new();
    for _ in 0..runs.max(1) {
        timed.push(model.profile(x)?);
    }
    let mut layers = timed[0].1.clone();
    for (i, layer) in layers.iter_mut().enumerate() {
        let mut t: Vec<_> = timed.iter().map(|r| r.1[i].time).collect();
        t.sort();
        layer.time = t[t.len() / 2];
    }
    let y = timed.pop().map(|r| r.0).unwrap_or_default();
    Ok((y, layers))
}

/// One row per layer: time, GFLOP/s and share of the total, slowest layers visible at a glance.
pub fn table(layers: &[LayerTime]) -> String {
    let total: f64 = layers.iter().map(|l| l.time.as_secs_f64()).sum();
    let name_w = layers
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let op_w = layers.iter().map(|l| l.op.len()).max().unwrap_or(2).max(2);
    let mut out = format!(
        "{}  {}  {:>10}  {:>8}  {:>6}\n",
        pad_right("layer", name_w),
        pad_right("op", op_w),
        "time (ms)",
        "GFLOP/s",
        "share"
    );
    for l in layers {
        let secs = l.time.as_secs_f64();
        let gflops = if l.flops > 0 && secs > 0.0 {
            format!("{:.2}", l.flops as f64 / secs / 1e9)
        } else {
            "-".into()
        };
        out += &format!(
            "{}  {}  {:>10.3}  {:>8}  {:>5.1}%\n",
            pad_right(&l.name, name_w),
            pad_right(&l.op, op_w),
            secs * 1e3,
            gflops,
            100.0 * secs / total.max(f64::MIN_POSITIVE)
        );
    }
    let flops: u64 = layers.iter().map(|l| l.flops).sum();
    out += &format!(
        "total: {:.3} ms, {:.2} GFLOP/s\n",
        total * 1e3,
        flops as f64 / total.max(f64::MIN_POSITIVE) / 1e9
    );
    out
}
