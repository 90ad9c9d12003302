//! Network namespaces: the cookie the kernel programs see for one.

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

/// The cookie of the network namespace at `path` (`/proc/PID/ns/net`,
/// `/run/netns/NAME`): what `bpf_get_netns_cookie()` returns for its
/// sockets.
///
/// A short-lived thread joins the namespace and asks a socket created
/// there, so the calling thread never changes namespace.
pub fn netns_cookie(path: &Path) -> io::Result<u64> {
    let namespace = File::open(path)?;
    let display = path.display().to_string();
    std::thread::spawn(move || {
        setns(namespace.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|errno| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{display} is not a network namespace: setns: {errno}"),
            )
        })?;
        socket_netns_cookie()
    })
    .join()
    .map_err(|_| io::Error::other("the netns cookie thread panicked"))?
}

/// The netns cookie of a socket created in the calling thread's namespace.
fn socket_netns_cookie() -> io::Result<u64> {
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
