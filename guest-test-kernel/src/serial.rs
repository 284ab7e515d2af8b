//! 16550 UART at COM1 (0x3F8), polled, 115200 8N1. Usable from ring 0 and ring 3.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch::pio::{inb, outb};

const COM1: u16 = 0x3F8;
/// Line status register: transmit holding register empty.
const LSR_THRE: u8 = 1 << 5;
/// Polls of LSR before giving up on a byte's THRE (each poll is a VM exit, ~25 us in ring 3).
const THRE_POLLS: u32 = 10_000;

/// Set once a THRE wait timed out: a UART model without a working LSR then costs no more waits.
static LSR_BROKEN: AtomicBool = AtomicBool::new(false);

/// Programs COM1 for 115200 baud, 8N1, FIFOs on, no interrupts.
pub fn init() {
    outb(COM1 + 1, 0x00); // IER: no interrupts
    outb(COM1 + 3, 0x80); // LCR: DLAB to set the divisor
    outb(COM1, 0x01); // divisor 1 = 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // LCR: 8 data bits, no parity, 1 stop bit
    outb(COM1 + 2, 0xC7); // FCR: enable and clear FIFOs
    outb(COM1 + 4, 0x03); // MCR: DTR, RTS
}

fn put_byte(byte: u8) {
    if !LSR_BROKEN.load(Ordering::Relaxed) {
        let ready = (0..THRE_POLLS).any(|_| inb(COM1 + 5) & LSR_THRE != 0);
        if !ready {
            LSR_BROKEN.store(true, Ordering::Relaxed);
        }
    }
    outb(COM1, byte);
}

/// Writes `s`, turning `\n` into `\r\n`.
pub fn write_str(s: &str) {
    for byte in s.bytes() {
        if byte == b'\n' {
            put_byte(b'\r');
        }
        put_byte(byte);
    }
}

struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_str(s);
        Ok(())
    }
}

/// Backend of [`print!`](crate::print) and [`println!`](crate::println).
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    // Serial never fails; the only error source would be a Display impl, nothing to do then.
    let _ = Serial.write_fmt(args);
}

/// Prints to the serial port.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::serial::_print(format_args!($($arg)*))
    };
}

/// Prints to the serial port, with a newline.
#[macro_export]
macro_rules! println {
    () => {
        $crate::serial::write_str("\n")
    };
    ($($arg:tt)*) => {
        $crate::serial::_print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
