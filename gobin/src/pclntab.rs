//! Go's own function table, `.gopclntab`, which even stripped binaries keep
//! (the runtime needs it for tracebacks and stack growth). Pure parsing over
//! the section's bytes.
//!
//! Layout (Go's runtime/symtab.go `pcHeader`): a 4-byte magic, two zero
//! bytes, the instruction size quantum, the pointer size, then pointer-sized
//! words: `nfunc`, `nfiles`, (Go ≥ 1.18 only: `textStart`), and the offsets
//! from the section start of the function name table, the compilation-unit
//! table, the file table, the pc tables and the function table. The function
//! table holds `nfunc` pairs (entry, offset of the function's `_func` from
//! the function table's start) and one final entry, the end of the text. Go
//! 1.16 and 1.17 write entries as full pointers; Go ≥ 1.18 as 32-bit offsets
//! from `textStart`. A `_func` begins with the entry (same width) and then
//! `nameOff`, a 32-bit offset into the name table of a NUL-terminated name.
//!
//! The table is read in place, through a few cached blocks of
//! [`BLOCK_BYTES`], never whole: a lookup reads each function's entry, its
//! `_func` and as many bytes of its name as the wanted name has, so its
//! cost grows with [`MAX_FUNCTIONS`] and not with the table's size, and it
//! builds no table of all functions.

use std::cell::RefCell;

use crate::{
    GoError,
    elf::{Elf, Source, cancelled, over_limit, read_uint},
};

/// Go 1.20 and later.
const MAGIC_120: u32 = 0xffff_fff1;
/// Go 1.18 and 1.19.
const MAGIC_118: u32 = 0xffff_fff0;
/// Go 1.16 and 1.17.
const MAGIC_116: u32 = 0xffff_fffa;
/// Go 1.2 to 1.15.
const MAGIC_12: u32 = 0xffff_fffb;
/// `_func.flag` bit of functions written in assembly (Go ≥ 1.19).
const FUNC_FLAG_ASM: u8 = 1 << 2;
/// Longest function name read (for listings and suggestions); Go's
/// longest, generic instantiations, stay under a few hundred bytes.
pub const MAX_NAME_LEN: usize = 1 << 10;
/// Most functions a function table may declare: 524 288. A large Go
/// program (kubelet, about 110 MB) has about 100 000, and the largest
/// known a few hundred thousand. Each costs a few reads of cached blocks.
pub const MAX_FUNCTIONS: u64 = 1 << 19;
/// Most name bytes read by one walk over all functions (a listing, or
/// the suggestions for a name not found): a large Go program's names
/// take about 10 MB.
pub const MAX_NAME_BYTES_READ: u64 = 64 << 20;
/// Bytes of the table cached per block.
const BLOCK_BYTES: u64 = 64 << 10;
/// Blocks cached: the function table, the `_func` records and the names
/// are read in step, each from its own place.
const BLOCKS: usize = 4;
/// Functions looked at between checks of the cancellation flag.
const CHECK_EVERY: u64 = 4096;

/// Which layout a pclntab has; also a lower bound of the Go release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Go116,
    Go118,
    Go120,
}

impl Format {
    /// The oldest Go release (minor version) writing this layout.
    pub(crate) fn min_minor(self) -> u32 {
        match self {
            Format::Go116 => 16,
            Format::Go118 => 18,
            Format::Go120 => 20,
        }
    }
}

/// The release range a pclntab magic belongs to, for version fallbacks.
pub(crate) fn format_of(section: &[u8], little_endian: bool) -> Option<Format> {
    match read_uint(section, 4, little_endian)? as u32 {
        MAGIC_120 => Some(Format::Go120),
        MAGIC_118 => Some(Format::Go118),
        MAGIC_116 => Some(Format::Go116),
        _ => None,
    }
}

/// A function's name and bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoSymbol {
    /// Full Go name, e.g. `main.(*Server).handle`.
    pub name: String,
    /// Virtual address of the first instruction.
    pub address: u64,
    /// Bytes of code: exact from the symbol table; from the pclntab, up
    /// to the next function's entry (so it may include padding).
    pub size: u64,
    /// Where the function was found.
    pub source: crate::SymbolSource,
}

/// A validated view of a pclntab, read in place from the file.
pub(crate) struct Pclntab<'e, 's, S: Source + ?Sized> {
    elf: &'e Elf<'s, S>,
    /// File offset and length of the table (to the end of its section).
    start: u64,
    len: u64,
    format: Format,
    little_endian: bool,
    /// Width of a function-table field and of `_func`'s first field.
    field: u64,
    nfunc: u64,
    text_start: u64,
    /// Offsets from `start` of the name table and of the function table
    /// (where `_func` offsets count from).
    names: u64,
    functab: u64,
    /// Cached blocks: (offset from `start`, bytes), most recent last.
    blocks: RefCell<Vec<(u64, Vec<u8>)>>,
}

impl<'e, 's, S: Source + ?Sized> Pclntab<'e, 's, S> {
    /// Checks the header and that the function table fits the table's
    /// `len` bytes at file offset `start`. `text_start` is used when the
    /// header's own is zero (in PIE binaries the linker leaves it to a
    /// dynamic relocation).
    pub(crate) fn parse(
        elf: &'e Elf<'s, S>,
        start: u64,
        len: u64,
        text_start: impl FnOnce() -> Option<u64>,
    ) -> Result<Self, TableError> {
        let little_endian = elf.little_endian;
        let header_len = len.min(8 + 8 * 8);
        let section = elf
            .read(start, header_len, "the function table's header")
            .map_err(TableError::Limit)?;
        let bad = |why: String| TableError::Unreadable(why);
        let magic =
            read_uint(&section, 4, little_endian).ok_or(bad("section too short".into()))? as u32;
        let format = match magic {
            MAGIC_120 => Format::Go120,
            MAGIC_118 => Format::Go118,
            MAGIC_116 => Format::Go116,
            MAGIC_12 => return Err(bad("it was written by Go 1.15 or older".into())),
            _ => return Err(bad(format!("unknown magic {magic:#x} (a newer Go?)"))),
        };
        let ptr_size = usize::from(*section.get(7).ok_or(bad("section too short".into()))?);
        if ptr_size != 4 && ptr_size != 8 {
            return Err(bad(format!("pointer size {ptr_size}")));
        }
        let word = |i: usize| -> Result<u64, TableError> {
            section
                .get(8 + i * ptr_size..)
                .and_then(|b| read_uint(b, ptr_size, little_endian))
                .ok_or_else(|| bad("header truncated".into()))
        };
        let within = |offset: u64| -> Result<u64, TableError> {
            (offset <= len)
                .then_some(offset)
                .ok_or_else(|| bad(format!("table offset {offset:#x} past the section's end")))
        };
        let nfunc = word(0)?;
        if nfunc > MAX_FUNCTIONS {
            return Err(TableError::Limit(over_limit(
                "the number of functions in the function table (.gopclntab)",
                nfunc,
                "MAX_FUNCTIONS",
                MAX_FUNCTIONS,
            )));
        }
        let (field, text_start, names, functab) = match format {
            Format::Go118 | Format::Go120 => {
                let header_text = word(2)?;
                let text = if header_text != 0 {
                    header_text
                } else {
                    text_start().ok_or(bad("the text start is not recorded".into()))?
                };
                (4, text, within(word(3)?)?, within(word(7)?)?)
            }
            Format::Go116 => (ptr_size as u64, 0, within(word(2)?)?, within(word(6)?)?),
        };
        // The table must fit in the section: with MAX_FUNCTIONS this
        // bounds the work of a lookup.
        let fits = (2 * nfunc + 1)
            .checked_mul(field)
            .and_then(|bytes| functab.checked_add(bytes))
            .is_some_and(|end| end <= len);
        if !fits {
            return Err(bad(format!("{nfunc} functions do not fit the section")));
        }
        Ok(Self {
            elf,
            start,
            len,
            format,
            little_endian,
            field,
            nfunc,
            text_start,
            names,
            functab,
            blocks: RefCell::new(Vec::new()),
        })
    }

    pub(crate) fn cancelled(&self) -> bool {
        self.elf.src.cancelled()
    }

    pub(crate) fn format(&self) -> Format {
        self.format
    }

    /// Whether a header found by searching (not by section name) leads to
    /// a table that looks real: functions, ascending entries, a name.
    pub(crate) fn plausible(&self) -> bool {
        let checked = self.nfunc.min(16);
        self.nfunc > 0
            && (0..checked)
                .all(|i| matches!((self.entry(i), self.entry(i + 1)), (Some(a), Some(b)) if a < b))
            && self.name(0).is_some_and(|name| !name.is_empty())
    }

    /// Calls `f` with the bytes at `offset` (from the table's start), at
    /// most `max` of them and at least one, from a cached block.
    fn with_bytes<T>(&self, offset: u64, max: u64, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        if offset >= self.len {
            return None;
        }
        let block = offset - offset % BLOCK_BYTES;
        let mut blocks = self.blocks.borrow_mut();
        let index = match blocks.iter().position(|(at, _)| *at == block) {
            Some(i) => i,
            None => {
                let len = BLOCK_BYTES.min(self.len - block);
                let bytes = self
                    .elf
                    .read(self.start + block, len, "the function table")
                    .ok()?;
                if blocks.len() >= BLOCKS {
                    blocks.remove(0);
                }
                blocks.push((block, bytes));
                blocks.len() - 1
            }
        };
        let bytes = &blocks[index].1;
        let from = (offset - block) as usize;
        let to = bytes.len().min(from.saturating_add(max as usize));
        Some(f(&bytes[from..to]))
    }

    /// An unsigned integer of `size` bytes at `offset`.
    fn uint(&self, offset: u64, size: u64) -> Option<u64> {
        let mut buf = [0u8; 8];
        let mut got = 0;
        while got < size as usize {
            let n = self.with_bytes(offset + got as u64, size - got as u64, |b| {
                buf[got..got + b.len()].copy_from_slice(b);
                b.len()
            })?;
            got += n;
        }
        read_uint(&buf, size as usize, self.little_endian)
    }

    /// Whether the NUL-terminated string at `offset` is `wanted`.
    fn is_string(&self, offset: u64, wanted: &[u8]) -> bool {
        let mut matched = 0;
        loop {
            let at = offset + matched as u64;
            let rest = wanted.len() - matched + 1;
            let step = self.with_bytes(at, rest as u64, |b| {
                let n = b.len().min(wanted.len() - matched);
                if b[..n] != wanted[matched..matched + n] {
                    return None;
                }
                Some((n, b.get(n).copied()))
            });
            match step.flatten() {
                Some((n, next)) => {
                    matched += n;
                    if matched == wanted.len() {
                        return match next {
                            Some(b) => b == 0,
                            None => self.with_bytes(at + n as u64, 1, |b| b[0] == 0) == Some(true),
                        };
                    }
                }
                None => return false,
            }
        }
    }

    /// Entry address of function-table slot `i` (`i == nfunc`: end of text).
    fn entry(&self, i: u64) -> Option<u64> {
        let raw = self.uint(self.functab + 2 * i * self.field, self.field)?;
        match self.format {
            Format::Go116 => Some(raw),
            Format::Go118 | Format::Go120 => self.text_start.checked_add(raw),
        }
    }

    /// Offset (from the table's start) of function `i`'s `_func`.
    fn func(&self, i: u64) -> Option<u64> {
        let offset = self.uint(self.functab + (2 * i + 1) * self.field, self.field)?;
        self.functab.checked_add(offset)
    }

    /// Offset (from the table's start) of function `i`'s name.
    fn name_offset(&self, i: u64) -> Option<u64> {
        // _func: entry (field width), then nameOff (int32).
        let name = self.uint(self.func(i)?.checked_add(self.field)?, 4)?;
        self.names.checked_add(name)
    }

    /// Name bytes of function `i`, at most [`MAX_NAME_LEN`].
    fn name(&self, i: u64) -> Option<Vec<u8>> {
        let mut offset = self.name_offset(i)?;
        let mut name = Vec::new();
        loop {
            let done = self.with_bytes(offset, (MAX_NAME_LEN - name.len()) as u64, |b| {
                let end = b.iter().position(|&c| c == 0);
                name.extend_from_slice(&b[..end.unwrap_or(b.len())]);
                offset += b.len() as u64;
                end.is_some()
            })?;
            if done {
                return Some(name);
            }
            if name.len() >= MAX_NAME_LEN {
                return None;
            }
        }
    }

    /// Address and size of function `i`, `None` when its entry is damaged.
    fn bounds(&self, i: u64) -> Option<(u64, u64)> {
        let address = self.entry(i)?;
        let end = self.entry(i + 1)?;
        Some((address, end.checked_sub(address)?))
    }

    /// Every readable function, in table (address) order, each passed to
    /// `f` until it returns false. Errors when cancelled, and past
    /// [`MAX_NAME_BYTES_READ`].
    pub(crate) fn each_function(
        &self,
        mut f: impl FnMut(&[u8], u64, u64) -> bool,
    ) -> Result<(), GoError> {
        let mut read = 0u64;
        for i in 0..self.nfunc {
            if i.is_multiple_of(CHECK_EVERY) && self.elf.src.cancelled() {
                return Err(cancelled());
            }
            let name = self.name(i);
            read += name.as_ref().map_or(MAX_NAME_LEN, |n| n.len() + 1) as u64;
            if read > MAX_NAME_BYTES_READ {
                return Err(over_limit(
                    "the bytes of function names read",
                    read,
                    "MAX_NAME_BYTES_READ",
                    MAX_NAME_BYTES_READ,
                ));
            }
            let Some(((address, size), name)) = self.bounds(i).zip(name) else {
                continue;
            };
            if !f(&name, address, size) {
                break;
            }
        }
        Ok(())
    }

    /// `_func.funcID` and `_func.flag` of function `i`.
    fn attributes(&self, i: u64) -> Option<(u8, u8)> {
        // entry, then eight 32-bit fields (nameOff … cuOffset), then Go
        // 1.20's startLine, then funcID and flag.
        let at = self.field + 8 * 4 + if self.format == Format::Go120 { 4 } else { 0 };
        let both = self.uint(self.func(i)?.checked_add(at)?, 2)?;
        let bytes = (both as u16).to_le_bytes();
        Some(if self.little_endian {
            (bytes[0], bytes[1])
        } else {
            (bytes[1], bytes[0])
        })
    }

    /// The function named `name`: its address and size.
    ///
    /// A function with an ABI wrapper appears twice under one name: an
    /// assembly function called from Go (ABI0 body, ABIInternal wrapper) or
    /// a Go function called from assembly (ABIInternal body, ABI0 wrapper).
    /// The ELF symbol table names the ABI0 one `name.abi0`; so does this
    /// lookup: `name` gives the ABIInternal one and `name.abi0` the ABI0
    /// one, as `go tool nm` lists them.
    ///
    /// Compares each function's name with `name` in place, reading no more
    /// of it than `name` is long; errors when cancelled.
    pub(crate) fn find(&self, name: &str) -> Result<Option<(u64, u64)>, GoError> {
        let (base, abi0) = match name.strip_suffix(".abi0") {
            Some(base) => (base, true),
            None => (name, false),
        };
        let mut candidates: Vec<(u64, u64, bool, bool)> = Vec::new();
        for i in 0..self.nfunc {
            if candidates.len() >= 2 {
                break;
            }
            if i.is_multiple_of(CHECK_EVERY) && self.elf.src.cancelled() {
                return Err(cancelled());
            }
            let named = self
                .name_offset(i)
                .is_some_and(|at| self.is_string(at, base.as_bytes()));
            if !named {
                continue;
            }
            if let Some((address, size)) = self.bounds(i) {
                let (func_id, flag) = self.attributes(i).unwrap_or((0, 0));
                candidates.push((address, size, flag & FUNC_FLAG_ASM != 0, func_id != 0));
            }
        }
        let pick = match candidates.as_slice() {
            [] => None,
            [only] => Some(only),
            [a, b, ..] => {
                // ABI0: the assembly body, or else the wrapper (which has
                // funcID wrapper, never 0).
                let a_is_abi0 = if a.2 != b.2 { a.2 } else { a.3 && !b.3 };
                Some(if a_is_abi0 == abi0 { a } else { b })
            }
        };
        Ok(pick.map(|&(address, size, _, _)| (address, size)))
    }
}

/// Why a function table was not read.
pub(crate) enum TableError {
    /// Over a limit, cancelled, or outside the file: said as is.
    Limit(GoError),
    /// Not a table ringwarden can read, and why.
    Unreadable(String),
}
