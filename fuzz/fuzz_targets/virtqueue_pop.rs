//! Device-side split virtqueue over arbitrary guest memory and queue configuration:
//! `Queue::pop`, `add_used`, notification decisions, `DescriptorChain::read`.
#![no_main]

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use storage_fuzz::{decode, virtqueue};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    if let Ok(mut case) = decode::queue_case(&mut u) {
        virtqueue::run(&mut case);
    }
});
