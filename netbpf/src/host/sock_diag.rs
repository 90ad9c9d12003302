//! The sockets of a network namespace, from the kernel's `sock_diag`
//! netlink interface: the bound ones (what `ss -tlun` lists) and the
//! connected ones, with socket cookies and cgroup ids; and destroying one
//! (what `ss -K` does).

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla as _,
};
use netlink_packet_sock_diag::{
    SockDiagDestroy, SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

/// `INET_DIAG_CGROUP_ID` (Linux 5.7): the cgroup v2 id of the socket.
const INET_DIAG_CGROUP_ID: u16 = 21;

/// A socket the kernel reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSocket {
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The socket cookie, as `bpf_get_socket_cookie()` returns it.
    pub cookie: u64,
    /// The cgroup the socket belongs to, where the kernel tells.
    pub cgroup_id: Option<u64>,
    /// The socket's inode: its `socket:[INODE]` in `/proc/PID/fd`.
    pub inode: u32,
    /// The interface it is bound to (`SO_BINDTODEVICE`), or 0.
    pub interface: u32,
    /// The user that made the socket.
    pub uid: u32,
}

/// The listening TCP sockets and all UDP sockets of the calling thread's
/// network namespace, IPv4 and IPv6.
pub fn bound_sockets() -> io::Result<Vec<DiagSocket>> {
    sockets(&[
        (IPPROTO_TCP, StateFlags::LISTEN),
        (IPPROTO_UDP, StateFlags::all()),
    ])
}

/// The TCP sockets with a peer (connecting, connected, or closed by the
/// peer but not yet by their process) and the connected UDP sockets of the
/// calling thread's network namespace, IPv4 and IPv6.
pub fn connected_sockets() -> io::Result<Vec<DiagSocket>> {
    sockets(&[
        (
            IPPROTO_TCP,
            StateFlags::SYN_SENT | StateFlags::ESTABLISHED | StateFlags::CLOSE_WAIT,
        ),
        // A connected UDP socket is in TCP_ESTABLISHED's state.
        (IPPROTO_UDP, StateFlags::ESTABLISHED),
    ])
}

/// Every socket of each (protocol, states) of `selection`, in both
/// families.
fn sockets(selection: &[(u8, StateFlags)]) -> io::Result<Vec<DiagSocket>> {
    let mut socket = netlink_socket()?;
    let mut found = Vec::new();
    for family in [AF_INET, AF_INET6] {
        for (protocol, states) in selection {
            dump(&mut socket, family, *protocol, states.clone(), &mut found)?;
        }
    }
    Ok(found)
}

/// A `sock_diag` netlink socket of the calling thread's network namespace.
fn netlink_socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    Ok(socket)
}

/// Destroys `socket`, found in the calling thread's network namespace: a
/// TCP socket is reset, a UDP socket disconnected; its process's next
/// call on it fails with `ECONNABORTED`. Needs `CONFIG_INET_DIAG_DESTROY`
/// (`EOPNOTSUPP` without it); a socket gone meanwhile is `ENOENT`.
pub fn destroy(socket: &DiagSocket) -> io::Result<()> {
    let netlink = netlink_socket()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let family = if socket.local.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    };
    let mut request = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(SockDiagDestroy::new(SockDiagMessage::InetRequest(
            InetRequest {
                family,
                protocol: socket.protocol,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::all(),
                socket_id: SocketId {
                    source_port: socket.local.port(),
                    destination_port: socket.remote.port(),
                    source_address: socket.local.ip(),
                    destination_address: socket.remote.ip(),
                    interface_id: socket.interface,
                    cookie: cookie_bytes(socket.cookie),
                },
            },
        ))),
    );
    request.finalize();
    let mut buffer = vec![0; request.buffer_len()];
    request.serialize(&mut buffer);
    netlink.send(&buffer, 0)?;
    let mut received = Vec::with_capacity(4096);
    netlink.recv(&mut received, 0)?;
    let reply = NetlinkMessage::<SockDiagDestroy>::deserialize(&received).map_err(|error| {
        io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {error}"))
    })?;
    match reply.payload {
        NetlinkPayload::Error(error) => match error.code {
            None => Ok(()),
            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
        },
        other => Err(io::Error::other(format!(
            "sock_diag destroy answered {other:?}"
        ))),
    }
}

/// Asks for every socket of `family` and `protocol` in `states`.
fn dump(
    socket: &mut Socket,
    family: u8,
    protocol: u8,
    states: StateFlags,
    found: &mut Vec<DiagSocket>,
) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut buffer = vec![0; request.buffer_len()];
    request.serialize(&mut buffer);
    socket.send(&buffer, 0)?;

    let mut received = Vec::with_capacity(64 * 1024);
    loop {
        received.clear();
        let size = socket.recv(&mut received, 0)?;
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&received[offset..size])
                .map_err(|error| {
                io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {error}"))
            })?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    found.push(diag_socket(protocol, &response));
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(error) => {
                    return Err(io::Error::other(format!("sock_diag dump: {error}")));
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

fn diag_socket(protocol: u8, response: &InetResponse) -> DiagSocket {
    let id = &response.header.socket_id;
    let cgroup_id = response.nlas.iter().find_map(|nla| match nla {
        Nla::Other(other) if other.kind() == INET_DIAG_CGROUP_ID && other.value_len() == 8 => {
            let mut value = [0u8; 8];
            other.emit_value(&mut value);
            Some(u64::from_ne_bytes(value))
        }
        _ => None,
    });
    DiagSocket {
        protocol,
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        cookie: cookie(id.cookie),
        cgroup_id,
        inode: response.header.inode,
        interface: id.interface_id,
        uid: response.header.uid,
    }
}

/// The kernel writes a cookie as two host-order 32-bit halves, low first.
fn cookie(bytes: [u8; 8]) -> u64 {
    let low = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let high = u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    u64::from(high) << 32 | u64::from(low)
}

/// A cookie as the kernel reads it in a request: [`cookie`] undone.
fn cookie_bytes(cookie: u64) -> [u8; 8] {
    let [low, high] = [cookie & u64::from(u32::MAX), cookie >> 32]
        .map(|half| u32::try_from(half).expect("32 bits").to_ne_bytes());
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&low);
    bytes[4..].copy_from_slice(&high);
    bytes
}

/// Whether `addr` is localhost or a wildcard: what a scope's own service
/// listens on (IPv4-mapped forms included).
#[must_use]
pub fn is_local_or_wildcard(addr: IpAddr) -> bool {
    let addr = addr.to_canonical();
    addr.is_loopback() || addr.is_unspecified()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_two_host_order_halves() {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&0x89ab_cdefu32.to_ne_bytes());
        bytes[4..].copy_from_slice(&0x0123_4567u32.to_ne_bytes());
        assert_eq!(cookie(bytes), 0x0123_4567_89ab_cdef);
        assert_eq!(cookie_bytes(0x0123_4567_89ab_cdef), bytes);
    }

    #[test]
    fn local_means_loopback_or_wildcard_in_both_families() {
        for local in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
        ] {
            assert!(is_local_or_wildcard(local.parse().unwrap()), "{local}");
        }
        for other in ["10.0.0.1", "fd00::1", "::ffff:10.0.0.1"] {
            assert!(!is_local_or_wildcard(other.parse().unwrap()), "{other}");
        }
    }
}
