//! Sockets still connected through a rule whose target moved, destroyed
//! so that their applications connect again, to the new target: every
//! connected UDP socket (a resolver's would query the old server for as
//! long as it lives), and the TCP connections of rules that say
//! `on_move = "reset"`.
//!
//! Each is found with `sock_diag` among its scope's sockets connected to
//! the old target, checked against what its own storage says it dialed
//! through the rule (a socket that dialed the old target itself stays),
//! and destroyed with `SOCK_DESTROY`: a UDP socket is disconnected and its
//! next call fails with `ECONNABORTED`, a TCP connection is reset.

use std::{io, net::SocketAddr, path::PathBuf};

use netbpf_common::{PROTO_TCP, SockAddr};

use super::scope_sockets::{Owners, ScopePlace};
use crate::{
    datapath::Datapath,
    host::{
        netns,
        sock_diag::{self, DiagSocket},
        socket_fds,
    },
    plan::{Moved, ip_of},
};

/// What became of the sockets connected through moved rules.
#[derive(Debug, Default)]
pub struct Tally {
    /// Connected UDP sockets destroyed.
    pub udp: u64,
    /// TCP connections reset.
    pub tcp: u64,
    /// Sockets found that stay connected to their old target, and why.
    pub left: Vec<(DiagSocket, io::Error)>,
    /// Network namespaces whose sockets could not be listed, and why.
    pub unlisted: Vec<(PathBuf, io::Error)>,
}

/// Destroys the sockets of `scopes` connected through the rules of
/// `moved`.
pub fn destroy(moved: &[Moved], scopes: &[ScopePlace], datapath: &Datapath) -> Tally {
    let moved: Vec<&Moved> = moved.iter().filter(|rule| rule.destroys()).collect();
    let mut tally = Tally::default();
    if moved.is_empty() {
        return tally;
    }
    let scopes: Vec<ScopePlace> = scopes
        .iter()
        .filter(|scope| moved.iter().any(|rule| rule.scope == scope.id))
        .cloned()
        .collect();
    let owners = Owners::of(&scopes);
    for namespace in &owners.namespaces {
        let listed = namespace
            .run(|| -> io::Result<_> {
                Ok((
                    netns::current_netns_cookie()?,
                    sock_diag::connected_sockets()?,
                ))
            })
            .and_then(|listed| listed);
        let (cookie, sockets) = match listed {
            Ok(listed) => listed,
            Err(error) => {
                tally.unlisted.push((namespace.path().to_owned(), error));
                continue;
            }
        };
        let reached: Vec<(&DiagSocket, &Moved)> = sockets
            .iter()
            .filter_map(|socket| {
                let scope = owners.scope_of(socket, cookie)?;
                let rule = moved.iter().find(|rule| {
                    rule.scope == scope
                        && rule.protocol == socket.protocol
                        && rule.reached(socket.remote)
                })?;
                Some((socket, *rule))
            })
            .collect();
        let through = came_through(&reached, datapath, &mut tally);
        let destroyed = namespace.run(|| {
            through
                .into_iter()
                .map(|socket| (socket, sock_diag::destroy(socket)))
                .collect::<Vec<_>>()
        });
        match destroyed {
            Ok(outcomes) => {
                for (socket, outcome) in outcomes {
                    match outcome {
                        Ok(()) if socket.protocol == PROTO_TCP => tally.tcp += 1,
                        Ok(()) => tally.udp += 1,
                        // Closed by its application meanwhile.
                        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(error) => tally.left.push((socket.clone(), error)),
                    }
                }
            }
            Err(error) => tally.unlisted.push((namespace.path().to_owned(), error)),
        }
    }
    tally
}

/// The sockets of `reached` that their rule connected: those whose own
/// storage records the rule sending them to their peer, and the TCP
/// sockets of forwards that keep no record (every TCP socket of their
/// scope at the target came through them).
fn came_through<'a>(
    reached: &[(&'a DiagSocket, &Moved)],
    datapath: &Datapath,
    tally: &mut Tally,
) -> Vec<&'a DiagSocket> {
    let inodes: Vec<u32> = reached.iter().map(|(socket, _)| socket.inode).collect();
    let holders = socket_fds::owners(&inodes);
    let mut through = Vec::new();
    for &(socket, rule) in reached {
        if rule.derived_peer {
            through.push(socket);
            continue;
        }
        // A socket nobody holds any more is closing already.
        let Some(&(pid, fd)) = holders.get(&socket.inode) else {
            continue;
        };
        let duplicate = match socket_fds::take(pid, fd, socket.cookie) {
            Ok(Some(duplicate)) => duplicate,
            // Closed since it was listed, its number taken again.
            Ok(None) => continue,
            Err(error) => {
                tally.left.push((socket.clone(), error));
                continue;
            }
        };
        match datapath.dialed_by(&duplicate) {
            Ok(Some(dialed)) => {
                let recorded = dialed.entries.iter().any(|entry| {
                    entry.rule == rule.rule && socket_addr(&entry.to) == canonical(socket.remote)
                });
                if recorded {
                    through.push(socket);
                }
            }
            Ok(None) => {}
            Err(error) => tally.left.push((socket.clone(), io::Error::other(error))),
        }
    }
    through
}

/// `addr` with an IPv4-mapped IPv6 address as IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// An address and port as the socket hooks record them, canonical.
fn socket_addr(addr: &SockAddr) -> SocketAddr {
    SocketAddr::new(ip_of(addr.addr, addr.family), u16::from_be(addr.port))
}
