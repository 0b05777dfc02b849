//! A uprobe binary is whatever a tenant writes in its container: the whole
//! open-and-parse path (ELF headers, section and symbol tables, the Go
//! buildinfo and function table, the code) never panics and stays within
//! its limits, whatever the bytes. The input is read through `Source` at
//! offsets, as the agent reads an open file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwarden_gobin::{Cancel, Cancellable, MAX_RETURNS_PER_FUNCTION};

fuzz_target!(|bytes: &[u8]| {
    let cancel = Cancel::new();
    let source = Cancellable {
        source: bytes,
        cancel: &cancel,
    };
    let _ = ringwarden_gobin::inspect(&source);
    for name in ["main.main", "runtime.startTheWorldWithSema", "main.main.abi0"] {
        if let Ok(f) = ringwarden_gobin::function(&source, name) {
            assert!(!f.return_offsets.is_empty());
            assert!(f.return_offsets.len() <= MAX_RETURNS_PER_FUNCTION);
            assert!(f.size <= ringwarden_gobin::MAX_FUNCTION_BYTES);
        }
        let _ = ringwarden_gobin::lookup(&source, name);
        let _ = ringwarden_gobin::symbol_offset(&source, name);
    }
    // A cancelled parse gives up, whatever the bytes.
    cancel.cancel();
    assert!(ringwarden_gobin::function(&source, "main.main").is_err());
});
