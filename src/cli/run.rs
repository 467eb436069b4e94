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
