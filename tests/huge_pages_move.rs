//! Packed weights faulted in as small pages at compile time are moved onto huge pages by
//! a background thread while the model runs (`memory::move_to_huge_pages_later`): every
//! run gives the same bits, before, during and after, and a model dropped while its
//! weights move goes cleanly. A test binary of its own: it sets `CNNC_HUGE_PAGES=small`
//! (every chunk small) for the whole process.
mod common;

/// The process's transparent huge pages, in KiB (`AnonHugePages` of
/// `/proc/self/smaps_rollup`).
fn anon_huge_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
    let line = s.lines().find(|l| l.starts_with("AnonHugePages:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn runs_give_the_same_bits_while_weights_move_to_huge_pages() {
    if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
        return; // no THP in this kernel: nothing is advised, nothing moves
    }
    std::env::set_var("CNNC_HUGE_PAGES", "small");
    // fc1's packed weights: 1024 x 1500 floats, 5.9 MiB: two whole chunks and a partial.
    let mut g = common::graph(
        "name: bigfc\ninput: [1024, 1, 1]\nseed: 5\nlayers:\n\
         \x20 - {name: fc1, fc: {units: 1500}}\n\
         \x20 - {name: r1, relu}\n\
         \x20 - {name: fc2, fc: {units: 10}}\n\
         outputs: [fc2]\n",
    );
    cnnc::weights::bind(&mut g, None).unwrap();
    let x = common::tensor(
        &[1, 1024, 1, 1],
        &(0..1024)
            .map(|i| ((i % 13) as f32 - 6.0) * 0.25)
            .collect::<Vec<_>>(),
    );
    // A model dropped at once: its thread stops at its next chunk.
    drop(cnnc::compile(&g, &cnnc::Options::default()).unwrap());
    let model = cnnc::compile(&g, &cnnc::Options::default()).unwrap();
    let huge_before = anon_huge_kib();
    let first = model.run(&x).unwrap();
    let bits = |t: &[cnnc::Tensor]| -> Vec<u32> {
        t.iter()
            .flat_map(|t| t.data().iter().map(|v| v.to_bits()))
            .collect()
    };
    let want = bits(&first);
    let reference = cnnc::interp::run(&g, x.clone()).unwrap();
    common::assert_close("fc2", &first[0], &reference[0], 1e-5);
    // Runs while the weights move (the thread is at the lowest priority: on a busy
    // machine it may not get far), until fc1's two whole chunks are huge pages (where the
    // kernel has huge pages to give) or 20 s have passed.
    let moved = || anon_huge_kib().saturating_sub(huge_before) >= 4096;
    let start = std::time::Instant::now();
    let mut runs = 0;
    while runs < 200 || (!moved() && start.elapsed().as_secs() < 20) {
        assert_eq!(bits(&model.run(&x).unwrap()), want, "run {runs}");
        runs += 1;
    }
    eprintln!(
        "{runs} runs; after {:.1} s, {} KiB more of huge pages than after the compile",
        start.elapsed().as_secs_f64(),
        anon_huge_kib().saturating_sub(huge_before)
    );
    drop(model);
}
