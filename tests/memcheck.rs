//! Generated code must make no invalid read or write: run whole networks through the JIT
//! under valgrind's memcheck. Slow, so ignored by default; run with
//! `cargo test --release --test memcheck -- --ignored` (needs `valgrind` on the PATH).
//! `CNNC_MEMCHECK_GRAPHS=a.yaml,b.yaml` picks the networks (paths from the repository
//! root); CI (`.ci/run`) checks a small one and a residual one, in well under a minute.
mod common;
use std::process::Command;

fn memcheck(graph: &str, batch: &str) {
    let out = Command::new("valgrind")
        .args([
            "--tool=memcheck",
            "--error-exitcode=99",
            "--smc-check=all-non-file",
            // Valgrind's translator gives each superblock 5 MB of scratch; 50 guest
            // instructions (its default) of the AVX2 panel copy kernel's permutes and
            // masked moves, instrumented, exceed it ("VEX temporary storage exhausted").
            // Shorter superblocks translate the same code; every access is still checked.
            "--vex-guest-max-insns=25",
            "-q",
        ])
        .arg(env!("CARGO_BIN_EXE_cnnc"))
        .args([
            "run", graph, "--engine", "jit", "--batch", batch, "--top", "1",
        ])
        .current_dir(common::repo())
        // Dropped buffers unmapped, not kept for reuse: a stale pointer into one then
        // faults instead of reading another buffer's memory.
        .env("CNNC_SPARE_MB", "0")
        .output()
        .expect("valgrind is installed (apt-get install valgrind)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{graph}: memcheck exit {:?}\n{stderr}",
        out.status.code()
    );
    assert!(!stderr.contains("Invalid"), "{graph}: {stderr}");
}

/// The execution plan `cnnc compile --emit plan` prints for `graph` at `batch` under
/// valgrind.
fn plan_under_valgrind(graph: &str, batch: &str) -> String {
    let out = Command::new("valgrind")
        .args(["--tool=none", "-q"])
        .arg(env!("CARGO_BIN_EXE_cnnc"))
        .args(["compile", graph, "--emit", "plan", "--batch", batch])
        .current_dir(common::repo())
        // Dropped buffers unmapped, not kept for reuse: a stale pointer into one then
        // faults instead of reading another buffer's memory.
        .env("CNNC_SPARE_MB", "0")
        .output()
        .expect("valgrind is installed (apt-get install valgrind)");
    assert!(out.status.success(), "{graph}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Valgrind does not emulate AVX-512 (its CPUID hides it), so under valgrind the JIT must
/// pick avx2 on a host that has it, and the convolutions (and the fc layers: at batch 2 the
/// batch-row GEMM, at batch 1 the wide dot kernel) must run on the wide micro-kernels: then
/// memcheck checks the AVX2 micro-kernels and their masked tails. Returns the number of fc
/// layers in the batch-1 plan (`None`: not checked, no AVX2 or `CNNC_ISA` set).
fn assert_wide_kernels_under_valgrind(graph: &str) -> Option<usize> {
    let forced = std::env::var_os("CNNC_ISA").is_some_and(|v| !v.is_empty());
    if forced || !cnnc::Isa::host_levels().contains(&cnnc::Isa::Avx2) {
        return None;
    }
    let plan = plan_under_valgrind(graph, "1");
    let fc_lines: Vec<&str> = plan.lines().filter(|l| l.contains(" fc [")).collect();
    for line in &fc_lines {
        assert!(line.contains("avx2 dot 8 features"), "{graph}: {line}");
    }
    assert!(!plan.contains("avx512"), "{graph}: {plan}");
    let fcs = fc_lines.len();
    let plan = plan_under_valgrind(graph, "2");
    for line in plan.lines().filter(|l| l.contains(" conv [")) {
        assert!(line.contains("avx2 6x16"), "{graph}: {line}");
    }
    for line in plan.lines().filter(|l| l.contains(" fc [")) {
        assert!(line.contains("batch rows, avx2 2x16"), "{graph}: {line}");
    }
    assert!(plan.contains(" conv ["), "{graph}: no conv in\n{plan}");
    assert!(!plan.contains("avx512"), "{graph}: {plan}");
    Some(fcs)
}

#[test]
#[ignore = "slow: runs networks under valgrind"]
fn jit_networks_make_no_invalid_memory_access() {
    let chosen = std::env::var("CNNC_MEMCHECK_GRAPHS").ok();
    let graphs: Vec<&str> = match &chosen {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .collect(),
        None => vec![
            "graphs/lenet5.yaml",
            "graphs/cs231n_example.yaml",
            "graphs/inception3a.yaml",
            "graphs/resnet_basic_block.yaml",
        ],
    };
    assert!(!graphs.is_empty(), "CNNC_MEMCHECK_GRAPHS names no graph");
    // Graphs with fc layers: with them, some batch-1 fc must have been seen on the wide
    // dot kernel (else a changed plan format would check nothing).
    let with_fc = ["graphs/lenet5.yaml", "graphs/cs231n_example.yaml"];
    let mut fcs = Some(0);
    for &graph in &graphs {
        assert!(
            common::repo().join(graph).is_file(),
            "{graph}: no such graph"
        );
        let seen = assert_wide_kernels_under_valgrind(graph);
        fcs = fcs.zip(seen).map(|(a, b)| a + b);
        memcheck(graph, "2");
        // Batch 1: the fc layers on the dot kernel.
        memcheck(graph, "1");
    }
    if graphs.iter().any(|g| with_fc.contains(g)) {
        assert!(
            fcs != Some(0),
            "no batch-1 fc line in the plans of {graphs:?}"
        );
    }
}
