//! Rules whose target moved between two plans. The kernel programs send
//! new connections to the new target at once; a socket connected through
//! the rule before stays with the old one until it is destroyed.

use std::net::SocketAddr;

use netbpf_common::{ForwardTarget, PROTO_TCP};

use super::{Plan, ip_of};

/// A rule of one scope whose target changed: where its sockets connected
/// before, and how to tell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub scope: u32,
    pub protocol: u8,
    /// The rule's counter slot in the old plan: the one the records of
    /// what its sockets dialed (`REVERSE`) name.
    pub rule: u32,
    /// The old target; port 0 when the rule kept the dialed port or
    /// covered a range of them.
    pub old_target: SocketAddr,
    /// Its TCP sockets kept no record: every TCP socket of the scope
    /// connected to the old target came through it.
    pub derived_peer: bool,
    /// Its TCP connections are reset (`on_move = "reset"`); its connected
    /// UDP sockets are always disconnected.
    pub reset_tcp: bool,
}

impl Moved {
    /// Whether a socket of this rule's scope and protocol connected to
    /// `remote` may have come through it.
    #[must_use]
    pub fn reached(&self, remote: SocketAddr) -> bool {
        remote.ip().to_canonical() == self.old_target.ip()
            && (self.old_target.port() == 0 || remote.port() == self.old_target.port())
    }

    /// Whether its sockets of `protocol` are destroyed at all.
    #[must_use]
    pub fn destroys(&self) -> bool {
        self.protocol != PROTO_TCP || self.reset_tcp
    }
}

impl Plan {
    /// The rules of `old` that this plan keeps under the same key (same
    /// scope, protocol and dialed port or address) with another target.
    #[must_use]
    pub fn moved_since(&self, old: &Self) -> Vec<Moved> {
        let mut moved = Vec::new();
        let mut compare = |scope: u32, protocol: u8, port: Option<u16>, before, after| {
            if let Some(found) = moved_rule(scope, protocol, port, before, after) {
                moved.push(found);
            }
        };
        for (key, before) in &old.forward_ports {
            if let Some(after) = self.forward_ports.get(key) {
                compare(key.scope, key.protocol, Some(key.port), before, after);
            }
        }
        for (entry, before) in &old.forwards {
            if let Some(after) = self.forwards.get(entry) {
                let key = entry.1;
                compare(
                    u32::from_be_bytes(key.scope),
                    key.protocol,
                    None,
                    before,
                    after,
                );
            }
        }
        for (key, before) in &old.aliases {
            if let Some(after) = self.aliases.get(key) {
                let port = (key.port != 0).then_some(key.port);
                compare(key.scope, key.protocol, port, before, after);
            }
        }
        moved
    }
}

/// The move of one rule from `before` to `after`, if its target changed.
/// `port` is the one port the rule is dialed at, if it is one.
fn moved_rule(
    scope: u32,
    protocol: u8,
    port: Option<u16>,
    before: &ForwardTarget,
    after: &ForwardTarget,
) -> Option<Moved> {
    let same = (before.addr, before.family, before.port_delta)
        == (after.addr, after.family, after.port_delta);
    if same || before.is_own_service() || after.is_own_service() {
        return None;
    }
    let old_port = port.map_or(0, |port| port.wrapping_add(before.port_delta));
    Some(Moved {
        scope,
        protocol,
        rule: before.rule,
        old_target: SocketAddr::new(ip_of(before.addr, before.family), old_port),
        derived_peer: protocol == PROTO_TCP && before.derives_peer(),
        reset_tcp: after.resets_tcp_on_move(),
    })
}
