//! Crafted binaries: what a tenant can write in its own container and name
//! as a uprobe binary. Each test is named after the attack it stops, and
//! checks both the refusal (an error naming the limit) and the cost: heap
//! bytes at their peak, counted by this binary's allocator, and time.
//!
//! The ELF files are written here, by a minimal ELF64 writer, as sparse
//! files where the attack is size: a hole costs the writer nothing.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    fs::File,
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use ringwarden_gobin::{
    Cancel, Cancellable, MAX_FUNCTION_BYTES, MAX_FUNCTIONS, MAX_RETURNS_PER_FUNCTION, MAX_SECTIONS,
    MAX_SYMBOLS, PARSE_DEADLINE, Source, function, inspect, lookup, symbol_offset,
};

/// Counts heap bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Tests measure one at a time: the counters are the process's.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Most heap bytes an open of any binary may take at its peak: a chunk of
/// a scanned table (1 MiB), a few cached blocks of the function table,
/// the section table and one function's code. The agent's memory limit
/// is 512 MiB.
const MEMORY_BOUND: usize = 8 << 20;

/// Runs `f` and returns what it gave and the peak of heap bytes it added.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = IN_USE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

// ---- a minimal ELF64 (little-endian, x86-64) writer ----

const BASE: u64 = 0x40_0000;
const SHT_PROGBITS: u32 = 1;
const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;
const SHF_ALLOC: u64 = 2;
const SHF_EXECINSTR: u64 = 4;

/// A section's bytes: written, or a hole of `len` bytes whose last bytes
/// are `tail`.
enum Data {
    Bytes(Vec<u8>),
    Sparse { len: u64, tail: Vec<u8> },
}

struct Sec {
    name: &'static str,
    kind: u32,
    flags: u64,
    data: Data,
    /// Index of the linked section (a symbol table's strings).
    link: u32,
}

impl Sec {
    fn new(name: &'static str, kind: u32, flags: u64, data: Data) -> Self {
        Self {
            name,
            kind,
            flags,
            data,
            link: 0,
        }
    }
}

/// A file in the test's temporary directory, removed on drop.
struct Crafted(PathBuf);

impl Drop for Crafted {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Crafted {
    fn open(&self) -> File {
        File::open(&self.0).unwrap()
    }

    /// Bytes the file really takes on disk.
    fn on_disk(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.0).unwrap().blocks() * 512
    }
}

/// Where section `index` of `sections` lands: every section at a
/// 16-aligned offset after the headers, in order; an allocated section's
/// address is `BASE` + its offset (one PT_LOAD maps the whole file).
fn offsets(sections: &[Sec]) -> Vec<u64> {
    let mut at = 64 + 56;
    sections
        .iter()
        .map(|s| {
            at = (at + 15) & !15;
            let here = at;
            at += match &s.data {
                Data::Bytes(b) => b.len() as u64,
                Data::Sparse { len, .. } => *len,
            };
            here
        })
        .collect()
}

fn write_elf(name: &str, sections: Vec<Sec>) -> Crafted {
    let path = std::env::temp_dir().join(format!("rw-hostile-{name}-{}", std::process::id()));
    let file = File::create(&path).unwrap();
    let crafted = Crafted(path);
    // Section 0 is the null section; names go in a last .shstrtab.
    let mut all = vec![Sec::new("", 0, 0, Data::Bytes(vec![]))];
    all.extend(sections);
    let mut names = vec![0u8];
    let mut name_offsets = Vec::new();
    for s in &all {
        name_offsets.push(names.len() as u32);
        names.extend_from_slice(s.name.as_bytes());
        names.push(0);
    }
    name_offsets.push(names.len() as u32);
    names.extend_from_slice(b".shstrtab\0");
    all.push(Sec::new(".shstrtab", SHT_STRTAB, 0, Data::Bytes(names)));
    let at = offsets(&all);
    let end = at.last().unwrap()
        + match &all.last().unwrap().data {
            Data::Bytes(b) => b.len() as u64,
            Data::Sparse { len, .. } => *len,
        };
    let shoff = (end + 15) & !15;
    let file_len = shoff + 64 * all.len() as u64;

    let mut header = Vec::new();
    header.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    header.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    header.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&(BASE + 0x1000).to_le_bytes()); // e_entry
    header.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    header.extend_from_slice(&shoff.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, all.len() as u16, all.len() as u16 - 1] {
        header.extend_from_slice(&v.to_le_bytes());
    }
    // One PT_LOAD, read and execute, mapping the whole file at BASE.
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&5u32.to_le_bytes());
    for v in [0, BASE, BASE, file_len, file_len, 0x1000] {
        header.extend_from_slice(&v.to_le_bytes());
    }
    file.write_all_at(&header, 0).unwrap();

    let mut table = Vec::new();
    for (i, s) in all.iter().enumerate() {
        let size = match &s.data {
            Data::Bytes(b) => {
                file.write_all_at(b, at[i]).unwrap();
                b.len() as u64
            }
            Data::Sparse { len, tail } => {
                file.write_all_at(tail, at[i] + len - tail.len() as u64)
                    .unwrap();
                *len
            }
        };
        let address = if s.flags & SHF_ALLOC != 0 {
            BASE + at[i]
        } else {
            0
        };
        let entsize = if s.kind == SHT_SYMTAB { 24u64 } else { 0 };
        table.extend_from_slice(&name_offsets[i].to_le_bytes());
        table.extend_from_slice(&s.kind.to_le_bytes());
        for v in [s.flags, address, at[i], size] {
            table.extend_from_slice(&v.to_le_bytes());
        }
        table.extend_from_slice(&s.link.to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes());
        table.extend_from_slice(&16u64.to_le_bytes());
        table.extend_from_slice(&entsize.to_le_bytes());
    }
    file.write_all_at(&table, shoff).unwrap();
    file.set_len(file_len).unwrap();
    crafted
}

/// `.go.buildinfo` of Go 1.19.8 (inline version string).
fn buildinfo() -> Sec {
    let mut b = b"\xff Go buildinf:".to_vec();
    b.extend_from_slice(&[8, 2]);
    b.resize(32, 0);
    b.push(8);
    b.extend_from_slice(b"go1.19.8");
    Sec::new(".go.buildinfo", SHT_PROGBITS, SHF_ALLOC, Data::Bytes(b))
}

fn text(data: Data) -> Sec {
    Sec::new(".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, data)
}

/// A symbol table entry: a global function.
fn symbol(name: u32, section: u16, address: u64, size: u64) -> [u8; 24] {
    let mut s = [0u8; 24];
    s[..4].copy_from_slice(&name.to_le_bytes());
    s[4] = 0x12;
    s[6..8].copy_from_slice(&section.to_le_bytes());
    s[8..16].copy_from_slice(&address.to_le_bytes());
    s[16..24].copy_from_slice(&size.to_le_bytes());
    s
}

/// A Go binary whose `.symtab` is a hole of `symbols` entries (ending in
/// `main.main`, which names the first `code_len` bytes of `.text`).
fn sparse_symtab_binary(name: &str, symbols: u64, code: Data, code_len: u64) -> Crafted {
    // Sections: 1 .text, 2 .go.buildinfo, 3 .strtab, 4 .symtab.
    let text_offset = offsets(&[
        Sec::new("", 0, 0, Data::Bytes(vec![])),
        text(Data::Bytes(vec![])),
    ])[1];
    let last = symbol(1, 1, BASE + text_offset, code_len);
    let mut symtab = Sec::new(
        ".symtab",
        SHT_SYMTAB,
        0,
        Data::Sparse {
            len: symbols * 24,
            tail: last.to_vec(),
        },
    );
    symtab.link = 3;
    write_elf(
        name,
        vec![
            text(code),
            buildinfo(),
            Sec::new(
                ".strtab",
                SHT_STRTAB,
                0,
                Data::Bytes(b"\0main.main\0".to_vec()),
            ),
            symtab,
        ],
    )
}

#[test]
fn a_sparse_symtab_cannot_take_the_agent_past_its_limit() {
    let _serial = serial();
    // The attack as reported: 600 MiB apparent, a few KiB on disk.
    let binary = sparse_symtab_binary("sparse-600m", (600 << 20) / 24, code_with_rets(1), 2);
    assert!(binary.on_disk() < 1 << 20, "{} bytes", binary.on_disk());
    let file = binary.open();
    let (result, peak) = measured(|| function(&file, "main.main"));
    let e = result.unwrap_err().0;
    assert!(
        e.contains("MAX_SYMBOLS") && e.contains(&MAX_SYMBOLS.to_string()),
        "{e}"
    );
    assert!(peak < MEMORY_BOUND, "peak {peak} bytes");

    // Just within the limit, the table is scanned a chunk at a time to
    // its last entry, which names the function.
    let binary = sparse_symtab_binary("sparse-max", MAX_SYMBOLS, code_with_rets(1), 2);
    let file = binary.open();
    let started = Instant::now();
    let (result, peak) = measured(|| function(&file, "main.main"));
    let f = result.unwrap();
    assert_eq!(f.return_offsets.len(), 1);
    assert!(peak < MEMORY_BOUND, "peak {peak} bytes");
    assert!(
        started.elapsed() < PARSE_DEADLINE,
        "{:?}",
        started.elapsed()
    );
}

/// `.text` bytes: a stack check, then `rets` RETs.
fn code_with_rets(rets: usize) -> Data {
    let mut code = vec![0x90];
    code.extend(std::iter::repeat_n(0xc3, rets));
    Data::Bytes(code)
}

#[test]
fn a_function_with_a_million_rets_is_refused_not_attached() {
    let _serial = serial();
    let rets = 1_000_000;
    let binary = sparse_symtab_binary("rets", 16, code_with_rets(rets), rets as u64 + 1);
    let file = binary.open();
    let started = Instant::now();
    let (result, peak) = measured(|| function(&file, "main.main"));
    let e = result.unwrap_err().0;
    assert!(
        e.contains("MAX_RETURNS_PER_FUNCTION")
            && e.contains(&MAX_RETURNS_PER_FUNCTION.to_string())
            && e.contains("main.main"),
        "{e}"
    );
    assert!(peak < MEMORY_BOUND, "peak {peak} bytes");
    assert!(started.elapsed() < Duration::from_secs(1));

    // As many as the limit allows are all found.
    let binary = sparse_symtab_binary(
        "rets-max",
        16,
        code_with_rets(MAX_RETURNS_PER_FUNCTION),
        MAX_RETURNS_PER_FUNCTION as u64 + 1,
    );
    let f = function(&binary.open(), "main.main").unwrap();
    assert_eq!(f.return_offsets.len(), MAX_RETURNS_PER_FUNCTION);
}

#[test]
fn a_function_larger_than_its_limit_is_refused_before_its_code_is_read() {
    let _serial = serial();
    let len = 64 << 20;
    let binary = sparse_symtab_binary(
        "huge-function",
        16,
        Data::Sparse {
            len,
            tail: vec![0xc3],
        },
        len,
    );
    let file = binary.open();
    let (result, peak) = measured(|| function(&file, "main.main"));
    let e = result.unwrap_err().0;
    assert!(
        e.contains("MAX_FUNCTION_BYTES") && e.contains(&MAX_FUNCTION_BYTES.to_string()),
        "{e}"
    );
    assert!(peak < MEMORY_BOUND, "peak {peak} bytes");
}

#[test]
fn sections_claiming_bytes_past_the_end_of_the_file_are_refused() {
    let _serial = serial();
    let binary = sparse_symtab_binary("past-end", 16, code_with_rets(1), 2);
    let file = binary.open();
    // Shrink the file under its last section (the section names), and
    // below the section table: both now claim bytes the file lacks.
    let len = file.metadata().unwrap().len();
    File::options()
        .write(true)
        .open(&binary.0)
        .unwrap()
        .set_len(len - 64 * 6)
        .unwrap();
    let e = inspect(&binary.open()).unwrap_err().0;
    assert!(
        e.contains("outside the file") || e.contains("past the end"),
        "{e}"
    );
}

#[test]
fn a_section_table_over_its_limit_is_refused_before_it_is_read() {
    let _serial = serial();
    let binary = sparse_symtab_binary("many-sections", 16, code_with_rets(1), 2);
    // e_shnum (byte 60) claims 65 535 sections.
    let file = File::options().write(true).open(&binary.0).unwrap();
    file.write_all_at(&u16::MAX.to_le_bytes(), 60).unwrap();
    let (result, peak) = measured(|| inspect(&binary.open()));
    let e = result.unwrap_err().0;
    assert!(
        e.contains("MAX_SECTIONS") && e.contains(&MAX_SECTIONS.to_string()),
        "{e}"
    );
    assert!(peak < MEMORY_BOUND, "peak {peak} bytes");
}

/// A stripped Go 1.18-layout binary whose `.gopclntab` declares
/// `functions` functions: all share one `_func`, whose name is `name`
/// (NUL-terminated only if `terminated`).
fn pclntab_binary(label: &str, functions: u64, name: &[u8], terminated: bool) -> Crafted {
    let functab = 72u64;
    let func = functab + (2 * functions + 1) * 4;
    let names = func + 64;
    let mut header = Vec::new();
    header.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
    header.extend_from_slice(&[0, 0, 1, 8]);
    // nfunc, nfiles, textStart, funcname, cu, filetab, pctab, functab
    for v in [
        functions,
        0,
        BASE + 0x1000,
        names,
        names,
        names,
        names,
        functab,
    ] {
        header.extend_from_slice(&v.to_le_bytes());
    }
    // Entry i at text + 16 i, every _func at `func`; the closing entry
    // is the end of the text.
    let mut table = header;
    for i in 0..functions {
        table.extend_from_slice(&((i * 16) as u32).to_le_bytes());
        table.extend_from_slice(&((func - functab) as u32).to_le_bytes());
    }
    table.extend_from_slice(&((functions * 16) as u32).to_le_bytes());
    // _func: entry, then nameOff 0 (the name table's first name).
    table.extend_from_slice(&[0u8; 64]);
    table.extend_from_slice(name);
    if terminated {
        table.push(0);
    }
    write_elf(
        label,
        vec![
            text(code_with_rets(1)),
            buildinfo(),
            Sec::new(".gopclntab", SHT_PROGBITS, SHF_ALLOC, Data::Bytes(table)),
        ],
    )
}

#[test]
fn a_pclntab_of_a_million_functions_is_refused_within_its_deadline() {
    let _serial = serial();
    let binary = pclntab_binary("million", 1_000_000, b"main.main", true);
    let file = binary.open();
    let started = Instant::now();
    let (result, peak) = measured(|| lookup(&file, "main.main"));
    let e = result.unwrap_err().0;
    assert!(
        e.contains("MAX_FUNCTIONS") && e.contains(&MAX_FUNCTIONS.to_string()),
        "{e}"
    );
    assert!(peak < MEMORY_BOUND, "peak {peak} bytes");
    assert!(
        started.elapsed() < PARSE_DEADLINE,
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_pclntab_at_its_limit_with_endless_names_is_searched_within_its_deadline() {
    let _serial = serial();
    // The reported attack: every function's name a long run without its
    // NUL, so that each comparison used to read 64 KiB.
    let binary = pclntab_binary("endless-names", MAX_FUNCTIONS, &[b'm'; 64 << 10], false);
    let file = binary.open();
    let started = Instant::now();
    let (result, peak) = measured(|| lookup(&file, "main.missing"));
    let e = result.unwrap_err().0;
    assert!(e.contains("is not in this Go binary"), "{e}");
    assert!(peak < MEMORY_BOUND, "peak {peak} bytes");
    assert!(
        started.elapsed() < PARSE_DEADLINE,
        "took {:?}",
        started.elapsed()
    );

    // The same table with real names finds its function.
    let binary = pclntab_binary("named", 1000, b"main.main", true);
    let f = lookup(&binary.open(), "main.main").unwrap();
    assert_eq!(f.address, BASE + 0x1000);
    assert_eq!(f.size, 16);
}

/// A source that says it is cancelled after `after` reads, and counts
/// reads.
struct CancelAfter {
    file: File,
    after: usize,
    reads: AtomicUsize,
}

impl Source for CancelAfter {
    fn len(&self) -> u64 {
        Source::len(&self.file)
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> bool {
        self.reads.fetch_add(1, Ordering::Relaxed);
        Source::read_exact_at(&self.file, offset, buf)
    }

    fn cancelled(&self) -> bool {
        self.reads.load(Ordering::Relaxed) >= self.after
    }
}

#[test]
fn a_cancelled_parse_stops_reading() {
    let _serial = serial();
    // Scanning a 192 MiB symbol table takes 192 reads of a chunk; cancelled
    // after 20 reads, the scan stops at its next one.
    let binary = sparse_symtab_binary("cancel", MAX_SYMBOLS, code_with_rets(1), 2);
    let source = CancelAfter {
        file: binary.open(),
        after: 20,
        reads: AtomicUsize::new(0),
    };
    let e = function(&source, "main.main").unwrap_err().0;
    assert!(e.contains("cancelled"), "{e}");
    assert!(source.reads.load(Ordering::Relaxed) <= 21);

    // A Cancel flag set by another thread does the same.
    let cancel = Cancel::new();
    cancel.cancel();
    let file = binary.open();
    let e = function(
        &Cancellable {
            source: &file,
            cancel: &cancel,
        },
        "main.main",
    )
    .unwrap_err()
    .0;
    assert!(e.contains("cancelled"), "{e}");
}

#[test]
fn a_native_symbol_is_found_by_scanning_its_tables() {
    let _serial = serial();
    let binary = sparse_symtab_binary("native", 1 << 16, code_with_rets(1), 2);
    let file = binary.open();
    let (offset, peak) = measured(|| symbol_offset(&file, "main.main"));
    let text_offset = offsets(&[
        Sec::new("", 0, 0, Data::Bytes(vec![])),
        text(Data::Bytes(vec![])),
    ])[1];
    assert_eq!(offset.unwrap(), Some(text_offset));
    assert_eq!(symbol_offset(&file, "main.other").unwrap(), None);
    assert!(peak < MEMORY_BOUND, "peak {peak} bytes");
}
