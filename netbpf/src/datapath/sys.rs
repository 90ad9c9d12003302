//! The `bpf(2)` commands aya does not offer: objects opened from their
//! pins, links updated and detached, and map entries as raw bytes.

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

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

fn fd_number(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(io::Error::other)
}

/// The `bpf(2)` system call with `attr`, whose size the kernel is told.
fn bpf<T>(command: libc::c_long, attr: &T) -> io::Result<i32> {
    // SAFETY: `attr` is a repr(C) prefix of `union bpf_attr` for `command`,
    // valid for reads of its size for the duration of the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_ref(attr),
            std::mem::size_of::<T>(),
        )
    };
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
