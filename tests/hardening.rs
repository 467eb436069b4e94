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

#[test]
fn runs_that_need_more_memory_than_allowed_are_refused_before_any_work() {
    let boat = "examples/images/boat.png";
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
        (
            &["run", "@size_in_big.yaml", "--threads", "1"],
            "input batch 8.0 GiB",
        ),
        (
            &["run", "@size_in_big2.yaml", "--threads", "1"],
            "input batch 4.0 GiB",
        ),
        (
            &["run", "@size_fc_big.yaml", "--threads", "1"],
            "weights 8.0 GiB",
        ),
        (
            &["run", "@size_pad_big2.yaml", "--engine", "interp"],
            "activations of 1 image(s) 8.0 GiB",
        ),
        (
            &["run", "@size_pad_relu_8e8.yaml", "--engine", "interp"],
            "activations of 1 image(s) 6.0 GiB",
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
            "image decoding",
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
        assert!(
            o.stderr.contains("address-space limit"),
            "{what}: {}",
            o.stderr
        );
        assert!(o.time < Duration::from_secs(10), "{what}: {:?}", o.time);
        // The same refusal with an explicit limit, whatever the machine has.
        let mut limited = args.clone();
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
