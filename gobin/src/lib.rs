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
//! No IO of its own: everything is read through the [`object::ReadRef`] the
//! caller passes (an `object::ReadCache<&File>` reads only the header, the
//! section table and the sections needed). Malformed input gives a
//! [`GoError`], never a panic, and allocation is bounded by the file's size.

#![forbid(unsafe_code)]

mod amd64;
mod buildinfo;
mod elf;
mod pclntab;

use std::fmt;

use object::{Object, ObjectSection, ObjectSymbol, ReadRef, SectionFlags, SymbolKind};

pub use buildinfo::parse_version;
pub use pclntab::GoSymbol;

use elf::{EM_AARCH64, EM_X86_64, Elf, corrupt};
use pclntab::Pclntab;

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
/// [`GoInfo::check_supported`]. Errors for data that is not ELF, and for a
/// Go binary whose Go version cannot be told.
pub fn inspect<'data, R: ReadRef<'data>>(data: R) -> Result<Option<GoInfo>, GoError> {
    let elf = Elf::parse(data)?;
    inspect_elf(&elf)
}

fn inspect_elf<'data, R: ReadRef<'data>>(elf: &Elf<'data, R>) -> Result<Option<GoInfo>, GoError> {
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
    let Some(section) = elf.section_data(".go.buildinfo")? else {
        return Err(GoError(
            "this Go binary has no .go.buildinfo section, so the Go version that built it \
             cannot be told (Go older than 1.13 writes none); rebuild it with Go 1.17 or newer"
                .into(),
        ));
    };
    let version = buildinfo::version(elf, section).ok_or_else(|| {
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
            match pclntab(elf) {
                Ok(table) => (1, table.format().min_minor()),
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
/// 1.17, and functions with no RET.
pub fn function<'data, R: ReadRef<'data>>(data: R, name: &str) -> Result<GoFunction, GoError> {
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
    let code = elf.read_virtual(address, size).ok_or_else(|| {
        corrupt(&format!(
            "the code of {name} at {address:#x} (+{size:#x} bytes) is not in the file"
        ))
    })?;
    let sites = amd64::sites(code, address);
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
pub fn lookup<'data, R: ReadRef<'data>>(data: R, name: &str) -> Result<GoSymbol, GoError> {
    lookup_elf(&Elf::parse(data)?, name)
}

fn lookup_elf<'data, R: ReadRef<'data>>(
    elf: &Elf<'data, R>,
    name: &str,
) -> Result<GoSymbol, GoError> {
    // Go gives every function symbol its size; without one, let the
    // pclntab say.
    let (address, size, source) = match find_in_symtab(elf, name).filter(|&(_, size)| size != 0) {
        Some((address, size)) => (address, size, SymbolSource::Symtab),
        None => {
            let table = pclntab(elf)?;
            match table.find(name) {
                Some((address, size)) => (address, size, SymbolSource::Pclntab),
                None => return Err(not_found(name, &table)),
            }
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
pub fn functions<'data, R: ReadRef<'data>>(data: R) -> Result<Vec<GoSymbol>, GoError> {
    let elf = Elf::parse(data)?;
    let table = pclntab(&elf)?;
    Ok(table
        .functions()
        .map(|(name, address, size)| GoSymbol {
            name: String::from_utf8_lossy(name).into_owned(),
            address,
            size,
            source: SymbolSource::Pclntab,
        })
        .collect())
}

fn pclntab<'data, R: ReadRef<'data>>(elf: &Elf<'data, R>) -> Result<Pclntab<'data>, GoError> {
    // A PIE binary may leave the header's text start (at byte 8 + 2 × 8 of
    // the table at `table_address`) to a dynamic relocation: take its
    // addend, else the runtime's own marker, else the start of .text.
    let text_start = |table_address: u64| {
        move || {
            relocated_value(elf, table_address.checked_add(8 + 2 * 8)?)
                .or_else(|| find_in_symtab(elf, "runtime.text").map(|(address, _)| address))
                .or_else(|| elf.section_address(".text"))
        }
    };
    let unreadable = |why: String| {
        GoError(format!(
            "this Go binary's function table (.gopclntab) cannot be read: {why}; ringwarden \
             reads the tables of Go 1.16 and newer (up to the 1.20 layout), rebuild the program \
             with a supported Go"
        ))
    };
    for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
        if let Some(section) = elf.section_data(name)? {
            let address = elf.section_address(name).unwrap_or(0);
            return Pclntab::parse(section, elf.little_endian, text_start(address))
                .map_err(unreadable);
        }
    }
    // An externally linked PIE merges the table into .data.rel.ro: look
    // for its header in the data sections.
    for section in elf.file.sections() {
        let SectionFlags::Elf { sh_flags } = section.flags() else {
            continue;
        };
        let allocated_data = sh_flags & u64::from(object::elf::SHF_ALLOC) != 0
            && sh_flags & u64::from(object::elf::SHF_EXECINSTR) == 0;
        let Some(data) = allocated_data.then(|| section.data().ok()).flatten() else {
            continue;
        };
        let found = (0..data.len().saturating_sub(8))
            .step_by(4)
            .filter(|&at| pclntab::format_of(&data[at..], elf.little_endian).is_some())
            .filter_map(|at| {
                let address = section.address().checked_add(at as u64)?;
                Pclntab::parse(&data[at..], elf.little_endian, text_start(address)).ok()
            })
            .find(Pclntab::plausible);
        if let Some(table) = found {
            return Ok(table);
        }
    }
    Err(GoError(
        "this Go binary has no .gopclntab section (Go's function table), so its functions \
         cannot be found; build it with the standard Go toolchain"
            .into(),
    ))
}

/// The addend of the dynamic relocation that fills the word at `address`.
fn relocated_value<'data, R: ReadRef<'data>>(elf: &Elf<'data, R>, address: u64) -> Option<u64> {
    elf.file
        .dynamic_relocations()?
        .find(|(offset, _)| *offset == address)
        .and_then(|(_, relocation)| u64::try_from(relocation.addend()).ok())
}

/// A function symbol's address and size from `.symtab`; the size is zero
/// for markers such as `runtime.text`.
fn find_in_symtab<'data, R: ReadRef<'data>>(elf: &Elf<'data, R>, name: &str) -> Option<(u64, u64)> {
    elf.file.symbols().find_map(|symbol| {
        let found = symbol.kind() == SymbolKind::Text
            && symbol.address() != 0
            && symbol.name_bytes().ok()? == name.as_bytes();
        found.then(|| (symbol.address(), symbol.size()))
    })
}

/// Most names suggested when a function is not found.
const MAX_SUGGESTIONS: usize = 5;

fn not_found(name: &str, table: &Pclntab<'_>) -> GoError {
    let wanted = name.to_lowercase();
    let last = |s: &str| s.rsplit('.').next().unwrap_or(s).to_string();
    let wanted_last = last(&wanted);
    let mut same_last = Vec::new();
    let mut substring = Vec::new();
    for (candidate, _, _) in table.functions() {
        if same_last.len() >= MAX_SUGGESTIONS {
            break;
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
    GoError(format!(
        "function {name} is not in this Go binary ({similar}); list its functions with \
         `go tool nm <binary>` (on an unstripped build) and give the full name, such as \
         main.(*Server).handle; a function the compiler inlined everywhere has no address of \
         its own: mark it //go:noinline or probe its caller"
    ))
}
