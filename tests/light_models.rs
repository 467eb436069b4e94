//! The ONNX backend test suite's model-zoo networks (`onnx/backend/test/data/light/`,
//! Apache-2.0, from the `onnx` pip package): each imports as shipped and matches its
//! stored output on the interpreter and the JIT, with the suite's tolerances (rtol 1e-3,
//! densenet 2e-3; atol 1e-7). The input is what the suite's runner generates,
//! `arange(n) / n`, committed as `input.npy` (and checked to be that here).
//!
//! Every weight of these files is 0.02, so the stored outputs cannot tell channels apart;
//! `scripts/check_light_random.py` checks the same architectures with random weights
//! against onnxruntime, and `tests/golden/onnx/` holds small random-weight fixtures.
mod common;
use cnnc::onnx::proto::TensorProto;
use cnnc::Tensor;
use common::repo;
use prost::Message;

/// Model stem and rtol.
const MODELS: &[(&str, f32)] = &[
    ("bvlc_alexnet", 1e-3),
    ("zfnet512", 1e-3),
    ("vgg19", 1e-3),
    ("inception_v1", 1e-3),
    ("inception_v2", 1e-3),
    ("resnet50", 1e-3),
    ("squeezenet", 1e-3),
    ("densenet121", 2e-3),
    ("shufflenet", 1e-3),
];

fn dir() -> std::path::PathBuf {
    repo().join("tests/golden/light")
}

fn input() -> Tensor {
    let x = cnnc::io::npy::read(&dir().join("input.npy")).unwrap();
    assert_eq!(x.shape(), &[1, 3, 224, 224]);
    // Runner.generate_dummy_data(random=False): arange(n) / n in float64, cast to f32.
    let n = x.len();
    for (i, &v) in x.data().iter().enumerate() {
        assert_eq!(v, (i as f64 / n as f64) as f32, "input.npy[{i}]");
    }
    x
}

/// The stored output: a TensorProto of f32s (raw little-endian data).
fn expected(stem: &str) -> Tensor {
    let bytes = std::fs::read(dir().join(format!("light_{stem}_output_0.pb"))).unwrap();
    let t = TensorProto::decode(bytes.as_slice()).unwrap();
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let data: Vec<f32> = match t.raw_data.as_deref() {
        Some(raw) => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        None => t.float_data.clone(),
    };
    Tensor::new(dims, data).unwrap()
}

/// numpy's `assert_allclose`: |got - want| <= atol + rtol * |want| everywhere.
fn assert_allclose(what: &str, got: &Tensor, want: &Tensor, rtol: f32) {
    const ATOL: f32 = 1e-7;
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let mut worst = (0.0f32, 0usize);
    for (i, (&g, &w)) in got.data().iter().zip(want.data()).enumerate() {
        let excess = (g - w).abs() - (ATOL + rtol * w.abs());
        // A NaN counts as the worst excess there is.
        let excess = if excess.is_nan() {
            f32::INFINITY
        } else {
            excess
        };
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= 0.0,
        "{what}: element {i} is {} but should be {} (rtol {rtol})",
        got.data()[i],
        want.data()[i]
    );
}

fn import(stem: &str) -> cnnc::Graph {
    let bytes = std::fs::read(dir().join(format!("light_{stem}.onnx"))).unwrap();
    cnnc::onnx::import(&bytes).unwrap_or_else(|e| panic!("{stem}: {e}"))
}

fn check_interp(stem: &str, rtol: f32) {
    let (g, x, want) = (import(stem), input(), expected(stem));
    let got = cnnc::interp::run(&g, x).unwrap().remove(0);
    assert_allclose(&format!("{stem} (interp)"), &got, &want, rtol);
}

fn check_jit(stem: &str, rtol: f32) {
    let (g, x, want) = (import(stem), input(), expected(stem));
    let model =
        cnnc::compile(&g, &cnnc::Options::default()).unwrap_or_else(|e| panic!("{stem}: jit: {e}"));
    let got = model.run(&x).unwrap().remove(0);
    assert_allclose(&format!("{stem} (jit)"), &got, &want, rtol);
}

#[test]
fn every_light_model_imports_as_shipped() {
    for &(stem, _) in MODELS {
        let g = import(stem);
        let dims = g.output_dims(1);
        // SqueezeNet ends in a global pool: [1, 1000, 1, 1] as its stored output.
        assert_eq!(dims.len(), 1, "{stem}");
        assert_eq!(dims[0].iter().product::<usize>(), 1000, "{stem}: {dims:?}");
        assert_eq!(dims[0], expected(stem).shape(), "{stem}");
    }
}

#[test]
fn light_models_match_their_stored_outputs_on_the_jit() {
    for &(stem, rtol) in MODELS {
        check_jit(stem, rtol);
    }
}

// The interpreter's plain loops take seconds to a minute per network: one test each, so
// they run in parallel; the four biggest (VGG-19 at 20 GFLOPs, ResNet-50, DenseNet-121,
// Inception v2) only on request:
// `cargo test --release --test light_models -- --include-ignored`.
macro_rules! interp_test {
    ($name:ident, $stem:literal, $rtol:expr) => {
        #[test]
        fn $name() {
            check_interp($stem, $rtol);
        }
    };
    ($name:ident, $stem:literal, $rtol:expr, ignore) => {
        #[test]
        #[ignore = "a minute or more in the interpreter"]
        fn $name() {
            check_interp($stem, $rtol);
        }
    };
}

interp_test!(interp_alexnet, "bvlc_alexnet", 1e-3);
interp_test!(interp_zfnet512, "zfnet512", 1e-3);
interp_test!(interp_vgg19, "vgg19", 1e-3, ignore);
interp_test!(interp_inception_v1, "inception_v1", 1e-3);
interp_test!(interp_inception_v2, "inception_v2", 1e-3, ignore);
interp_test!(interp_resnet50, "resnet50", 1e-3, ignore);
interp_test!(interp_squeezenet, "squeezenet", 1e-3);
interp_test!(interp_densenet121, "densenet121", 2e-3, ignore);
interp_test!(interp_shufflenet, "shufflenet", 1e-3);
