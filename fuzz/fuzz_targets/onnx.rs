//! The ONNX importer: any bytes are a graph (with its weights bound) or an error; an
//! imported graph is written as YAML, which must load again (what `cnnc import`
//! promises: an import that succeeds always loads).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(g) = cnnc::onnx::import(bytes) {
        if let Ok(text) = cnnc::format::write_str(&g) {
            let _ = cnnc::format::parse_str(&text, None);
        }
    }
});
