//! Property tests of the kernel loader: corrupted images never panic, intact ones load.

mod common;

use common::{pvh_elf, Asm, Note, ENTRY};
use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};
use vmm::boot::pvh::load_kernel;
use vmm::memory::create_guest_memory;

const MEM: u64 = 16 << 20;

fn image() -> Vec<u8> {
    pvh_elf(&Asm::default().print(b"x").exit(1).0, Note::Pvh)
}

#[test]
fn intact_image_loads_at_its_paddr() {
    let mem = create_guest_memory(MEM).unwrap();
    let img = image();
    assert_eq!(load_kernel(&mem, MEM, &img), Ok(ENTRY));
    let mut first = [0u8; 4];
    mem.read_slice(&mut first, GuestAddress(u64::from(ENTRY)))
        .unwrap();
    assert_eq!(first, img[0x1000..0x1004]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn corrupted_headers_are_errors_not_panics(
        flips in proptest::collection::vec((0usize..0x1020, any::<u8>()), 1..8),
        cut in proptest::option::of(0usize..0x1030),
    ) {
        let mut img = image();
        for (at, v) in flips {
            if let Some(b) = img.get_mut(at) {
                *b = v;
            }
        }
        if let Some(c) = cut {
            img.truncate(c);
        }
        let mem = create_guest_memory(MEM).unwrap();
        // Either outcome is fine; returning is what is tested.
        let _ = load_kernel(&mem, MEM, &img);
    }

    #[test]
    fn truncation_is_always_rejected(cut in 0usize..0x1000) {
        let mut img = image();
        img.truncate(cut);
        let mem = create_guest_memory(MEM).unwrap();
        prop_assert!(load_kernel(&mem, MEM, &img).is_err());
    }
}
