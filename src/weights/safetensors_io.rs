//! `.safetensors` files: the PyTorch `state_dict` of a graph, by layer name.
use super::{check_shape, expected_params, named_params};
use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::tensor::Tensor;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

/// Decodes every tensor of a safetensors buffer to f32 (f16, bf16 and f64 are converted).
pub fn read_safetensors(bytes: &[u8]) -> Result<BTreeMap<String, Tensor>> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::Weights(format!("not a valid safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::Weights(format!(
                    "tensor `{name}` has dtype {other:?}; cnnc reads f32, f16, bf16 and f64"
                )))
            }
        };
        out.insert(name, Tensor::new(view.shape().to_vec(), values)?);
    }
    Ok(out)
}

/// Serialises named f32 tensors.
pub fn write_safetensors<'a>(
    tensors: impl IntoIterator<Item = (String, &'a Tensor)>,
) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let raw = t.data().iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, t.shape().to_vec(), raw)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, raw)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), raw)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Weights(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(|e| Error::Weights(e.to_string()))
}

/// Loads the graph's parameters from `path`. Missing tensors and wrong shapes are
/// errors; tensors no layer uses are returned as warnings.
pub fn load_file(g: &mut Graph, path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut tensors =
        read_safetensors(&bytes).map_err(|e| Error::Weights(format!("{}: {e}", path.display())))?;
    let ids: Vec<_> = g.dag.node_indices().collect();
    for id in ids {
        for (suffix, shape) in expected_params(g, id) {
            let name = format!("{}.{suffix}", g.node(id).name);
            let t = tensors.remove(&name).ok_or_else(|| {
                Error::Weights(format!(
                    "{}: tensor `{name}` is missing (expected shape {})",
                    path.display(),
                    crate::tensor::fmt_shape(&shape)
                ))
            })?;
            check_shape(&name, &shape, t.shape())
                .map_err(|e| Error::Weights(format!("{}: {e}", path.display())))?;
            let t = t.reshaped(shape)?;
            g.node_mut(id).params.insert(suffix.to_string(), t);
        }
    }
    Ok(tensors
        .keys()
        .map(|name| {
            format!(
                "{}: tensor `{name}` is not used by any layer",
                path.display()
            )
        })
        .collect())
}

/// Writes the graph's bound parameters to `path`.
pub fn save_file(g: &Graph, path: &Path) -> Result<()> {
    let bytes = write_safetensors(named_params(g))?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}
