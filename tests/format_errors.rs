//! Broken graphs, one per class of mistake: each must fail with one readable message
//! that names the problem (and the layer, and the numbers, where there are some).
//! Plus the CLI contract: `error: ...` on stderr, exit code 2, never a panic.
use std::process::Command;

/// The error message of a graph that must not parse.
fn err(text: &str) -> String {
    match cnnc::format::parse_str(text, None) {
        Ok(g) => panic!(
            "the graph should be rejected, but it parsed ({} nodes):\n{text}",
            g.node_count()
        ),
        Err(e) => e.to_string(),
    }
}

/// Asserts the message of `text` contains every fragment, and is one line.
#[track_caller]
fn rejects(text: &str, fragments: &[&str]) -> String {
    let msg = err(text);
    for f in fragments {
        assert!(
            msg.contains(f),
            "the message should mention {f:?}\n  message: {msg}\n  graph:\n{text}"
        );
    }
    assert!(!msg.trim().is_empty());
    assert!(!msg.contains('\n'), "one line, got: {msg:?}");
    assert!(!msg.contains("panicked"), "{msg}");
    msg
}

const HEAD: &str = "input: [3, 32, 32]\nlayers:\n";

fn layers(body: &str) -> String {
    format!("{HEAD}{body}")
}

// ---------------------------------------------------------------------------------
// YAML and top level

#[test]
fn malformed_yaml_reports_line_and_column() {
    let msg = rejects(
        "input: [3, 32, 32\nlayers:\n  - relu\n",
        &["line", "column"],
    );
    assert!(msg.contains("line 2") || msg.contains("line 1"), "{msg}");
    // A tab where indentation is expected.
    rejects("input: [3, 8, 8]\nlayers:\n\t- relu\n", &["line 3"]);
}

#[test]
fn unknown_top_level_key() {
    rejects(
        "input: [3, 8, 8]\nlayers: [relu]\nouputs: [relu1]\n",
        &["unknown field `ouputs`", "outputs", "line 3"],
    );
}

#[test]
fn missing_top_level_keys() {
    rejects("input: [3, 8, 8]\n", &["missing field `layers`"]);
    rejects("layers: [relu]\n", &["missing field `input`"]);
}

#[test]
fn input_shape_needs_three_dims() {
    rejects("input: [32, 32]\nlayers: [relu]\n", &["[C, H, W]", "got 2"]);
    rejects(
        "input: [1, 3, 32, 32]\nlayers: [relu]\n",
        &["[C, H, W]", "got 4"],
    );
    rejects(
        "input: {shape: [3, 32]}\nlayers: [relu]\n",
        &["[C, H, W]", "got 2"],
    );
    rejects("input: 32\nlayers: [relu]\n", &["input", "[C, H, W]"]);
}

#[test]
fn input_dims_must_be_positive() {
    rejects(
        "input: [3, 0, 32]\nlayers: [relu]\n",
        &["positive", "got 0"],
    );
    rejects(
        "input: [-3, 32, 32]\nlayers: [relu]\n",
        &["positive", "got -3"],
    );
}

#[test]
fn input_map_with_unknown_key() {
    rejects(
        "input: {shape: [3, 8, 8], means: [0, 0, 0]}\nlayers: [relu]\n",
        &["unknown field `means`", "mean"],
    );
}

#[test]
fn mean_and_std_lengths_must_match_channels() {
    rejects(
        "input: {shape: [3, 8, 8], mean: [0.5, 0.5], std: [1, 1, 1]}\nlayers: [relu]\n",
        &["mean", "2 values", "3 channels"],
    );
    rejects(
        "input: {shape: [1, 8, 8], std: [1, 1, 1]}\nlayers: [relu]\n",
        &["std", "3 values", "1 channels"],
    );
}

#[test]
fn std_must_be_positive() {
    rejects(
        "input: {shape: [2, 8, 8], std: [1, 0]}\nlayers: [relu]\n",
        &["std", "positive", "0"],
    );
    rejects(
        "input: {shape: [1, 8, 8], std: [.nan]}\nlayers: [relu]\n",
        &["std", "positive", "NaN"],
    );
}

#[test]
fn negative_seed() {
    rejects(
        "input: [1, 8, 8]\nseed: -1\nlayers: [relu]\n",
        &["seed", "-1"],
    );
}

#[test]
fn empty_layers() {
    rejects("input: [3, 8, 8]\nlayers: []\n", &["no layers"]);
    rejects(
        "input: [3, 8, 8]\nlayers:\n  - repeat: 3\n    layers: []\n",
        &["no layers"],
    );
}

// ---------------------------------------------------------------------------------
// Layer forms and ops

#[test]
fn unknown_op() {
    rejects(
        &layers("  - relu\n  - convolution: {filters: 2, size: 3}\n"),
        &["unknown op `convolution`", "conv", "line 4"],
    );
    rejects(&layers("  - sigmoid\n"), &["unknown op `sigmoid`", "relu"]);
}

#[test]
fn a_layer_that_is_not_a_string_or_map() {
    rejects(&layers("  - 5\n"), &["layer", "op name"]);
}

#[test]
fn unknown_attribute() {
    rejects(
        &layers("  - conv: {filters: 2, size: 3, padding: 1}\n"),
        &["unknown field `padding`", "pad", "line 3"],
    );
    rejects(
        &layers("  - relu: {inplace: true}\n"),
        &["unknown field `inplace`", "line 3"],
    );
    rejects(
        &layers("  - maxpool: {size: 2, filters: 3}\n"),
        &["unknown field `filters`", "stride"],
    );
}

#[test]
fn missing_attribute() {
    rejects(
        &layers("  - conv: {size: 3}\n"),
        &["missing field `filters`", "line 3"],
    );
    rejects(
        &layers("  - fc: {bias: false}\n"),
        &["missing field `units`"],
    );
    rejects(
        &layers("  - maxpool: {stride: 2}\n"),
        &["missing field `size`"],
    );
}

#[test]
fn bare_op_that_needs_attributes() {
    rejects(
        &layers("  - conv\n"),
        &["`conv` needs attributes", "filters"],
    );
    rejects(&layers("  - fc\n"), &["`fc` needs attributes", "units"]);
    rejects(
        &layers("  - avgpool\n"),
        &["`avgpool` needs attributes", "size"],
    );
}

#[test]
fn op_with_attributes_written_as_null() {
    rejects(
        &layers("  - conv:\n"),
        &["conv", "missing field `filters`", "line 3"],
    );
    rejects(
        &layers("  - maxpool: 2\n"),
        &[
            "maxpool",
            "integer `2`",
            "pool attributes {size, stride, pad, pad_end, count_include_pad}",
        ],
    );
    rejects(
        &layers("  - conv: [5, 5]\n"),
        &["conv", "conv attributes {filters, size"],
    );
    rejects(&layers("  - relu: 3\n"), &["relu", "no attributes"]);
}

#[test]
fn two_ops_in_one_layer() {
    rejects(
        &layers("  - {conv: {filters: 2, size: 3}, relu: {}}\n"),
        &["exactly one op", "`conv`", "`relu`"],
    );
}

#[test]
fn a_layer_with_no_op() {
    rejects(&layers("  - {name: lonely}\n"), &["no op", "conv"]);
}

#[test]
fn zero_or_negative_sizes() {
    rejects(
        &layers("  - conv: {filters: 0, size: 3}\n"),
        &["positive", "got 0", "line 3"],
    );
    rejects(
        &layers("  - conv: {filters: -4, size: 3}\n"),
        &["positive", "got -4"],
    );
    rejects(
        &layers("  - conv: {filters: 2, size: 0}\n"),
        &["positive", "got 0"],
    );
    rejects(
        &layers("  - maxpool: {size: 2, stride: 0}\n"),
        &["positive", "got 0"],
    );
    rejects(&layers("  - fc: {units: 0}\n"), &["positive", "got 0"]);
    rejects(
        &layers("  - conv: {filters: 2, size: [3, 0]}\n"),
        &["positive", "got 0"],
    );
}

#[test]
fn non_integer_sizes() {
    rejects(
        &layers("  - conv: {filters: 2.5, size: 3}\n"),
        &["whole number", "2.5"],
    );
    rejects(
        &layers("  - conv: {filters: ten, size: 3}\n"),
        &["whole number"],
    );
}

#[test]
fn negative_pad() {
    rejects(
        &layers("  - conv: {filters: 2, size: 3, pad: -1}\n"),
        &[">= 0", "got -1"],
    );
    rejects(
        &layers("  - maxpool: {size: 2, pad: [0, -2]}\n"),
        &[">= 0", "got -2"],
    );
}

#[test]
fn hw_pair_of_the_wrong_length() {
    rejects(
        &layers("  - conv: {filters: 2, size: [3, 3, 3]}\n"),
        &["[h, w]", "more than two"],
    );
    rejects(
        &layers("  - conv: {filters: 2, size: [3]}\n"),
        &["[h, w]", "one value"],
    );
}

#[test]
fn dropout_rate_out_of_range() {
    rejects(
        &layers("  - dropout: {p: 1.5}\n"),
        &["dropout p", "[0, 1)", "1.5"],
    );
    rejects(&layers("  - dropout: {p: -0.1}\n"), &["dropout p", "-0.1"]);
    rejects(
        &layers("  - dropout: {rate: 0.1}\n"),
        &["unknown field `rate`", "`p`"],
    );
}

#[test]
fn non_positive_batchnorm_eps() {
    rejects(&layers("  - batchnorm: {eps: 0}\n"), &["eps", "positive"]);
    rejects(
        &layers("  - batchnorm: {eps: -1e-5}\n"),
        &["eps", "positive"],
    );
}

// ---------------------------------------------------------------------------------
// Shapes

#[test]
fn filter_larger_than_the_padded_input() {
    rejects(
        "input: [3, 4, 4]\nlayers:\n  - relu\n  - conv: {filters: 2, size: 7, pad: 1}\n",
        &[
            "conv1",
            "(4 + 2*1 - 7)/1 + 1",
            "larger than the padded input",
            "4 + 2*1 = 6",
        ],
    );
    // Through a chain: 8 -> pool 4 -> pool 2 -> a 3-wide window.
    rejects(
        "input: [1, 8, 8]\nlayers:\n  - maxpool: {size: 2}\n  - maxpool: {size: 2}\n  - {name: big, avgpool: {size: 3}}\n",
        &["big", "(2 + 2*0 - 3)/3 + 1", "larger"],
    );
    // Only the width is too small.
    rejects(
        "input: [1, 9, 2]\nlayers:\n  - conv: {filters: 1, size: 3}\n",
        &["conv1", "width", "(2 + 2*0 - 3)/1 + 1"],
    );
}

#[test]
fn pad_not_smaller_than_the_window() {
    rejects(
        &layers("  - maxpool: {size: 2, pad: 2}\n"),
        &["maxpool1", "pad 2", "window 2"],
    );
}

#[test]
fn strict_shapes_error() {
    rejects(
        "input: [3, 32, 32]\nstrict_shapes: true\nlayers:\n  - conv: {filters: 1, size: 3, pad: 1}\n  - conv: {filters: 1, size: 5, stride: 2}\n",
        &["conv2: (32 + 2*0 - 5)/2 + 1 = 14.5 is not a whole number; this filter, stride and pad do not tile the input"],
    );
}

#[test]
fn flat_input_to_a_spatial_op() {
    rejects(
        &layers("  - fc: {units: 10}\n  - conv: {filters: 2, size: 1}\n"),
        &["conv1", "CxHxW", "flat vector of 10"],
    );
    rejects(
        &layers("  - flatten\n  - maxpool: {size: 2}\n"),
        &["maxpool1", "flat vector of 3072"],
    );
    rejects(
        &layers("  - fc: {units: 10}\n  - global_avgpool\n"),
        &["global_avgpool1", "flat"],
    );
}

#[test]
fn add_with_unequal_shapes() {
    rejects(
        &layers(
            "  - {name: down, maxpool: {size: 2}}\n  - {name: sum, add, inputs: [input, down]}\n",
        ),
        &["sum", "one shape", "3x32x32", "3x16x16"],
    );
    rejects(
        &layers("  - {name: wide, conv: {filters: 8, size: 1}}\n  - {name: sum, add, inputs: [input, input, wide]}\n"),
        &["sum", "input 3 is 8x32x32"],
    );
}

#[test]
fn concat_with_unequal_height_or_width() {
    rejects(
        &layers("  - {name: p, maxpool: {size: 2}}\n  - {name: cat, concat, inputs: [input, p]}\n"),
        &["cat", "height and width", "3x32x32", "3x16x16"],
    );
    rejects(
        &layers("  - {name: f, flatten}\n  - {name: cat, concat, inputs: [input, f]}\n"),
        &["cat", "3072"],
    );
}

#[test]
fn sizes_beyond_two_to_the_31_are_refused_before_allocating() {
    let start = std::time::Instant::now();
    // 100000 filters of a 224x224 output: 5,017,600,000 elements.
    rejects(
        "input: [3, 224, 224]\nlayers:\n  - conv: {filters: 100000, size: 3, pad: 1}\n",
        &["conv1", "100000*224*224", "2^31"],
    );
    // The input itself.
    rejects(
        "input: [100000, 100000, 100000]\nlayers: [relu]\n",
        &["input", "2^31"],
    );
    // A weight tensor: 1000000 x 3072.
    rejects(
        &layers("  - fc: {units: 1000000}\n"),
        &["fc1", "weight", "2^31"],
    );
    // Values that would overflow the size arithmetic.
    for v in ["9223372036854775807", "18446744073709551615", "4294967296"] {
        rejects(
            &layers(&format!("  - conv: {{filters: 1, size: 3, pad: {v}}}\n")),
            &["large"],
        );
        rejects(
            &format!("input: [1, {v}, {v}]\nlayers: [relu]\n"),
            &["large"],
        );
    }
    rejects(
        &layers("  - repeat: 1000000\n    layers: [relu]\n"),
        &["100000 layers"],
    );
    assert!(
        start.elapsed().as_secs() < 5,
        "checked arithmetically, not by allocating"
    );
}

// ---------------------------------------------------------------------------------
// Names, inputs, outputs

#[test]
fn unknown_input_name() {
    rejects(
        &layers("  - relu\n  - {name: sum, add, inputs: [relu1, rleu1]}\n"),
        &["sum", "`rleu1`", "not a layer"],
    );
    // Unnamed layers are named by their automatic name.
    rejects(
        &layers("  - {relu, inputs: [nowhere]}\n"),
        &["relu1", "`nowhere`"],
    );
}

#[test]
fn cycle() {
    rejects(
        &layers("  - {name: a, add, inputs: [input, b]}\n  - {name: b, relu, inputs: [a]}\n"),
        &["cycle", "a", "b"],
    );
    rejects(
        &layers("  - {name: me, add, inputs: [input, me]}\n"),
        &["cycle", "me"],
    );
}

#[test]
fn forward_reference() {
    // `a` reads `c`, which comes later; no cycle, but the file is not in order.
    rejects(
        &layers("  - {name: a, relu, inputs: [c]}\n  - {name: b, relu, inputs: [input]}\n  - {name: c, relu, inputs: [b]}\n"),
        &["a", "`c`", "later"],
    );
}

#[test]
fn duplicate_names() {
    rejects(
        &layers("  - {name: block, relu}\n  - {name: block, relu}\n"),
        &["two layers", "`block`"],
    );
    // An explicit name that collides with an automatic one.
    rejects(
        &layers("  - {name: relu2, relu}\n  - relu\n"),
        &["two layers", "`relu2`"],
    );
}

#[test]
fn a_layer_named_input() {
    rejects(
        &layers("  - {name: input, relu}\n"),
        &["`input`", "graph input"],
    );
}

#[test]
fn empty_name() {
    rejects(&layers("  - {name: '', relu}\n"), &["empty name"]);
}

#[test]
fn wrong_number_of_inputs() {
    rejects(
        &layers("  - relu\n  - add\n"),
        &["add1", "at least 2", "got 1"],
    );
    rejects(
        &layers("  - {concat, inputs: [input]}\n"),
        &["concat1", "at least 2", "got 1"],
    );
    rejects(
        &layers("  - relu\n  - {conv: {filters: 2, size: 1}, inputs: [input, relu1]}\n"),
        &["conv1", "takes 1 input", "got 2"],
    );
    rejects(&layers("  - {relu, inputs: []}\n"), &["relu1", "got 0"]);
}

#[test]
fn name_or_inputs_inside_repeat() {
    rejects(
        &layers("  - repeat: 2\n    layers:\n      - {name: c, conv: {filters: 2, size: 1}}\n"),
        &["repeat", "name:", "conv"],
    );
    rejects(
        &layers("  - repeat: 2\n    layers:\n      - {relu, inputs: [input]}\n"),
        &["repeat", "inputs:"],
    );
    // Nested: still inside a repeat.
    rejects(
        &layers("  - repeat: 2\n    layers:\n      - repeat: 2\n        layers:\n          - {name: x, relu}\n"),
        &["repeat", "name:"],
    );
}

#[test]
fn errors_inside_repeat_blocks_give_the_path() {
    rejects(
        &layers("  - relu\n  - repeat: 2\n    layers:\n      - relu\n      - conv: {filters: 2, size: 3, pad: -1}\n"),
        &["layers[1].layers[1].conv.pad", "got -1", "line 7"],
    );
}

#[test]
fn malformed_repeat() {
    rejects(&layers("  - repeat: 2\n"), &["repeat", "layers"]);
    rejects(&layers("  - layers: [relu]\n"), &["repeat: N"]);
    rejects(
        &layers("  - repeat: 0\n    layers: [relu]\n"),
        &["positive", "got 0"],
    );
    rejects(
        &layers("  - {repeat: 2, layers: [relu], name: r}\n"),
        &["repeat", "only"],
    );
}

#[test]
fn outputs_naming_an_unknown_layer() {
    rejects(
        &layers("  - relu\noutputs: [relu1, head]\n"),
        &["output", "`head`", "not a layer"],
    );
    rejects(&layers("  - relu\noutputs: []\n"), &["outputs", "empty"]);
}

#[test]
fn every_message_names_the_file_when_loading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, "input: [3, 8, 8]\nlayers: [conv]\n").unwrap();
    let msg = cnnc::format::load(&path).unwrap_err().to_string();
    assert!(msg.contains("broken.yaml"), "{msg}");
    let missing = cnnc::format::load(dir.path().join("nope.yaml"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope.yaml"), "{missing}");
}

// ---------------------------------------------------------------------------------
// The CLI

fn cnnc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(args)
        .output()
        .expect("run cnnc")
}

#[test]
fn cli_info_on_broken_graphs_exits_2_with_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("syntax.yaml", "input: [3, 8, 8\nlayers: [relu]\n", "line"),
        (
            "op.yaml",
            "input: [3, 8, 8]\nlayers: [sigmoid]\n",
            "sigmoid",
        ),
        (
            "shape.yaml",
            "input: [3, 4, 4]\nlayers:\n  - conv: {filters: 1, size: 9}\n",
            "conv1",
        ),
        (
            "cycle.yaml",
            "input: [3, 4, 4]\nlayers:\n  - {name: a, relu, inputs: [a]}\n",
            "cycle",
        ),
        (
            "huge.yaml",
            "input: [3, 224, 224]\nlayers:\n  - conv: {filters: 100000, size: 1}\n",
            "2^31",
        ),
    ];
    for (file, text, word) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        for json in [false, true] {
            let mut args = vec!["info", path.to_str().unwrap()];
            if json {
                args.push("--json");
            }
            let out = cnnc(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
            assert!(out.stdout.is_empty(), "{file}: nothing on stdout");
            let lines: Vec<&str> = stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{file}: one line, got {stderr:?}");
            assert!(lines[0].starts_with("error: "), "{stderr}");
            assert!(lines[0].contains(word), "{file}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
    // A missing file is a user error too.
    let out = cnnc(&["info", dir.path().join("absent.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
}

#[test]
fn cli_info_works_on_every_example_graph() {
    let mut seen = 0;
    for entry in std::fs::read_dir("graphs").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        seen += 1;
        let p = path.to_str().unwrap();
        let out = cnnc(&["info", p]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{p}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("total"), "{p}:\n{stdout}");

        let out = cnnc(&["info", "--json", p]);
        assert!(out.status.success(), "{p} --json");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{p} --json is not JSON: {e}"));
        let layers = v["layers"].as_array().expect("layers array");
        assert!(!layers.is_empty());
        let sum: u64 = layers.iter().map(|l| l["params"].as_u64().unwrap()).sum();
        assert_eq!(v["total_params"].as_u64(), Some(sum), "{p}");
    }
    assert!(seen >= 7);
}

#[test]
fn cli_info_shows_the_lecture_example() {
    let out = cnnc(&["info", "graphs/cs231n_example.yaml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let conv = text
        .lines()
        .find(|l| l.starts_with("conv1"))
        .unwrap_or_else(|| panic!("no conv1 row:\n{text}"));
    assert!(conv.contains("10x32x32"), "{conv}");
    assert!(conv.contains(" 760 "), "{conv}");
    assert!(conv.contains("(32+2*2-5)/1+1 = 32"), "{conv}");
    let total = text.lines().find(|l| l.starts_with("total")).unwrap();
    assert!(total.contains("26,370"), "{total}");

    let out = cnnc(&["info", "--json", "graphs/cs231n_example.yaml"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let conv = &v["layers"][0];
    assert_eq!(conv["name"], "conv1");
    assert_eq!(conv["output"], "10x32x32");
    assert_eq!(conv["output_shape"], serde_json::json!([10, 32, 32]));
    assert_eq!(conv["params"], 760);
    assert_eq!(conv["macs"], 768_000);
    assert_eq!(conv["arithmetic"], "(32+2*2-5)/1+1 = 32");
    assert_eq!(v["total_params"], 26_370);
}

#[test]
fn cli_info_warns_on_a_rounded_row() {
    let out = cnnc(&["info", "graphs/resnet18.yaml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let conv1 = text.lines().find(|l| l.starts_with("conv1 ")).unwrap();
    assert!(conv1.contains("(224+2*3-7)/2+1 = 112.5 -> 112"), "{conv1}");
    assert!(conv1.contains("warning"), "{conv1}");
    assert!(text.contains("11,689,512"), "{text}");
    // Rows that tile carry no warning.
    let l1 = text
        .lines()
        .find(|l| l.starts_with("layer1.0.conv1 "))
        .unwrap();
    assert!(!l1.contains("warning"), "{l1}");

    let out = cnnc(&["info", "--json", "graphs/resnet18.yaml"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let conv1 = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "conv1")
        .unwrap();
    assert!(conv1["warning"].is_string());
    assert_eq!(v["total_params"], 11_689_512);
}

// ---------------------------------------------------------------------------------
// Never a panic: every example graph with one character removed, or one line
// duplicated, either parses or gives an error.

#[test]
fn mangled_example_graphs_never_panic() {
    let mut tried = 0;
    for entry in std::fs::read_dir("graphs").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let chars: Vec<char> = text.chars().collect();
        let step = (chars.len() / 400).max(1);
        let mut variants: Vec<String> = (0..chars.len())
            .step_by(step)
            .map(|i| {
                let mut c = chars.clone();
                c.remove(i);
                c.into_iter().collect()
            })
            .collect();
        let lines: Vec<&str> = text.lines().collect();
        for i in 0..lines.len() {
            let mut l = lines.clone();
            l.insert(i, lines[i]);
            variants.push(l.join("\n"));
            let mut l = lines.clone();
            l.remove(i);
            variants.push(l.join("\n"));
        }
        for v in variants {
            tried += 1;
            let r = std::panic::catch_unwind(|| cnnc::format::parse_str(&v, None).map(|_| ()));
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
                }
                Err(_) => panic!("parse_str panicked on a mangled {}:\n{v}", path.display()),
            }
        }
    }
    assert!(tried > 1000);
}

#[test]
fn cli_rejects_a_batch_of_zero_as_a_usage_error() {
    for cmd in ["run", "bench"] {
        let out = cnnc(&[cmd, "graphs/lenet5.yaml", "--batch", "0"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains("at least 1"),
            "{cmd}: {stderr}"
        );
    }
}
