//! A dense f32 tensor: contiguous, row-major, with its shape (NCHW for activations).
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n = element_count(&shape)?;
        if n != data.len() {
            return Err(Error::Input(format!(
                "tensor of shape {} needs {n} values, got {}",
                fmt_shape(&shape),
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor of `shape` filled with `value`, or an error if the shape is absurd
    /// (its size overflows), checked before allocating.
    pub fn try_filled(shape: Vec<usize>, value: f32) -> Result<Self> {
        let n = element_count(&shape)?;
        let data = crate::memory::try_vec(
            n,
            value,
            &format!("a tensor of shape {}", fmt_shape(&shape)),
        )?;
        Ok(Tensor { shape, data })
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        Self::filled(shape, 0.0)
    }

    pub fn filled(shape: Vec<usize>, value: f32) -> Self {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![value; n],
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Same data, another shape with the same number of elements.
    pub fn reshaped(self, shape: Vec<usize>) -> Result<Self> {
        Tensor::new(shape, self.data)
    }
}

/// The number of elements of `shape`, or an error if it overflows.
pub fn element_count(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            Error::Input(format!(
                "a tensor of shape {} is too large",
                fmt_shape(shape)
            ))
        })
}

/// `[2, 3, 4]` -> `2x3x4`; `[]` -> `() (a scalar)`.
pub fn fmt_shape(shape: &[usize]) -> String {
    if shape.is_empty() {
        return "() (a scalar)".into();
    }
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// Relative L2 distance `|a - b| / |b|`, the agreement measure used across the tests.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_l2 on slices of different length");
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}
