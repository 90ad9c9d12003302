//! Network namespaces: running code inside one, and the cookie the kernel
//! programs see for it.

use std::{
    fs::File,
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use nix::{
    sched::{CloneFlags, setns},
    sys::socket::{AddressFamily, SockFlag, SockType, socket},
};

/// `SO_NETNS_COOKIE` (Linux 5.14), absent from the libc crate's list.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Runs `task` in a short-lived thread that joins the network namespace at
/// `path` (`/proc/PID/ns/net`, `/run/netns/NAME`), and returns what it
/// returned; the calling thread never changes namespace. Sockets `task`
/// creates stay in that namespace wherever they are used afterwards.
pub fn in_netns<T: Send>(path: &Path, task: impl FnOnce() -> T + Send) -> io::Result<T> {
    in_opened_netns(&File::open(path)?, path, task)
}

/// [`in_netns`] for a namespace opened before (`namespace`, opened at
/// `path`): it is the same namespace even once the process whose
/// `/proc/PID/ns/net` it was has exited.
pub fn in_opened_netns<T: Send>(
    namespace: &File,
    path: &Path,
    task: impl FnOnce() -> T + Send,
) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(namespace.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|errno| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{} is not a network namespace: setns: {errno}",
                            path.display()
                        ),
                    )
                })?;
                Ok(task())
            })
            .join()
            .map_err(|_| io::Error::other("a thread inside a network namespace panicked"))?
    })
}

/// Runs `task` in the network namespace at `path`, or in this thread's
/// when there is none.
pub fn in_netns_or_here<T: Send>(
    path: Option<&Path>,
    task: impl FnOnce() -> T + Send,
) -> io::Result<T> {
    match path {
        Some(path) => in_netns(path, task),
        None => Ok(task()),
    }
}

/// The cookie of the network namespace at `path`: what
/// `bpf_get_netns_cookie()` returns for its sockets.
pub fn netns_cookie(path: &Path) -> io::Result<u64> {
    in_netns(path, current_netns_cookie)?
}

/// The cookie of the calling thread's network namespace, asked of a
/// socket created there.
pub fn current_netns_cookie() -> io::Result<u64> {
    let socket = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    let mut cookie = 0u64;
    let mut len = libc::socklen_t::try_from(size_of::<u64>()).expect("8 fits a socklen_t");
    // SAFETY: `cookie` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}
