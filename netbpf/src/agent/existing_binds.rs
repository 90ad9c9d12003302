//! The localhost ports already bound inside scopes when netbpf starts.
//!
//! The kernel programs count binds as they happen (`post_bind`) and forget
//! them on release; a service that was listening before netbpf attached
//! would be forwarded away from by an "every port" rule. This finds those
//! sockets with `sock_diag`, each with the cookie the release hook will see,
//! so they are counted exactly like the binds the programs saw.

use std::io;

use netbpf_common::{PROTO_UDP, ScopePort};

use super::scope_sockets::{Owners, ScopePlace};
use crate::{
    datapath::BoundSocket,
    host::{
        netns,
        sock_diag::{self, DiagSocket},
    },
};

/// Every socket already bound on localhost or a wildcard address inside
/// one of `scopes`.
pub fn find(scopes: &[ScopePlace]) -> io::Result<Vec<BoundSocket>> {
    let owners = Owners::of(scopes);
    let mut found = Vec::new();
    for namespace in &owners.namespaces {
        let listed = namespace.run(|| -> io::Result<_> {
            Ok((netns::current_netns_cookie()?, sock_diag::bound_sockets()?))
        });
        let (cookie, sockets) = match listed {
            Ok(listed) => listed?,
            // Every process of it exited while we looked: so did its
            // sockets.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        found.extend(
            sockets
                .iter()
                .filter(|socket| is_local_bind(socket))
                .filter_map(|socket| Some((owners.scope_of(socket, cookie)?, socket)))
                .map(|(scope, socket)| BoundSocket {
                    cookie: socket.cookie,
                    inode: socket.inode,
                    key: ScopePort::new(scope, socket.local.port(), socket.protocol),
                }),
        );
    }
    Ok(found)
}

/// What the bind hooks would have counted: a bound port on localhost or a
/// wildcard address, not a connected UDP client.
fn is_local_bind(socket: &DiagSocket) -> bool {
    let connected = socket.protocol == PROTO_UDP && socket.remote.port() != 0;
    socket.local.port() != 0 && !connected && sock_diag::is_local_or_wildcard(socket.local.ip())
}
