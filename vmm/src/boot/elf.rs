//! A small, bounds-checked ELF64 reader: the file header, program headers, section headers and
//! notes. It reads what a PVH loader needs and rejects anything else with an error, never a panic.

use super::BootError;

/// `PT_LOAD`: a segment to copy into memory.
pub const PT_LOAD: u32 = 1;
/// `PT_NOTE`: a segment of notes.
pub const PT_NOTE: u32 = 4;
/// `SHT_NOTE`: a section of notes.
pub const SHT_NOTE: u32 = 7;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const SHDR_SIZE: usize = 64;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;

/// One program header, as far as loading is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// `p_type`.
    pub kind: u32,
    /// `p_offset`: where the bytes start in the file.
    pub offset: u64,
    /// `p_paddr`: where they go in guest physical memory.
    pub paddr: u64,
    /// `p_filesz`.
    pub filesz: u64,
    /// `p_memsz` (the tail beyond `filesz` is zero).
    pub memsz: u64,
}

/// One note: `(type, name, desc)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note<'a> {
    /// `n_type`.
    pub kind: u32,
    /// The name without its NUL terminator.
    pub name: &'a [u8],
    /// The descriptor bytes.
    pub desc: &'a [u8],
}

/// A parsed ELF64 little-endian x86-64 executable.
#[derive(Debug)]
pub struct Elf<'a> {
    data: &'a [u8],
    segments: Vec<Segment>,
    /// `(offset, size)` of every `SHT_NOTE` section.
    note_sections: Vec<(u64, u64)>,
}

fn bytes_at(data: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    data.get(start..end)
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    let mut v = [0u8; 2];
    v.copy_from_slice(&b[off..off + 2]);
    u16::from_le_bytes(v)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(v)
}

/// A table of `count` entries of `entsize` bytes at `offset`, each at least `min` bytes.
fn table<'a>(
    data: &'a [u8],
    offset: u64,
    entsize: u16,
    count: u16,
    min: usize,
    what: &'static str,
) -> Result<Vec<&'a [u8]>, BootError> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if usize::from(entsize) < min {
        return Err(BootError::BadHeader(what));
    }
    let len = u64::from(entsize) * u64::from(count);
    let bytes = bytes_at(data, offset, len).ok_or(BootError::Truncated(what))?;
    Ok(bytes
        .chunks_exact(usize::from(entsize))
        .map(|c| &c[..min])
        .collect())
}

impl<'a> Elf<'a> {
    /// Parses the headers of `data`.
    pub fn parse(data: &'a [u8]) -> Result<Self, BootError> {
        if !data.starts_with(b"\x7fELF") {
            return Err(BootError::NotElf);
        }
        let h = data
            .get(..EHDR_SIZE)
            .ok_or(BootError::Truncated("ELF header"))?;
        if h[4] != 2 || h[5] != 1 || u16_at(h, 18) != EM_X86_64 {
            return Err(BootError::WrongArch);
        }
        if u16_at(h, 16) != ET_EXEC {
            return Err(BootError::BadHeader(
                "e_type (want ET_EXEC, a static executable)",
            ));
        }
        let phdrs = table(
            data,
            u64_at(h, 32),
            u16_at(h, 54),
            u16_at(h, 56),
            PHDR_SIZE,
            "program headers",
        )?;
        let shdrs = table(
            data,
            u64_at(h, 40),
            u16_at(h, 58),
            u16_at(h, 60),
            SHDR_SIZE,
            "section headers",
        )?;
        let segments = phdrs
            .iter()
            .map(|p| Segment {
                kind: u32_at(p, 0),
                offset: u64_at(p, 8),
                paddr: u64_at(p, 24),
                filesz: u64_at(p, 32),
                memsz: u64_at(p, 40),
            })
            .collect();
        let note_sections = shdrs
            .iter()
            .filter(|s| u32_at(s, 4) == SHT_NOTE)
            .map(|s| (u64_at(s, 24), u64_at(s, 32)))
            .collect();
        Ok(Elf {
            data,
            segments,
            note_sections,
        })
    }

    /// The program headers.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The file bytes of a segment.
    pub fn segment_bytes(&self, s: &Segment) -> Result<&'a [u8], BootError> {
        bytes_at(self.data, s.offset, s.filesz).ok_or(BootError::Truncated("segment data"))
    }

    /// Every note of every `PT_NOTE` segment and `SHT_NOTE` section (a note may be seen twice).
    pub fn notes(&self) -> Result<Vec<Note<'a>>, BootError> {
        let areas = self
            .segments
            .iter()
            .filter(|s| s.kind == PT_NOTE)
            .map(|s| (s.offset, s.filesz))
            .chain(self.note_sections.iter().copied());
        let mut notes = Vec::new();
        for (offset, size) in areas {
            let area = bytes_at(self.data, offset, size).ok_or(BootError::Truncated("notes"))?;
            parse_notes(area, &mut notes)?;
        }
        Ok(notes)
    }
}

fn align4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|n| n & !3)
}

/// Splits a note area into notes (each: namesz, descsz, type, name, desc; 4-byte padded).
fn parse_notes<'a>(mut area: &'a [u8], out: &mut Vec<Note<'a>>) -> Result<(), BootError> {
    while area.len() >= 12 {
        let namesz = u32_at(area, 0) as usize;
        let descsz = u32_at(area, 4) as usize;
        let kind = u32_at(area, 8);
        let name_end = align4(namesz)
            .and_then(|n| n.checked_add(12))
            .ok_or(BootError::BadNote)?;
        let desc_end = align4(descsz)
            .and_then(|d| d.checked_add(name_end))
            .ok_or(BootError::BadNote)?;
        let name = area.get(12..12 + namesz).ok_or(BootError::BadNote)?;
        let desc = area
            .get(name_end..name_end + descsz)
            .ok_or(BootError::BadNote)?;
        let name = name.strip_suffix(b"\0").unwrap_or(name);
        out.push(Note { kind, name, desc });
        area = area.get(desc_end..).unwrap_or(&[]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_split_and_padded() {
        let mut area = Vec::new();
        for (name, kind, desc) in [
            (&b"Xen\0"[..], 18u32, &[1u8, 2, 3, 4][..]),
            (b"GNU\0", 3, &[9u8; 6]),
        ] {
            area.extend_from_slice(&(name.len() as u32).to_le_bytes());
            area.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            area.extend_from_slice(&kind.to_le_bytes());
            area.extend_from_slice(name);
            area.extend_from_slice(desc);
            area.resize(area.len().next_multiple_of(4), 0);
        }
        let mut notes = Vec::new();
        parse_notes(&area, &mut notes).unwrap();
        assert_eq!(notes.len(), 2);
        assert_eq!(
            (notes[0].name, notes[0].kind, notes[0].desc),
            (&b"Xen"[..], 18, &[1u8, 2, 3, 4][..])
        );
        assert_eq!(notes[1].desc, &[9u8; 6]);
    }

    #[test]
    fn oversized_note_is_rejected() {
        let mut area = vec![0u8; 12];
        area[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_notes(&area, &mut Vec::new()), Err(BootError::BadNote));
    }

    #[test]
    fn garbage_is_not_elf() {
        assert_eq!(Elf::parse(b"hello").unwrap_err(), BootError::NotElf);
        assert_eq!(
            Elf::parse(b"\x7fELF\x02").unwrap_err(),
            BootError::Truncated("ELF header")
        );
        assert_eq!(Elf::parse(&[0u8; 64]).unwrap_err(), BootError::NotElf);
        let mut h = [0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 1;
        assert_eq!(Elf::parse(&h).unwrap_err(), BootError::WrongArch);
    }
}
