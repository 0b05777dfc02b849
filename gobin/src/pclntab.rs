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

use crate::elf::read_uint;

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
/// Longest function name believed.
const MAX_NAME_LEN: usize = 64 << 10;

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

/// A validated view of a pclntab.
pub(crate) struct Pclntab<'a> {
    format: Format,
    little_endian: bool,
    /// Width of a function-table field and of `_func`'s first field.
    field: usize,
    nfunc: usize,
    text_start: u64,
    names: &'a [u8],
    /// The function table: `2 * nfunc + 1` fields.
    functab: &'a [u8],
    /// Where `_func` offsets count from (the function table's start).
    funcdata: &'a [u8],
}

impl<'a> Pclntab<'a> {
    /// Checks the header and that the function table fits the section.
    /// `text_start` is used when the header's own is zero (in PIE binaries
    /// the linker leaves it to a dynamic relocation).
    pub(crate) fn parse(
        section: &'a [u8],
        little_endian: bool,
        text_start: impl FnOnce() -> Option<u64>,
    ) -> Result<Self, String> {
        let magic = read_uint(section, 4, little_endian).ok_or("section too short")? as u32;
        let format = match magic {
            MAGIC_120 => Format::Go120,
            MAGIC_118 => Format::Go118,
            MAGIC_116 => Format::Go116,
            MAGIC_12 => return Err("it was written by Go 1.15 or older".into()),
            _ => return Err(format!("unknown magic {magic:#x} (a newer Go?)")),
        };
        let ptr_size = usize::from(*section.get(7).ok_or("section too short")?);
        if ptr_size != 4 && ptr_size != 8 {
            return Err(format!("pointer size {ptr_size}"));
        }
        let word = |i: usize| -> Result<u64, String> {
            section
                .get(8 + i * ptr_size..)
                .and_then(|b| read_uint(b, ptr_size, little_endian))
                .ok_or_else(|| "header truncated".to_string())
        };
        let tail = |offset: u64| -> Result<&'a [u8], String> {
            usize::try_from(offset)
                .ok()
                .and_then(|o| section.get(o..))
                .ok_or_else(|| format!("table offset {offset:#x} past the section's end"))
        };
        let nfunc = word(0)?;
        let (field, text_start, names, functab) = match format {
            Format::Go118 | Format::Go120 => {
                let header_text = word(2)?;
                let text = if header_text != 0 {
                    header_text
                } else {
                    text_start().ok_or("the text start is not recorded")?
                };
                (4, text, tail(word(3)?)?, tail(word(7)?)?)
            }
            Format::Go116 => (ptr_size, 0, tail(word(2)?)?, tail(word(6)?)?),
        };
        // The table must fit in the section: this bounds nfunc by the
        // section's size, so a corrupt count cannot make us loop for long.
        let fields = usize::try_from(nfunc)
            .ok()
            .and_then(|n| n.checked_mul(2)?.checked_add(1)?.checked_mul(field))
            .filter(|&len| len <= functab.len())
            .ok_or_else(|| format!("{nfunc} functions do not fit the section"))?;
        Ok(Self {
            format,
            little_endian,
            field,
            nfunc: nfunc as usize,
            text_start,
            names,
            functab: &functab[..fields],
            funcdata: functab,
        })
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

    fn field_at(&self, bytes: &[u8], index: usize) -> Option<u64> {
        read_uint(
            bytes.get(index.checked_mul(self.field)?..)?,
            self.field,
            self.little_endian,
        )
    }

    /// Entry address of function-table slot `i` (`i == nfunc`: end of text).
    fn entry(&self, i: usize) -> Option<u64> {
        let raw = self.field_at(self.functab, 2 * i)?;
        match self.format {
            Format::Go116 => Some(raw),
            Format::Go118 | Format::Go120 => self.text_start.checked_add(raw),
        }
    }

    /// Name bytes of function `i`.
    fn name(&self, i: usize) -> Option<&'a [u8]> {
        let func_offset = usize::try_from(self.field_at(self.functab, 2 * i + 1)?).ok()?;
        let func = self.funcdata.get(func_offset..)?;
        // _func: entry (field width), then nameOff (int32).
        let name_offset = read_uint(func.get(self.field..)?, 4, self.little_endian)? as u32;
        let name = self.names.get(usize::try_from(name_offset).ok()?..)?;
        let len = name.iter().take(MAX_NAME_LEN).position(|&b| b == 0)?;
        Some(&name[..len])
    }

    /// Function `i`, `None` when its entry is damaged.
    fn symbol(&self, i: usize) -> Option<(&'a [u8], u64, u64)> {
        let address = self.entry(i)?;
        let end = self.entry(i + 1)?;
        let size = end.checked_sub(address)?;
        Some((self.name(i)?, address, size))
    }

    /// Every readable function, in table (address) order.
    pub(crate) fn functions(&self) -> impl Iterator<Item = (&'a [u8], u64, u64)> + '_ {
        (0..self.nfunc).filter_map(|i| self.symbol(i))
    }

    /// `_func.funcID` and `_func.flag` of function `i`.
    fn attributes(&self, i: usize) -> Option<(u8, u8)> {
        let func_offset = usize::try_from(self.field_at(self.functab, 2 * i + 1)?).ok()?;
        // entry, then eight 32-bit fields (nameOff … cuOffset), then Go
        // 1.20's startLine, then funcID and flag.
        let at = self.field + 8 * 4 + if self.format == Format::Go120 { 4 } else { 0 };
        let bytes = self.funcdata.get(func_offset.checked_add(at)?..)?;
        Some((*bytes.first()?, *bytes.get(1)?))
    }

    /// The function named `name`: its address and size.
    ///
    /// A function with an ABI wrapper appears twice under one name: an
    /// assembly function called from Go (ABI0 body, ABIInternal wrapper) or
    /// a Go function called from assembly (ABIInternal body, ABI0 wrapper).
    /// The ELF symbol table names the ABI0 one `name.abi0`; so does this
    /// lookup: `name` gives the ABIInternal one and `name.abi0` the ABI0
    /// one, as `go tool nm` lists them.
    pub(crate) fn find(&self, name: &str) -> Option<(u64, u64)> {
        let (base, abi0) = match name.strip_suffix(".abi0") {
            Some(base) => (base, true),
            None => (name, false),
        };
        let mut candidates: Vec<(u64, u64, bool, bool)> = Vec::new();
        for i in 0..self.nfunc {
            if candidates.len() >= 2 {
                break;
            }
            let Some((n, address, size)) = self.symbol(i) else {
                continue;
            };
            if n == base.as_bytes() {
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
        pick.map(|&(address, size, _, _)| (address, size))
    }
}
