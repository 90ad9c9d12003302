//! Addresses as the socket hooks classify and rewrite them, apart from the
//! context they are read from: localhost and wildcard classes, IPv4-mapped
//! IPv6, and where a forward sends a dialed address. The programs read and
//! write `bpf_sock_addr` around these; the unit tests run on the host.
#![expect(
    clippy::inline_always,
    reason = "the kernel programs call these, each with its own constants folded in (a socket family decides which context fields may be touched): inlined on purpose"
)]

use crate::{AF_INET, AF_INET6, ForwardTarget, SockAddr};

/// `::ffff:0:0/96` marker word of an IPv4-mapped IPv6 address.
const V4_MAPPED_MARKER: u32 = 0x0000_ffff_u32.to_be();

/// Whether an IPv4 address (network order) is in 127.0.0.0/8.
#[inline(always)]
fn is_loopback4(addr: u32) -> bool {
    u32::from_be(addr) >> 24 == 127
}

/// Whether `addr` of `family` is localhost: 127.0.0.0/8, `::1` or
/// `::ffff:127.0.0.0/104`.
#[inline(always)]
#[must_use]
pub fn is_localhost(addr: &[u32; 4], family: u16) -> bool {
    if family == AF_INET {
        return is_loopback4(addr[0]);
    }
    if addr[0] != 0 || addr[1] != 0 {
        return false;
    }
    (addr[2] == 0 && addr[3] == 1u32.to_be())
        || (addr[2] == V4_MAPPED_MARKER && is_loopback4(addr[3]))
}

/// Whether `addr` of `family` is a wildcard: `0.0.0.0`, `::` or
/// `::ffff:0.0.0.0`.
#[inline(always)]
#[must_use]
pub fn is_wildcard(addr: &[u32; 4], family: u16) -> bool {
    if family == AF_INET {
        return addr[0] == 0;
    }
    addr[0] == 0 && addr[1] == 0 && (addr[2] == 0 || addr[2] == V4_MAPPED_MARKER) && addr[3] == 0
}

/// The loopback address Linux connects to in place of the wildcard `addr`
/// of `family`: `0.0.0.0` is `127.0.0.1`, `::` is `::1`, and
/// `::ffff:0.0.0.0` is `::ffff:127.0.0.1`.
#[inline(always)]
#[must_use]
pub fn loopback_for_wildcard(addr: &[u32; 4], family: u16) -> [u32; 4] {
    let loopback4 = 0x7f00_0001_u32.to_be();
    if family == AF_INET {
        [loopback4, 0, 0, 0]
    } else if addr[2] == V4_MAPPED_MARKER {
        [0, 0, V4_MAPPED_MARKER, loopback4]
    } else {
        [0, 0, 0, 1u32.to_be()]
    }
}

/// `addr` of a socket of `family` in its own family: an IPv4-mapped IPv6
/// address is IPv4.
#[inline(always)]
#[must_use]
pub fn canonical(addr: &[u32; 4], family: u16) -> ([u32; 4], u16) {
    if family == AF_INET6 && addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_MARKER {
        ([addr[3], 0, 0, 0], AF_INET)
    } else {
        (*addr, family)
    }
}

/// What a socket whose peer (as it sees it) is `peer` dialed, if it dialed
/// the loopback address of the peer's family at `port` (network order):
/// `127.0.0.1`; `::ffff:127.0.0.1` for an IPv4-mapped peer; else `::1`. The
/// connect hook keeps nothing for a connect this gives back exactly, and
/// `getpeername()` gives it back.
#[inline(always)]
#[must_use]
pub fn derived_dialed(peer: &SockAddr, port: u16) -> SockAddr {
    SockAddr {
        addr: loopback_for_wildcard(&peer.addr, peer.family),
        port,
        family: peer.family,
    }
}

/// `addr`, seen by an IPv4 hook, as an IPv6 socket sees it: IPv4-mapped.
#[inline(always)]
#[must_use]
pub fn mapped(addr: &SockAddr) -> SockAddr {
    SockAddr {
        addr: [0, 0, V4_MAPPED_MARKER, addr.addr[0]],
        port: addr.port,
        family: AF_INET6,
    }
}

/// `target` (of `target_family`) as an address of a socket of
/// `socket_family`: IPv4 targets of IPv6 sockets become IPv4-mapped; an
/// IPv6 target cannot be reached from an IPv4 socket.
#[inline(always)]
#[must_use]
pub fn for_socket(target: &[u32; 4], target_family: u16, socket_family: u16) -> Option<[u32; 4]> {
    match (target_family, socket_family) {
        (AF_INET, AF_INET6) => Some([0, 0, V4_MAPPED_MARKER, target[0]]),
        (a, b) if a == b => Some(*target),
        _ => None,
    }
}

/// Where a socket of `family` that dialed `port` (host order) goes through
/// `target`, as its hook writes it; None when the target cannot be
/// reached that way: an IPv6 target from an IPv4 socket, or an IPv4 one
/// by a datagram of an IPv6 socket (`udpv6_sendmsg()` refuses a
/// destination rewritten to an IPv4-mapped address).
#[inline(always)]
#[must_use]
pub fn forwarded(
    target: &ForwardTarget,
    port: u16,
    family: u16,
    datagram: bool,
) -> Option<SockAddr> {
    if datagram && family == AF_INET6 && target.family == AF_INET {
        return None;
    }
    Some(SockAddr {
        addr: for_socket(&target.addr, target.family, family)?,
        port: port.wrapping_add(target.port_delta).to_be(),
        family,
    })
}

#[cfg(test)]
mod tests {
    use core::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4(addr: &str) -> [u32; 4] {
        let addr: Ipv4Addr = addr.parse().unwrap();
        [u32::from_ne_bytes(addr.octets()), 0, 0, 0]
    }

    fn v6(addr: &str) -> [u32; 4] {
        let octets = addr.parse::<Ipv6Addr>().unwrap().octets();
        core::array::from_fn(|word| {
            u32::from_ne_bytes(octets[word * 4..word * 4 + 4].try_into().unwrap())
        })
    }

    #[test]
    fn localhost_is_the_loopback_nets_of_both_families() {
        for addr in ["127.0.0.1", "127.0.0.53", "127.255.255.254"] {
            assert!(is_localhost(&v4(addr), AF_INET), "{addr}");
        }
        for addr in ["::1", "::ffff:127.0.0.1", "::ffff:127.1.2.3"] {
            assert!(is_localhost(&v6(addr), AF_INET6), "{addr}");
        }
        for addr in ["128.0.0.1", "10.0.0.1", "0.0.0.0"] {
            assert!(!is_localhost(&v4(addr), AF_INET), "{addr}");
        }
        for addr in ["::2", "fe80::1", "::ffff:10.0.0.1", "::127.0.0.1", "1::1"] {
            assert!(!is_localhost(&v6(addr), AF_INET6), "{addr}");
        }
    }

    #[test]
    fn a_wildcard_connects_to_its_familys_loopback() {
        let cases = [
            (v4("0.0.0.0"), AF_INET, v4("127.0.0.1")),
            (v6("::"), AF_INET6, v6("::1")),
            (v6("::ffff:0.0.0.0"), AF_INET6, v6("::ffff:127.0.0.1")),
        ];
        for (wildcard, family, loopback) in cases {
            assert!(is_wildcard(&wildcard, family));
            assert_eq!(loopback_for_wildcard(&wildcard, family), loopback);
            assert!(is_localhost(&loopback, family));
        }
        assert!(!is_wildcard(&v6("::1"), AF_INET6));
        assert!(!is_wildcard(&v6("::ffff:0.0.0.1"), AF_INET6));
    }

    /// The connect hook keeps nothing exactly when this gives back what
    /// the socket dialed: the loopback address of the peer's family.
    #[test]
    fn a_derived_dial_is_the_loopback_of_the_peers_family() {
        let port = 8082u16.to_be();
        let at = |addr, family| SockAddr { addr, port, family };
        let cases = [
            (at(v4("10.200.1.1"), AF_INET), at(v4("127.0.0.1"), AF_INET)),
            (
                at(v6("::ffff:10.200.1.1"), AF_INET6),
                at(v6("::ffff:127.0.0.1"), AF_INET6),
            ),
            (at(v6("fd00::1"), AF_INET6), at(v6("::1"), AF_INET6)),
        ];
        for (peer, dialed) in cases {
            assert_eq!(derived_dialed(&peer, port), dialed, "{peer:?}");
        }
        // Dialed otherwise, a connect is kept in the socket's storage.
        let peer = at(v4("10.200.1.1"), AF_INET);
        assert_ne!(derived_dialed(&peer, port), at(v4("127.0.0.5"), AF_INET));
        let mapped_peer = at(v6("::ffff:10.200.1.1"), AF_INET6);
        assert_ne!(derived_dialed(&mapped_peer, port), at(v6("::1"), AF_INET6));
    }

    #[test]
    fn a_mapped_address_is_ipv4_in_its_own_family() {
        assert_eq!(
            canonical(&v6("::ffff:10.0.0.1"), AF_INET6),
            (v4("10.0.0.1"), AF_INET)
        );
        assert_eq!(
            canonical(&v6("fd00::1"), AF_INET6),
            (v6("fd00::1"), AF_INET6)
        );
        let seen = SockAddr {
            addr: v4("10.0.0.1"),
            port: 80u16.to_be(),
            family: AF_INET,
        };
        assert_eq!(mapped(&seen).addr, v6("::ffff:10.0.0.1"));
    }

    fn target(addr: [u32; 4], family: u16, port_delta: u16) -> ForwardTarget {
        ForwardTarget {
            addr,
            family,
            port_delta,
            rule: 0,
            flags: 0,
        }
    }

    #[test]
    fn a_forward_moves_the_port_by_its_delta_wrapping() {
        let range = target(v4("10.200.1.1"), AF_INET, 1000);
        let to = forwarded(&range, 8082, AF_INET, false).unwrap();
        assert_eq!((to.addr, u16::from_be(to.port)), (v4("10.200.1.1"), 9082));
        // 9000-9010 -> 8000-8010: a delta of -1000, wrapping.
        let down = target(v4("10.200.1.1"), AF_INET, 1000u16.wrapping_neg());
        assert_eq!(
            u16::from_be(forwarded(&down, 9005, AF_INET, false).unwrap().port),
            8005
        );
    }

    #[test]
    fn an_ipv4_target_is_mapped_for_an_ipv6_socket_but_not_for_its_datagrams() {
        let to = target(v4("10.200.1.1"), AF_INET, 0);
        let connected = forwarded(&to, 53, AF_INET6, false).unwrap();
        assert_eq!(connected.addr, v6("::ffff:10.200.1.1"));
        assert_eq!(forwarded(&to, 53, AF_INET6, true), None);
        assert!(forwarded(&to, 53, AF_INET, true).is_some());
    }

    #[test]
    fn an_ipv6_target_is_out_of_an_ipv4_sockets_reach() {
        let to = target(v6("fd00::1"), AF_INET6, 0);
        assert_eq!(forwarded(&to, 80, AF_INET, false), None);
        assert_eq!(
            forwarded(&to, 80, AF_INET6, false).unwrap().addr,
            v6("fd00::1")
        );
    }
}
