//! The reference interpreter, checked against numbers worked out independently:
//! the lecture's examples by hand, and float64 golden outputs from an independent
//! numpy engine (`tests/golden/make_golden.py`).
mod common;
use cnnc::{Error, Tensor};
use common::*;

#[test]
fn golden_outputs_match_the_float64_reference() {
    for case in golden_cases() {
        let got = cnnc::interp::run(&case.graph, case.input.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(got.len(), case.outputs.len(), "{}: outputs", case.name);
        for (i, (g, w)) in got.iter().zip(&case.outputs).enumerate() {
            assert_close(&format!("{} output {i}", case.name), g, w, 1e-5);
        }
    }
}

#[test]
fn lecture_max_pool_2x2_stride_2_gives_the_regional_maxima() {
    let g = graph("input: [1, 4, 4]\nlayers:\n  - maxpool: {size: 2, stride: 2}\n");
    let x = Tensor::new(
        vec![1, 1, 4, 4],
        vec![
            1., 1., 2., 4., //
            5., 6., 7., 8., //
            3., 2., 1., 0., //
            1., 2., 3., 4.,
        ],
    )
    .unwrap();
    let y = cnnc::interp::run(&g, x).unwrap().remove(0);
    assert_eq!(y.shape(), &[1, 1, 2, 2]);
    assert_eq!(y.data(), &[6., 8., 3., 4.]);
}

#[test]
fn small_conv_worked_by_hand() {
    // One 2x2 filter over a 3x3 input with stride 1 and pad 1: a 4x4 output.
    let mut g = graph("input: [1, 3, 3]\nlayers:\n  - conv: {filters: 1, size: 2, pad: 1}\n");
    let conv = g.find("conv1").unwrap();
    let node = g.node_mut(conv);
    node.params.insert(
        "weight".into(),
        Tensor::new(vec![1, 1, 2, 2], vec![1., 2., 3., 4.]).unwrap(),
    );
    node.params
        .insert("bias".into(), Tensor::new(vec![1], vec![0.5]).unwrap());
    let x = Tensor::new(vec![1, 1, 3, 3], (1..=9).map(|v| v as f32).collect()).unwrap();
    let y = cnnc::interp::run(&g, x).unwrap().remove(0);
    // out[y][x] = sum_ij w[i][j] * in[y+i-1][x+j-1]; e.g. out[0][0] = 4*1 = 4,
    // out[1][1] = 1*1 + 2*2 + 3*4 + 4*5 = 37, out[3][3] = 1*9 = 9.
    #[rustfmt::skip]
    let want = [
        4., 11., 18., 9.,
        18., 37., 47., 21.,
        36., 67., 77., 33.,
        14., 23., 26., 9.,
    ];
    let want: Vec<f32> = want.iter().map(|v| v + 0.5).collect();
    assert_eq!(y.shape(), &[1, 1, 4, 4]);
    assert_eq!(y.data(), want.as_slice());
}

#[test]
fn avgpool_counts_padding_as_zeros_and_softmax_is_stable() {
    let g = graph("input: [1, 2, 2]\nlayers:\n  - avgpool: {size: 2, stride: 1, pad: 1}\n");
    let x = Tensor::new(vec![1, 1, 2, 2], vec![4., 8., 12., 16.]).unwrap();
    let y = cnnc::interp::run(&g, x).unwrap().remove(0);
    assert_eq!(y.data(), &[1., 3., 2., 4., 10., 6., 3., 7., 4.]);

    let g = graph("input: [3, 1, 1]\nlayers:\n  - softmax\n");
    let x = Tensor::new(vec![1, 3, 1, 1], vec![1000., 1000., 1000.]).unwrap();
    let y = cnnc::interp::run(&g, x).unwrap().remove(0);
    for v in y.data() {
        assert!((v - 1.0 / 3.0).abs() < 1e-6, "{v}");
    }
}

#[test]
fn batch_items_are_independent() {
    let mut g = cnnc::format::load(repo().join("graphs/lenet5.yaml")).unwrap();
    cnnc::weights::bind(&mut g, None).unwrap();
    let data = cnnc::weights::standard_normal(7, "x", 3 * 32 * 32);
    let batch = Tensor::new(vec![3, 1, 32, 32], data.clone()).unwrap();
    let all = cnnc::interp::run(&g, batch).unwrap().remove(0);
    for i in 0..3 {
        let one = Tensor::new(vec![1, 1, 32, 32], data[i * 1024..(i + 1) * 1024].to_vec()).unwrap();
        let y = cnnc::interp::run(&g, one).unwrap().remove(0);
        assert_eq!(y.data(), &all.data()[i * 10..(i + 1) * 10]);
    }
}

#[test]
fn input_of_the_wrong_shape_names_both_shapes() {
    let mut g = cnnc::format::load(repo().join("graphs/cs231n_example.yaml")).unwrap();
    cnnc::weights::bind(&mut g, None).unwrap();
    let err = cnnc::interp::run(&g, Tensor::zeros(vec![1, 1, 32, 32])).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Input(_)), "{msg}");
    assert!(
        msg.contains("1x1x32x32") && msg.contains("3x32x32"),
        "{msg}"
    );
}
