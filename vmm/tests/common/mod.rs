//! A test guest assembled by hand: a minimal ELF64 with one PT_LOAD segment at 1 MiB holding
//! 32-bit code, and a Xen PVH entry note pointing at it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where the code is loaded and entered.
pub const ENTRY: u32 = 0x10_0000;

/// What to put in the note area.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// A correct XEN_ELFNOTE_PHYS32_ENTRY.
    Pvh,
    /// A note of another type only.
    Other,
}

/// Builds the ELF image around `code`.
pub fn pvh_elf(code: &[u8], note: Note) -> Vec<u8> {
    const PHOFF: usize = 64;
    const NOTE_OFF: usize = PHOFF + 2 * 56;
    const CODE_OFF: usize = 0x1000;
    let mut f = vec![0u8; CODE_OFF];
    f[0..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // ELFCLASS64
    f[5] = 1; // little-endian
    f[6] = 1; // EV_CURRENT
    put16(&mut f, 16, 2); // ET_EXEC
    put16(&mut f, 18, 62); // EM_X86_64
    put32(&mut f, 20, 1);
    put64(&mut f, 24, u64::from(ENTRY));
    put64(&mut f, 32, PHOFF as u64);
    put16(&mut f, 52, 64);
    put16(&mut f, 54, 56);
    put16(&mut f, 56, 2);
    put16(&mut f, 58, 64);
    // PT_LOAD: the code at 1 MiB.
    let p = PHOFF;
    put32(&mut f, p, 1);
    put32(&mut f, p + 4, 5);
    put64(&mut f, p + 8, CODE_OFF as u64);
    put64(&mut f, p + 16, u64::from(ENTRY));
    put64(&mut f, p + 24, u64::from(ENTRY));
    put64(&mut f, p + 32, code.len() as u64);
    put64(&mut f, p + 40, code.len() as u64 + 0x1000); // and a page of bss
    put64(&mut f, p + 48, 0x1000);
    // PT_NOTE.
    let p = PHOFF + 56;
    put32(&mut f, p, 4);
    put32(&mut f, p + 4, 4);
    put64(&mut f, p + 8, NOTE_OFF as u64);
    put64(&mut f, p + 32, 20);
    put64(&mut f, p + 40, 20);
    put64(&mut f, p + 48, 4);
    put32(&mut f, NOTE_OFF, 4); // namesz
    put32(&mut f, NOTE_OFF + 4, 4); // descsz
    put32(
        &mut f,
        NOTE_OFF + 8,
        if note == Note::Pvh { 18 } else { 17 },
    );
    f[NOTE_OFF + 12..NOTE_OFF + 16].copy_from_slice(b"Xen\0");
    put32(&mut f, NOTE_OFF + 16, ENTRY);
    f.extend_from_slice(code);
    f
}

fn put16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(f: &mut [u8], at: usize, v: u32) {
    f[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(f: &mut [u8], at: usize, v: u64) {
    f[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A tiny 32-bit assembler for the few instructions the guests need.
#[derive(Default)]
pub struct Asm(pub Vec<u8>);

impl Asm {
    /// `mov dx, port`
    pub fn mov_dx(mut self, port: u16) -> Self {
        self.0.extend_from_slice(&[0x66, 0xba]);
        self.0.extend_from_slice(&port.to_le_bytes());
        self
    }
    /// `mov al, v`
    pub fn mov_al(mut self, v: u8) -> Self {
        self.0.extend_from_slice(&[0xb0, v]);
        self
    }
    /// `mov eax, v`
    pub fn mov_eax(mut self, v: u32) -> Self {
        self.0.push(0xb8);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// `out dx, al`
    pub fn out_al(mut self) -> Self {
        self.0.push(0xee);
        self
    }
    /// `out dx, eax`
    pub fn out_eax(mut self) -> Self {
        self.0.push(0xef);
        self
    }
    /// `in eax, dx`
    pub fn in_eax(mut self) -> Self {
        self.0.push(0xed);
        self
    }
    /// `shr eax, n`
    pub fn shr_eax(mut self, n: u8) -> Self {
        self.0.extend_from_slice(&[0xc1, 0xe8, n]);
        self
    }
    /// `and eax, imm32`
    pub fn and_eax(mut self, v: u32) -> Self {
        self.0.push(0x25);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Prints `s` on COM1.
    pub fn print(mut self, s: &[u8]) -> Self {
        self = self.mov_dx(0x3f8);
        for &b in s {
            self = self.mov_al(b).out_al();
        }
        self
    }
    /// Writes `status` to the exit port.
    pub fn exit(self, status: u32) -> Self {
        self.mov_dx(0xf4).mov_eax(status).out_eax()
    }
    /// `cmp dword [ebx], v` then `je +skip` over the next `skip` bytes.
    pub fn if_ebx_points_to(mut self, v: u32, skip: u8) -> Self {
        self.0.extend_from_slice(&[0x81, 0x3b]);
        self.0.extend_from_slice(&v.to_le_bytes());
        self.0.extend_from_slice(&[0x74, skip]);
        self
    }
    /// `jmp $` forever.
    pub fn spin(mut self) -> Self {
        self.0.extend_from_slice(&[0xeb, 0xfe]);
        self
    }
    /// `mov esi, v`
    pub fn mov_esi(mut self, v: u32) -> Self {
        self.0.push(0xbe);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// `mov ecx, v`
    pub fn mov_ecx(mut self, v: u32) -> Self {
        self.0.push(0xb9);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// `rep outsb` (DS:ESI, ECX bytes, to port DX)
    pub fn rep_outsb(mut self) -> Self {
        self.0.extend_from_slice(&[0xf3, 0x6e]);
        self
    }
    /// `ud2`
    pub fn ud2(mut self) -> Self {
        self.0.extend_from_slice(&[0x0f, 0x0b]);
        self
    }
}

/// Fails (never skips) when KVM is not usable: these tests are the VMM's reason to exist.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("cannot open /dev/kvm ({e}): these tests need KVM; run them on a host with /dev/kvm read/write for this user");
    }
}

/// Writes `image` into a fresh temporary directory and returns (dir guard, path).
pub fn write_kernel(image: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("guest.elf");
    std::fs::write(&path, image).expect("write guest");
    (dir, path)
}

/// Runs the vmm binary with `args`.
pub fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("spawn vmm")
}

/// Runs the vmm on `kernel` with extra arguments.
pub fn boot(kernel: &Path, extra: &[&str]) -> Output {
    let k = kernel.to_str().expect("utf-8 path");
    let mut args = vec!["--kernel", k];
    args.extend_from_slice(extra);
    vmm(&args)
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
