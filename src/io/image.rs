//! Image files as network inputs: decoded, resized to the input's H x W, scaled to
//! [0, 1], converted to greyscale or RGB to match C, and normalised with the graph's
//! mean and std.
use crate::error::{Error, Result};
use crate::ir::{InputNorm, Shape};
use crate::tensor::Tensor;
use std::path::{Path, PathBuf};

pub const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// One image as a `[C, H, W]` tensor for an input of shape `shape`.
pub fn load(path: &Path, shape: &Shape, norm: Option<&InputNorm>) -> Result<Tensor> {
    let img = image::open(path)
        .map_err(|e| Error::Input(format!("{}: cannot decode the image: {e}", path.display())))?;
    let (w, h) = (shape.w as u32, shape.h as u32);
    let img = if img.width() == w && img.height() == h {
        img
    } else {
        img.resize_exact(w, h, image::imageops::FilterType::Triangle)
    };
    let plane = shape.h * shape.w;
    let mut data = vec![0f32; shape.c * plane];
    match shape.c {
        1 => {
            for (i, p) in img.to_luma32f().pixels().enumerate() {
                data[i] = p.0[0];
            }
        }
        3 => {
            for (i, p) in img.to_rgb32f().pixels().enumerate() {
                for c in 0..3 {
                    data[c * plane + i] = p.0[c];
                }
            }
        }
        c => {
            return Err(Error::Input(format!(
                "{}: images give 1 (greyscale) or 3 (RGB) channels, but the graph's input has {c}",
                path.display()
            )))
        }
    }
    if let Some(norm) = norm {
        for (c, chunk) in data.chunks_mut(plane).enumerate() {
            for v in chunk {
                *v = (*v - norm.mean[c]) / norm.std[c];
            }
        }
    }
    Tensor::new(vec![shape.c, shape.h, shape.w], data)
}

/// The image files of a folder, sorted by name.
pub fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image(p))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Input(format!(
            "{}: the folder holds no .png or .jpg images",
            dir.display()
        )));
    }
    Ok(files)
}
