//! The pass flags on the command line: `cnnc compile`, `cnnc info -O`, errors, and the
//! `--print-after-all` snapshot of the bottleneck block (set `UPDATE_SNAPSHOTS=1` to
//! rewrite it after an intended pipeline change, and review the diff).
use std::process::{Command, Output};

fn cnnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(args)
        .output()
        .expect("cnnc runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

#[test]
fn print_after_all_snapshot() {
    let out = cnnc(&[
        "compile",
        "graphs/resnet_bottleneck_block.yaml",
        "--print-after-all",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = text(&out.stderr) + "; *** final IR (stdout) ***\n" + &text(&out.stdout);
    let path = "tests/snapshots/resnet_bottleneck_block.print-after-all.txt";
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(path, &got).unwrap();
    }
    let want = std::fs::read_to_string(path).expect("the snapshot exists");
    assert_eq!(
        got, want,
        "--print-after-all changed; if intended, rerun with UPDATE_SNAPSHOTS=1"
    );
}

#[test]
fn print_after_one_pass() {
    let out = cnnc(&[
        "compile",
        "graphs/resnet_basic_block.yaml",
        "--print-after",
        "fold-batchnorm",
    ]);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.matches("*** IR Dump After").count(), 1, "{err}");
    assert!(
        err.starts_with("; *** IR Dump After fold-batchnorm ***\n"),
        "{err}"
    );
    assert!(err.contains("relu1 = relu (conv1)"), "{err}");
}

#[test]
fn compile_levels() {
    let o0 = text(&cnnc(&["compile", "graphs/resnet_basic_block.yaml", "-O0"]).stdout);
    assert!(o0.contains("bn1 = batchnorm"), "{o0}");
    let o1 = text(&cnnc(&["compile", "graphs/resnet_basic_block.yaml", "-O1"]).stdout);
    assert!(
        !o1.contains("batchnorm") && o1.contains("relu1 = relu"),
        "{o1}"
    );
    let o2 = text(&cnnc(&["compile", "graphs/resnet_basic_block.yaml"]).stdout);
    assert_eq!(
        o2,
        "graph resnet_basic_block (input 64x56x56)
  conv1 = conv 3x3/1 pad 1 k=64 +relu (input) : 64x56x56
  conv2 = conv 3x3/1 pad 1 k=64 +residual +relu (conv1, input) : 64x56x56
outputs: conv2
"
    );
    let custom = text(
        &cnnc(&[
            "compile",
            "graphs/resnet_basic_block.yaml",
            "--passes",
            "fold-batchnorm,dce",
            "--disable-pass",
            "dce",
        ])
        .stdout,
    );
    assert_eq!(custom, o1);
}

#[test]
fn emit_dot() {
    let out = cnnc(&["compile", "graphs/resnet_basic_block.yaml", "--emit", "dot"]);
    assert!(out.status.success());
    let dot = text(&out.stdout);
    assert!(
        dot.starts_with("digraph \"resnet_basic_block\" {\n"),
        "{dot}"
    );
    assert!(dot.trim_end().ends_with('}'));
    assert!(
        dot.contains("label=\"conv2\\nconv 3x3/1 pad 1 k=64 +residual +relu\\n64x56x56\""),
        "{dot}"
    );
    assert!(dot.contains("[label=\"residual\", style=dashed]"), "{dot}");
    assert_eq!(dot.matches(" -> ").count(), 3, "{dot}");
}

#[test]
fn unknown_pass_is_exit_2_with_one_message() {
    for args in [
        &["compile", "graphs/lenet5.yaml", "--passes", "dce,cse"][..],
        &["compile", "graphs/lenet5.yaml", "--disable-pass", "cse"],
        &["compile", "graphs/lenet5.yaml", "--print-after", "cse"],
        &["info", "graphs/lenet5.yaml", "--passes", "cse"],
    ] {
        let out = cnnc(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(
            text(&out.stderr),
            "error: unknown pass `cse`; the passes are: dce, fold-scale-shift, fold-batchnorm, fuse-epilogue, lower-gemm\n"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn info_o2_shows_the_optimised_resnet18() {
    let layers = |args: &[&str]| -> usize {
        let out = cnnc(args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["layers"].as_array().unwrap().len()
    };
    let as_written = layers(&["info", "graphs/resnet18.yaml", "--json"]);
    assert_eq!(
        as_written,
        layers(&["info", "graphs/resnet18.yaml", "--json", "-O0"])
    );
    let o2 = layers(&["info", "graphs/resnet18.yaml", "--json", "-O2"]);
    assert_eq!(as_written - o2, 20 + 17 + 8);
    let table = text(&cnnc(&["info", "graphs/resnet18.yaml", "-O2"]).stdout);
    assert!(
        !table.contains("batchnorm") && !table.contains(" relu "),
        "{table}"
    );
}
