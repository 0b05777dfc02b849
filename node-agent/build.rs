//! Builds the kernel programs (`ebpf/programs`) for the BPF target and puts
//! the object in OUT_DIR, where `src/probes.rs` embeds it.
//!
//! Uses the machine's stable toolchain: `RUSTC_BOOTSTRAP=1` unlocks
//! `-Z build-std=core` (the BPF target ships no precompiled `core`).
fn main() -> anyhow::Result<()> {
    // SAFETY: build scripts are single-threaded; the inner cargo inherits these.
    unsafe {
        std::env::set_var("RUSTC_BOOTSTRAP", "1");
        // aya-build relays everything the inner cargo prints as warnings.
        std::env::set_var("CARGO_TERM_QUIET", "true");
    }
    let ebpf = aya_build::Package {
        name: "ringwarden-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/programs"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom("stable"))
}
