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
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        let why = diagnose(bytes).unwrap_or_else(|| e.to_string());
        Error::Weights(format!("not a valid safetensors file: {why}"))
    })?;
    let mut out = BTreeMap::new();
    // In name order, so that the same bad file always names the same tensor.
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in tensors {
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

/// Which tensor of a safetensors file the `safetensors` crate refused, and why (its
/// errors do not name the tensor): the first, in name order, whose dtype is unknown or
/// whose data does not fit its shape or the file.
fn diagnose(bytes: &[u8]) -> Option<String> {
    let Some(len) = bytes.get(..8) else {
        return Some(format!(
            "the file has {} bytes, fewer than the 8 that give its header's length",
            bytes.len()
        ));
    };
    let len = u64::from_le_bytes(len.try_into().ok()?);
    if len > (bytes.len() - 8) as u64 {
        return Some(format!(
            "its first 8 bytes give a header of {len} bytes, but only {} bytes follow",
            bytes.len() - 8
        ));
    }
    let end = 8usize.checked_add(usize::try_from(len).ok()?)?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(bytes.get(8..end)?).ok()?;
    let data = (bytes.len() - end) as u128;
    for (name, info) in header.iter().filter(|(n, _)| *n != "__metadata__") {
        let size: u128 = match info["dtype"].as_str()? {
            "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
            "I16" | "U16" | "F16" | "BF16" => 2,
            "I32" | "U32" | "F32" => 4,
            "I64" | "U64" | "F64" => 8,
            other => return Some(format!("tensor `{name}` has the unknown dtype {other}")),
        };
        let shape: Option<Vec<u128>> = info["shape"]
            .as_array()?
            .iter()
            .map(|d| d.as_u64().map(u128::from))
            .collect();
        let want = shape?.iter().fold(size, |n, d| n.saturating_mul(*d));
        let offsets = info["data_offsets"].as_array()?;
        let (begin, stop) = (
            offsets.first()?.as_u64()? as u128,
            offsets.get(1)?.as_u64()? as u128,
        );
        if stop < begin || stop - begin != want {
            return Some(format!(
                "tensor `{name}`: its shape and dtype need {want} bytes, but its data_offsets [{begin}, {stop}] span {}",
                stop.saturating_sub(begin)
            ));
        }
        if stop > data {
            return Some(format!(
                "tensor `{name}`: its data_offsets end at byte {stop}, but the file holds {data} bytes of data"
            ));
        }
    }
    None
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
    load_file_as(g, path, "the weights file")
}

/// [`load_file`], where a file that cannot be read is called `what`.
pub(crate) fn load_file_as(g: &mut Graph, path: &Path, what: &str) -> Result<Vec<String>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Weights(format!("{}: cannot read {what}: {e}", path.display())))?;
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
    crate::io::output::write_file(path, &bytes, &[])
}
