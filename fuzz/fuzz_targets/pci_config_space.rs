//! PCI configuration space and virtio-pci function under arbitrary guest accesses: the first
//! byte picks a bare `ConfigSpace` (odd) or a whole `VirtioPciFunction` (even).
#![no_main]

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use storage_fuzz::{decode, pci};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let mut u = Unstructured::new(rest);
    if which & 1 == 1 {
        if let Ok(case) = decode::config_space_case(&mut u) {
            pci::run_config_space(&case);
        }
    } else if let Ok(case) = decode::function_case(&mut u) {
        pci::run_function(&case);
    }
});
