//! The `bpf(2)` commands aya does not offer: objects opened from their
//! pins, links updated and detached, map entries as raw bytes, a trivial
//! program loaded for any hook (to probe it, or to measure against), and
//! the programs attached to a cgroup as the kernel reports them.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

/// `BPF_OBJ_GET`: a descriptor of the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let path = CString::new(path.as_os_str().as_bytes())?;
    let attr = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &attr)?;
    // SAFETY: the kernel returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_LINK_UPDATE`: makes `link` run `program` in place of its
/// program, atomically: no event meets the link without a program.
pub fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let attr = LinkUpdate {
        link_fd: fd_number(link)?,
        new_prog_fd: fd_number(program)?,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &attr).map(drop)
}

/// `BPF_LINK_DETACH`: detaches `link` from its target, whoever holds it.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
    }
    bpf(
        BPF_LINK_DETACH,
        &LinkDetach {
            link_fd: fd_number(link)?,
        },
    )
    .map(drop)
}

/// Loads a program of `prog_type` for `attach_type`, named `name` (15
/// bytes kept), that only returns 1: at the cgroup hooks it lets the call
/// go on, at tc it is `TC_ACT_RECLASSIFY`, at `sk_lookup` `SK_PASS`. The
/// kernel refuses it (`EINVAL`) where it lacks the hook.
pub fn load_trivial(name: &str, prog_type: u32, attach_type: u32) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }
    // r0 = 1; exit
    let instructions: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 1, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let mut prog_name = [0u8; 16];
    let length = name.len().min(15);
    prog_name[..length].copy_from_slice(&name.as_bytes()[..length]);
    let attr = ProgLoad {
        prog_type,
        insn_cnt: 2,
        insns: instructions.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        prog_ifindex: 0,
        expected_attach_type: attach_type,
    };
    let fd = bpf(BPF_PROG_LOAD, &attr)?;
    // SAFETY: the kernel returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_LINK_CREATE` of `program` on `target` (a cgroup's directory) at
/// `attach_type`: attached while the returned link is open.
pub fn link_create(
    program: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
    }
    let attr = LinkCreate {
        prog_fd: fd_number(program)?,
        target_fd: fd_number(target)?,
        attach_type,
        flags: 0,
    };
    let fd = bpf(BPF_LINK_CREATE, &attr)?;
    // SAFETY: the kernel returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_PROG_QUERY`: the ids of the programs attached to the cgroup
/// `target` at `attach_type`, by any tool, as the kernel runs them.
pub fn prog_query(target: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    #[repr(C)]
    struct ProgQuery {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
    }
    // BPF_CGROUP_MAX_PROGS: no cgroup hook holds more.
    let mut ids = vec![0u32; 64];
    let mut attr = ProgQuery {
        target_fd: fd_number(target)?,
        attach_type,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: u32::try_from(ids.len()).map_err(io::Error::other)?,
        _pad: 0,
    };
    bpf_mut(BPF_PROG_QUERY, &mut attr)?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

fn fd_number(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(io::Error::other)
}

/// The `bpf(2)` system call with `attr`, which the kernel also writes
/// to (`BPF_PROG_QUERY` counts there).
fn bpf_mut<T>(command: libc::c_long, attr: &mut T) -> io::Result<i32> {
    syscall(command, std::ptr::from_mut(attr).cast(), size_of::<T>())
}

/// The `bpf(2)` system call with `attr`, which the kernel only reads.
fn bpf<T>(command: libc::c_long, attr: &T) -> io::Result<i32> {
    syscall(
        command,
        std::ptr::from_ref(attr).cast_mut().cast(),
        size_of::<T>(),
    )
}

/// `bpf(command, attr, size)`, whose size the kernel is told.
fn syscall(command: libc::c_long, attr: *mut libc::c_void, size: usize) -> io::Result<i32> {
    // SAFETY: `attr` points at a repr(C) prefix of `union bpf_attr` for
    // `command`, `size` bytes long and valid for the duration of the call;
    // the kernel writes only through the pointers of commands that answer
    // there, which `bpf_mut` passes from an exclusive borrow.
    let result = unsafe { libc::syscall(libc::SYS_bpf, command, attr, size) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    i32::try_from(result).map_err(io::Error::other)
}

/// `BPF_MAP_GET_NEXT_KEY`: the key after `key` (the first without one) in
/// `next`; false at the end.
pub fn map_next_key(map: &OwnedFd, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let key = key.map_or(0, |key| key.as_ptr() as u64);
    found(map_elem(
        BPF_MAP_GET_NEXT_KEY,
        map,
        key,
        next.as_mut_ptr() as u64,
    ))
}

/// `BPF_MAP_LOOKUP_ELEM`: the value of `key` in `value`; false when the
/// entry went meanwhile.
pub fn map_lookup(map: &OwnedFd, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let (key, value) = (key.as_ptr() as u64, value.as_mut_ptr() as u64);
    found(map_elem(BPF_MAP_LOOKUP_ELEM, map, key, value))
}

/// `BPF_MAP_UPDATE_ELEM` of `key` to `value`.
pub fn map_update(map: &OwnedFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    let (key, value) = (key.as_ptr() as u64, value.as_ptr() as u64);
    map_elem(BPF_MAP_UPDATE_ELEM, map, key, value)
}

/// One map element `command` on the buffers at `key` and `value`.
fn map_elem(command: libc::c_long, map: &OwnedFd, key: u64, value: u64) -> io::Result<()> {
    let attr = MapElem {
        map_fd: fd_number(map.as_fd())?,
        _pad: 0,
        key,
        value,
        flags: 0,
    };
    bpf(command, &attr).map(drop)
}

/// A map command's result as found (true) or not there (false, `ENOENT`).
fn found(result: io::Result<()>) -> io::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(error) => Err(error),
    }
}

/// The map element commands' part of `union bpf_attr`.
#[repr(C)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// The value, or the next key.
    value: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
