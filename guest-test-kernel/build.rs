//! Build script of the test guest.
//!
//! * Generates the 256 interrupt entry stubs (`isr_stubs.s` in `OUT_DIR`), written out one by one
//!   so that no assembler loop-counter tricks are needed.
//! * Adds the freestanding link arguments, only for the binary and only with feature `guest`
//!   (the host build of the workspace never links the binary).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

/// Exception vectors for which the CPU pushes an error code (SDM Vol. 3, 6.13).
const WITH_ERROR_CODE: [u8; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];

/// Vector of the LAPIC spurious interrupt: it must not be acknowledged with an EOI.
const SPURIOUS_VECTOR: u16 = 0xFF;

fn main() {
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let linker_script = manifest_dir.join("linker.ld");

    fs::write(out_dir.join("isr_stubs.s"), isr_stubs()).expect("write isr_stubs.s");
    fs::write(out_dir.join("vectors.rs"), vectors()).expect("write vectors.rs");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", linker_script.display());
    if env::var_os("CARGO_FEATURE_GUEST").is_some() {
        for arg in [
            "-nostartfiles",
            "-nostdlib",
            "-static",
            "-no-pie",
            "-Wl,--build-id=none",
        ] {
            println!("cargo:rustc-link-arg-bins={arg}");
        }
        println!("cargo:rustc-link-arg-bins=-T{}", linker_script.display());
    }
}

/// Rust constants shared with the stubs (included by `src/arch/idt.rs`).
fn vectors() -> String {
    format!("/// LAPIC spurious vector (its stub sends no EOI).\npub const SPURIOUS_VECTOR: u8 = {SPURIOUS_VECTOR};\n")
}

/// Intel-syntax assembly for the entry stubs and the table `isr_table` of their addresses.
///
/// Vectors 0..32 (exceptions) push a uniform frame and jump to `exception_common`.
/// Vectors 32..256 are device / IPI interrupts: count, acknowledge, return, all in six
/// instructions because the guest's ring 0 is emulated instruction by instruction.
fn isr_stubs() -> String {
    let mut s = String::new();
    s.push_str(".section .text.isr, \"ax\", @progbits\n.code64\n");
    for v in 0u16..256 {
        let _ = writeln!(s, ".balign 16\nisr_{v}:");
        if v < 32 {
            if !WITH_ERROR_CODE.contains(&(v as u8)) {
                s.push_str("    push 0\n");
            }
            let _ = writeln!(s, "    push {v}\n    jmp exception_common");
        } else {
            let _ = writeln!(s, "    lock inc qword ptr [rip + IRQ_COUNTS + {}]", 8 * v);
            if v != SPURIOUS_VECTOR {
                s.push_str("    push rax\n    mov eax, 0xFEE000B0\n    mov dword ptr [rax], 0\n    pop rax\n");
            }
            s.push_str("    iretq\n");
        }
    }
    s.push_str(
        ".section .rodata.isr_table, \"a\", @progbits\n.balign 8\n.global isr_table\nisr_table:\n",
    );
    for v in 0u16..256 {
        let _ = writeln!(s, "    .quad isr_{v}");
    }
    s
}
