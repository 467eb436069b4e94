//! One function per op, on `[N, C, H, W]` / `[N, F]` tensors, written as the
//! textbook definitions.
use super::item_shape;
use crate::ir::{Hw, Pad, Pool, Shape};
use crate::tensor::Tensor;

/// out[n][k][y][x] = bias[k] + sum over c, i, j of
///     w[k][c][i][j] * in[n][c][y*S + i - P][x*S + j - P]   (zero outside the input)
pub fn conv(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: Hw,
    pad: Hw,
    out: &Shape,
) -> Tensor {
    let (n, s) = (x.shape()[0], item_shape(x));
    let (kh, kw) = (w.shape()[2], w.shape()[3]);
    let (xd, wd) = (x.data(), w.data());
    let mut y = Tensor::zeros(out.dims(n));
    let yd = y.data_mut();
    let mut o = 0;
    for b_ in 0..n {
        for k in 0..out.c {
            for oy in 0..out.h {
                for ox in 0..out.w {
                    let mut acc = b.map_or(0.0, |b| b.data()[k]);
                    for c in 0..s.c {
                        for i in 0..kh {
                            for j in 0..kw {
                                let iy = (oy * stride.h + i) as isize - pad.h as isize;
                                let ix = (ox * stride.w + j) as isize - pad.w as isize;
                                if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                    continue;
                                }
                                let xi = ((b_ * s.c + c) * s.h + iy as usize) * s.w + ix as usize;
                                let wi = ((k * s.c + c) * kh + i) * kw + j;
                                acc += wd[wi] * xd[xi];
                            }
                        }
                    }
                    yd[o] = acc;
                    o += 1;
                }
            }
        }
    }
    y
}

/// A 1x1 convolution without padding, sampling every `stride`-th pixel: a matrix
/// product of the `[K x C]` weights with the `[C x pixels]` input.
pub fn gemm_1x1(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: Hw, out: &Shape) -> Tensor {
    let w = w
        .clone()
        .reshaped(vec![out.c, item_shape(x).c, 1, 1])
        .expect("1x1 weights");
    conv(x, &w, b, stride, Hw::square(0), out)
}

/// out[n][o] = bias[o] + sum over i of w[o][i] * in[n][i], the input flattened in C,H,W order.
pub fn fc(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
    let n = x.shape()[0];
    let (units, fin) = (w.shape()[0], w.shape()[1]);
    let mut y = Tensor::zeros(vec![n, units]);
    for b_ in 0..n {
        let row = &x.data()[b_ * fin..(b_ + 1) * fin];
        for o in 0..units {
            let wrow = &w.data()[o * fin..(o + 1) * fin];
            let dot: f32 = wrow.iter().zip(row).map(|(a, b)| a * b).sum();
            y.data_mut()[b_ * units + o] = dot + b.map_or(0.0, |b| b.data()[o]);
        }
    }
    y
}

/// `max(x, 0)`, NaN staying NaN (as in PyTorch; `f32::max` would turn NaN into 0).
pub fn relu(mut x: Tensor) -> Tensor {
    for v in x.data_mut() {
        if *v < 0.0 {
            *v = 0.0;
        }
    }
    x
}

#[derive(Clone, Copy, PartialEq)]
pub enum PoolKind {
    Max,
    Avg,
}

/// Max pool: the largest value in the window (NaN if it holds one), padding never wins.
/// Average pool: the window's sum divided by its full size, padding counted as zeros.
pub fn pool(x: &Tensor, p: &Pool, kind: PoolKind, out: &Shape) -> Tensor {
    let (n, s) = (x.shape()[0], item_shape(x));
    let mut y = Tensor::zeros(out.dims(n));
    let mut o = 0;
    for plane in 0..n * s.c {
        let src = &x.data()[plane * s.h * s.w..(plane + 1) * s.h * s.w];
        for oy in 0..out.h {
            for ox in 0..out.w {
                let mut max = f32::NEG_INFINITY;
                let mut sum = 0.0;
                for i in 0..p.size.h {
                    for j in 0..p.size.w {
                        let iy = (oy * p.stride.h + i) as isize - p.pad.h as isize;
                        let ix = (ox * p.stride.w + j) as isize - p.pad.w as isize;
                        if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                            continue;
                        }
                        let v = src[iy as usize * s.w + ix as usize];
                        // NaN wins, as in PyTorch (`f32::max` would skip it).
                        if v > max || v.is_nan() {
                            max = v;
                        }
                        sum += v;
                    }
                }
                y.data_mut()[o] = match kind {
                    PoolKind::Max => max,
                    PoolKind::Avg => sum / (p.size.h * p.size.w) as f32,
                };
                o += 1;
            }
        }
    }
    y
}

/// The mean of each channel plane: `[N, C, H, W]` -> `[N, C, 1, 1]`.
pub fn global_avgpool(x: &Tensor) -> Tensor {
    let (n, s) = (x.shape()[0], item_shape(x));
    let plane = s.h * s.w;
    let data = x
        .data()
        .chunks(plane)
        .map(|p| p.iter().sum::<f32>() / plane as f32)
        .collect();
    Tensor::new(vec![n, s.c, 1, 1], data).expect("one mean per plane")
}

/// Softmax over channels (per pixel), or over the features of a flat tensor:
/// `exp(x - max) / sum exp(x - max)`, the max subtracted for numerical stability.
pub fn softmax(x: &Tensor) -> Tensor {
    let (n, s) = (x.shape()[0], item_shape(x));
    let plane = s.h * s.w;
    let mut y = x.clone();
    for b in 0..n {
        for p in 0..plane {
            let at = |c: usize| (b * s.c + c) * plane + p;
            let max = (0..s.c)
                .map(|c| x.data()[at(c)])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for c in 0..s.c {
                let e = (x.data()[at(c)] - max).exp();
                y.data_mut()[at(c)] = e;
                sum += e;
            }
            for c in 0..s.c {
                y.data_mut()[at(c)] /= sum;
            }
        }
    }
    y
}

pub fn add(inputs: &[&Tensor]) -> Tensor {
    let mut y = inputs[0].clone();
    for x in &inputs[1..] {
        for (a, b) in y.data_mut().iter_mut().zip(x.data()) {
            *a += b;
        }
    }
    y
}

/// Joins along channels: each batch item is its inputs' items one after another.
pub fn concat(inputs: &[&Tensor]) -> Tensor {
    let n = inputs[0].shape()[0];
    let mut data = Vec::new();
    for b in 0..n {
        for x in inputs {
            let item = x.len() / n;
            data.extend_from_slice(&x.data()[b * item..(b + 1) * item]);
        }
    }
    let s = item_shape(inputs[0]);
    let c = inputs.iter().map(|x| item_shape(x).c).sum();
    let shape = Shape { c, ..s };
    Tensor::new(shape.dims(n), data).expect("channels add up")
}

/// y = (x - mean) / sqrt(var + eps) * gamma + beta, per channel.
pub fn batchnorm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f32,
) -> Tensor {
    let s = item_shape(x);
    let plane = s.h * s.w;
    let mut y = x.clone();
    for (i, v) in y.data_mut().iter_mut().enumerate() {
        let c = (i / plane) % s.c;
        *v =
            (*v - mean.data()[c]) / (var.data()[c] + eps).sqrt() * gamma.data()[c] + beta.data()[c];
    }
    y
}

/// Copies each plane into the middle of a larger one filled with `p.value`.
pub fn pad(x: &Tensor, p: &Pad, out: &Shape) -> Tensor {
    let (n, s) = (x.shape()[0], item_shape(x));
    let mut y = Tensor::filled(out.dims(n), p.value);
    for plane in 0..n * s.c {
        for iy in 0..s.h {
            let src = (plane * s.h + iy) * s.w;
            let dst = (plane * out.h + iy + p.top) * out.w + p.left;
            y.data_mut()[dst..dst + s.w].copy_from_slice(&x.data()[src..src + s.w]);
        }
    }
    y
}
