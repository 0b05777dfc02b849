//! Host-side placeholder: the programs live in `main.rs` and only build for
//! the BPF target. node-agent's build.rs depends on this library so cargo
//! rebuilds the object whenever this crate or its dependencies change.
#![no_std]
