//! The network interfaces of a namespace, from rtnetlink: listed once,
//! then watched as they come, change, are addressed and go.

use std::io;

use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::io::{Interest, unix::AsyncFd};

use crate::host::rtnetlink;

/// An interface, as the MSS clamp and doctor need to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// Whether it is a bridge (that containers' veths are ports of).
    pub bridge: bool,
    /// Bytes before the IP header of its packets: 14 on Ethernet, 0 on L3
    /// devices (WireGuard, tun); None where netbpf cannot parse them.
    pub l3_offset: Option<u16>,
    /// The bridge it is a port of, by index.
    pub master: Option<u32>,
}

/// A change to the interfaces of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A new interface, or one that changed (e.g. its name).
    Present(Interface),
    /// The interface with this index is gone.
    Gone(u32),
    /// An address of the interface with this index came or went.
    Readdressed(u32),
}

/// Opens, in the calling thread's network namespace, a socket subscribed
/// to interface and address changes, then lists the interfaces there. Subscribing
/// first means no interface falls between the list and the watch.
pub fn subscribe_and_list() -> io::Result<(Socket, Vec<Interface>)> {
    let mut watch = Socket::new(NETLINK_ROUTE)?;
    watch.bind(&SocketAddr::new(0, 0))?;
    for group in [
        libc::RTNLGRP_LINK,
        libc::RTNLGRP_IPV4_IFADDR,
        libc::RTNLGRP_IPV6_IFADDR,
    ] {
        watch.add_membership(group)?;
    }
    watch.set_non_blocking(true)?;
    Ok((watch, list()?))
}

/// The interfaces of the calling thread's network namespace.
pub fn list() -> io::Result<Vec<Interface>> {
    Ok(
        rtnetlink::dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?
            .iter()
            .filter_map(|message| match event(message) {
                Some(LinkEvent::Present(interface)) => Some(interface),
                _ => None,
            })
            .collect(),
    )
}

/// Interface changes, read from a socket made by [`subscribe_and_list`].
pub struct LinkWatcher {
    socket: AsyncFd<Socket>,
    received: Vec<u8>,
}

impl LinkWatcher {
    /// Watches with `socket`; needs a tokio runtime.
    pub fn new(socket: Socket) -> io::Result<Self> {
        // SAFETY: the socket owns its descriptor, which stays open and the
        // same until the AsyncFd drops it.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(|error| io::Error::other(error.to_string()))?;
        Ok(Self {
            socket,
            received: Vec::with_capacity(64 * 1024),
        })
    }

    /// The next changes.
    pub async fn next(&mut self) -> io::Result<Vec<LinkEvent>> {
        loop {
            let mut ready = self.socket.readable().await?;
            self.received.clear();
            match ready.try_io(|socket| socket.get_ref().recv(&mut self.received, 0)) {
                Ok(Ok(_)) => {
                    let mut messages = Vec::new();
                    rtnetlink::parse(&self.received, &mut messages)?;
                    return Ok(messages.iter().filter_map(event).collect());
                }
                // The kernel drops events when the socket overflows: the
                // caller must not trust its view then.
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => {}
            }
        }
    }
}

/// The change a route message tells, if it is about a link or an address.
fn event(message: &RouteNetlinkMessage) -> Option<LinkEvent> {
    match message {
        // Bridge-family messages speak of bridge ports (a port leaving its
        // bridge is an RTM_DELLINK), not of interfaces coming and going.
        RouteNetlinkMessage::NewLink(link) | RouteNetlinkMessage::DelLink(link)
            if link.header.interface_family != AddressFamily::Unspec =>
        {
            None
        }
        RouteNetlinkMessage::NewLink(link) => Some(LinkEvent::Present(interface(link))),
        RouteNetlinkMessage::DelLink(link) => Some(LinkEvent::Gone(link.header.index)),
        RouteNetlinkMessage::NewAddress(address) | RouteNetlinkMessage::DelAddress(address) => {
            Some(LinkEvent::Readdressed(address.header.index))
        }
        _ => None,
    }
}

fn interface(link: &LinkMessage) -> Interface {
    let name = link
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let l3_offset = match link.header.link_layer_type {
        LinkLayerType::Ether | LinkLayerType::Loopback => Some(14),
        // Devices whose packets start at the IP header: WireGuard and tun
        // (NONE), PPP(oE), raw IP, IP-in-IP and SIT tunnels.
        LinkLayerType::None
        | LinkLayerType::Ppp
        | LinkLayerType::Rawip
        | LinkLayerType::Tunnel
        | LinkLayerType::Tunnel6
        | LinkLayerType::Sit => Some(0),
        _ => None,
    };
    let master = link
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Controller(master) => Some(*master),
            _ => None,
        });
    let mtu = link
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        })
        .unwrap_or_default();
    let bridge = link.attributes.iter().any(|attribute| match attribute {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    });
    Interface {
        index: link.header.index,
        name,
        mtu,
        bridge,
        l3_offset,
        master,
    }
}
