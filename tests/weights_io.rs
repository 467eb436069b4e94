//! Weights files, `.npy` inputs/outputs and the `cnnc run`/`cnnc init` commands.
mod common;
use cnnc::{Error, Tensor};
use common::*;
use std::process::Command;

fn cnnc(args: &[&str]) -> (bool, i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    (
        out.status.success(),
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SMALL: &str = "input: [2, 5, 5]\nseed: 3\nlayers:\n  - conv: {filters: 3, size: 3}\n  - batchnorm\n  - fc: {units: 4, bias: false}\n";

#[test]
fn seeded_weights_are_he_normal_and_reproducible() {
    let mut a = graph(SMALL);
    let mut b = graph(SMALL);
    cnnc::weights::init_from_seed(&mut a);
    cnnc::weights::init_from_seed(&mut b);
    let w = a
        .node(a.find("conv1").unwrap())
        .param("weight")
        .unwrap()
        .clone();
    assert_eq!(w.shape(), &[3, 2, 3, 3]);
    assert_eq!(
        &w,
        b.node(b.find("conv1").unwrap()).param("weight").unwrap()
    );
    // He-normal: std sqrt(2 / fan_in) with fan_in = 2*3*3 = 18.
    let fc = a.node(a.find("fc1").unwrap()).param("weight").unwrap();
    assert_eq!(fc.shape(), &[4, 27]);
    let big = graph("input: [64, 8, 8]\nlayers:\n  - conv: {filters: 64, size: 3}\n");
    let mut big = big;
    cnnc::weights::init_from_seed(&mut big);
    let w = big
        .node(big.find("conv1").unwrap())
        .param("weight")
        .unwrap();
    let var = w.data().iter().map(|v| (v * v) as f64).sum::<f64>() / w.len() as f64;
    let want = 2.0 / (64.0 * 9.0);
    assert!((var / want - 1.0).abs() < 0.05, "variance {var} vs {want}");
    // Biases zero, batchnorm identity.
    let bn = a.node(a.find("batchnorm1").unwrap());
    assert!(bn.param("weight").unwrap().data().iter().all(|&v| v == 1.0));
    assert!(bn
        .param("running_var")
        .unwrap()
        .data()
        .iter()
        .all(|&v| v == 1.0));
    assert!(bn
        .param("running_mean")
        .unwrap()
        .data()
        .iter()
        .all(|&v| v == 0.0));
    assert!(a
        .node(a.find("conv1").unwrap())
        .param("bias")
        .unwrap()
        .data()
        .iter()
        .all(|&v| v == 0.0));
    // Another seed, other weights.
    let mut c = graph(&SMALL.replace("seed: 3", "seed: 4"));
    cnnc::weights::init_from_seed(&mut c);
    assert_ne!(
        a.node(a.find("conv1").unwrap()).param("weight"),
        c.node(c.find("conv1").unwrap()).param("weight")
    );
}

#[test]
fn safetensors_round_trip_and_errors_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let mut g = graph(SMALL);
    cnnc::weights::init_from_seed(&mut g);
    cnnc::weights::save_file(&g, &path).unwrap();
    let mut h = graph(SMALL);
    assert!(cnnc::weights::load_file(&mut h, &path).unwrap().is_empty());
    for id in g.dag.node_indices() {
        assert_eq!(g.node(id).params, h.node(id).params);
    }

    // A tensor missing, one of the wrong shape, an extra one.
    let write = |tensors: Vec<(String, Tensor)>| {
        let bytes =
            cnnc::weights::write_safetensors(tensors.iter().map(|(n, t)| (n.clone(), t))).unwrap();
        std::fs::write(&path, bytes).unwrap();
    };
    let all: Vec<(String, Tensor)> = cnnc::weights::named_params(&g)
        .into_iter()
        .map(|(n, t)| (n, t.clone()))
        .collect();
    write(
        all.iter()
            .filter(|(n, _)| n != "batchnorm1.running_var")
            .cloned()
            .collect(),
    );
    let err = cnnc::weights::load_file(&mut h, &path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("batchnorm1.running_var") && err.contains("missing") && err.contains('3'),
        "{err}"
    );

    let mut wrong = all.clone();
    for (n, t) in &mut wrong {
        if *n == "conv1.weight" {
            *t = Tensor::zeros(vec![3, 2, 5, 5]);
        }
    }
    write(wrong);
    let err = cnnc::weights::load_file(&mut h, &path).unwrap_err();
    assert!(matches!(err, Error::Weights(_)));
    let err = err.to_string();
    assert!(
        err.contains("conv1.weight") && err.contains("3x2x5x5") && err.contains("3x2x3x3"),
        "{err}"
    );

    let mut extra = all.clone();
    extra.push(("conv9.weight".into(), Tensor::zeros(vec![1])));
    write(extra);
    let warnings = cnnc::weights::load_file(&mut h, &path).unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("conv9.weight"), "{warnings:?}");

    std::fs::write(&path, b"not a safetensors file").unwrap();
    let err = cnnc::weights::load_file(&mut h, &path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("safetensors"), "{err}");
}

#[test]
fn f16_bf16_f64_weights_are_converted() {
    use safetensors::{tensor::TensorView, Dtype};
    let values = [1.5f32, -2.0, 0.25];
    let f16: Vec<u8> = values
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let bf16: Vec<u8> = values
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect();
    let f64b: Vec<u8> = values
        .iter()
        .flat_map(|v| (*v as f64).to_le_bytes())
        .collect();
    let i32b: Vec<u8> = values
        .iter()
        .flat_map(|v| (*v as i32).to_le_bytes())
        .collect();
    let bytes = safetensors::serialize(
        vec![
            ("a", TensorView::new(Dtype::F16, vec![3], &f16).unwrap()),
            ("b", TensorView::new(Dtype::BF16, vec![3], &bf16).unwrap()),
            ("c", TensorView::new(Dtype::F64, vec![3], &f64b).unwrap()),
        ],
        None,
    )
    .unwrap();
    let t = cnnc::weights::read_safetensors(&bytes).unwrap();
    for k in ["a", "b", "c"] {
        assert_eq!(t[k].data(), &values, "{k}");
    }
    let bytes = safetensors::serialize(
        vec![("d", TensorView::new(Dtype::I32, vec![3], &i32b).unwrap())],
        None,
    )
    .unwrap();
    let err = cnnc::weights::read_safetensors(&bytes)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`d`") && err.contains("I32"), "{err}");
}

#[test]
fn init_then_run_round_trips_through_safetensors_and_npy() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    let x = dir.path().join("x.npy");
    let y = dir.path().join("y.npy");
    let (ok, _, _, err) = cnnc(&["init", "graphs/lenet5.yaml", "-o", w.to_str().unwrap()]);
    assert!(ok, "{err}");
    let input = Tensor::new(
        vec![2, 1, 32, 32],
        cnnc::weights::standard_normal(1, "x", 2048),
    )
    .unwrap();
    cnnc::io::npy::write(&x, &input).unwrap();
    let (ok, _, stdout, err) = cnnc(&[
        "run",
        "graphs/lenet5.yaml",
        "--engine",
        "interp",
        "--weights",
        w.to_str().unwrap(),
        "--input",
        x.to_str().unwrap(),
        "--output",
        y.to_str().unwrap(),
        "--top",
        "3",
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("x.npy[1]:") && stdout.contains("3. class"),
        "{stdout}"
    );
    let got = cnnc::io::npy::read(&y).unwrap();
    assert_eq!(got.shape(), &[2, 10]);
    // The library with the same weights gives the same output.
    let mut g = cnnc::format::load(repo().join("graphs/lenet5.yaml")).unwrap();
    cnnc::weights::load_file(&mut g, &w).unwrap();
    let want = cnnc::interp::run(&g, input).unwrap().remove(0);
    assert_eq!(got, want);
    // And the seed's weights are those `init` wrote.
    let mut s = cnnc::format::load(repo().join("graphs/lenet5.yaml")).unwrap();
    cnnc::weights::bind(&mut s, None).unwrap();
    for id in g.dag.node_indices() {
        assert_eq!(g.node(id).params, s.node(id).params);
    }
}

#[test]
fn f64_npy_input_and_chw_input_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.npy");
    let data: Vec<f64> = (0..3 * 32 * 32).map(|i| (i % 7) as f64 / 7.0).collect();
    {
        use npyz::WriterBuilder;
        let f = std::fs::File::create(&x).unwrap();
        let mut w = npyz::WriteOptions::<f64>::new()
            .default_dtype()
            .shape(&[3, 32, 32])
            .writer(f)
            .begin_nd()
            .unwrap();
        w.extend(data).unwrap();
        w.finish().unwrap();
    }
    let (ok, _, stdout, err) = cnnc(&[
        "run",
        "graphs/cs231n_example.yaml",
        "--engine",
        "interp",
        "--input",
        x.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("of shape 1x10\n"), "{stdout}");
}

#[test]
fn cli_user_errors_exit_2_with_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.npy");
    cnnc::io::npy::write(&x, &Tensor::zeros(vec![1, 3, 28, 28])).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "run",
                "graphs/cs231n_example.yaml",
                "--engine",
                "interp",
                "--input",
                x.to_str().unwrap(),
            ],
            "3x32x32",
        ),
        (vec!["run", "graphs/nope.yaml"], "nope.yaml"),
        (
            vec![
                "run",
                "graphs/cs231n_example.yaml",
                "--weights",
                "graphs/nope.safetensors",
            ],
            "nope.safetensors",
        ),
        (
            vec!["run", "graphs/cs231n_example.yaml", "--input", "README.md"],
            "--input takes",
        ),
        (
            vec!["run", "graphs/cs231n_example.yaml", "--batch", "0"],
            "--batch",
        ),
        (
            vec![
                "run",
                "graphs/digits.yaml",
                "--input",
                "examples/digits/test_labels.npy",
            ],
            "dtype",
        ),
    ];
    for (args, needle) in cases {
        let (ok, code, _, err) = cnnc(&args);
        assert!(!ok && code == 2, "{args:?}: exit {code}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_folder_of_images_runs_as_a_batch() {
    let (ok, _, stdout, err) = cnnc(&[
        "run",
        "graphs/digits.yaml",
        "--engine",
        "interp",
        "--input",
        "examples/digits",
        "--top",
        "1",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("of shape 10x10\n"), "{stdout}");
    for line in stdout.lines().filter(|l| l.starts_with("digit_")) {
        let digit = &line["digit_".len().."digit_".len() + 1];
        let next = stdout.lines().skip_while(|l| *l != line).nth(1).unwrap();
        assert!(
            next.contains(&format!("class {digit} ")),
            "{line} -> {next}"
        );
    }
}
