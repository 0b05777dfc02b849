//! The few ELF facts this crate needs, read through `object`: the machine,
//! the byte order, named sections, and virtual address → file offset. Reads
//! only the ranges asked for; no IO beyond the `ReadRef` it is given.

use object::{Object, ObjectSection, ObjectSegment, ReadRef};

use crate::GoError;

/// `e_machine` of x86-64.
pub(crate) const EM_X86_64: u16 = 62;
/// `e_machine` of AArch64.
pub(crate) const EM_AARCH64: u16 = 183;

/// A parsed ELF file and the reader it came from.
pub(crate) struct Elf<'data, R: ReadRef<'data>> {
    pub(crate) data: R,
    pub(crate) file: object::File<'data, R>,
    pub(crate) machine: u16,
    pub(crate) little_endian: bool,
}

impl<'data, R: ReadRef<'data>> Elf<'data, R> {
    pub(crate) fn parse(data: R) -> Result<Self, GoError> {
        match object::FileKind::parse(data) {
            Ok(object::FileKind::Elf32 | object::FileKind::Elf64) => {}
            _ => {
                return Err(GoError(
                    "not an ELF executable: ringwarden reads Go programs built for Linux; \
                     point the probe at the program's binary itself, not at a script or wrapper"
                        .into(),
                ));
            }
        }
        let file = object::File::parse(data).map_err(|e| corrupt(&e.to_string()))?;
        // e_ident[EI_DATA] at byte 5 (1 = little endian), e_machine at byte 18.
        let ident = data
            .read_bytes_at(0, 20)
            .map_err(|()| corrupt("truncated ELF header"))?;
        let little_endian = ident[5] == 1;
        let machine_bytes = [ident[18], ident[19]];
        let machine = if little_endian {
            u16::from_le_bytes(machine_bytes)
        } else {
            u16::from_be_bytes(machine_bytes)
        };
        Ok(Self {
            data,
            file,
            machine,
            little_endian,
        })
    }

    pub(crate) fn has_section(&self, name: &str) -> bool {
        self.file.section_by_name(name).is_some()
    }

    /// A section's bytes, `None` when the file has no such section.
    pub(crate) fn section_data(&self, name: &str) -> Result<Option<&'data [u8]>, GoError> {
        let Some(section) = self.file.section_by_name(name) else {
            return Ok(None);
        };
        section
            .data()
            .map(Some)
            .map_err(|_| corrupt(&format!("section {name} lies outside the file")))
    }

    pub(crate) fn section_address(&self, name: &str) -> Option<u64> {
        self.file.section_by_name(name).map(|s| s.address())
    }

    /// The file range `[offset, offset + len)` holding the `len` bytes at
    /// virtual address `address`, through the PT_LOAD segment (or, in a
    /// file without segments, the section) containing all of them.
    pub(crate) fn file_range(&self, address: u64, len: u64) -> Option<u64> {
        let within = |start: u64, (offset, size): (u64, u64)| -> Option<u64> {
            let delta = address.checked_sub(start)?;
            let end = delta.checked_add(len)?;
            (end <= size).then(|| offset.checked_add(delta)).flatten()
        };
        let mut any_segment = false;
        for segment in self.file.segments() {
            any_segment = true;
            if let Some(offset) = within(segment.address(), segment.file_range()) {
                return Some(offset);
            }
        }
        if any_segment {
            return None;
        }
        self.file.sections().find_map(|section| {
            let range = section.file_range()?;
            within(section.address(), range)
        })
    }

    /// The file offset of the byte at virtual address `address`.
    pub(crate) fn file_offset(&self, address: u64) -> Option<u64> {
        self.file_range(address, 1)
    }

    /// `len` bytes at virtual address `address`, `None` when they are not
    /// all in the file.
    pub(crate) fn read_virtual(&self, address: u64, len: u64) -> Option<&'data [u8]> {
        let offset = self.file_range(address, len)?;
        self.data.read_bytes_at(offset, len).ok()
    }
}

/// An unsigned integer of `size` (4 or 8) bytes at the start of `bytes`.
pub(crate) fn read_uint(bytes: &[u8], size: usize, little_endian: bool) -> Option<u64> {
    match size {
        4 => {
            let b: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
            Some(u64::from(if little_endian {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            }))
        }
        8 => {
            let b: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
            Some(if little_endian {
                u64::from_le_bytes(b)
            } else {
                u64::from_be_bytes(b)
            })
        }
        _ => None,
    }
}

pub(crate) fn corrupt(what: &str) -> GoError {
    GoError(format!(
        "the binary is damaged or not a complete ELF file ({what}); \
         check that the path names the program's own, fully written binary"
    ))
}
