//! Reads Go ELF binaries so the agent can put plain uprobes on Go functions.
//!
//! A uretprobe replaces the return address on the stack with a trampoline's.
//! Go moves goroutine stacks when they grow and walks them for tracebacks
//! and garbage collection, finds the foreign return address, and crashes
//! ("unexpected return pc"). So for a Go function the agent attaches one
//! plain uprobe at the function's entry and one at each of its RET
//! instructions, and pairs them in the kernel by goroutine. This crate finds
//! those places:
//!
//! - [`inspect`] tells whether an ELF file is a Go program, which Go built
//!   it (from `.go.buildinfo`) and for which architecture;
//! - [`function`] finds a function by its full Go name in the ELF symbol
//!   table, or in Go's own `.gopclntab` when the binary is stripped, decodes
//!   its x86-64 machine code and returns the file offsets of its entry
//!   (after the stack-bound check, see [`GoFunction::entry_offset`]) and of
//!   every RET.
//!
//! Only amd64 binaries built by Go ≥ 1.17 (the register ABI) are accepted.
//!
//! No IO of its own: everything is read through the [`Source`] the caller
//! passes (an open `File`, read at offsets, or bytes in memory). A binary
//! is hostile input — a tenant can write one in its own container and name
//! it — so nothing is read whole: every length, count and size the file
//! states is checked against a named limit before memory is reserved for
//! it (sections against the file's length, [`MAX_SECTIONS`],
//! [`MAX_SYMBOLS`], [`MAX_FUNCTIONS`], [`MAX_FUNCTION_BYTES`],
//! [`MAX_RETURNS_PER_FUNCTION`], …), symbol and string tables are scanned
//! in chunks, and `.gopclntab` is read in place through a few cached
//! blocks. Peak memory stays within a few megabytes whatever the file
//! claims, and work within the limits; a [`Cancellable`] source stops a
//! parse whose caller gave up waiting. Malformed input gives a
//! [`GoError`], never a panic.

#![forbid(unsafe_code)]

mod amd64;
mod buildinfo;
mod elf;
mod pclntab;

use std::fmt;

pub use amd64::{MAX_CALLS_PER_FUNCTION, MAX_RETURNS_PER_FUNCTION};
pub use buildinfo::parse_version;
pub use elf::{
    CHUNK_BYTES, Cancel, Cancellable, MAX_NAME_MATCHES, MAX_RELOCATIONS, MAX_SECTION_NAMES_BYTES,
    MAX_SECTIONS, MAX_SEGMENTS, MAX_STRING_TABLE_BYTES, MAX_SYMBOLS, Source,
};
pub use pclntab::{GoSymbol, MAX_FUNCTIONS, MAX_NAME_BYTES_READ, MAX_NAME_LEN};

use elf::{EM_AARCH64, EM_X86_64, Elf, SHT_DYNSYM, SHT_SYMTAB, cancelled, corrupt, over_limit};
use pclntab::{Pclntab, TableError};

/// Most bytes of code read and decoded for one function: 4 MiB. Go's
/// largest functions (generated tables, huge switches) are a few hundred
/// kilobytes.
pub const MAX_FUNCTION_BYTES: u64 = 4 << 20;
/// How long a caller lets one binary's opening and parsing run before it
/// gives up and cancels it: 5 s. Within the limits above a real binary
/// takes tens of milliseconds; the deadline bounds what they do not (a
/// slow filesystem, a crafted file at every limit at once).
pub const PARSE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);
/// Most places in data sections tried as a function table, when a binary
/// has no section named for it (an externally linked PIE).
pub const MAX_TABLE_CANDIDATES: usize = 64;

/// The oldest Go minor release (1.x) accepted: the first with the register
/// ABI on amd64, which keeps the current goroutine in R14.
pub const MIN_GO_MINOR: u32 = 17;

/// What a Go binary is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoInfo {
    /// The version string the toolchain recorded, e.g. `go1.19.8`.
    pub version: String,
    /// Major release, 1 for every Go so far.
    pub major: u32,
    /// Minor release: 19 for `go1.19.8`. For development builds whose
    /// version names no release, the oldest release writing the binary's
    /// pclntab layout (16, 18 or 20).
    pub minor: u32,
    /// The machine the binary is built for.
    pub arch: Arch,
    /// Whether the binary keeps its ELF symbol table (`.symtab`); stripped
    /// builds (`-ldflags=-s`, `strip`) do not, and functions are then found
    /// through `.gopclntab`.
    pub has_symtab: bool,
}

/// The architecture of a binary, from the ELF header's `e_machine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
    /// Any other machine, with its `e_machine` value.
    Other(u16),
}

impl GoInfo {
    /// Whether ringwarden can put uprobes on this binary's functions: amd64
    /// and Go ≥ 1.17. The error says why not and what to do.
    pub fn check_supported(&self) -> Result<(), GoError> {
        match self.arch {
            Arch::Amd64 => {}
            Arch::Arm64 => {
                return Err(GoError(
                    "arm64 Go binaries are not supported yet: Go functions cannot be traced \
                     with uretprobes (Go moves goroutine stacks and crashes on the rewritten \
                     return address), so ringwarden probes every return instruction instead, \
                     and it finds those by decoding x86-64 code only; trace the program on an \
                     amd64 node"
                        .into(),
                ));
            }
            Arch::Other(machine) => {
                return Err(GoError(format!(
                    "Go binaries for ELF machine {machine} are not supported: ringwarden finds \
                     a Go function's returns by decoding amd64 code only; trace an amd64 build \
                     of the program"
                )));
            }
        }
        if (self.major, self.minor) < (1, MIN_GO_MINOR) {
            return Err(GoError(format!(
                "the binary was built with {}, but ringwarden needs Go 1.{MIN_GO_MINOR} or newer \
                 (the register ABI, which keeps the goroutine in R14 so entries and returns \
                 can be paired); rebuild the program with a newer Go",
                self.version
            )));
        }
        Ok(())
    }
}

/// Where a function's name and bounds were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolSource {
    /// The ELF symbol table (`.symtab`), which has exact sizes.
    Symtab,
    /// Go's `.gopclntab` (stripped binaries); the size runs to the next
    /// function and may include padding.
    Pclntab,
}

/// A Go function and where to probe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoFunction {
    pub name: String,
    /// Virtual address of the first instruction.
    pub address: u64,
    pub size: u64,
    /// File offset of the entry uprobe: the instruction after the
    /// stack-bound check (`CMPQ SP, 16(R14)` and its JBE), so a call that
    /// grows its stack (and so runs its first instructions twice) is seen
    /// once. For functions without the check (NOSPLIT and small leaf
    /// functions) this is the function's first byte. Either way SP points
    /// at the return address there: the check does not move SP.
    pub entry_offset: u64,
    /// File offsets of every RET instruction in the function, in address
    /// order; never empty.
    pub return_offsets: Vec<u64>,
    /// Every direct call the function makes, in address order.
    pub calls: Vec<CallSite>,
    pub symbols: SymbolSource,
}

/// A direct `CALL` in a function's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSite {
    /// Virtual address of the function called.
    pub target: u64,
    /// File offset of the instruction after the call: where a uprobe sees
    /// what the callee returned (in RAX, with Go's register ABI).
    pub after_offset: u64,
}

/// Why a binary or function cannot be probed; the message says what is
/// wrong with the binary and what to do. It does not name the file: the
/// caller prefixes the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoError(pub String);

impl fmt::Display for GoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GoError {}

/// What a Go binary is, or `None` for an ELF file Go did not build.
///
/// Describes without judging: an arm64 or Go 1.16 binary gives `Some`; see
/// [`GoInfo::check_supported`]. Errors for data that is not ELF, for a
/// Go binary whose Go version cannot be told, and for one over a limit.
pub fn inspect<S: Source + ?Sized>(data: &S) -> Result<Option<GoInfo>, GoError> {
    let elf = Elf::parse(data)?;
    inspect_elf(&elf)
}

fn inspect_elf<S: Source + ?Sized>(elf: &Elf<'_, S>) -> Result<Option<GoInfo>, GoError> {
    let is_go = [".go.buildinfo", ".gopclntab", ".note.go.buildid"]
        .iter()
        .any(|name| elf.has_section(name));
    if !is_go {
        return Ok(None);
    }
    let arch = match elf.machine {
        EM_X86_64 => Arch::Amd64,
        EM_AARCH64 => Arch::Arm64,
        other => Arch::Other(other),
    };
    let Some(section) = elf.section_prefix(".go.buildinfo", buildinfo::MAX_BUILDINFO_BYTES)? else {
        return Err(GoError(
            "this Go binary has no .go.buildinfo section, so the Go version that built it \
             cannot be told (Go older than 1.13 writes none); rebuild it with Go 1.17 or newer"
                .into(),
        ));
    };
    let version = buildinfo::version(elf, &section).ok_or_else(|| {
        GoError(
            "this Go binary's .go.buildinfo section holds no readable Go version, so the Go \
             that built it cannot be told; rebuild it with an official Go 1.17 or newer"
                .into(),
        )
    })?;
    let (major, minor) = match parse_version(&version) {
        Some(release) => release,
        None => {
            // A development build naming no release: its pclntab layout
            // tells the oldest release it can be.
            match with_pclntab(elf, |table| Ok(table.format().min_minor())) {
                Ok(minor) => (1, minor),
                Err(_) => {
                    return Err(GoError(format!(
                        "this Go binary's version {version:?} names no Go release, so whether \
                         it has the register ABI (Go 1.17 or newer) cannot be told; rebuild it \
                         with a released Go"
                    )));
                }
            }
        }
    };
    Ok(Some(GoInfo {
        version,
        major,
        minor,
        arch,
        has_symtab: elf.has_section(".symtab"),
    }))
}

/// Finds a function by its full Go name (`main.work`,
/// `main.(*Server).handle`, `runtime.stopTheWorldWithSema`) and where to
/// probe it. Refuses binaries that are not Go, not amd64 or older than Go
/// 1.17, functions with no RET, and functions over
/// [`MAX_FUNCTION_BYTES`] or [`MAX_RETURNS_PER_FUNCTION`].
pub fn function<S: Source + ?Sized>(data: &S, name: &str) -> Result<GoFunction, GoError> {
    let elf = Elf::parse(data)?;
    let Some(info) = inspect_elf(&elf)? else {
        return Err(GoError(
            "this ELF binary was not built by Go (it has no .go.buildinfo, .gopclntab or \
             .note.go.buildid section); probe its functions with a plain uprobe instead"
                .into(),
        ));
    };
    info.check_supported()?;
    let GoSymbol {
        address,
        size,
        source: symbols,
        ..
    } = lookup_elf(&elf, name)?;
    if size > MAX_FUNCTION_BYTES {
        return Err(over_limit(
            &format!("the size in bytes of function {name}"),
            size,
            "MAX_FUNCTION_BYTES",
            MAX_FUNCTION_BYTES,
        ));
    }
    let code = elf.read_virtual(address, size).ok_or_else(|| {
        if data.cancelled() {
            return cancelled();
        }
        corrupt(&format!(
            "the code of {name} at {address:#x} (+{size:#x} bytes) is not in the file"
        ))
    })?;
    let sites = amd64::sites(&code, address, || data.cancelled()).map_err(|stop| match stop {
        amd64::Stop::TooManyReturns => GoError(format!(
            "function {name} has more than MAX_RETURNS_PER_FUNCTION \
             ({MAX_RETURNS_PER_FUNCTION}) RET instructions; each is a uprobe of its own, so \
             ringwarden does not attach to it: probe a smaller function it calls, or the \
             function that calls it"
        )),
        amd64::Stop::TooManyCalls => GoError(format!(
            "function {name} has more than MAX_CALLS_PER_FUNCTION ({MAX_CALLS_PER_FUNCTION}) \
             direct calls, more than any real function; check that the path names the \
             program's own binary, or probe a smaller function"
        )),
        amd64::Stop::Cancelled => cancelled(),
    })?;
    if sites.returns.is_empty() {
        return Err(GoError(format!(
            "function {name} has no RET instruction (it never returns, or ends in a tail \
             jump), so its latency cannot be measured; probe the function that calls it"
        )));
    }
    let offset = |at: u64| {
        elf.file_offset(at)
            .ok_or_else(|| corrupt(&format!("address {at:#x} of {name} is not in the file")))
    };
    Ok(GoFunction {
        name: name.to_string(),
        address,
        size,
        entry_offset: offset(sites.entry)?,
        return_offsets: sites
            .returns
            .iter()
            .map(|&at| offset(at))
            .collect::<Result<_, _>>()?,
        calls: sites
            .calls
            .iter()
            .map(|&(target, after)| {
                Ok(CallSite {
                    target,
                    after_offset: offset(after)?,
                })
            })
            .collect::<Result<_, GoError>>()?,
        symbols,
    })
}

/// A function's address and size by its full Go name, from `.symtab` when
/// the binary has it and names the function, else from `.gopclntab`. Names
/// as `go tool nm` prints them: an assembly function's ABI0 body or a Go
/// function's ABI0 wrapper is `name.abi0`.
pub fn lookup<S: Source + ?Sized>(data: &S, name: &str) -> Result<GoSymbol, GoError> {
    lookup_elf(&Elf::parse(data)?, name)
}

/// The file offset of the symbol `name` defined in a native (C, C++,
/// Rust) ELF binary or library: from `.dynsym`, else `.symtab`; `None`
/// when neither defines it. Both tables are scanned in chunks, within
/// [`MAX_SYMBOLS`] and [`MAX_STRING_TABLE_BYTES`].
pub fn symbol_offset<S: Source + ?Sized>(data: &S, name: &str) -> Result<Option<u64>, GoError> {
    let elf = Elf::parse(data)?;
    for table in [SHT_DYNSYM, SHT_SYMTAB] {
        if let Some(symbol) = elf.find_symbol(table, name, |s| s.is_definition())? {
            return elf.symbol_file_offset(&symbol).map(Some).ok_or_else(|| {
                corrupt(&format!(
                    "symbol {name:?} is not in a section with bytes in the file"
                ))
            });
        }
    }
    Ok(None)
}

fn lookup_elf<S: Source + ?Sized>(elf: &Elf<'_, S>, name: &str) -> Result<GoSymbol, GoError> {
    // Go gives every function symbol its size; without one, let the
    // pclntab say.
    let found = find_in_symtab(elf, name)?.filter(|&(_, size)| size != 0);
    let (address, size, source) = match found {
        Some((address, size)) => (address, size, SymbolSource::Symtab),
        None => {
            let found = with_pclntab(elf, |table| match table.find(name)? {
                Some(bounds) => Ok(Ok(bounds)),
                None => Ok(Err(not_found(name, table)?)),
            })?;
            let (address, size) = found?;
            (address, size, SymbolSource::Pclntab)
        }
    };
    Ok(GoSymbol {
        name: name.to_string(),
        address,
        size,
        source,
    })
}

/// Every function in the binary's `.gopclntab`, in address order: what a
/// stripped binary still tells about its functions. Sizes run to the next
/// function's entry.
pub fn functions<S: Source + ?Sized>(data: &S) -> Result<Vec<GoSymbol>, GoError> {
    let elf = Elf::parse(data)?;
    with_pclntab(&elf, |table| {
        let mut all = Vec::new();
        table.each_function(|name, address, size| {
            all.push(GoSymbol {
                name: String::from_utf8_lossy(name).into_owned(),
                address,
                size,
                source: SymbolSource::Pclntab,
            });
            true
        })?;
        Ok(all)
    })
}

/// Runs `f` on the binary's function table.
fn with_pclntab<S: Source + ?Sized, T>(
    elf: &Elf<'_, S>,
    f: impl FnOnce(&Pclntab<'_, '_, S>) -> Result<T, GoError>,
) -> Result<T, GoError> {
    // A PIE binary may leave the header's text start (at byte 8 + 2 × 8 of
    // the table at `table_address`) to a dynamic relocation: take its
    // addend, else the runtime's own marker, else the start of .text.
    let text_start = |table_address: u64| {
        move || {
            let word = table_address.checked_add(8 + 2 * 8)?;
            elf.relocated_value(word)
                .ok()
                .flatten()
                .or_else(|| {
                    find_in_symtab(elf, "runtime.text")
                        .ok()
                        .flatten()
                        .map(|(address, _)| address)
                })
                .or_else(|| elf.section_address(".text"))
        }
    };
    let unreadable = |error: TableError| match error {
        TableError::Limit(e) => e,
        TableError::Unreadable(why) => GoError(format!(
            "this Go binary's function table (.gopclntab) cannot be read: {why}; ringwarden \
             reads the tables of Go 1.16 and newer (up to the 1.20 layout), rebuild the program \
             with a supported Go"
        )),
    };
    for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
        if let Some(section) = elf.section(name) {
            let table = Pclntab::parse(
                elf,
                section.offset,
                section.size,
                text_start(section.address),
            )
            .map_err(unreadable)?;
            return f(&table);
        }
    }
    // An externally linked PIE merges the table into .data.rel.ro: look
    // for its header in the data sections, a chunk at a time.
    let mut tried = 0;
    for section in elf.sections.iter().filter(|s| s.is_allocated_data()) {
        let mut at = 0u64;
        while at + 8 <= section.size {
            let len = (CHUNK_BYTES as u64).min(section.size - at);
            let chunk = elf.read(section.offset + at, len, "a data section")?;
            for i in (0..chunk.len().saturating_sub(8)).step_by(4) {
                if pclntab::format_of(&chunk[i..], elf.little_endian).is_none() {
                    continue;
                }
                tried += 1;
                if tried > MAX_TABLE_CANDIDATES {
                    return Err(over_limit(
                        "the number of places that look like a function table",
                        tried as u64,
                        "MAX_TABLE_CANDIDATES",
                        MAX_TABLE_CANDIDATES as u64,
                    ));
                }
                let offset = at + i as u64;
                let Some(address) = section.address.checked_add(offset) else {
                    continue;
                };
                let parsed = Pclntab::parse(
                    elf,
                    section.offset + offset,
                    section.size - offset,
                    text_start(address),
                );
                match parsed {
                    Ok(table) if table.plausible() => return f(&table),
                    Err(TableError::Limit(e)) if data_cancelled(elf) => return Err(e),
                    _ => {}
                }
            }
            // Chunks overlap by 8 bytes, so no header is split; `at`
            // stays 4-aligned.
            at += (len - 8).max(4) & !3;
        }
    }
    Err(GoError(
        "this Go binary has no .gopclntab section (Go's function table), so its functions \
         cannot be found; build it with the standard Go toolchain"
            .into(),
    ))
}

fn table_cancelled<S: Source + ?Sized>(table: &Pclntab<'_, '_, S>) -> bool {
    table.cancelled()
}

fn data_cancelled<S: Source + ?Sized>(elf: &Elf<'_, S>) -> bool {
    elf.src.cancelled()
}

/// A function symbol's address and size from `.symtab`; the size is zero
/// for markers such as `runtime.text`.
fn find_in_symtab<S: Source + ?Sized>(
    elf: &Elf<'_, S>,
    name: &str,
) -> Result<Option<(u64, u64)>, GoError> {
    Ok(elf
        .find_symbol(SHT_SYMTAB, name, |s| s.is_function() && s.address != 0)?
        .map(|s| (s.address, s.size)))
}

/// Most names suggested when a function is not found.
const MAX_SUGGESTIONS: usize = 5;

fn not_found<S: Source + ?Sized>(
    name: &str,
    table: &Pclntab<'_, '_, S>,
) -> Result<GoError, GoError> {
    let wanted = name.to_lowercase();
    let last = |s: &str| s.rsplit('.').next().unwrap_or(s).to_string();
    let wanted_last = last(&wanted);
    let mut same_last = Vec::new();
    let mut substring = Vec::new();
    let walked = table.each_function(|candidate, _, _| {
        if same_last.len() >= MAX_SUGGESTIONS {
            return false;
        }
        let candidate = String::from_utf8_lossy(candidate);
        let lower = candidate.to_lowercase();
        if !wanted_last.is_empty() && last(&lower) == wanted_last {
            same_last.push(candidate.into_owned());
        } else if substring.len() < MAX_SUGGESTIONS
            && (lower.contains(&wanted) || (wanted_last.len() >= 3 && lower.contains(&wanted_last)))
        {
            substring.push(candidate.into_owned());
        }
        true
    });
    // Past the names' limit, suggest what was found so far.
    if walked.is_err() && table_cancelled(table) {
        return Err(cancelled());
    }
    let similar: Vec<String> = same_last
        .into_iter()
        .chain(substring)
        .take(MAX_SUGGESTIONS)
        .collect();
    let similar = if similar.is_empty() {
        "no function has a similar name".to_string()
    } else {
        format!("similar functions: {}", similar.join(", "))
    };
    Ok(GoError(format!(
        "function {name} is not in this Go binary ({similar}); list its functions with \
         `go tool nm <binary>` (on an unstripped build) and give the full name, such as \
         main.(*Server).handle; a function the compiler inlined everywhere has no address of \
         its own: mark it //go:noinline or probe its caller"
    )))
}
