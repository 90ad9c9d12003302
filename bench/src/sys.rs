//! The `bpf()` calls only the bench makes: turning the run-time
//! statistics on, and `BPF_PROG_TEST_RUN` with a context (`sk_lookup`).

use std::{
    io,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_ENABLE_STATS: libc::c_long = 32;
/// `BPF_STATS_RUN_TIME`: `run_time_ns` and `run_cnt` of every program.
const BPF_STATS_RUN_TIME: u32 = 0;

/// `union bpf_attr`, as bytes: each command sets the fields it reads.
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }

    fn u32(&mut self, offset: usize, value: u32) -> &mut Self {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn u64(&mut self, offset: usize, value: u64) -> &mut Self {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn read_u32(&self, offset: usize) -> u32 {
        u32::from_ne_bytes(self.0[offset..offset + 4].try_into().expect("4 bytes"))
    }

    /// Runs `bpf(command, self)`; its result.
    fn call(&mut self, command: libc::c_long) -> io::Result<i64> {
        // SAFETY: the attribute buffer is valid, as large as the kernel's
        // union for every command used here, and its pointers point at
        // buffers that outlive the call.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                command,
                self.0.as_mut_ptr(),
                libc::c_uint::try_from(self.0.len()).expect("128 bytes"),
            )
        };
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(result)
        }
    }
}

fn owned(fd: i64) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: a descriptor the kernel just made for this process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Turns the kernel's run-time statistics of every program on until the
/// returned descriptor closes (as `kernel.bpf_stats_enabled` would, but
/// undone by the kernel itself however this process ends).
pub fn enable_run_time_stats() -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.u32(0, BPF_STATS_RUN_TIME);
    owned(attr.call(BPF_ENABLE_STATS)?)
}

/// Runs `program` `repeat` times on `data` (a packet) or `context` with
/// `BPF_PROG_TEST_RUN`; the kernel's average time per run, in ns.
pub fn test_run(program: impl AsFd, data: &[u8], context: &[u8], repeat: u32) -> io::Result<u32> {
    let mut out = vec![0u8; data.len() + 256];
    let mut attr = Attr::new();
    attr.u32(0, fd_number(program.as_fd())).u32(32, repeat);
    if !data.is_empty() {
        attr.u32(8, u32::try_from(data.len()).map_err(io::Error::other)?)
            .u32(12, u32::try_from(out.len()).map_err(io::Error::other)?)
            .u64(16, data.as_ptr() as u64)
            .u64(24, out.as_mut_ptr() as u64);
    }
    if !context.is_empty() {
        attr.u32(40, u32::try_from(context.len()).map_err(io::Error::other)?)
            .u64(48, context.as_ptr() as u64);
    }
    attr.call(BPF_PROG_TEST_RUN)?;
    Ok(attr.read_u32(36))
}

fn fd_number(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).expect("descriptors are not negative")
}
