//! netbpf's kernel programs, built for `bpfel-unknown-none` and embedded in
//! the `netbpf` binary. One module per hook family; shared logic in small
//! modules beside them. Each program's doc names the kernel its hook came
//! with; the datapath as a whole is verified from Linux 6.1 (docs/kernels.md).
#![no_std]
#![no_main]
// The BPF target has no `core::sync::atomic` types; map counters shared by
// CPUs are updated with the atomic intrinsics, which the BPF backend lowers
// to BPF_ATOMIC instructions.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic intrinsics, see above")]
// The verifier checks each program with its own constants folded in (a
// socket family decides which context fields may be touched): helpers are
// inlined into every program on purpose.
#![expect(clippy::inline_always, reason = "see above")]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand the context over by value"
)]

mod addr;
mod bind;
mod forward;
mod host_service;
mod ip;
mod maps;
mod mss;
mod scope;
mod sock;
mod sock_addr;
mod tc;

/// Verdict of a cgroup socket program that lets the syscall go on.
const ALLOW: i32 = 1;
/// Verdict of a cgroup socket program that fails the syscall with `EPERM`.
const REFUSE: i32 = 0;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
