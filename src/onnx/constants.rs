//! Constants of an ONNX model: initializers, Constant nodes, and what the importer
//! folds at import time (ConstantOfShape, Unsqueeze, Squeeze, Reshape and Identity of
//! constants: the model zoo's networks make every weight with a ConstantOfShape).
use super::proto::{tensor_proto::DataLocation, tensor_proto::DataType, TensorProto};
use crate::error::{Error, Result};
use crate::ir::shape;
use crate::tensor::fmt_shape;

/// A constant: an initializer or a Constant node's value.
#[derive(Clone, Debug)]
pub(super) struct Const {
    pub dims: Vec<usize>,
    pub data: Data,
}

#[derive(Clone, Debug)]
pub(super) enum Data {
    F(Vec<f32>),
    I(Vec<i64>),
}

impl Const {
    pub fn floats(&self, what: &str) -> Result<Vec<f32>> {
        match &self.data {
            Data::F(v) => Ok(v.clone()),
            Data::I(_) => Err(Error::Format(format!(
                "{what} holds integers; cnnc expects a float tensor"
            ))),
        }
    }
    pub fn ints(&self, what: &str) -> Result<Vec<i64>> {
        match &self.data {
            Data::I(v) => Ok(v.clone()),
            Data::F(_) => Err(Error::Format(format!(
                "{what} holds floats; cnnc expects an integer tensor"
            ))),
        }
    }
}

fn le_chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N)
        .map(|c| c.try_into().expect("chunks of N bytes"))
}

/// Decodes an initializer: raw data or typed fields; f32, f16, bf16 and f64 become
/// f32, int32/int64 become i64.
pub(super) fn decode_tensor(t: &TensorProto) -> Result<Const> {
    let name = t.name();
    if t.data_location() == DataLocation::External || !t.external_data.is_empty() {
        return Err(Error::Unsupported(format!(
            "tensor `{name}` keeps its data in an external file; cnnc reads models with the weights inside (save with onnx.save(model, path, save_as_external_data=False))"
        )));
    }
    if t.segment.is_some() {
        return Err(Error::Unsupported(format!(
            "tensor `{name}` is segmented; cnnc does not read segmented tensors"
        )));
    }
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            return Err(Error::Format(format!(
                "tensor `{name}` has a negative dimension {d}"
            )));
        }
        dims.push(d as usize);
    }
    let n = elements(&dims, &format!("tensor `{name}`"))?;
    let raw = t.raw_data.as_deref();
    let dtype = DataType::try_from(t.data_type.unwrap_or(0)).unwrap_or(DataType::Undefined);
    let data = match (dtype, raw) {
        (DataType::Float, Some(r)) => Data::F(le_chunks::<4>(r).map(f32::from_le_bytes).collect()),
        (DataType::Float, None) => Data::F(t.float_data.clone()),
        (DataType::Double, Some(r)) => Data::F(
            le_chunks::<8>(r)
                .map(|b| f64::from_le_bytes(b) as f32)
                .collect(),
        ),
        (DataType::Double, None) => Data::F(t.double_data.iter().map(|&v| v as f32).collect()),
        (DataType::Float16, Some(r)) => Data::F(
            le_chunks::<2>(r)
                .map(|b| half::f16::from_le_bytes(b).to_f32())
                .collect(),
        ),
        (DataType::Float16, None) => Data::F(
            t.int32_data
                .iter()
                .map(|&v| half::f16::from_bits(v as u16).to_f32())
                .collect(),
        ),
        (DataType::Bfloat16, Some(r)) => Data::F(
            le_chunks::<2>(r)
                .map(|b| half::bf16::from_le_bytes(b).to_f32())
                .collect(),
        ),
        (DataType::Bfloat16, None) => Data::F(
            t.int32_data
                .iter()
                .map(|&v| half::bf16::from_bits(v as u16).to_f32())
                .collect(),
        ),
        (DataType::Int64, Some(r)) => Data::I(le_chunks::<8>(r).map(i64::from_le_bytes).collect()),
        (DataType::Int64, None) => Data::I(t.int64_data.clone()),
        (DataType::Int32, Some(r)) => Data::I(
            le_chunks::<4>(r)
                .map(|b| i32::from_le_bytes(b) as i64)
                .collect(),
        ),
        (DataType::Int32, None) => Data::I(t.int32_data.iter().map(|&v| v as i64).collect()),
        (other, _) => {
            return Err(Error::Unsupported(format!(
                "tensor `{name}` has data type {}; cnnc reads float, float16, bfloat16, double, int32 and int64",
                other.as_str_name()
            )))
        }
    };
    let len = match &data {
        Data::F(v) => v.len(),
        Data::I(v) => v.len(),
    };
    if len != n {
        return Err(Error::Format(format!(
            "tensor `{name}` of shape {} should hold {n} values but holds {len}; is the file truncated?",
            fmt_shape(&dims)
        )));
    }
    Ok(Const { dims, data })
}

impl Const {
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F(v) => v.len(),
            Data::I(v) => v.len(),
        }
    }
    /// The same values with other dimensions (the element count is the caller's check).
    fn with_dims(&self, dims: Vec<usize>) -> Const {
        Const {
            dims,
            data: self.data.clone(),
        }
    }
}

/// The element count of `dims`, refused above 2^31 without overflowing on the way.
pub(super) fn elements(dims: &[usize], what: &str) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n as u64 <= shape::MAX_ELEMENTS)
        .ok_or_else(|| {
            Error::Format(format!(
                "{what} of shape {} is larger than the limit of 2^31 elements",
                fmt_shape(dims)
            ))
        })
}

/// Dimensions given as ONNX int64s, each checked to be >= 0.
fn dims_of(v: &[i64], what: &str) -> Result<Vec<usize>> {
    v.iter()
        .map(|&d| {
            usize::try_from(d)
                .map_err(|_| Error::Format(format!("{what} {v:?} has a negative dimension {d}")))
        })
        .collect()
}

/// ConstantOfShape: a tensor of the dimensions in `shape`, every element `value` (one
/// element; ONNX's default is a float 0).
pub(super) fn constant_of_shape(shape: &Const, value: Option<&TensorProto>) -> Result<Const> {
    let dims = dims_of(&shape.ints("the shape")?, "the shape")?;
    let n = elements(&dims, "ConstantOfShape's output")?;
    let value = match value {
        Some(t) => decode_tensor(t)?,
        None => Const {
            dims: vec![1],
            data: Data::F(vec![0.0]),
        },
    };
    let data = match &value.data {
        Data::F(v) if v.len() == 1 => Data::F(vec![v[0]; n]),
        Data::I(v) if v.len() == 1 => Data::I(vec![v[0]; n]),
        _ => {
            return Err(Error::Format(format!(
                "ConstantOfShape's value has {} elements; it must have one",
                value.len()
            )))
        }
    };
    Ok(Const { dims, data })
}

/// An axis in `-rank..rank`, made non-negative.
fn axis(a: i64, rank: usize, op: &str) -> Result<usize> {
    let r = rank as i64;
    if a < -r || a >= r {
        return Err(Error::Format(format!(
            "{op}: axis {a} is outside a tensor of rank {rank}"
        )));
    }
    Ok(a.rem_euclid(r) as usize)
}

/// Unsqueeze: a 1 inserted at each of `axes` (axes of the output).
pub(super) fn unsqueeze(c: &Const, axes: &[i64]) -> Result<Const> {
    let rank = c.dims.len() + axes.len();
    let mut at: Vec<usize> = axes
        .iter()
        .map(|&a| axis(a, rank, "Unsqueeze"))
        .collect::<Result<_>>()?;
    at.sort_unstable();
    at.dedup();
    if at.len() != axes.len() {
        return Err(Error::Format(format!(
            "Unsqueeze: axes {axes:?} repeat an axis"
        )));
    }
    let mut dims = Vec::with_capacity(rank);
    let mut rest = c.dims.iter();
    for i in 0..rank {
        if at.contains(&i) {
            dims.push(1);
        } else {
            dims.push(*rest.next().expect("rank counts the inserted axes"));
        }
    }
    Ok(c.with_dims(dims))
}

/// Squeeze: the size-1 `axes` removed (all size-1 axes without `axes`).
pub(super) fn squeeze(c: &Const, axes: Option<&[i64]>) -> Result<Const> {
    let rank = c.dims.len();
    let drop: Vec<usize> = match axes {
        None => (0..rank).filter(|&i| c.dims[i] == 1).collect(),
        Some(axes) => axes
            .iter()
            .map(|&a| axis(a, rank, "Squeeze"))
            .collect::<Result<_>>()?,
    };
    if let Some(&i) = drop.iter().find(|&&i| c.dims[i] != 1) {
        return Err(Error::Format(format!(
            "Squeeze: axis {i} of a tensor of shape {} is not 1",
            fmt_shape(&c.dims)
        )));
    }
    let dims = (0..rank)
        .filter(|i| !drop.contains(i))
        .map(|i| c.dims[i])
        .collect();
    Ok(c.with_dims(dims))
}

/// ONNX Reshape's target dimensions for an input of `input` dimensions: `0` copies the
/// input's dimension (unless `allowzero`), one `-1` takes what is left.
pub(super) fn reshape_dims(input: &[usize], target: &[i64], allowzero: bool) -> Result<Vec<usize>> {
    let total = elements(input, "Reshape's input")?;
    let bad = || {
        Error::Unsupported(format!(
            "Reshape of a {} tensor to {target:?}: the element counts differ",
            fmt_shape(input)
        ))
    };
    let mut dims = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                dims.push(1);
            }
            0 if !allowzero => dims.push(*input.get(i).ok_or_else(bad)?),
            d if d >= 0 => dims.push(usize::try_from(d).map_err(|_| bad())?),
            _ => return Err(bad()),
        }
    }
    let known = elements(&dims, "Reshape's target")?;
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(bad());
        }
        dims[i] = total / known;
    }
    if elements(&dims, "Reshape's target")? != total {
        return Err(bad());
    }
    Ok(dims)
}

/// Reshape of a constant.
pub(super) fn reshape(c: &Const, target: &[i64], allowzero: bool) -> Result<Const> {
    Ok(c.with_dims(reshape_dims(&c.dims, target, allowzero)?))
}
