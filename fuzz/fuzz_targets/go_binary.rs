//! A Go binary on a node is whatever the node holds: reading its version,
//! symbols and code never panics, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = ringwarden_gobin::inspect(bytes);
    if let Ok(f) = ringwarden_gobin::function(bytes, "main.main") {
        assert!(!f.return_offsets.is_empty());
    }
    let _ = ringwarden_gobin::functions(bytes);
});
