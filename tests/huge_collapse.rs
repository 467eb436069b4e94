//! A model whose packed weights were faulted in on small pages (`CNNC_HUGE_PAGES=small`,
//! as after a first compile while huge pages were slow to fault in) has them collapsed
//! into huge pages (`memory::settle_huge_pages`; the background thread: its own test file),
//! each one a huge page in the process's `AnonHugePages`, runs to the
//! same bits after, and a dropped model leaves nothing to collapse. One test in this
//! binary: it sets the process's environment.
mod common;
use cnnc::{compile, Options};

#[test]
fn small_chunks_of_packed_weights_are_collapsed_and_the_results_unchanged() {
    if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
        eprintln!("skipped: this kernel has no transparent huge pages");
        return;
    }
    let (g, x) = common::seeded_example("vgg_cifar", 1, 7);
    std::env::set_var("CNNC_HUGE_PAGES", "small");
    let opts = Options::default();
    let before = cnnc::memory::huge_chunk_counts();
    let model = compile(&g, &opts).unwrap();
    let after_compile = cnnc::memory::huge_chunk_counts();
    // vgg_cifar's 512 -> 512 convs pack 9.4 MB each (Winograd: more): several chunks.
    assert!(
        after_compile.small >= before.small + 4,
        "{before:?} {after_compile:?}"
    );
    let first = model.run(&x).unwrap();
    let huge_before = anon_huge_kib();
    let n = cnnc::memory::settle_huge_pages();
    let settled = cnnc::memory::huge_chunk_counts();
    // Each chunk this call collapsed is a huge page now (not only a count): the process's
    // huge pages grew by as many, less at most the background thread's scratch page, which
    // it may have held just before (it frees it before each collapse of its own).
    if let (Some(b), Some(a)) = (huge_before, anon_huge_kib()) {
        assert!(
            a + 2048 >= b + 2048 * n as u64,
            "{n} collapsed: {b} -> {a} KiB"
        );
    }
    assert_eq!(settled.pending, 0, "{settled:?}");
    // Where collapses are not supported (a kernel before 6.1, THP `never`) or are turned
    // off, nothing is queued: nothing is collapsed, and nothing fails.
    let off = std::env::var("CNNC_HUGE_COLLAPSE").is_ok_and(|v| v.trim() == "0");
    if off || !cnnc::memory::huge_collapse_supported() {
        assert_eq!(after_compile.pending, 0, "{after_compile:?}");
        assert_eq!(n, 0);
        assert_eq!(
            (settled.collapsed, settled.failed),
            (before.collapsed, before.failed),
            "{settled:?}"
        );
        eprintln!("collapses not supported here (or CNNC_HUGE_COLLAPSE=0): none queued");
    } else if settled.failed > before.failed && settled.collapsed == before.collapsed {
        // Supported, so each failure was ENOMEM or EAGAIN (no huge page to be had) or a bug:
        // the lib test `small_chunks_collapse_into_huge_pages_and_keep_their_values` tells
        // those apart.
        eprintln!("skipped: no collapse succeeded (no huge page to be had?) {settled:?}");
    } else {
        assert!(settled.collapsed > before.collapsed, "{settled:?}");
    }
    let again = model.run(&x).unwrap();
    assert_eq!(first.len(), again.len());
    for (a, b) in first.iter().zip(&again) {
        common::assert_bits(a.data(), b.data(), "the model's outputs");
    }
    // Another model's chunks, dropped before any collapse: none is left queued.
    std::env::set_var("CNNC_HUGE_COLLAPSE", "0");
    let off = compile(&g, &opts).unwrap();
    assert_eq!(cnnc::memory::huge_chunk_counts().pending, 0, "knob off");
    drop(off);
    std::env::remove_var("CNNC_HUGE_COLLAPSE");
    let queued = compile(&g, &opts).unwrap();
    drop(queued);
    assert_eq!(cnnc::memory::huge_chunk_counts().pending, 0, "dropped");
    std::env::remove_var("CNNC_HUGE_PAGES");
}

/// The process's transparent huge pages (`AnonHugePages` of `/proc/self/smaps_rollup`), KiB.
fn anon_huge_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = s.lines().find(|l| l.starts_with("AnonHugePages:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
