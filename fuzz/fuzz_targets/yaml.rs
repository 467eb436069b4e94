//! The YAML graph reader: any text either loads as a graph whose shapes are inferred
//! and within every engine's limits, or is an error - never a panic, hang or huge
//! allocation. A graph that loads is also described (`info`'s statistics) and written
//! back, and what is written must load again.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(g) = cnnc::format::parse_str(text, None) {
        for id in g.dag.node_indices() {
            let _ = cnnc::ir::stats::layer_stats(&g, id);
        }
        let _ = cnnc::memory::estimate(&g, 1, cnnc::memory::Engine::Interp);
        if let Ok(again) = cnnc::format::write_str(&g) {
            if let Err(e) = cnnc::format::parse_str(&again, None) {
                panic!("a written graph does not load again: {e}\n{again}");
            }
        }
    }
});
