//! Sockets of other processes, taken into this one: which process holds a
//! socket `sock_diag` reported (by inode, from `/proc/PID/fd`), and a
//! duplicate of its descriptor (`pidfd_open` + `pidfd_getfd`, which needs
//! `CAP_SYS_PTRACE`).

use std::{
    collections::HashMap,
    fs, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// The process and descriptor that hold each socket of `inodes` (one walk
/// of `/proc`); sockets nobody holds any more are absent.
#[must_use]
pub fn owners(inodes: &[u32]) -> HashMap<u32, (u32, i32)> {
    let mut found = HashMap::new();
    let Ok(processes) = fs::read_dir("/proc") else {
        return found;
    };
    for process in processes.flatten() {
        if found.len() == inodes.len() {
            break;
        }
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|pid| pid.parse().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(inode) = fs::read_link(fd.path())
                .ok()
                .and_then(|link| socket_inode(link.to_str()?))
            else {
                continue;
            };
            if inodes.contains(&inode)
                && let Some(fd) = fd.file_name().to_str().and_then(|fd| fd.parse().ok())
            {
                found.entry(inode).or_insert((pid, fd));
            }
        }
    }
    found
}

/// The inode of a `/proc/PID/fd` link `socket:[INODE]`.
fn socket_inode(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// A duplicate, in this process, of descriptor `fd` of process `pid`.
fn duplicate(pid: u32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) with no flags; the result is checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `pidfd` is a new descriptor nobody else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(i32::try_from(pidfd).map_err(io::Error::other)?) };
    // SAFETY: pidfd_getfd(2) with no flags; the result is checked.
    let duplicate = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if duplicate < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(duplicate).map_err(io::Error::other)?) })
}

/// A duplicate of the socket `sock_diag` reported with `cookie`, which
/// process `pid` held as descriptor `fd` (from [`owners`]); None when that
/// descriptor names another socket now (the pid or the number reused since
/// `/proc` was read): only the very socket reported is ever taken.
pub fn take(pid: u32, fd: i32, cookie: u64) -> io::Result<Option<OwnedFd>> {
    let duplicate = duplicate(pid, fd)?;
    Ok((cookie_of(&duplicate) == Some(cookie)).then_some(duplicate))
}

/// The cookie of a socket (`SO_COOKIE`): the one `sock_diag` and the kernel
/// programs know it by.
fn cookie_of(socket: &OwnedFd) -> Option<u64> {
    let mut cookie = 0u64;
    getsockopt_into(socket, libc::SO_COOKIE, &mut cookie).then_some(cookie)
}

/// Whether a socket is listening (`SO_ACCEPTCONN`).
#[must_use]
pub fn is_listening(socket: &OwnedFd) -> bool {
    let mut listening = 0i32;
    getsockopt_into(socket, libc::SO_ACCEPTCONN, &mut listening) && listening != 0
}

/// Reads the `SOL_SOCKET` option `option` of `socket` into `value`.
fn getsockopt_into<T: Copy>(socket: &OwnedFd, option: libc::c_int, value: &mut T) -> bool {
    let mut len = libc::socklen_t::try_from(size_of::<T>()).expect("a small option");
    // SAFETY: `value` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            std::ptr::from_mut(value).cast(),
            &raw mut len,
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_socket_links_only() {
        assert_eq!(socket_inode("socket:[4026531993]"), Some(4_026_531_993));
        assert_eq!(socket_inode("pipe:[12]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }
}
