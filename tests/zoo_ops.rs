//! The classic ConvNets' ops (grouped, depthwise and dilated conv, LRN, clip, channel
//! shuffle, average pooling without the padding, scale_shift): the format, shape
//! arithmetic, parameter counts, and the interpreter against examples worked by hand.
mod common;
use cnnc::ir::stats::layer_stats;
use cnnc::ir::Graph;
use cnnc::passes::Pipeline;
use cnnc::{OptLevel, Tensor};
use common::set_param as set;
use common::*;

fn run(g: &Graph, dims: Vec<usize>, x: Vec<f32>) -> Tensor {
    cnnc::interp::run(g, Tensor::new(dims, x).unwrap())
        .unwrap()
        .remove(0)
}

fn close(got: &[f32], want: &[f32]) {
    assert_values(got, want, 1e-6);
}

fn arithmetic(g: &Graph, name: &str) -> String {
    let node = g.node(g.find(name).unwrap());
    node.note.window.as_ref().unwrap().arithmetic()
}

#[test]
fn grouped_conv_reads_only_its_groups_channels() {
    // 4 channels in 2 groups; filter 0 reads channels 0-1, filter 1 channels 2-3.
    let mut g = graph(
        "input: [4, 1, 2]\nlayers:\n  - conv: {filters: 2, size: 1, groups: 2, bias: false}\n",
    );
    set(
        &mut g,
        "conv1",
        "weight",
        vec![2, 2, 1, 1],
        vec![1., 2., 3., 4.],
    );
    let x = vec![1., 1., 10., 10., 100., 100., 1000., 1000.];
    let y = run(&g, vec![1, 4, 1, 2], x);
    // k0 = 1*1 + 2*10 = 21; k1 = 3*100 + 4*1000 = 4300.
    assert_eq!(y.data(), &[21., 21., 4300., 4300.]);
}

#[test]
fn depthwise_conv_with_channel_multiplier_2() {
    // groups = C = 2 and 4 filters: filters 0,1 read channel 0, filters 2,3 channel 1.
    let mut g = graph("input: [2, 1, 1]\nlayers:\n  - conv: {filters: 4, size: 1, groups: 2}\n");
    set(
        &mut g,
        "conv1",
        "weight",
        vec![4, 1, 1, 1],
        vec![1., 2., 3., 4.],
    );
    set(&mut g, "conv1", "bias", vec![4], vec![0.5, 0., 0., -1.]);
    let y = run(&g, vec![1, 2, 1, 1], vec![10., 100.]);
    assert_eq!(y.data(), &[10.5, 20., 300., 399.]);
}

#[test]
fn dilated_conv_worked_by_hand() {
    // A 3x3 filter with dilation 2 covers 5x5: one output from a 5x5 input, the sum of
    // x[i][j] = 5i + j over rows and columns 0, 2, 4: 3*5*(0+2+4) + 3*(0+2+4) = 108.
    let mut g = graph(
        "input: [1, 5, 5]\nlayers:\n  - conv: {filters: 1, size: 3, dilation: 2, bias: false}\n",
    );
    assert_eq!(
        arithmetic(&g, "conv1"),
        "(5+2*0-5)/1+1 = 1 (dilated filter 2*(3-1)+1 = 5)"
    );
    set(&mut g, "conv1", "weight", vec![1, 1, 3, 3], vec![1.; 9]);
    let x: Vec<f32> = (0..25).map(|v| v as f32).collect();
    assert_eq!(run(&g, vec![1, 1, 5, 5], x.clone()).data(), &[108.]);

    // Stride 2 and pad 2: (5+2*2-5)/2+1 = 3 outputs a side. Output (0,0) reads rows
    // and columns -2, 0, 2, of which 0 and 2 exist: 0 + 2 + 10 + 12 = 24.
    let mut g = graph("input: [1, 5, 5]\nlayers:\n  - conv: {filters: 1, size: 3, dilation: 2, stride: 2, pad: 2, bias: false}\n");
    assert_eq!(
        arithmetic(&g, "conv1"),
        "(5+2*2-5)/2+1 = 3 (dilated filter 2*(3-1)+1 = 5)"
    );
    set(&mut g, "conv1", "weight", vec![1, 1, 3, 3], vec![1.; 9]);
    let y = run(&g, vec![1, 1, 5, 5], x);
    assert_eq!(y.shape(), &[1, 1, 3, 3]);
    // Centre (1,1) reads rows/cols 0, 2, 4: 108. Corner (2,2) reads rows/cols 2, 4: 12+14+22+24.
    assert_eq!(y.data()[0], 24.);
    assert_eq!(y.data()[4], 108.);
    assert_eq!(y.data()[8], 72.);
}

#[test]
fn dilated_window_larger_than_the_input_is_refused_with_the_arithmetic() {
    let err = cnnc::format::parse_str(
        "input: [1, 4, 4]\nlayers:\n  - conv: {filters: 1, size: 3, dilation: 2}\n",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("(4 + 2*0 - 5)/1 + 1 < 1"), "{err}");
    assert!(err.contains("dilated filter 2*(3-1)+1 = 5"), "{err}");
}

#[test]
fn groups_must_divide_channels_and_filters() {
    let err = cnnc::format::parse_str(
        "input: [6, 4, 4]\nlayers:\n  - conv: {filters: 4, size: 1, groups: 4}\n",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("4 groups") && err.contains("6 input channels"),
        "{err}"
    );
}

#[test]
fn lrn_sizes_3_and_2_worked_by_hand() {
    // alpha/size = 1, beta = 1, bias = 1: y[c] = x[c] / (1 + sum of squares in window).
    // Size 3: windows {0,1}, {0,1,2}, {1,2}: 1/(1+5), 2/(1+14), 3/(1+13).
    let g = graph("input: [3, 1, 1]\nlayers:\n  - lrn: {size: 3, alpha: 3, beta: 1, bias: 1}\n");
    close(
        run(&g, vec![1, 3, 1, 1], vec![1., 2., 3.]).data(),
        &[1. / 6., 2. / 15., 3. / 14.],
    );
    // Size 2 (even): the window is c..=c+1 (ONNX: floor((size-1)/2) before, ceil after).
    let g = graph("input: [3, 1, 1]\nlayers:\n  - lrn: {size: 2, alpha: 2, beta: 1, bias: 1}\n");
    close(
        run(&g, vec![1, 3, 1, 1], vec![1., 2., 3.]).data(),
        &[1. / 6., 2. / 14., 3. / 10.],
    );
    // beta 0.75, bias 2, alpha 1e-4, size 5 (ZFNet): 5 channels of 10 at one pixel;
    // channel 0 sums channels 0..=2: 300, so y = 10 / (2 + 1e-4/5*300)^0.75.
    let g = graph(
        "input: [5, 1, 1]\nlayers:\n  - lrn: {size: 5, alpha: 0.0001, beta: 0.75, bias: 2}\n",
    );
    let y = run(&g, vec![1, 5, 1, 1], vec![10.; 5]);
    let want0 = 10. / (2f64 + 1e-4 / 5. * 300.).powf(0.75);
    let want2 = 10. / (2f64 + 1e-4 / 5. * 500.).powf(0.75);
    close(&[y.data()[0], y.data()[2]], &[want0 as f32, want2 as f32]);
}

#[test]
fn channel_shuffle_transposes_groups_and_channels() {
    let x: Vec<f32> = (0..6).map(|v| v as f32).collect();
    // 2 groups of 3: out[j*2 + g] = in[g*3 + j].
    let g = graph("input: [6, 1, 1]\nlayers:\n  - channel_shuffle: {groups: 2}\n");
    assert_eq!(
        run(&g, vec![1, 6, 1, 1], x.clone()).data(),
        &[0., 3., 1., 4., 2., 5.]
    );
    // 3 groups of 2: out[j*3 + g] = in[g*2 + j].
    let g = graph("input: [6, 1, 1]\nlayers:\n  - channel_shuffle: {groups: 3}\n");
    assert_eq!(
        run(&g, vec![1, 6, 1, 1], x).data(),
        &[0., 2., 4., 1., 3., 5.]
    );
    let err = cnnc::format::parse_str(
        "input: [6, 1, 1]\nlayers:\n  - channel_shuffle: {groups: 4}\n",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("4 groups"), "{err}");
}

#[test]
fn avgpool_without_the_padding_divides_by_the_pixels_it_covers() {
    let x = vec![1., 2., 3., 4.];
    let y = run(
        &graph("input: [1, 2, 2]\nlayers:\n  - avgpool: {size: 2, stride: 1, pad: 1, count_include_pad: false}\n"),
        vec![1, 1, 2, 2],
        x.clone(),
    );
    // Corners cover one pixel, edges two, the centre all four.
    assert_eq!(y.data(), &[1., 1.5, 2., 2., 2.5, 3., 3., 3.5, 4.]);
    let y = run(
        &graph("input: [1, 2, 2]\nlayers:\n  - avgpool: {size: 2, stride: 1, pad: 1}\n"),
        vec![1, 1, 2, 2],
        x,
    );
    assert_eq!(y.data(), &[0.25, 0.75, 0.5, 1., 2.5, 1.5, 0.75, 1.75, 1.]);
}

#[test]
fn avgpool_with_asymmetric_pads() {
    // Pad only below and right: (3+0+1-2)/2+1 = 2 a side; the windows that reach into
    // the padding cover 2 or 1 pixels.
    let g = graph("input: [1, 3, 3]\nlayers:\n  - avgpool: {size: 2, pad: 0, pad_end: 1, count_include_pad: false}\n");
    assert_eq!(arithmetic(&g, "avgpool1"), "(3+0+1-2)/2+1 = 2");
    let y = run(&g, vec![1, 1, 3, 3], (1..=9).map(|v| v as f32).collect());
    assert_eq!(y.data(), &[3., 4.5, 7.5, 9.]);
}

#[test]
fn clip_bounds_and_relu6() {
    let g = graph("input: [3, 1, 1]\nlayers:\n  - clip: {min: -1, max: 2}\n");
    assert_eq!(
        run(&g, vec![1, 3, 1, 1], vec![-5., 0.5, 7.]).data(),
        &[-1., 0.5, 2.]
    );
    let g = graph("input: [3, 1, 1]\nlayers:\n  - relu6\n");
    assert_eq!(
        run(&g, vec![1, 3, 1, 1], vec![-5., 0.5, 7.]).data(),
        &[0., 0.5, 6.]
    );
    let err = cnnc::format::parse_str(
        "input: [1, 1, 1]\nlayers:\n  - clip: {min: 3, max: 2}\n",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("min <= max"), "{err}");
}

#[test]
fn scale_shift_per_channel() {
    let mut g = graph("input: [2, 1, 2]\nlayers:\n  - scale_shift\n");
    set(&mut g, "scale_shift1", "weight", vec![2], vec![2., 3.]);
    set(&mut g, "scale_shift1", "bias", vec![2], vec![1., -1.]);
    let y = run(&g, vec![1, 2, 1, 2], vec![1., 2., 3., 4.]);
    assert_eq!(y.data(), &[3., 5., 8., 11.]);
}

#[test]
fn grouped_conv_params_are_k_times_c_over_g_times_fh_fw_plus_k() {
    let g = graph(
        "input: [32, 8, 8]
layers:
  - {name: g4, conv: {filters: 64, size: 3, pad: 1, groups: 4}}
  - {name: dw, conv: {filters: 128, size: 3, pad: 1, groups: 64, bias: false}}
  - {name: d2, conv: {filters: 8, size: 3, pad: 2, dilation: 2}}
  - lrn: {size: 5}
  - scale_shift
",
    );
    let stats = |n: &str| layer_stats(&g, g.find(n).unwrap());
    assert_eq!(stats("g4").params, 64 * 32 / 4 * 9 + 64);
    assert_eq!(stats("g4").macs, 64 * 8 * 8 * 8 * 9);
    assert_eq!(stats("dw").params, 128 * 9);
    assert_eq!(stats("d2").params, 8 * 128 * 9 + 8);
    assert_eq!(stats("lrn1").params, 0);
    assert_eq!(stats("scale_shift1").params, 16);
}

#[test]
fn new_ops_round_trip_through_the_writer() {
    let text = "input: [8, 9, 9]
layers:
  - conv: {filters: 16, size: 3, pad: 2, dilation: 2, groups: 4}
  - relu6
  - clip: {min: -.inf, max: 1.5}
  - lrn: {size: 3, alpha: 0.001, beta: 0.5, bias: 2}
  - channel_shuffle: {groups: 4}
  - scale_shift
  - avgpool: {size: 3, stride: 2, pad: 0, pad_end: 1, count_include_pad: false}
";
    let g = graph(text);
    let written = cnnc::format::write_str(&g).unwrap();
    let again = graph(&written);
    let ops = |g: &Graph| -> Vec<String> {
        g.topo_order()
            .unwrap()
            .iter()
            .map(|&i| g.node(i).op.to_string())
            .collect()
    };
    assert_eq!(ops(&g), ops(&again), "{written}");
    assert!(
        written.contains("groups: 4") && written.contains("dilation: 2"),
        "{written}"
    );
}

/// conv(groups 2) -> batchnorm -> scale_shift -> relu6, with non-trivial statistics:
/// -O2 folds the scale_shift into the batchnorm, the batchnorm into the grouped conv and
/// fuses the relu6 as its epilogue; the result must not change.
#[test]
fn folding_into_a_grouped_conv_and_fusing_clip_keep_the_result() {
    let mut g = graph(
        "input: [4, 5, 5]
layers:
  - {name: conv, conv: {filters: 6, size: 3, pad: 1, groups: 2}}
  - {name: bn, batchnorm}
  - {name: ss, scale_shift}
  - relu6
",
    );
    cnnc::weights::bind(&mut g, None).unwrap();
    let wave = |n: usize, k: f32| {
        (0..n)
            .map(|i| ((i as f32 * k).sin() + 1.2) * 0.8)
            .collect::<Vec<f32>>()
    };
    set(&mut g, "bn", "weight", vec![6], wave(6, 1.3));
    set(&mut g, "bn", "bias", vec![6], wave(6, 2.1));
    set(&mut g, "bn", "running_mean", vec![6], wave(6, 0.7));
    set(&mut g, "bn", "running_var", vec![6], wave(6, 0.3));
    set(&mut g, "ss", "weight", vec![6], wave(6, 1.9));
    set(&mut g, "ss", "bias", vec![6], wave(6, 0.4));
    let x = Tensor::new(
        vec![2, 4, 5, 5],
        wave(200, 0.37).iter().map(|v| v * 4. - 3.).collect(),
    )
    .unwrap();
    let want = cnnc::interp::run(&g, x.clone()).unwrap().remove(0);
    let mut opt = g.clone();
    Pipeline::for_level(OptLevel::O2).run(&mut opt).unwrap();
    assert_eq!(opt.node_count(), 2, "input and one conv remain");
    let conv = opt.node(opt.find("conv").unwrap());
    assert!(
        conv.op.to_string().ends_with("groups=2 +clip(0, 6)"),
        "{}",
        conv.op
    );
    let got = cnnc::interp::run(&opt, x).unwrap().remove(0);
    assert_close("folded", &got, &want, 1e-5);
    // Some outputs are clipped at each end, so the clip is exercised.
    assert!(want.data().contains(&6.0) && want.data().contains(&0.0));
}

/// Every new op through ONNX and back: the re-imported graph computes the same, with
/// the same layers (the shuffle's three ONNX nodes and the scale_shift's Mul and Add
/// read back as one layer each).
#[test]
fn new_ops_survive_onnx_export_and_import() {
    let mut g = graph(
        "input: [8, 9, 9]
layers:
  - {name: g4, conv: {filters: 16, size: 3, pad: 2, dilation: 2, groups: 4}}
  - {name: r6, relu6}
  - {name: c, clip: {min: -0.5}}
  - {name: norm, lrn: {size: 3, alpha: 0.01, beta: 0.5, bias: 2}}
  - {name: shuffle, channel_shuffle: {groups: 4}}
  - {name: ss, scale_shift}
  - {name: dw, conv: {filters: 32, size: 3, groups: 16, stride: 2}}
  - {name: pool, avgpool: {size: 3, stride: 2, pad: 0, pad_end: 1, count_include_pad: false}}
",
    );
    cnnc::weights::bind(&mut g, None).unwrap();
    set(
        &mut g,
        "ss",
        "weight",
        vec![16],
        (0..16).map(|i| 0.5 + i as f32 / 8.).collect(),
    );
    set(
        &mut g,
        "ss",
        "bias",
        vec![16],
        (0..16).map(|i| i as f32 / 10. - 0.7).collect(),
    );
    let bytes = cnnc::onnx::export(&g).unwrap();
    let back = cnnc::onnx::import(&bytes).unwrap();
    let ops = |g: &Graph| -> Vec<String> {
        g.topo_order()
            .unwrap()
            .iter()
            .map(|&i| g.node(i).op.to_string())
            .collect()
    };
    assert_eq!(ops(&g), ops(&back));
    let x = Tensor::new(
        vec![2, 8, 9, 9],
        (0..1296)
            .map(|i| ((i * 37 % 101) as f32 - 50.) / 25.)
            .collect(),
    )
    .unwrap();
    let want = cnnc::interp::run(&g, x.clone()).unwrap().remove(0);
    let got = cnnc::interp::run(&back, x.clone()).unwrap().remove(0);
    assert_close("re-imported", &got, &want, 1e-6);
    // Fused: conv +relu +clip as one conv, exported as Conv, Relu, Clip.
    let mut opt = g.clone();
    Pipeline::for_level(OptLevel::O2).run(&mut opt).unwrap();
    let back = cnnc::onnx::import(&cnnc::onnx::export(&opt).unwrap()).unwrap();
    let got = cnnc::interp::run(&back, x).unwrap().remove(0);
    assert_close("fused, re-imported", &got, &want, 1e-5);
}
