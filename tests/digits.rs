//! End to end on real data: the digits network trained by `examples/digits/train.py`
//! must make exactly the predictions the training script's own forward pass made.
mod common;
use common::repo;

fn read_i64(path: &std::path::Path) -> Vec<i64> {
    let bytes = std::fs::read(path).unwrap();
    npyz::NpyFile::new(&bytes[..])
        .unwrap()
        .into_vec::<i64>()
        .unwrap()
}

fn argmax(row: &[f32]) -> i64 {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap() as i64
}

fn digits_predictions(run: impl Fn(&cnnc::Graph, cnnc::Tensor) -> cnnc::Tensor) {
    let dir = repo().join("examples/digits");
    let mut g = cnnc::format::load(repo().join("graphs/digits.yaml")).unwrap();
    let warnings = cnnc::weights::bind(&mut g, None).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let images = cnnc::io::npy::read(&dir.join("test_images.npy")).unwrap();
    let labels = read_i64(&dir.join("test_labels.npy"));
    let script = read_i64(&dir.join("test_predictions.npy"));
    let y = run(&g, images);
    let ours: Vec<i64> = y.data().chunks(10).map(argmax).collect();
    assert_eq!(ours.len(), labels.len());
    assert_eq!(ours, script, "cnnc and the training script disagree");
    let correct = ours.iter().zip(&labels).filter(|(a, b)| a == b).count();
    let accuracy = correct as f64 / labels.len() as f64;
    assert!(accuracy >= 0.95, "accuracy {accuracy}");
}

#[test]
fn interpreter_matches_the_training_script_on_the_held_out_split() {
    digits_predictions(|g, x| cnnc::interp::run(g, x).unwrap().remove(0));
}

#[test]
fn cli_classifies_a_png_of_a_digit() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(["run", "graphs/digits.yaml", "--engine", "interp", "--input"])
        .arg("examples/digits/digit_7_idx15.png")
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("1."))
        .unwrap();
    assert!(first.contains("class 7"), "{stdout}");
}

#[test]
fn jit_matches_the_training_script_on_the_held_out_split() {
    for batch in [1, 64] {
        digits_predictions(|g, x| {
            let model = cnnc::compile(
                g,
                &cnnc::Options {
                    batch,
                    ..Default::default()
                },
            )
            .unwrap();
            model.run(&x).unwrap().remove(0)
        });
    }
}
