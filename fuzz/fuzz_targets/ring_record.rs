//! A ring-buffer record as the kernel might hand it over, torn or
//! corrupt: decoding never panics, and what it accepts is exactly one
//! well-formed record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwarden_ebpf_common::event::decode;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(event) = decode(bytes) {
        assert_eq!(bytes.len(), core::mem::size_of_val(&event));
        assert_eq!(event.magic, ringwarden_ebpf_common::EVENT_MAGIC);
    }
});
