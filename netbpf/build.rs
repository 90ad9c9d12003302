//! Builds netbpf's kernel programs (the `netbpf-ebpf` crate) into
//! `OUT_DIR`, where `datapath.rs` embeds them.

fn main() -> anyhow::Result<()> {
    netbpf_ebpf_build::build_programs("netbpf-ebpf", "netbpf-ebpf")
}
