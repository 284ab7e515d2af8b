//! A 16550-compatible UART, output only: the transmitter is always empty, the receiver never has
//! data, no interrupts are raised. Enough for a guest console at 0x3F8 (COM1).

use std::io::Write;

use super::BusDevice;

/// Base port of COM1.
pub const COM1_BASE: u64 = 0x3f8;
/// Number of ports a 16550 decodes.
pub const SERIAL_PORTS: u64 = 8;

const DATA: u64 = 0; // RBR / THR, DLL with DLAB
const IER: u64 = 1; // DLM with DLAB
const IIR_FCR: u64 = 2;
const LCR: u64 = 3;
const MCR: u64 = 4;
const LSR: u64 = 5;
const MSR: u64 = 6;
const SCR: u64 = 7;

const LCR_DLAB: u8 = 0x80;
/// THR empty and transmitter empty: every byte is written out at once.
const LSR_THRE_TEMT: u8 = 0x60;
/// No interrupt pending.
const IIR_NONE: u8 = 0x01;
/// Carrier detect, data set ready, clear to send.
const MSR_CONNECTED: u8 = 0xb0;

/// The UART state and where its output goes.
pub struct Serial {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    out: Box<dyn Write + Send>,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial")
            .field("lcr", &self.lcr)
            .finish_non_exhaustive()
    }
}

impl Serial {
    /// A UART writing to `out`, flushed at every newline.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        // Divisor 12: 9600 baud, what a PC BIOS leaves.
        Serial {
            ier: 0,
            lcr: 0x03,
            mcr: 0x08,
            scr: 0,
            dll: 12,
            dlm: 0,
            out,
        }
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn transmit(&mut self, byte: u8) {
        // A console that went away must not stop the guest: output errors are dropped.
        let _ = self.out.write_all(&[byte]);
        if byte == b'\n' {
            let _ = self.out.flush();
        }
    }

    /// Flushes buffered output.
    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            DATA if self.dlab() => self.dll,
            IER if self.dlab() => self.dlm,
            DATA => 0,
            IER => self.ier,
            IIR_FCR => IIR_NONE,
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => LSR_THRE_TEMT,
            MSR => MSR_CONNECTED,
            SCR => self.scr,
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else {
            return;
        };
        match offset {
            DATA if self.dlab() => self.dll = v,
            IER if self.dlab() => self.dlm = v,
            DATA => self.transmit(v),
            IER => self.ier = v & 0x0f,
            LCR => self.lcr = v,
            MCR => self.mcr = v & 0x1f,
            SCR => self.scr = v,
            _ => {} // FCR, LSR, MSR: nothing to keep.
        }
    }
}

impl Drop for Serial {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn read(s: &mut Serial, off: u64) -> u8 {
        let mut b = [0u8];
        s.read(off, &mut b);
        b[0]
    }

    #[test]
    fn transmits_and_reports_empty() {
        let sink = Sink::default();
        let mut s = Serial::new(Box::new(sink.clone()));
        for b in b"hi\n" {
            assert_eq!(read(&mut s, LSR) & 0x20, 0x20);
            s.write(DATA, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        assert_eq!(read(&mut s, IIR_FCR), IIR_NONE);
    }

    #[test]
    fn divisor_latch_and_scratch() {
        let sink = Sink::default();
        let mut s = Serial::new(Box::new(sink.clone()));
        s.write(LCR, &[0x83]);
        s.write(DATA, &[1]);
        s.write(IER, &[0]);
        assert_eq!((read(&mut s, DATA), read(&mut s, IER)), (1, 0));
        s.write(LCR, &[0x03]);
        s.write(IER, &[0x01]);
        s.write(SCR, &[0x5a]);
        assert_eq!(
            (read(&mut s, IER), read(&mut s, SCR), read(&mut s, LCR)),
            (1, 0x5a, 3)
        );
        assert!(
            sink.0.lock().unwrap().is_empty(),
            "DLL writes are not output"
        );
    }
}
