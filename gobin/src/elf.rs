//! The few ELF facts this crate needs, read through a [`Source`] with every
//! length checked before anything is allocated: the machine, the byte
//! order, the section and segment tables, one symbol by name, one dynamic
//! relocation, and virtual address → file offset.
//!
//! Nothing is read whole unless a stated limit allows it. Symbol and string
//! tables are scanned in chunks of [`CHUNK_BYTES`], so a symbol table
//! claiming hundreds of megabytes (a sparse file costs its writer nothing)
//! costs the reader one chunk of memory and a bounded number of reads.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use crate::GoError;

/// `e_machine` of x86-64.
pub(crate) const EM_X86_64: u16 = 62;
/// `e_machine` of AArch64.
pub(crate) const EM_AARCH64: u16 = 183;

/// Most sections a binary may declare. Executables and libraries have a
/// few dozen (a Go binary about 25); the table is read whole, so this
/// bounds it at 4 096 × 64 bytes.
pub const MAX_SECTIONS: usize = 4096;
/// Most program headers (segments) a binary may declare; real ones have
/// about a dozen.
pub const MAX_SEGMENTS: usize = 1024;
/// Largest section-name table (`.shstrtab`) read: real ones are a few
/// hundred bytes.
pub const MAX_SECTION_NAMES_BYTES: u64 = 1 << 20;
/// Most symbols scanned in one symbol table (`.symtab` or `.dynsym`).
/// A large Go program (kubelet) has about 100 000, a large C++ program a
/// few million; the table is scanned [`CHUNK_BYTES`] at a time.
pub const MAX_SYMBOLS: u64 = 1 << 23;
/// Largest string table scanned for a symbol's name, [`CHUNK_BYTES`] at
/// a time.
pub const MAX_STRING_TABLE_BYTES: u64 = 256 << 20;
/// Most places a wanted name may appear in one string table. Linkers
/// store each name once, so real tables hold it once or twice.
pub const MAX_NAME_MATCHES: usize = 4096;
/// Most dynamic relocations scanned for the one that fills a word.
pub const MAX_RELOCATIONS: u64 = 1 << 23;
/// Largest section or program header entry believed (real ones are 64
/// and 56 bytes).
const MAX_HEADER_ENTRY: u16 = 256;
/// Bytes read at a time when scanning a table.
pub const CHUNK_BYTES: usize = 1 << 20;

const SHT_NULL: u32 = 0;
pub(crate) const SHT_SYMTAB: u32 = 2;
const SHT_RELA: u32 = 4;
const SHT_NOBITS: u32 = 8;
pub(crate) const SHT_DYNSYM: u32 = 11;
const SHF_ALLOC: u64 = 2;
const SHF_EXECINSTR: u64 = 4;
const PT_LOAD: u32 = 1;
const STT_FUNC: u8 = 2;
const STT_SECTION: u8 = 3;
const STT_FILE: u8 = 4;
const STT_GNU_IFUNC: u8 = 10;
const SHN_LORESERVE: u16 = 0xff00;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

/// Where a binary's bytes come from: an open file, read at offsets, or
/// bytes in memory. Reads are exact: a range not wholly there fails.
pub trait Source {
    /// The length in bytes (a file's apparent size).
    fn len(&self) -> u64;
    /// Fills `buf` with the bytes at `offset`; false when they are not all
    /// there or cannot be read.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> bool;
    /// Whether whoever asked has stopped waiting; loops over the binary
    /// check it and give up.
    fn cancelled(&self) -> bool {
        false
    }
    /// Whether the source holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Source for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Some(bytes) = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buf.len())?))
        else {
            return false;
        };
        buf.copy_from_slice(bytes);
        true
    }
}

impl Source for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> bool {
        self.as_slice().read_exact_at(offset, buf)
    }
}

impl Source for std::fs::File {
    fn len(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> bool {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset).is_ok()
    }
}

/// A flag that stops a parse that nobody waits for any more: set it (a
/// deadline passed) and the parse's loops return an error at their next
/// check instead of using the CPU to the end.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A [`Source`] whose reads stop once `cancel` is set.
pub struct Cancellable<'a, S: Source + ?Sized> {
    pub source: &'a S,
    pub cancel: &'a Cancel,
}

impl<S: Source + ?Sized> Source for Cancellable<'_, S> {
    fn len(&self) -> u64 {
        self.source.len()
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> bool {
        !self.cancel.is_cancelled() && self.source.read_exact_at(offset, buf)
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// The error of a parse given up because nobody waits for it.
pub(crate) fn cancelled() -> GoError {
    GoError("reading the binary was cancelled: it took longer than its deadline".into())
}

/// A value from the file over a stated limit: what, how much, the limit's
/// name and value, and what to do.
pub(crate) fn over_limit(what: &str, value: u64, limit: &str, max: u64) -> GoError {
    GoError(format!(
        "{what} ({value}) exceeds {limit} ({max}), a limit that keeps a crafted binary from \
         exhausting the agent's memory or time; real programs stay far below it, so check \
         that the path names the program's own binary, or probe a smaller function"
    ))
}

/// One section header.
#[derive(Debug, Clone)]
pub(crate) struct Section {
    pub(crate) name: Vec<u8>,
    pub(crate) kind: u32,
    pub(crate) flags: u64,
    pub(crate) address: u64,
    pub(crate) offset: u64,
    pub(crate) size: u64,
    pub(crate) link: u32,
}

impl Section {
    fn has_data(&self) -> bool {
        self.kind != SHT_NOBITS && self.kind != SHT_NULL
    }

    /// Allocated, non-executable data with bytes in the file.
    pub(crate) fn is_allocated_data(&self) -> bool {
        self.has_data() && self.flags & SHF_ALLOC != 0 && self.flags & SHF_EXECINSTR == 0
    }
}

/// A `PT_LOAD` segment: where file bytes are mapped.
#[derive(Debug, Clone, Copy)]
struct Segment {
    address: u64,
    offset: u64,
    size: u64,
}

/// A symbol found by name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Symbol {
    pub(crate) kind: u8,
    pub(crate) section: u16,
    pub(crate) address: u64,
    pub(crate) size: u64,
}

impl Symbol {
    /// A function (`STT_FUNC`, or an indirect function).
    pub(crate) fn is_function(&self) -> bool {
        self.kind == STT_FUNC || self.kind == STT_GNU_IFUNC
    }

    /// Defined in a section of this file.
    pub(crate) fn is_definition(&self) -> bool {
        self.section != 0
            && self.section < SHN_LORESERVE
            && self.kind != STT_SECTION
            && self.kind != STT_FILE
    }
}

/// A parsed ELF file and the source it came from.
pub(crate) struct Elf<'s, S: Source + ?Sized> {
    pub(crate) src: &'s S,
    pub(crate) machine: u16,
    pub(crate) little_endian: bool,
    is64: bool,
    file_type: u16,
    pub(crate) sections: Vec<Section>,
    segments: Vec<Segment>,
}

fn not_elf() -> GoError {
    GoError(
        "not an ELF executable: ringwarden reads Go programs built for Linux; \
         point the probe at the program's binary itself, not at a script or wrapper"
            .into(),
    )
}

impl<'s, S: Source + ?Sized> Elf<'s, S> {
    pub(crate) fn parse(src: &'s S) -> Result<Self, GoError> {
        if src.cancelled() {
            return Err(cancelled());
        }
        let file_len = src.len();
        let mut header = [0u8; 64];
        let header_len = file_len.min(64) as usize;
        if header_len < 52 || !src.read_exact_at(0, &mut header[..header_len]) {
            return Err(not_elf());
        }
        if &header[..4] != b"\x7fELF" {
            return Err(not_elf());
        }
        let is64 = match header[4] {
            1 => false,
            2 if header_len == 64 => true,
            _ => return Err(not_elf()),
        };
        let little_endian = match header[5] {
            1 => true,
            2 => false,
            _ => return Err(not_elf()),
        };
        let r = Fields { little_endian };
        let file_type = r.u16(&header, 16);
        let machine = r.u16(&header, 18);
        let (phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx) = if is64 {
            (
                r.u64(&header, 32),
                r.u64(&header, 40),
                r.u16(&header, 54),
                r.u16(&header, 56),
                r.u16(&header, 58),
                r.u16(&header, 60),
                r.u16(&header, 62),
            )
        } else {
            (
                u64::from(r.u32(&header, 28)),
                u64::from(r.u32(&header, 32)),
                r.u16(&header, 42),
                r.u16(&header, 44),
                r.u16(&header, 46),
                r.u16(&header, 48),
                r.u16(&header, 50),
            )
        };
        let mut elf = Self {
            src,
            machine,
            little_endian,
            is64,
            file_type,
            sections: Vec::new(),
            segments: Vec::new(),
        };
        let (shdr_len, phdr_len) = if is64 { (64, 56) } else { (40, 32) };
        if shoff != 0 {
            if usize::from(shentsize) < shdr_len || shentsize > MAX_HEADER_ENTRY {
                return Err(corrupt(&format!("section header size {shentsize}")));
            }
            // Section 0 holds the real count and name-table index when
            // they do not fit the header's 16 bits.
            let first = elf.read(shoff, shdr_len as u64, "the section header table")?;
            let zero = elf.section_header(&first);
            let count = if shnum == 0 {
                zero.size
            } else {
                u64::from(shnum)
            };
            let names_index = if shstrndx == 0xffff {
                u64::from(zero.link)
            } else {
                u64::from(shstrndx)
            };
            if count > MAX_SECTIONS as u64 {
                return Err(over_limit(
                    "the number of sections",
                    count,
                    "MAX_SECTIONS",
                    MAX_SECTIONS as u64,
                ));
            }
            let table = elf.read(
                shoff,
                count * u64::from(shentsize),
                "the section header table",
            )?;
            let mut sections: Vec<Section> = table
                .chunks_exact(usize::from(shentsize))
                .map(|h| elf.section_header(h))
                .collect();
            for (i, s) in sections.iter().enumerate() {
                if s.has_data()
                    && s.offset
                        .checked_add(s.size)
                        .is_none_or(|end| end > file_len)
                {
                    return Err(corrupt(&format!(
                        "section {i} claims {} bytes at offset {}, past the end of the \
                         {file_len}-byte file",
                        s.size, s.offset
                    )));
                }
            }
            if let Some(names) = sections.get(names_index as usize).cloned()
                && names.has_data()
            {
                if names.size > MAX_SECTION_NAMES_BYTES {
                    return Err(over_limit(
                        "the section-name table's size",
                        names.size,
                        "MAX_SECTION_NAMES_BYTES",
                        MAX_SECTION_NAMES_BYTES,
                    ));
                }
                let table = elf.read(names.offset, names.size, "the section names")?;
                for s in &mut sections {
                    s.name = usize::try_from(u64::from(s.raw_name()))
                        .ok()
                        .and_then(|at| table.get(at..))
                        .map(|rest| {
                            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                            rest[..end].to_vec()
                        })
                        .unwrap_or_default();
                }
            }
            elf.sections = sections;
        }
        if phoff != 0 && phnum != 0 {
            if usize::from(phentsize) < phdr_len || phentsize > MAX_HEADER_ENTRY {
                return Err(corrupt(&format!("program header size {phentsize}")));
            }
            if usize::from(phnum) > MAX_SEGMENTS {
                return Err(over_limit(
                    "the number of program headers",
                    u64::from(phnum),
                    "MAX_SEGMENTS",
                    MAX_SEGMENTS as u64,
                ));
            }
            let table = elf.read(
                phoff,
                u64::from(phnum) * u64::from(phentsize),
                "the program header table",
            )?;
            for h in table.chunks_exact(usize::from(phentsize)) {
                if r.u32(h, 0) != PT_LOAD {
                    continue;
                }
                let (offset, address, size) = if is64 {
                    (r.u64(h, 8), r.u64(h, 16), r.u64(h, 32))
                } else {
                    (
                        u64::from(r.u32(h, 4)),
                        u64::from(r.u32(h, 8)),
                        u64::from(r.u32(h, 16)),
                    )
                };
                if offset.checked_add(size).is_none_or(|end| end > file_len) {
                    return Err(corrupt(&format!(
                        "a segment claims {size} bytes at offset {offset}, past the end of \
                         the {file_len}-byte file"
                    )));
                }
                elf.segments.push(Segment {
                    address,
                    offset,
                    size,
                });
            }
        }
        Ok(elf)
    }

    fn fields(&self) -> Fields {
        Fields {
            little_endian: self.little_endian,
        }
    }

    fn section_header(&self, h: &[u8]) -> Section {
        let r = self.fields();
        let (kind, flags, address, offset, size, link) = if self.is64 {
            (
                r.u32(h, 4),
                r.u64(h, 8),
                r.u64(h, 16),
                r.u64(h, 24),
                r.u64(h, 32),
                r.u32(h, 40),
            )
        } else {
            (
                r.u32(h, 4),
                u64::from(r.u32(h, 8)),
                u64::from(r.u32(h, 12)),
                u64::from(r.u32(h, 16)),
                u64::from(r.u32(h, 20)),
                r.u32(h, 24),
            )
        };
        Section {
            // The name's offset, until the name table is read.
            name: r.u32(h, 0).to_le_bytes().to_vec(),
            kind,
            flags,
            address,
            offset,
            size,
            link,
        }
    }

    /// `len` bytes at `offset`; `len` must already be bounded by a limit
    /// (the callers' own), and the range must be in the file.
    pub(crate) fn read(&self, offset: u64, len: u64, what: &str) -> Result<Vec<u8>, GoError> {
        if self.src.cancelled() {
            return Err(cancelled());
        }
        let in_file = offset
            .checked_add(len)
            .is_some_and(|end| end <= self.src.len());
        if !in_file {
            return Err(corrupt(&format!("{what} lies outside the file")));
        }
        let mut buf = vec![0; len as usize];
        if !self.src.read_exact_at(offset, &mut buf) {
            if self.src.cancelled() {
                return Err(cancelled());
            }
            return Err(corrupt(&format!("{what} cannot be read")));
        }
        Ok(buf)
    }

    pub(crate) fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name.as_bytes())
    }

    pub(crate) fn has_section(&self, name: &str) -> bool {
        self.section(name).is_some()
    }

    pub(crate) fn section_address(&self, name: &str) -> Option<u64> {
        self.section(name).map(|s| s.address)
    }

    /// The first `max` bytes of a section (all of it when smaller),
    /// `None` when the file has no such section.
    pub(crate) fn section_prefix(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, GoError> {
        let Some(section) = self.section(name) else {
            return Ok(None);
        };
        if !section.has_data() {
            return Err(corrupt(&format!("section {name} has no bytes in the file")));
        }
        self.read(
            section.offset,
            section.size.min(max),
            &format!("section {name}"),
        )
        .map(Some)
    }

    /// The file range `[offset, offset + len)` holding the `len` bytes at
    /// virtual address `address`, through the PT_LOAD segment (or, in a
    /// file without segments, the section) containing all of them.
    pub(crate) fn file_range(&self, address: u64, len: u64) -> Option<u64> {
        let within = |start: u64, offset: u64, size: u64| -> Option<u64> {
            let delta = address.checked_sub(start)?;
            let end = delta.checked_add(len)?;
            (end <= size).then(|| offset.checked_add(delta)).flatten()
        };
        if !self.segments.is_empty() {
            return self
                .segments
                .iter()
                .find_map(|s| within(s.address, s.offset, s.size));
        }
        self.sections
            .iter()
            .filter(|s| s.has_data())
            .find_map(|s| within(s.address, s.offset, s.size))
    }

    /// The file offset of the byte at virtual address `address`.
    pub(crate) fn file_offset(&self, address: u64) -> Option<u64> {
        self.file_range(address, 1)
    }

    /// `len` bytes at virtual address `address`, `None` when they are not
    /// all in the file. `len` must already be bounded by a limit.
    pub(crate) fn read_virtual(&self, address: u64, len: u64) -> Option<Vec<u8>> {
        let offset = self.file_range(address, len)?;
        self.read(offset, len, "code").ok()
    }

    /// The first symbol named `name` in the first table of `table_kind`
    /// (`SHT_SYMTAB` or `SHT_DYNSYM`) that `accept` takes; `None` when the
    /// file has no such table or no such symbol.
    ///
    /// Two scans of [`CHUNK_BYTES`] at a time: the string table for the
    /// places holding `name` and a NUL, then the symbols for one whose
    /// name is at one of those places.
    pub(crate) fn find_symbol(
        &self,
        table_kind: u32,
        name: &str,
        accept: impl Fn(&Symbol) -> bool,
    ) -> Result<Option<Symbol>, GoError> {
        let Some(table) = self.sections.iter().find(|s| s.kind == table_kind) else {
            return Ok(None);
        };
        let entry = if self.is64 { 24 } else { 16 };
        let count = table.size / entry;
        if count > MAX_SYMBOLS {
            return Err(over_limit(
                "the number of symbols in the symbol table",
                count,
                "MAX_SYMBOLS",
                MAX_SYMBOLS,
            ));
        }
        let Some(strings) = self
            .sections
            .get(table.link as usize)
            .filter(|s| s.has_data())
        else {
            return Ok(None);
        };
        let mut needle = name.as_bytes().to_vec();
        needle.push(0);
        let places = self.find_all(
            strings.offset,
            strings.size,
            &needle,
            MAX_STRING_TABLE_BYTES,
        )?;
        if places.is_empty() {
            return Ok(None);
        }
        let r = self.fields();
        let per_chunk = (CHUNK_BYTES as u64 / entry) * entry;
        let mut at = 0;
        while at < count * entry {
            let len = per_chunk.min(count * entry - at);
            let chunk = self.read(table.offset + at, len, "the symbol table")?;
            for s in chunk.chunks_exact(entry as usize) {
                let name = u64::from(r.u32(s, 0));
                if places.binary_search(&name).is_err() {
                    continue;
                }
                let symbol = if self.is64 {
                    Symbol {
                        kind: s[4] & 0xf,
                        section: r.u16(s, 6),
                        address: r.u64(s, 8),
                        size: r.u64(s, 16),
                    }
                } else {
                    Symbol {
                        kind: s[12] & 0xf,
                        section: r.u16(s, 14),
                        address: u64::from(r.u32(s, 4)),
                        size: u64::from(r.u32(s, 8)),
                    }
                };
                if accept(&symbol) {
                    return Ok(Some(symbol));
                }
            }
            at += len;
        }
        Ok(None)
    }

    /// Every offset, relative to `start`, at which `needle` occurs in the
    /// `len` bytes at file offset `start`, sorted; at most
    /// [`MAX_NAME_MATCHES`] and at most `max_len` bytes scanned.
    pub(crate) fn find_all(
        &self,
        start: u64,
        len: u64,
        needle: &[u8],
        max_len: u64,
    ) -> Result<Vec<u64>, GoError> {
        if len > max_len {
            return Err(over_limit(
                "the size of a string table",
                len,
                "MAX_STRING_TABLE_BYTES",
                max_len,
            ));
        }
        let mut found = Vec::new();
        if needle.is_empty() {
            return Ok(found);
        }
        // Each chunk starts with the previous one's last needle.len() - 1
        // bytes, so a match across chunks is found once.
        let keep = needle.len() - 1;
        let mut window: Vec<u8> = Vec::new();
        let mut window_start = 0u64;
        let mut at = 0u64;
        while at < len {
            let take = (CHUNK_BYTES as u64).min(len - at);
            let chunk = self.read(start + at, take, "a string table")?;
            window.extend_from_slice(&chunk);
            let mut i = 0;
            while let Some(p) = find(&window[i..], needle) {
                found.push(window_start + (i + p) as u64);
                if found.len() > MAX_NAME_MATCHES {
                    return Err(over_limit(
                        "the number of places a name appears in a string table",
                        found.len() as u64,
                        "MAX_NAME_MATCHES",
                        MAX_NAME_MATCHES as u64,
                    ));
                }
                i += p + 1;
            }
            at += take;
            let drop = window.len().saturating_sub(keep);
            window.drain(..drop);
            window_start += drop as u64;
        }
        Ok(found)
    }

    /// The addend of the dynamic relocation (`SHT_RELA` linked to the
    /// dynamic symbols) that fills the word at `address`.
    pub(crate) fn relocated_value(&self, address: u64) -> Result<Option<u64>, GoError> {
        let dynsym = self
            .sections
            .iter()
            .position(|s| s.kind == SHT_DYNSYM)
            .unwrap_or(0) as u32;
        let r = self.fields();
        let entry: u64 = if self.is64 { 24 } else { 12 };
        let mut scanned = 0u64;
        for s in self
            .sections
            .iter()
            .filter(|s| s.kind == SHT_RELA && s.link == dynsym)
        {
            let count = s.size / entry;
            scanned += count;
            if scanned > MAX_RELOCATIONS {
                return Err(over_limit(
                    "the number of dynamic relocations",
                    scanned,
                    "MAX_RELOCATIONS",
                    MAX_RELOCATIONS,
                ));
            }
            let per_chunk = (CHUNK_BYTES as u64 / entry) * entry;
            let mut at = 0;
            while at < count * entry {
                let len = per_chunk.min(count * entry - at);
                let chunk = self.read(s.offset + at, len, "the dynamic relocations")?;
                for rel in chunk.chunks_exact(entry as usize) {
                    let (offset, addend) = if self.is64 {
                        (r.u64(rel, 0), r.u64(rel, 16))
                    } else {
                        (u64::from(r.u32(rel, 0)), u64::from(r.u32(rel, 8)))
                    };
                    if offset == address {
                        return Ok(i64::try_from(addend).ok().map(|a| a as u64));
                    }
                }
                at += len;
            }
        }
        Ok(None)
    }

    /// The file offset of a symbol's address: executables and shared
    /// objects hold virtual addresses, the kernel wants offsets.
    pub(crate) fn symbol_file_offset(&self, symbol: &Symbol) -> Option<u64> {
        if self.file_type != ET_EXEC && self.file_type != ET_DYN {
            return Some(symbol.address);
        }
        let section = self
            .sections
            .get(usize::from(symbol.section))
            .filter(|s| s.has_data())?;
        symbol
            .address
            .checked_sub(section.address)?
            .checked_add(section.offset)
    }
}

/// The first place `needle` occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut from = 0;
    while from + needle.len() <= haystack.len() {
        let p = haystack[from..=haystack.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        let at = from + p;
        if &haystack[at..at + needle.len()] == needle {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Fixed-width reads from a header already read and long enough.
#[derive(Clone, Copy)]
struct Fields {
    little_endian: bool,
}

impl Fields {
    fn u16(self, b: &[u8], at: usize) -> u16 {
        read_uint(&b[at..], 2, self.little_endian).unwrap_or(0) as u16
    }

    fn u32(self, b: &[u8], at: usize) -> u32 {
        read_uint(&b[at..], 4, self.little_endian).unwrap_or(0) as u32
    }

    fn u64(self, b: &[u8], at: usize) -> u64 {
        read_uint(&b[at..], 8, self.little_endian).unwrap_or(0)
    }
}

impl Section {
    fn raw_name(&self) -> u32 {
        self.name
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .unwrap_or(0)
    }
}

/// An unsigned integer of `size` (2, 4 or 8) bytes at the start of `bytes`.
pub(crate) fn read_uint(bytes: &[u8], size: usize, little_endian: bool) -> Option<u64> {
    match size {
        2 => {
            let b: [u8; 2] = bytes.get(..2)?.try_into().ok()?;
            Some(u64::from(if little_endian {
                u16::from_le_bytes(b)
            } else {
                u16::from_be_bytes(b)
            }))
        }
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
