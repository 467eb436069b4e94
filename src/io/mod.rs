//! Reading inputs and writing outputs: `.npy` arrays and image files.
pub mod image;
pub mod npy;
pub mod output;

use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::tensor::Tensor;
use std::path::Path;

/// A batch of network inputs and a label for each item (its file name, or its index).
pub struct Batch {
    pub tensor: Tensor,
    pub items: Vec<String>,
}

/// Builds the input batch from `--input`: a `.npy` array, an image, a folder of images,
/// or (without a path) `batch` standard-normal images drawn from the graph's seed.
/// `progress(done, total)` is called after each image of a folder loads (a command line
/// shows a progress bar with it; the library prints nothing).
pub fn load_input(
    path: Option<&Path>,
    g: &Graph,
    batch: Option<usize>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Batch> {
    let s = g.input_shape();
    let per_item = s.len();
    let loaded = match path {
        None => {
            let n = batch.unwrap_or(1);
            crate::ir::shape::check_budget("input", "input batch", &[n, per_item])?;
            let data = crate::weights::standard_normal(g.seed, "input", n * per_item);
            return Ok(Batch {
                tensor: Tensor::new(vec![n, s.c, s.h, s.w], data)?,
                items: (0..n).map(|i| format!("random input {i}")).collect(),
            });
        }
        Some(p) if p.is_dir() => {
            let files = image::list_dir(p)?;
            let mut data = Vec::new();
            let len = files.len().saturating_mul(per_item);
            data.try_reserve_exact(len)
                .map_err(|_| crate::memory::out_of_memory("the input images", len, 4))?;
            for (i, f) in files.iter().enumerate() {
                data.extend(image::load(f, &s, g.norm.as_ref())?.into_data());
                progress(i + 1, files.len());
            }
            let items = files.iter().map(|f| file_name(f)).collect();
            Batch {
                tensor: Tensor::new(vec![files.len(), s.c, s.h, s.w], data)?,
                items,
            }
        }
        Some(p) if image::is_image(p) => {
            let t = image::load(p, &s, g.norm.as_ref())?;
            Batch {
                tensor: t.reshaped(vec![1, s.c, s.h, s.w])?,
                items: vec![file_name(p)],
            }
        }
        Some(p) if p.extension().is_some_and(|e| e == "npy") => {
            let t = g
                .check_input(npy::read(p)?)
                .map_err(|e| Error::Input(format!("{}: {e}", p.display())))?;
            let n = t.shape()[0];
            Batch {
                tensor: t,
                items: (0..n).map(|i| format!("{}[{i}]", file_name(p))).collect(),
            }
        }
        Some(p) => {
            return Err(Error::Input(format!(
                "{}: --input takes a .npy array, a .png/.jpg image or a folder of images",
                p.display()
            )))
        }
    };
    match batch {
        Some(n) if n != loaded.items.len() => {
            if loaded.items.len() != 1 {
                return Err(Error::Input(format!(
                    "--batch {n} does not match the {} items of the input",
                    loaded.items.len()
                )));
            }
            // One image repeated to fill the batch.
            crate::ir::shape::check_budget("input", "input batch", &[n, per_item])?;
            let mut data = crate::memory::try_vec(n * per_item, 0.0, "the input batch")?;
            for item in data.chunks_exact_mut(per_item) {
                item.copy_from_slice(loaded.tensor.data());
            }
            Ok(Batch {
                tensor: Tensor::new(vec![n, s.c, s.h, s.w], data)?,
                items: vec![loaded.items[0].clone(); n],
            })
        }
        _ => Ok(loaded),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    )
}
