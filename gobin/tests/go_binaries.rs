//! ringwarden-gobin against real Go 1.19 binaries that this test builds:
//! unstripped, stripped (`-ldflags=-s -w`) and position-independent, with
//! `go tool objdump` as the oracle for RET and prologue addresses.
//!
//! Needs Go 1.19 at /usr/lib/go-1.19/bin/go (`make deps` installs
//! golang-1.19-go); without it every test here fails and says so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};
use proptest::prelude::*;
use ringwarden_gobin::{Arch, GoInfo, SymbolSource, function, functions, inspect, lookup};

const GO: &str = "/usr/lib/go-1.19/bin/go";

/// The program under test. Every function is `//go:noinline`, so each has
/// an address of its own; each exercises one prologue or return shape.
const PROGRAM: &str = r#"package main

import (
	"fmt"
	"os"
)

type Server struct{ hits int }

// A method: small frame, CMPQ SP, 16(R14); JBE.
//
//go:noinline
func (s *Server) handle(x int) int {
	s.hits += x
	return s.hits + len(fmt.Sprint(x))
}

// A leaf with no frame: Go leaves out the stack check.
//
//go:noinline
func work(x int) int {
	return x*3 + len(os.Args)
}

// Recursive.
//
//go:noinline
func fib(n int) int {
	if n < 2 {
		return n
	}
	return fib(n-1) + fib(n-2)
}

// A frame between 128 bytes and 4 KiB: LEAQ -n(SP), R12; CMPQ R12, 16(R14).
//
//go:noinline
func medium(i int) byte {
	var buf [1024]byte
	for j := range buf {
		buf[j] = byte(j * i)
	}
	return buf[(i*13)%len(buf)] + byte(len(fmt.Sprint(buf[i%7])))
}

// A frame over 4 KiB: MOVQ SP, R12; SUBQ; JCS; CMPQ R12, 16(R14); JBE.
//
//go:noinline
func bigFrame(i int) byte {
	var buf [64 << 10]byte
	for j := range buf {
		buf[j] = byte(j + i)
	}
	return buf[(i*7)%len(buf)]
}

// NOSPLIT: never a stack check.
//
//go:noinline
//go:nosplit
func leaf(x int) int {
	if x > 100 {
		return x - 1
	}
	return x + 1
}

// Several return paths, each with its own epilogue.
//
//go:noinline
func classify(x int) string {
	switch {
	case x < 0:
		return fmt.Sprint("negative ", x)
	case x == 0:
		return "zero"
	case x < 10:
		return fmt.Sprint("small ", work(x))
	}
	return fmt.Sprint("big ", fib(x%20))
}

func main() {
	s := &Server{}
	n := len(os.Args)
	fmt.Println(s.handle(n), work(n), fib(n+10), medium(n), bigFrame(n), leaf(n), classify(n-1), classify(n+20))
}
"#;

/// Functions compared with `go tool objdump`.
const PROBED: &[&str] = &[
    "main.(*Server).handle",
    "main.work",
    "main.fib",
    "main.medium",
    "main.bigFrame",
    "main.leaf",
    "main.classify",
    "main.main",
];

/// What the agent times GC pauses with.
const GC_PAUSE: &[&str] = &[
    "runtime.stopTheWorldWithSema",
    "runtime.startTheWorldWithSema",
    "runtime.gcMarkTermination",
    "runtime.stopTheWorld",
];

struct Binary {
    path: PathBuf,
    bytes: Vec<u8>,
}

struct Builds {
    full: Binary,
    stripped: Binary,
    pie_full: Binary,
    pie_stripped: Binary,
}

fn builds() -> &'static Builds {
    static BUILDS: OnceLock<Builds> = OnceLock::new();
    BUILDS.get_or_init(|| {
        assert!(
            Path::new(GO).exists(),
            "Go 1.19 is not installed at {GO}; run `make deps` (it installs golang-1.19-go), \
             these tests build real Go binaries with it"
        );
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gobin");
        let src = root.join("src");
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("go.mod"), "module example\n\ngo 1.19\n").unwrap();
        std::fs::write(src.join("main.go"), PROGRAM).unwrap();
        let build = |name: &str, flags: &[&str]| {
            let out = root.join(name);
            let status = Command::new(GO)
                .arg("build")
                .args(flags)
                .arg("-o")
                .arg(&out)
                .arg(".")
                .current_dir(&src)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                // Kept between runs: Go's cache is content-addressed.
                .env("GOCACHE", root.join("gocache"))
                .env("GOPATH", root.join("gopath"))
                .env("HOME", root.join("home"))
                .env("GOFLAGS", "-mod=mod")
                .env("CGO_ENABLED", "0")
                .env("GOTOOLCHAIN", "local")
                .env("GOPROXY", "off")
                .status()
                .unwrap_or_else(|e| panic!("running {GO}: {e}"));
            assert!(status.success(), "go build {flags:?} failed");
            let bytes = std::fs::read(&out).unwrap();
            Binary { path: out, bytes }
        };
        Builds {
            full: build("full", &[]),
            stripped: build("stripped", &["-ldflags=-s -w"]),
            pie_full: build("pie-full", &["-buildmode=pie"]),
            pie_stripped: build("pie-stripped", &["-buildmode=pie", "-ldflags=-s -w"]),
        }
    })
}

/// Every build with the unstripped build of the same layout.
fn pairs() -> [(&'static str, &'static Binary, &'static Binary); 4] {
    let b = builds();
    [
        ("full", &b.full, &b.full),
        ("stripped", &b.stripped, &b.full),
        ("pie-full", &b.pie_full, &b.pie_full),
        ("pie-stripped", &b.pie_stripped, &b.pie_full),
    ]
}

/// `go tool objdump -s '^name$'`: (address, instruction text) per line.
fn objdump(binary: &Path, name: &str) -> Vec<(u64, String)> {
    let pattern = format!("^{}$", regex_quote(name));
    let output = Command::new(GO)
        .args(["tool", "objdump", "-s", &pattern])
        .arg(binary)
        .output()
        .unwrap();
    assert!(output.status.success(), "objdump {name}: {output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<(u64, String)> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('\t').filter(|f| !f.is_empty()).collect();
            let address = u64::from_str_radix(fields.get(1)?.strip_prefix("0x")?, 16).ok()?;
            Some((address, fields.get(3)?.trim().to_string()))
        })
        .collect();
    assert!(
        !lines.is_empty(),
        "objdump printed nothing for {name}:\n{text}"
    );
    lines
}

fn regex_quote(name: &str) -> String {
    name.chars()
        .flat_map(|c| {
            let escape = "\\.+*?()|[]{}^$".contains(c);
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// Virtual address → file offset, independently of the crate.
fn file_offset(bytes: &[u8], address: u64) -> u64 {
    let file = object::File::parse(bytes).unwrap();
    file.segments()
        .find_map(|s| {
            let (offset, size) = s.file_range();
            (address >= s.address() && address < s.address() + size)
                .then(|| offset + address - s.address())
        })
        .unwrap_or_else(|| panic!("{address:#x} is in no segment"))
}

/// Function symbols of `.symtab`: name → (address, size).
fn symtab(bytes: &[u8]) -> HashMap<String, (u64, u64)> {
    let file = object::File::parse(bytes).unwrap();
    file.symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
        .map(|s| (s.name().unwrap().to_string(), (s.address(), s.size())))
        .collect()
}

fn info(bytes: &[u8]) -> GoInfo {
    inspect(bytes).unwrap().expect("a Go binary")
}

#[test]
fn inspect_tells_version_arch_and_symbol_table_of_every_build() {
    for (build, binary, _) in pairs() {
        let info = info(&binary.bytes);
        assert!(info.version.starts_with("go1.19."), "{build}: {info:?}");
        assert_eq!(
            (info.major, info.minor, info.arch),
            (1, 19, Arch::Amd64),
            "{build}"
        );
        assert_eq!(info.has_symtab, !build.ends_with("stripped"), "{build}");
        info.check_supported().unwrap();
    }
}

#[test]
fn inspect_reads_the_open_file_at_offsets() {
    let file = std::fs::File::open(&builds().stripped.path).unwrap();
    assert_eq!(
        info(&builds().stripped.bytes),
        inspect(&file).unwrap().unwrap()
    );
    let from_cache = function(&file, "main.fib").unwrap();
    assert_eq!(
        from_cache,
        function(&builds().stripped.bytes[..], "main.fib").unwrap()
    );
}

#[test]
fn a_c_binary_is_no_go_binary() {
    let bytes = std::fs::read("/bin/true").unwrap();
    assert_eq!(inspect(&bytes[..]), Ok(None));
    let err = function(&bytes[..], "main.main").unwrap_err();
    assert!(err.0.contains("not built by Go"), "{err}");
}

#[test]
fn data_that_is_not_elf_is_refused() {
    let err = inspect(&b"#!/bin/sh\nexec ./server \"$@\"\n"[..]).unwrap_err();
    assert!(err.0.contains("not an ELF"), "{err}");
    assert!(inspect(&[][..]).is_err());
    assert!(function(&b"\x7fELF"[..], "main.main").is_err());
}

#[test]
fn pclntab_lookups_match_the_symbol_table() {
    for (build, binary, unstripped) in pairs() {
        let symbols = symtab(&unstripped.bytes);
        let table = functions(&binary.bytes[..]).unwrap();
        let mut count: HashMap<&str, usize> = HashMap::new();
        for f in &table {
            *count.entry(&f.name).or_default() += 1;
        }
        // The listing: every function once in the pclntab (twice with an
        // ABI wrapper, under one name) is where .symtab says.
        for f in table.iter().filter(|f| count[f.name.as_str()] == 1) {
            if let Some(&(address, _)) = symbols.get(&f.name) {
                assert_eq!(f.address, address, "{build}: {}", f.name);
            }
        }
        for name in PROBED.iter().chain(GC_PAUSE) {
            assert_eq!(count.get(name), Some(&1), "{build}: {name}");
        }
        if binary.path == unstripped.path {
            continue;
        }
        // Lookups by every .symtab name that the pclntab has, .abi0
        // included, give .symtab's address.
        let mut compared = 0;
        let mut wrapped = 0;
        for (name, &(address, size)) in &symbols {
            let go_name = name.strip_suffix(".abi0").unwrap_or(name);
            let Some(&n) = count.get(go_name) else {
                continue;
            };
            let found = lookup(&binary.bytes[..], name).unwrap();
            assert_eq!(found.source, SymbolSource::Pclntab, "{build}: {name}");
            assert_eq!(found.address, address, "{build}: {name}");
            assert!(
                found.size >= size,
                "{build}: {name} {} < {size}",
                found.size
            );
            compared += 1;
            wrapped += usize::from(n > 1);
        }
        assert!(
            compared > 1000,
            "{build}: only {compared} functions compared"
        );
        assert!(
            wrapped > 0,
            "{build}: no function with an ABI wrapper compared"
        );
    }
}

#[test]
fn entries_and_returns_match_go_objdump() {
    for (build, binary, unstripped) in pairs() {
        let want_source = if binary.path == unstripped.path {
            SymbolSource::Symtab
        } else {
            SymbolSource::Pclntab
        };
        for name in PROBED {
            let listing = objdump(&unstripped.path, name);
            let f = function(&binary.bytes[..], name).unwrap();
            assert_eq!(f.name, *name);
            assert_eq!(f.symbols, want_source, "{build} {name}");
            assert_eq!(f.address, listing[0].0, "{build} {name}");
            let offset = |address| file_offset(&binary.bytes, address);
            let rets: Vec<u64> = listing
                .iter()
                .filter(|(_, asm)| asm == "RET")
                .map(|&(address, _)| offset(address))
                .collect();
            assert_eq!(f.return_offsets, rets, "{build} {name}: {listing:#?}");
            for &at in &f.return_offsets {
                assert_eq!(binary.bytes[at as usize], 0xc3, "{build} {name} at {at:#x}");
            }
            assert_eq!(
                f.entry_offset,
                offset(expected_entry(&listing)),
                "{build} {name}"
            );
        }
    }
}

/// objdump's view of the entry: after the conditional jump that follows
/// `CMPQ 0x10(R14), …` in the first instructions, else the first one.
fn expected_entry(listing: &[(u64, String)]) -> u64 {
    let window = &listing[..listing.len().min(8)];
    window
        .windows(3)
        .find(|w| {
            w[0].1.starts_with("CMPQ 0x10(R14), ")
                && (w[1].1.starts_with("JBE ") || w[1].1.starts_with("JLS "))
        })
        .map_or(listing[0].0, |w| w[2].0)
}

#[test]
fn each_prologue_shape_is_recognised() {
    let bytes = &builds().full.bytes[..];
    let start = |name| file_offset(bytes, function(bytes, name).unwrap().address);
    for (name, has_check) in [
        ("main.(*Server).handle", true),
        ("main.fib", true),
        ("main.medium", true),
        ("main.bigFrame", true),
        ("main.work", false),
        ("main.leaf", false),
    ] {
        let f = function(bytes, name).unwrap();
        assert_eq!(f.entry_offset != start(name), has_check, "{name}: {f:?}");
    }
    // The huge-frame check is the longest: MOVQ, SUBQ, JCS, CMPQ, JBE.
    let big = function(bytes, "main.bigFrame").unwrap();
    assert!(big.entry_offset - start("main.bigFrame") >= 20, "{big:?}");
    assert!(
        function(bytes, "main.classify")
            .unwrap()
            .return_offsets
            .len()
            >= 3
    );
    assert_eq!(
        function(bytes, "main.leaf").unwrap().return_offsets.len(),
        2
    );
}

#[test]
fn gc_pause_functions_resolve_in_every_build() {
    for (build, binary, _) in pairs() {
        for name in GC_PAUSE {
            let f =
                function(&binary.bytes[..], name).unwrap_or_else(|e| panic!("{build} {name}: {e}"));
            assert!(!f.return_offsets.is_empty());
            assert!(
                f.entry_offset < f.return_offsets[0],
                "{build} {name}: {f:?}"
            );
        }
    }
}

#[test]
fn stripped_and_unstripped_agree_on_returns() {
    let b = builds();
    for name in PROBED.iter().chain(GC_PAUSE) {
        let full = function(&b.full.bytes[..], name).unwrap();
        let stripped = function(&b.stripped.bytes[..], name).unwrap();
        assert_eq!(full.address, stripped.address, "{name}");
        assert!(stripped.size >= full.size, "{name}");
        let relative = |f: &ringwarden_gobin::GoFunction| {
            let entry = f.entry_offset;
            let rets: Vec<i64> = f
                .return_offsets
                .iter()
                .map(|&r| r as i64 - entry as i64)
                .collect();
            rets
        };
        assert_eq!(relative(&full), relative(&stripped), "{name}");
    }
}

#[test]
fn an_unknown_function_is_refused_with_similar_names() {
    for binary in [&builds().full, &builds().stripped] {
        let err = function(&binary.bytes[..], "example.handle").unwrap_err();
        assert!(err.0.contains("example.handle"), "{err}");
        assert!(err.0.contains("main.(*Server).handle"), "{err}");
        assert!(err.0.contains("go tool nm"), "{err}");
        assert!(err.0.contains("inlined"), "{err}");
        let err = function(&binary.bytes[..], "main.Fib").unwrap_err();
        assert!(err.0.contains("similar functions: main.fib"), "{err}");
    }
}

/// The `.go.buildinfo` section's file range.
fn buildinfo_range(bytes: &[u8]) -> (usize, u64) {
    let file = object::File::parse(bytes).unwrap();
    let section = file.section_by_name(".go.buildinfo").unwrap();
    (section.file_range().unwrap().0 as usize, section.address())
}

/// A copy of the stripped build whose inline version string reads
/// `version` (same length as the original).
fn with_inline_version(version: &str) -> Vec<u8> {
    let mut bytes = builds().stripped.bytes.clone();
    let (start, _) = buildinfo_range(&bytes);
    let len = usize::from(bytes[start + 32]);
    assert_eq!(
        len,
        version.len(),
        "{version} must replace a string of its length"
    );
    bytes[start + 33..start + 33 + len].copy_from_slice(version.as_bytes());
    bytes
}

/// A copy of the stripped build whose `.go.buildinfo` uses the layout
/// before Go 1.18: flags 0 and a pointer to a Go string header, written
/// over the inline strings.
fn with_pointer_version(version: &str) -> Vec<u8> {
    let mut bytes = builds().stripped.bytes.clone();
    let (start, address) = buildinfo_range(&bytes);
    bytes[start + 15] = 0;
    bytes[start + 16..start + 24].copy_from_slice(&(address + 48).to_le_bytes());
    bytes[start + 48..start + 56].copy_from_slice(&(address + 64).to_le_bytes());
    bytes[start + 56..start + 64].copy_from_slice(&(version.len() as u64).to_le_bytes());
    bytes[start + 64..start + 64 + version.len()].copy_from_slice(version.as_bytes());
    bytes
}

#[test]
fn go_older_than_1_17_is_refused_with_its_version() {
    for bytes in [
        with_inline_version("go1.16.8"),
        with_pointer_version("go1.16.15"),
    ] {
        let info = info(&bytes);
        assert_eq!((info.major, info.minor), (1, 16), "{info:?}");
        let err = function(&bytes[..], "main.fib").unwrap_err();
        assert!(err.0.contains(&info.version), "{err}");
        assert!(err.0.contains("1.17") && err.0.contains("rebuild"), "{err}");
        assert_eq!(info.check_supported(), Err(err));
    }
}

#[test]
fn pointer_style_buildinfo_of_go_1_17_is_accepted() {
    let bytes = with_pointer_version("go1.17.13");
    assert_eq!(info(&bytes).version, "go1.17.13");
    assert!(function(&bytes[..], "main.fib").is_ok());
}

#[test]
fn a_development_version_falls_back_to_the_pclntab_layout() {
    let bytes = with_inline_version("devel +x");
    let info = info(&bytes);
    assert_eq!((info.version.as_str(), info.minor), ("devel +x", 18));
    assert!(function(&bytes[..], "main.fib").is_ok());
}

/// Renames a section in a copy of `bytes` (same length names).
fn rename_section(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut bytes = bytes.to_vec();
    let file = object::File::parse(&bytes[..]).unwrap();
    let (offset, size) = file
        .section_by_name(".shstrtab")
        .unwrap()
        .file_range()
        .unwrap();
    drop(file);
    let names = offset as usize..(offset + size) as usize;
    let wanted = format!("{from}\0");
    let at = bytes[names.clone()]
        .windows(wanted.len())
        .position(|w| w == wanted.as_bytes())
        .unwrap_or_else(|| panic!("no section {from}"));
    bytes[names.start + at..][..to.len()].copy_from_slice(to.as_bytes());
    bytes
}

#[test]
fn a_go_binary_without_buildinfo_has_no_version_to_tell() {
    let bytes = rename_section(&builds().stripped.bytes, ".go.buildinfo", ".go.buildinfX");
    let err = inspect(&bytes[..]).unwrap_err();
    assert!(err.0.contains("cannot be told"), "{err}");
}

#[test]
fn an_unrelocated_text_start_is_read_from_the_dynamic_relocation() {
    let pie = &builds().pie_stripped.bytes;
    // Zero the header's textStart, as a linker that writes addends only
    // into .rela.dyn leaves it, and hide .text so it cannot stand in.
    let mut bytes = rename_section(pie, ".text", ".texX");
    let file = object::File::parse(&pie[..]).unwrap();
    let table = file.section_by_name(".data.rel.ro.gopclntab").unwrap();
    let at = table.file_range().unwrap().0 as usize + 8 + 2 * 8;
    drop(file);
    assert_ne!(bytes[at..at + 8], [0; 8]);
    bytes[at..at + 8].fill(0);
    let hidden = object::File::parse(&bytes[..]).unwrap();
    assert!(hidden.section_by_name(".text").is_none());
    drop(hidden);
    assert_eq!(functions(&bytes[..]).unwrap(), functions(&pie[..]).unwrap());
}

#[test]
fn a_function_table_without_its_section_name_is_found_by_its_header() {
    let pie = &builds().pie_stripped.bytes;
    let bytes = rename_section(pie, ".data.rel.ro.gopclntab", ".data.rel.ro.gopclntaX");
    assert_eq!(functions(&bytes[..]).unwrap(), functions(&pie[..]).unwrap());
    let f = function(&bytes[..], "runtime.stopTheWorldWithSema").unwrap();
    assert_eq!(
        f,
        function(&pie[..], "runtime.stopTheWorldWithSema").unwrap()
    );
}

#[test]
fn arm64_binaries_are_refused() {
    let mut bytes = builds().full.bytes.clone();
    bytes[18..20].copy_from_slice(&183u16.to_le_bytes());
    let info = info(&bytes);
    assert_eq!(info.arch, Arch::Arm64);
    let err = function(&bytes[..], "main.fib").unwrap_err();
    assert!(
        err.0.starts_with("arm64 Go binaries are not supported yet"),
        "{err}"
    );
    assert!(err.0.contains("return"), "{err}");
    bytes[18..20].copy_from_slice(&40u16.to_le_bytes()); // EM_ARM
    let err = function(&bytes[..], "main.fib").unwrap_err();
    assert!(err.0.contains("machine 40"), "{err}");
}

/// Byte ranges worth damaging: the headers, the tables this crate reads and
/// a probed function's code.
fn interesting_ranges(bytes: &[u8]) -> Ranges {
    let file = object::File::parse(bytes).unwrap();
    let mut ranges = vec![(0, 64)];
    let shoff = u64::from_le_bytes(bytes[0x28..0x30].try_into().unwrap()) as usize;
    ranges.push((shoff, (bytes.len() - shoff).min(64 * 40)));
    for name in [".gopclntab", ".go.buildinfo", ".symtab", ".shstrtab"] {
        if let Some((offset, size)) = file.section_by_name(name).and_then(|s| s.file_range()) {
            ranges.push((offset as usize, (size as usize).min(4096)));
        }
    }
    // The function table and the first _func records after it.
    let table = file.section_by_name(".gopclntab").unwrap();
    let (offset, size) = table.file_range().unwrap();
    let functab = u64::from_le_bytes(bytes[offset as usize + 64..][..8].try_into().unwrap());
    assert!(functab < size);
    ranges.push(((offset + functab) as usize, 4096));
    let fib = function(bytes, "main.fib").unwrap();
    ranges.push((fib.entry_offset as usize - 8, fib.size as usize));
    ranges
}

/// (file offset, length) of byte ranges.
type Ranges = Vec<(usize, usize)>;

/// `interesting_ranges` of the unstripped and the stripped build.
fn ranges() -> &'static (Ranges, Ranges) {
    static RANGES: OnceLock<(Ranges, Ranges)> = OnceLock::new();
    RANGES.get_or_init(|| {
        let b = builds();
        (
            interesting_ranges(&b.full.bytes),
            interesting_ranges(&b.stripped.bytes),
        )
    })
}

#[derive(Debug, Clone)]
enum Damage {
    Truncate(usize),
    /// (range index, position in range, xor mask)
    Flip(Vec<(usize, usize, u8)>),
}

fn damage() -> impl Strategy<Value = (bool, Damage)> {
    let flips = proptest::collection::vec((0usize..16, any::<usize>(), 1u8..=255), 1..8);
    (
        any::<bool>(),
        prop_oneof![
            any::<usize>().prop_map(Damage::Truncate),
            flips.prop_map(Damage::Flip),
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn damaged_binaries_never_panic((stripped, damage) in damage()) {
        let original = if stripped { &builds().stripped.bytes } else { &builds().full.bytes };
        let mut bytes = original.clone();
        match damage {
            Damage::Truncate(at) => bytes.truncate(at % original.len()),
            Damage::Flip(flips) => {
                let ranges = if stripped { &ranges().1 } else { &ranges().0 };
                for (range, at, mask) in flips {
                    let (start, len) = ranges[range % ranges.len()];
                    bytes[start + at % len.max(1)] ^= mask;
                }
            }
        }
        let _ = inspect(&bytes[..]);
        let _ = functions(&bytes[..]);
        for name in ["main.fib", "main.bigFrame", "runtime.stopTheWorldWithSema", "main.nope"] {
            let _ = function(&bytes[..], name);
        }
    }
}
