//! The weights reader: any bytes are a set of named tensors or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = cnnc::weights::read_safetensors(bytes);
});
