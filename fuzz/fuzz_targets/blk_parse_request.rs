//! virtio-blk `parse_request` over arbitrary memory, descriptor lists and device limits.
#![no_main]

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use storage_fuzz::{blk, decode};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    if let Ok(mut case) = decode::blk_case(&mut u) {
        blk::run(&mut case);
    }
});
