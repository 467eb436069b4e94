//! The background collapse (`memory::settle_later`'s thread): a compile that left chunks of
//! packed weights on small pages (`CNNC_HUGE_PAGES=small`) wakes the thread, which works the
//! queue off by itself while nothing runs (no `settle_huge_pages` call), each chunk collapsed
//! or failed, and the model then runs to the bits of one whose chunks stayed small. One
//! test in this binary: it sets the process's environment, and the thread and its counters
//! are the process's (`tests/huge_collapse.rs` tests the embedder's call).
mod common;
use cnnc::{compile, Options};
use std::time::{Duration, Instant};

#[test]
fn a_compiles_small_chunks_are_collapsed_in_the_background() {
    if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists()
        || !cnnc::memory::huge_collapse_supported()
        || std::env::var("CNNC_HUGE_COLLAPSE").is_ok_and(|v| v.trim() == "0")
    {
        eprintln!("skipped: collapses not supported here, or CNNC_HUGE_COLLAPSE=0");
        return;
    }
    let (g, x) = common::seeded_example("vgg_cifar", 1, 11);
    let opts = Options::default();
    std::env::set_var("CNNC_HUGE_PAGES", "small");
    // The reference: the same chunks on small pages, never queued (so it wakes nothing).
    std::env::set_var("CNNC_HUGE_COLLAPSE", "0");
    let small = compile(&g, &opts).unwrap();
    std::env::remove_var("CNNC_HUGE_COLLAPSE");
    assert_eq!(cnnc::memory::huge_chunk_counts().pending, 0);

    let before = cnnc::memory::huge_chunk_counts();
    let model = compile(&g, &opts).unwrap();
    let compiled = cnnc::memory::huge_chunk_counts();
    // vgg_cifar's 512 -> 512 convs pack 9.4 MB each (Winograd: more): several chunks.
    let queued = compiled.small - before.small;
    assert!(queued >= 4, "{before:?} {compiled:?}");
    // Nothing runs in this process now: the thread (woken by the compile) takes the chunks
    // one by one. A bounded wait, not a speed test: the thread looks again within a second
    // of the last run or compile, and a collapse takes the host 1-30 ms.
    let start = Instant::now();
    let mut now = compiled;
    while now.pending > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the queue did not drain by itself: {now:?} (compiled: {compiled:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
        now = cnnc::memory::huge_chunk_counts();
    }
    let settled = (now.collapsed - before.collapsed) + (now.failed - before.failed);
    // Each chunk still queued was collapsed or failed (a buffer dropped meanwhile takes its
    // chunks along uncounted).
    assert!(settled >= 1 && settled <= queued, "{before:?} {now:?}");
    if now.collapsed == before.collapsed {
        eprintln!("no collapse succeeded (no huge page to be had?): {now:?}");
    }
    let (got, want) = (model.run(&x).unwrap(), small.run(&x).unwrap());
    assert_eq!(got.len(), want.len());
    for (a, b) in got.iter().zip(&want) {
        common::assert_bits(a.data(), b.data(), "the model's outputs");
    }
    std::env::remove_var("CNNC_HUGE_PAGES");
}
