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
        // aya-build sets CARGO_ENCODED_RUSTFLAGS, which hides every other
        // rustflags source but (unstable) profile rustflags, which add to it.
        // v3: atomic fetch-add and compare-and-exchange that return a value
        // (series slots). Without memcpy-in-order, bpf-linker lets LLVM
        // expand small memsets inline instead of calling a byte loop. The
        // build override keeps both off host build scripts and proc macros.
        std::env::set_var("CARGO_UNSTABLE_PROFILE_RUSTFLAGS", "true");
        std::env::set_var(
            "CARGO_PROFILE_RELEASE_RUSTFLAGS",
            "-Ctarget-cpu=v3 -Clink-arg=--disable-expand-memcpy-in-order",
        );
        std::env::set_var("CARGO_PROFILE_RELEASE_BUILD_OVERRIDE_RUSTFLAGS", "");
    }
    let ebpf = aya_build::Package {
        name: "ringwarden-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/programs"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom("stable"))
}
