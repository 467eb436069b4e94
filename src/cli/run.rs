//! `cnnc run`: run a network on an input and print the top classes.
use cnnc::{Result, Tensor};

/// The `k` largest scores of each batch item as `(class, score)`, best first.
pub fn top_k(y: &Tensor, k: usize) -> Vec<Vec<(usize, f32)>> {
    let n = y.shape()[0];
    let per = y.len() / n.max(1);
    y.data()
        .chunks(per.max(1))
        .map(|row| {
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            idx.into_iter().take(k).map(|i| (i, row[i])).collect()
        })
        .collect()
}

pub fn read_labels(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| cnnc::Error::io(path, e))?;
    Ok(text.lines().map(|l| l.trim().to_string()).collect())
}

pub fn print_top(y: &Tensor, items: &[String], k: usize, labels: Option<&[String]>) {
    for (item, top) in items.iter().zip(top_k(y, k)) {
        println!("{item}:");
        for (rank, (class, score)) in top.iter().enumerate() {
            let name = labels.and_then(|l| l.get(*class)).map_or_else(
                || format!("class {class}"),
                |l| format!("{l} (class {class})"),
            );
            println!("  {}. {name:<28} {score:.4}", rank + 1);
        }
    }
}

/// One row per layer: time, GFLOP/s and share of the total, slowest layers visible at a glance.
pub fn profile_table(layers: &[cnnc::runtime::LayerTime]) -> String {
    let total: f64 = layers.iter().map(|l| l.time.as_secs_f64()).sum();
    let name_w = layers
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let op_w = layers.iter().map(|l| l.op.len()).max().unwrap_or(2).max(2);
    let mut out = format!(
        "{:<name_w$}  {:<op_w$}  {:>10}  {:>8}  {:>6}\n",
        "layer", "op", "time (ms)", "GFLOP/s", "share"
    );
    for l in layers {
        let secs = l.time.as_secs_f64();
        let gflops = if l.flops > 0 && secs > 0.0 {
            format!("{:.2}", l.flops as f64 / secs / 1e9)
        } else {
            "-".into()
        };
        out += &format!(
            "{:<name_w$}  {:<op_w$}  {:>10.3}  {:>8}  {:>5.1}%\n",
            l.name,
            l.op,
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
