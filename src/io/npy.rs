//! `.npy` arrays (NumPy's format) of f32 or f64, as tensors.
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use npyz::WriterBuilder;
use std::path::Path;

/// Reads an f32 or f64 array (f64 converted to f32).
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |e: std::io::Error| {
        Error::Input(format!(
            "{}: not a readable .npy array: {e}",
            path.display()
        ))
    };
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(bad)?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if npy.order() == npyz::Order::Fortran && shape.len() > 1 {
        return Err(Error::Input(format!(
            "{}: Fortran-ordered arrays are not supported; save it with np.ascontiguousarray",
            path.display()
        )));
    }
    let dtype = npy.dtype().descr();
    let data: Vec<f32> = match dtype.trim_matches('\'') {
        "<f4" => npy.into_vec::<f32>().map_err(bad)?,
        "<f8" => npy
            .into_vec::<f64>()
            .map_err(bad)?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        other => {
            return Err(Error::Input(format!(
                "{}: the array's dtype is {other}; cnnc reads float32 or float64",
                path.display()
            )))
        }
    };
    Tensor::new(shape, data)
}

/// Writes a tensor as a little-endian f32 array.
pub fn write(path: &Path, t: &Tensor) -> Result<()> {
    let io = |e| Error::io(path, e);
    let file = std::fs::File::create(path).map_err(io)?;
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&shape)
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .map_err(io)?;
    w.extend(t.data().iter().copied()).map_err(io)?;
    w.finish().map_err(io)
}
