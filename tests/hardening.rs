//! Regression tests for the inputs that once made cnnc panic, abort, hang or exhaust
//! memory (issue #13; the reproducers are copied in `tests/fixtures/hardening/`). Each
//! must end in one clear error with exit code 2, or run correctly, and quickly.
mod common;
use common::repo;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

const FIXTURES: &str = "tests/fixtures/hardening";

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
    time: Duration,
}

/// Runs `cnnc args`, under an address-space limit of `limit` bytes when given (the
/// way the memory reproducers were found: `prlimit --as=4000000000`).
fn cnnc_limited(args: &[&str], limit: Option<u64>) -> Outcome {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cnnc"));
    cmd.args(args).current_dir(repo());
    if let Some(bytes) = limit {
        // SAFETY: setrlimit is async-signal-safe and touches only the child's limits.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let start = Instant::now();
    let out = cmd.output().expect("cnnc runs");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        time: start.elapsed(),
    }
}

fn cnnc(args: &[&str]) -> Outcome {
    cnnc_limited(args, None)
}

fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

/// Exit code 2 with one line on stderr, `error: ...` containing `needle`.
fn assert_refused(o: &Outcome, needle: &str, what: &str) {
    assert_eq!(o.code, 2, "{what}: exit code; stderr: {}", o.stderr);
    assert_eq!(
        o.stderr.lines().count(),
        1,
        "{what}: one line: {}",
        o.stderr
    );
    assert!(o.stderr.starts_with("error: "), "{what}: {}", o.stderr);
    assert!(
        o.stderr.contains(needle),
        "{what}: `{needle}` not in: {}",
        o.stderr
    );
    assert!(!o.stderr.contains("panicked"), "{what}: {}", o.stderr);
}

#[test]
fn a_layer_name_of_65536_characters_is_printed_not_a_panic() {
    let graph = fixture("long_layer_name_65536.yaml");
    let info = cnnc(&["info", &graph]);
    assert_eq!(info.code, 0, "{}", info.stderr);
    let name = "x".repeat(65536);
    assert!(info.stdout.lines().any(|l| l.starts_with(&name)));
    let profile = cnnc(&["run", &graph, "--profile"]);
    assert_eq!(profile.code, 0, "{}", profile.stderr);
    assert!(profile.stdout.lines().any(|l| l.starts_with(&name)));
}

#[test]
fn npy_headers_are_bounded() {
    let o = cnnc(&[
        "run",
        "graphs/lenet5.yaml",
        "--input",
        &fixture("npy_v2_header_len_4GB.npy"),
    ]);
    assert_refused(
        &o,
        "more than the 10000 a .npy header may have",
        "4 GiB header",
    );
    for depth in [22, 24] {
        let input = fixture(&format!("npy_nested_descr_depth{depth}.npy"));
        let o = cnnc(&["run", "graphs/lenet5.yaml", "--input", &input]);
        assert_refused(&o, "no structured dtypes", "nested descr");
        assert!(
            o.time < Duration::from_secs(5),
            "depth {depth}: {:?}",
            o.time
        );
    }
}

#[test]
fn deeply_nested_yaml_is_refused_before_parsing() {
    let o = cnnc(&["info", &fixture("yaml_deep_flow_nesting.yaml")]);
    assert_refused(
        &o,
        "line 2: the YAML nests more than 64 levels",
        "100,000 [",
    );
    assert!(o.time < Duration::from_secs(5), "{:?}", o.time);
}

#[test]
fn repeating_an_empty_block_costs_nothing() {
    for file in ["repeat_of_empty_repeat.yaml", "repeat_2e31_of_empty.yaml"] {
        let o = cnnc(&["info", &fixture(file)]);
        assert_eq!(o.code, 0, "{file}: {}", o.stderr);
        assert!(o.stdout.contains("relu1"), "{file}: {}", o.stdout);
        assert!(o.time < Duration::from_secs(5), "{file}: {:?}", o.time);
    }
}

/// 4 GB of address space, as the reproducers were run.
const FOUR_GB: u64 = 4_000_000_000;

/// The memory reproducers: tensors the JIT cannot address are refused when the graph
/// loads (naming the layer), before any memory is taken.
#[test]
fn graphs_whose_tensors_no_engine_can_hold_are_refused_at_load() {
    let boat = "examples/images/boat.png";
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "@size_in_big.yaml", "--threads", "1"],
            "global_avgpool1: its input `input` (2x32768x32768)",
        ),
        (
            &["run", "@size_in_big2.yaml", "--threads", "1"],
            "global_avgpool1: its input `input` (1x32768x32768)",
        ),
        (
            &["run", "@size_fc_big.yaml", "--threads", "1"],
            "fc1: its weight of shape 2048x1048576",
        ),
        (
            &["run", "@size_pad_big2.yaml", "--engine", "interp"],
            "pad1: its output height (2147483647) is over the limit",
        ),
        (
            &["run", "@size_pad_relu_8e8.yaml", "--engine", "interp"],
            "pad1: its output width (100000008) is over the limit",
        ),
        (
            &[
                "run",
                "@size_img_graph_3x20000x20000.yaml",
                "--input",
                boat,
                "--threads",
                "1",
            ],
            "global_avgpool1: its input `input` (3x20000x20000)",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<String> = args
            .iter()
            .map(|a| match a.strip_prefix('@') {
                Some(f) => fixture(f),
                None => a.to_string(),
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let what = args.join(" ");
        let o = cnnc_limited(&args, Some(FOUR_GB));
        assert_refused(&o, needle, &what);
        assert!(o.time < Duration::from_secs(10), "{what}: {:?}", o.time);
    }
}

/// Runs within every engine's limits that need more memory than allowed are refused
/// before any work, with the estimate and what it is for.
#[test]
fn runs_that_need_more_memory_than_allowed_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    // 192 MiB per image: 30 images are 5.6 GiB.
    std::fs::write(
        &big,
        "input: [3, 4096, 4096]\nlayers:\n  - global_avgpool\n",
    )
    .unwrap();
    let big = big.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "graphs/lenet5.yaml", "--batch", "1000000"],
            "input batch 3.8 GiB",
        ),
        (
            &[
                "run",
                "graphs/lenet5.yaml",
                "--batch",
                "1000000",
                "--engine",
                "interp",
            ],
            "activations of 1000000 image(s)",
        ),
        (
            &["bench", "graphs/lenet5.yaml", "--batch", "1000000"],
            "input batch 3.8 GiB",
        ),
        (&["run", big, "--batch", "30"], "input batch 5.6 GiB"),
        (
            &["run", big, "--batch", "30", "--engine", "interp"],
            "input batch 5.6 GiB",
        ),
    ];
    for (args, needle) in cases {
        let what = args.join(" ");
        let o = cnnc_limited(args, Some(FOUR_GB));
        assert_refused(&o, needle, &what);
        assert!(
            o.stderr.contains("address-space limit"),
            "{what}: {}",
            o.stderr
        );
        assert!(o.time < Duration::from_secs(10), "{what}: {:?}", o.time);
        // The same refusal with an explicit limit, whatever the machine has.
        let mut limited = args.to_vec();
        limited.extend(["--max-memory", "1G"]);
        let o = cnnc(&limited);
        assert_refused(&o, "more than the 1.0 GiB of the --max-memory limit", &what);
    }
}

#[test]
fn max_memory_admits_what_fits() {
    let o = cnnc(&[
        "run",
        "graphs/lenet5.yaml",
        "--batch",
        "4",
        "--max-memory",
        "64M",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = cnnc(&["run", "graphs/lenet5.yaml", "--max-memory", "lots"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("`lots` is not a size"), "{}", o.stderr);
}

/// A scratch folder with a graph, its seed's weights and an ONNX model in it.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = repo();
    std::fs::copy(root.join("graphs/lenet5.yaml"), dir.path().join("g.yaml")).unwrap();
    std::fs::copy(
        root.join("tests/golden/onnx/handbuilt/model.onnx"),
        dir.path().join("m.onnx"),
    )
    .unwrap();
    dir
}

fn in_dir(dir: &std::path::Path, args: &[&str]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        time: Duration::ZERO,
    }
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn no_command_overwrites_its_own_inputs() {
    let dir = scratch();
    let d = dir.path();
    let before = |f: &str| std::fs::read(d.join(f)).unwrap();
    let (graph, model) = (before("g.yaml"), before("m.onnx"));
    let cases: &[(&[&str], &str)] = &[
        (
            &["import", "m.onnx", "-o", "m.onnx"],
            "this is the ONNX model",
        ),
        (
            &["import", "m.onnx", "-o", "m.safetensors"],
            "would both be written here",
        ),
        (
            &["run", "g.yaml", "--output", "g.yaml"],
            "this is the graph",
        ),
        (&["init", "g.yaml", "-o", "g.yaml"], "this is the graph"),
        (&["export", "g.yaml", "-o", "g.yaml"], "this is the graph"),
        (&["export", "g.yaml", "-o", "./g.yaml"], "this is the graph"),
    ];
    for (args, needle) in cases {
        assert_refused(&in_dir(d, args), needle, &args.join(" "));
    }
    assert_eq!(listing(d), ["g.yaml", "m.onnx"]);
    assert_eq!(before("g.yaml"), graph);
    assert_eq!(before("m.onnx"), model);
    // The input and the weights of a run, as outputs.
    let o = in_dir(d, &["init", "g.yaml", "-o", "w.safetensors"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = in_dir(
        d,
        &[
            "run",
            "g.yaml",
            "-w",
            "w.safetensors",
            "-o",
            "w.safetensors",
        ],
    );
    assert_refused(&o, "this is the weights file", "run -o weights");
    let o = in_dir(d, &["run", "g.yaml", "-o", "x.npy"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = in_dir(d, &["run", "g.yaml", "--input", "x.npy", "-o", "x.npy"]);
    assert_refused(&o, "this is the input", "run -o input");
}

#[test]
fn bad_output_paths_are_refused_before_running_and_leave_nothing() {
    let dir = scratch();
    let d = dir.path();
    std::fs::create_dir(d.join("out")).unwrap();
    let o = in_dir(d, &["import", "m.onnx", "-o", "out"]);
    assert_refused(&o, "out: is a folder", "import -o folder");
    let o = in_dir(d, &["run", "g.yaml", "-o", "no/such/x.npy"]);
    assert_refused(
        &o,
        "the folder no/such does not exist",
        "run -o missing folder",
    );
    // Refused before the network ran: nothing was printed.
    assert!(o.stdout.is_empty(), "{}", o.stdout);
    assert_eq!(listing(d), ["g.yaml", "m.onnx", "out"]);
    assert!(listing(&d.join("out")).is_empty());
    // A good import writes both files, and they load and run.
    let o = in_dir(d, &["import", "m.onnx", "-o", "m.yaml"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        listing(d),
        ["g.yaml", "m.onnx", "m.safetensors", "m.yaml", "out"]
    );
    let o = in_dir(d, &["run", "m.yaml", "--engine", "interp"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
}

#[test]
fn engine_limits_are_checked_at_load_with_the_layer_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let adds = vec!["relu1"; 100_000].join(", ");
    let cases = [
        (
            "input: [1, 8, 8]\nlayers:\n  - {name: wide, conv: {filters: 2, size: 1, stride: 16777217}}\n".to_string(),
            "wide: its height stride of 16777217 is more than the limit of 16777216",
        ),
        (
            "input: [1, 4100, 4100]\nlayers:\n  - maxpool: {size: 1}\n  - {name: big, relu: {}}\n".into(),
            "big: a relu over 16810000 elements is more than the limit",
        ),
        (
            format!("input: [1, 2, 2]\nlayers:\n  - relu\n  - {{name: many, add: {{}}, inputs: [{adds}]}}\n"),
            "many: an add of 100000 inputs is more than the limit of 1024",
        ),
        (
            "input: [5000, 64, 64]\nlayers:\n  - {name: head, fc: {units: 1}}\n".into(),
            "head: an fc of 20480000 input features is more than the limit of 16777216 (2^24)",
        ),
    ];
    for (i, (yaml, needle)) in cases.iter().enumerate() {
        let file = format!("g{i}.yaml");
        std::fs::write(d.join(&file), yaml).unwrap();
        for engine in ["interp", "jit"] {
            let o = in_dir(d, &["run", &file, "--engine", engine]);
            assert_refused(&o, needle, &format!("{file} {engine}"));
        }
        assert_refused(&in_dir(d, &["info", &file]), needle, &file);
    }
}

#[test]
fn unclear_messages_are_now_clear() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: &[(&[u8], &str)] = &[
        (
            b"input: [1, 8, 8]\nlayers: [relu, {fc: {units: 8 layers\n",
            "YAML syntax error",
        ),
        (
            b"input: [1, 8, 8]\nweights: 2\nlayers: [relu]\n",
            "2: cannot read the graph's `weights:` file: ",
        ),
        (
            b"- input: [1, 8, 8]\n- layers: [relu]\n",
            "a graph is a map with `input:` and `layers:`",
        ),
        (
            b"input: [1, 8, 8]\nlayers: [relu]\nname: \"\xff\xfe\"\n",
            "line 3 column 8: the file is not UTF-8 text (byte 0xff)",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let file = format!("g{i}.yaml");
        std::fs::write(d.join(&file), text).unwrap();
        assert_refused(&in_dir(d, &["run", &file]), needle, &file);
    }
    // `weights: 2` also says where the name came from.
    let o = in_dir(d, &["run", "g1.yaml"]);
    assert!(
        o.stderr.contains("the graph's `weights:` file"),
        "{}",
        o.stderr
    );
}

/// A safetensors file with a bad int8 tensor `a.weight` and a bad f32 `b.weight`.
fn bad_safetensors() -> Vec<u8> {
    let header = r#"{"b.weight":{"dtype":"F32","shape":[3],"data_offsets":[2,100]},"a.weight":{"dtype":"I8","shape":[2],"data_offsets":[0,3]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 2]);
    bytes
}

#[test]
fn a_bad_safetensors_file_names_the_same_tensor_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("w.safetensors"), bad_safetensors()).unwrap();
    std::fs::write(d.join("g.yaml"), "input: [1, 8, 8]\nlayers: [relu]\n").unwrap();
    for _ in 0..5 {
        let o = in_dir(d, &["run", "g.yaml", "-w", "w.safetensors"]);
        assert_refused(
            &o,
            "tensor `a.weight`: its shape and dtype need 2 bytes, but its data_offsets [0, 3] span 3",
            "bad safetensors",
        );
    }
}

#[test]
fn nan_or_inf_in_inputs_weights_or_outputs_is_one_warning_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("g.yaml"),
        "input: [1, 2, 2]\nlayers:\n  - fc: {units: 3}\n",
    )
    .unwrap();
    let x = cnnc::Tensor::new(
        vec![2, 1, 2, 2],
        vec![1.0, 2.0, 3.0, 4.0, 1.0, f32::NAN, 0.0, 0.0],
    )
    .unwrap();
    cnnc::io::npy::write(&d.join("x.npy"), &x).unwrap();
    let o = in_dir(d, &["run", "g.yaml", "--input", "x.npy"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let warnings: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", o.stderr);
    assert!(
        warnings[0].contains("the input (1 values, first in x.npy[1])"),
        "{}",
        o.stderr
    );
    assert!(
        warnings[0].contains("output `fc1` (3 values, first in x.npy[1])"),
        "{}",
        o.stderr
    );
    // A finite run warns about nothing.
    let o = in_dir(d, &["run", "g.yaml"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.is_empty(), "{}", o.stderr);
}

/// ONNX models whose import used to succeed and then not run: the import now fails
/// with a message and writes nothing.
#[test]
fn imports_that_would_not_load_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases = [
        ("import_identity.onnx", "the model has no layer cnnc runs"),
        (
            "import_bn_eps0.onnx",
            "batchnorm eps must be positive, got 0",
        ),
        (
            "import_bn_epsneg.onnx",
            "batchnorm eps must be positive, got -1",
        ),
        (
            "import_conv_0filters.onnx",
            "expected a positive whole number, got 0",
        ),
        (
            "import_conv_stride.onnx",
            "4611686018427387904 is too large",
        ),
        ("import_dims_2e32.onnx", "more than the limit of 2^31"),
        // NaN attributes: written as YAML's `.nan`, refused by the reader.
        (
            "import_bn_eps_nan.onnx",
            "layer `batchnorm1` (batchnorm): batchnorm eps must be positive, got NaN",
        ),
        (
            "import_pad_value_nan.onnx",
            "layer `pad1` (pad): pad value must be a number or -.inf, got NaN",
        ),
    ];
    for (model, needle) in cases {
        let model = repo().join(FIXTURES).join(model);
        let o = in_dir(d, &["import", model.to_str().unwrap(), "-o", "m.yaml"]);
        assert_refused(&o, needle, &model.display().to_string());
        assert!(listing(d).is_empty(), "{model:?}: {:?}", listing(d));
        // Said of the model: no line of a YAML file that was never written.
        assert!(!o.stderr.contains(" line "), "{}", o.stderr);
        assert!(!o.stderr.contains("layers["), "{}", o.stderr);
    }
    let o = in_dir(
        d,
        &[
            "import",
            &fixture_path("import_conv_0filters.onnx"),
            "-o",
            "m.yaml",
        ],
    );
    assert!(
        o.stderr
            .contains("layer `conv1` (conv): filters: expected a positive whole number, got 0;"),
        "{}",
        o.stderr
    );
}

fn fixture_path(name: &str) -> String {
    repo().join(FIXTURES).join(name).display().to_string()
}

/// The limits that depend on the batch (an fc kernel takes the whole batch) are
/// checked before any kernel is generated, naming the layer and the largest batch.
#[test]
fn the_fc_batch_limit_names_the_layer_and_the_largest_batch() {
    let g = common::graph("input: [1000, 10, 10]\nlayers:\n  - {name: big, fc: {units: 10}}\n");
    let opts = |batch| cnnc::Options {
        batch,
        ..cnnc::Options::default()
    };
    let err = cnnc::runtime::compile(&g, &opts(2685))
        .err()
        .expect("refused");
    assert_eq!(
        err.to_string(),
        "big: a batch of 2685 takes 2685x100000 floats at once, more than the 1023 MiB an fc kernel addresses; use a batch of at most 2684"
    );
    assert!(matches!(err, cnnc::Error::Unsupported(_)));
    // The largest batch it names lowers.
    assert!(cnnc::lower::lower(&g, &opts(2684)).is_ok());
}

/// A kernel spec the JIT refuses says what is wrong in words (no Rust structs), and
/// the model names the layer.
#[test]
fn jit_kernel_refusals_describe_shapes_in_words() {
    use cnnc::jit::*;
    let mut km = KernelModule::new().unwrap();
    let conv = ConvSpec {
        stride_h: 0,
        ..ConvSpec::square(3, 8, 4, 3, 1, 1)
    };
    let fc = FcSpec::new(0, 10, 2);
    let pool = PoolSpec::square(PoolKind::Max, 2, 1, 3, 2, 0);
    let elt = EltSpec::Relu { len: 0 };
    let depthwise = DepthwiseSpec {
        input_shuffle: 3,
        ..DepthwiseSpec::square(8, 6, 3, 1, 1)
    };
    let errors = [
        km.add_conv(&conv).err().expect("conv refused").to_string(),
        km.add_fc(&fc).err().expect("fc refused").to_string(),
        km.add_pool(&pool).err().expect("pool refused").to_string(),
        km.add_elementwise(&elt)
            .err()
            .expect("relu refused")
            .to_string(),
        km.add_depthwise(&depthwise)
            .err()
            .expect("depthwise refused")
            .to_string(),
    ];
    let want = [
        "a conv of 3x8x8 input, 4 filters 3x3, stride 0x1, pad 1x1: the filter and stride must be at least 1",
        "an fc of a batch of 2 x 0 features to 10 has an empty dimension",
        "a pool of 2x1x1 input, window 3x3, stride 2x2, pad 0x0: the window is larger than the padded input",
        "a relu of 0 elements has an empty input or output",
        "a depthwise conv of 8x6x6 input, 1 filters 3x3 per channel, stride 1x1, pad 1x1, dilation 1x1 reads through a shuffle of 3 groups, which must divide its channels",
    ];
    assert_eq!(errors.len(), want.len());
    for (got, want) in errors.iter().zip(want) {
        assert!(!got.contains('{'), "{got}");
        assert!(got.contains(want), "{got}\nwant {want}");
    }
    let e = cnnc::Error::Unsupported("too big".into()).in_layer("conv7");
    assert_eq!(e.to_string(), "conv7: too big");
}

/// A strided 1x1 spec with a zero stride or no channels is refused with an error at every
/// ISA level the host has, not a division by zero while its method is chosen (the wide
/// levels weigh the pointwise GEMM's and the implicit GEMM's plans for strided 1x1s).
#[test]
fn invalid_strided_pointwise_specs_are_refused_at_every_isa() {
    use cnnc::jit::*;
    let zero_stride = ConvSpec {
        stride_h: 0,
        ..ConvSpec::square(40, 8, 16, 1, 2, 0)
    };
    let no_channels = ConvSpec::square(0, 8, 16, 1, 2, 0);
    for isa in cnnc::Isa::host_levels() {
        let mut km = KernelModule::new().unwrap();
        km.set_isa(isa).unwrap();
        for spec in [zero_stride, no_channels] {
            let err = km.add_conv(&spec).err().expect("refused");
            assert!(matches!(err, cnnc::Error::Shape(_)), "{isa}: {err}");
        }
    }
}
