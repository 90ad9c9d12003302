//! Builds the bench's own kernel programs (the `netbpf-bench-ebpf` crate:
//! the designs of a reverse path it compares) into `OUT_DIR`, where
//! `designs.rs` embeds them.

fn main() -> anyhow::Result<()> {
    netbpf_ebpf_build::build_programs("netbpf-bench-ebpf", "bench/ebpf")
}
