//! One function per op, on `[N, C, H, W]` / `[N, F]` tensors, written as the
//! textbook definitions.
use super::item_shape;
use crate::ir::{Clip, Conv, Hw, Lrn, Pad, Pool, Shape};
use crate::tensor::Tensor;

/// With `G` groups, `C/G` input channels per group and `K/G` filters per group, filter
/// `k` belongs to group `g = k / (K/G)` and reads input channels `g*C/G ..`:
///
/// out[n][k][y][x] = bias[k] + sum over c < C/G, i, j of
///     w[k][c][i][j] * in[n][g*C/G + c][y*S + i*D - P][x*S + j*D - P]   (zero outside the input)
pub fn conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, c: &Conv, out: &Shape) -> Tensor {
    let (n, s) = (x.shape()[0], item_shape(x));
    let (kh, kw) = (w.shape()[2], w.shape()[3]);
    let (stride, pad, dil) = (c.stride, c.pad, c.dilation);
    let cg = s.c / c.groups; // input channels per group
    let kg = out.c / c.groups; // filters per group
    let (xd, wd) = (x.data(), w.data());
    let mut y = Tensor::zeros(out.dims(n));
    let yd = y.data_mut();
    let mut o = 0;
    for b_ in 0..n {
        for k in 0..out.c {
            let first_channel = (k / kg) * cg;
            for oy in 0..out.h {
                for ox in 0..out.w {
                    let mut acc = b.map_or(0.0, |b| b.data()[k]);
                    for c in 0..cg {
                        for i in 0..kh {
                            for j in 0..kw {
                                let iy = (oy * stride.h + i * dil.h) as isize - pad.h as isize;
                                let ix = (ox * stride.w + j * dil.w) as isize - pad.w as isize;
                                if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                    continue;
                                }
                                let ci = first_channel + c;
                                let xi = ((b_ * s.c + ci) * s.h + iy as usize) * s.w + ix as usize;
                                let wi = ((k * cg + c) * kh + i) * kw + j;
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
    let c = Conv {
        filters: out.c,
        size: Hw::square(1),
        stride,
        pad: Hw::square(0),
        dilation: Hw::square(1),
        groups: 1,
        bias: b.is_some(),
        epilogue: Default::default(),
    };
    conv(x, &w, b, &c, out)
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
/// Average pool: the window's sum divided by its full size, padding counted as zeros
/// (`count_pad`), or by the number of input pixels the window covers.
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
                let mut count = 0;
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
                        count += 1;
                    }
                }
                let divisor = if p.count_pad {
                    p.size.h * p.size.w
                } else {
                    count
                };
                y.data_mut()[o] = match kind {
                    PoolKind::Max => max,
                    PoolKind::Avg => sum / divisor as f32,
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

pub fn clip(mut x: Tensor, c: &Clip) -> Tensor {
    for v in x.data_mut() {
        *v = c.apply(*v);
    }
    x
}

/// y[c] = x[c] / (bias + alpha/size * sum of x[i]^2 for i in the window around c)^beta,
/// per pixel; the window is [`Lrn::window`].
pub fn lrn(x: &Tensor, l: &Lrn) -> Tensor {
    let (n, s) = (x.shape()[0], item_shape(x));
    let plane = s.h * s.w;
    let mut y = x.clone();
    for b in 0..n {
        for c in 0..s.c {
            let (lo, hi) = l.window(c, s.c);
            for p in 0..plane {
                let at = |c: usize| (b * s.c + c) * plane + p;
                let sum: f32 = (lo..=hi).map(|i| x.data()[at(i)] * x.data()[at(i)]).sum();
                let scale = (l.bias + l.alpha / l.size as f32 * sum).powf(l.beta);
                y.data_mut()[at(c)] = x.data()[at(c)] / scale;
            }
        }
    }
    y
}

/// Output channel `j*groups + g` is input channel `g*(C/groups) + j`.
pub fn channel_shuffle(x: &Tensor, groups: usize) -> Tensor {
    let (n, s) = (x.shape()[0], item_shape(x));
    let plane = s.h * s.w;
    let per_group = s.c / groups;
    let mut y = x.clone();
    for b in 0..n {
        for g in 0..groups {
            for j in 0..per_group {
                let from = (b * s.c + g * per_group + j) * plane;
                let to = (b * s.c + j * groups + g) * plane;
                y.data_mut()[to..to + plane].copy_from_slice(&x.data()[from..from + plane]);
            }
        }
    }
    y
}

/// y = x * scale[c] + shift[c], per channel.
pub fn scale_shift(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Tensor {
    let s = item_shape(x);
    let plane = s.h * s.w;
    let mut y = x.clone();
    for (i, v) in y.data_mut().iter_mut().enumerate() {
        let c = (i / plane) % s.c;
        *v = *v * scale.data()[c] + shift.data()[c];
    }
    y
}
