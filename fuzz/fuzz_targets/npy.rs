//! The `.npy` reader (inputs of `cnnc run`): any bytes are an array or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(t) = cnnc::io::npy::parse(bytes) {
        // What was read writes back and reads again to the same tensor.
        let again = cnnc::io::npy::to_bytes(&t).expect("writes");
        let back = cnnc::io::npy::parse(&again).expect("reads what it wrote");
        assert_eq!(back.shape(), t.shape());
    }
});
