//! Boots hand-assembled PVH guests in the real VMM binary.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{boot, require_kvm, stderr, write_kernel, Asm, Note};

/// Exits with 3 unless EBX points at `hvm_start_info` (magic 0x336ec578).
fn check_start_info() -> Asm {
    let fail = Asm::default().exit(3).0;
    let mut a = Asm::default().if_ebx_points_to(0x336e_c578, fail.len() as u8);
    a.0.extend_from_slice(&fail);
    a
}

#[test]
fn guest_prints_ok_and_exits_with_the_port_value() {
    require_kvm();
    let code = check_start_info().print(b"OK\n").exit(7).spin().0;
    let (_dir, kernel) = write_kernel(&common::pvh_elf(&code, Note::Pvh));
    let out = boot(&kernel, &["--memory", "64M"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "OK\n",
        "stderr: {}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(7), "stderr: {}", stderr(&out));
}

#[test]
fn string_port_io_reaches_the_serial_port() {
    require_kvm();
    let text = b"string I/O\n";
    // The text follows the code; the code's length does not depend on the address.
    let program = |at: u32| {
        Asm::default()
            .mov_esi(at)
            .mov_ecx(text.len() as u32)
            .mov_dx(0x3f8)
            .rep_outsb()
            .exit(9)
            .spin()
            .0
    };
    let mut code = program(common::ENTRY + program(0).len() as u32);
    code.extend_from_slice(text);
    let (_dir, kernel) = write_kernel(&common::pvh_elf(&code, Note::Pvh));
    let out = boot(&kernel, &[]);
    assert_eq!(out.stdout, text, "stderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(9));
}

#[test]
fn two_vcpus_and_memory_above_4g_boot() {
    require_kvm();
    let code = check_start_info().print(b"OK\n").exit(0).spin().0;
    let (_dir, kernel) = write_kernel(&common::pvh_elf(&code, Note::Pvh));
    let out = boot(&kernel, &["--memory", "3200M", "--cpus", "2"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "OK\n",
        "stderr: {}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
}

#[test]
fn triple_fault_is_reported() {
    require_kvm();
    // No IDT: #UD escalates to a triple fault.
    let code = Asm::default().ud2().0;
    let (_dir, kernel) = write_kernel(&common::pvh_elf(&code, Note::Pvh));
    let out = boot(&kernel, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("guest triple-faulted (shutdown)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn host_bridge_is_visible_through_cf8() {
    require_kvm();
    // 00:00.0 is the host bridge, device ID 0x29c0.
    let (_dir, kernel) = write_kernel(&common::pvh_elf(&exit_with_device_id(0), Note::Pvh));
    let out = boot(&kernel, &[]);
    assert_eq!(out.status.code(), Some(0xc0), "stderr: {}", stderr(&out));
}

#[test]
fn sigterm_stops_a_spinning_guest() {
    require_kvm();
    let code = Asm::default().print(b"up\n").spin().0;
    let (_dir, kernel) = write_kernel(&common::pvh_elf(&code, Note::Pvh));
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["--kernel", kernel.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm");
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let start = Instant::now();
    let out = loop {
        if let Some(_status) = child.try_wait().unwrap() {
            break child.wait_with_output().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "vmm ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(out.status.code(), Some(143), "stderr: {}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "up\n");
}

#[test]
fn kernel_without_pvh_note_is_rejected() {
    let code = Asm::default().exit(7).0;
    let (_dir, kernel) = write_kernel(&common::pvh_elf(&code, Note::Other));
    let out = boot(&kernel, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("no Xen PVH entry note"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn truncated_kernel_is_rejected() {
    let code = Asm::default().exit(7).0;
    let image = common::pvh_elf(&code, Note::Pvh);
    for len in [10, 100, 0x1001] {
        let (_dir, kernel) = write_kernel(&image[..len]);
        let out = boot(&kernel, &[]);
        assert_eq!(out.status.code(), Some(2), "len {len}");
        assert!(
            stderr(&out).contains("truncated"),
            "len {len}: {}",
            stderr(&out)
        );
    }
}

/// Exits with the low byte of the device ID at 00:`slot`.0 (read through 0xCF8/0xCFC).
fn exit_with_device_id(slot: u32) -> Vec<u8> {
    Asm::default()
        .mov_dx(0xcf8)
        .mov_eax(0x8000_0000 | slot << 11)
        .out_eax()
        .mov_dx(0xcfc)
        .in_eax()
        .shr_eax(16)
        .and_eax(0xff)
        .mov_dx(0xf4)
        .out_eax()
        .spin()
        .0
}

#[test]
fn disks_sit_in_slots_1_and_up() {
    require_kvm();
    let (dir, kernel) = write_kernel(&common::pvh_elf(&exit_with_device_id(2), Note::Pvh));
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    std::fs::write(&a, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&b, vec![0u8; 1 << 20]).unwrap();
    let da = format!("path={}", a.display());
    let db = format!("path={},readonly=on,engine=sync", b.display());
    let out = boot(&kernel, &["--disk", &da, "--disk", &db]);
    // virtio-blk, modern: device ID 0x1042.
    assert_eq!(out.status.code(), Some(0x42), "stderr: {}", stderr(&out));
    let (_dir, kernel) = write_kernel(&common::pvh_elf(&exit_with_device_id(3), Note::Pvh));
    let out = boot(&kernel, &["--disk", &da, "--disk", &db]);
    assert_eq!(
        out.status.code(),
        Some(0xff),
        "slot 3 is empty: stderr: {}",
        stderr(&out)
    );
}
