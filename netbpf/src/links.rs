//! The network interfaces of a namespace, from rtnetlink: listed once,
//! then watched as they come, change and go.

use std::io;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkLayerType, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::io::{Interest, unix::AsyncFd};

/// An interface, as the MSS clamp needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    /// Bytes before the IP header of its packets: 14 on Ethernet, 0 on L3
    /// devices (WireGuard, tun); None where netbpf cannot parse them.
    pub l3_offset: Option<u16>,
}

/// A change to the interfaces of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A new interface, or one that changed (e.g. its name).
    Present(Interface),
    /// The interface with this index is gone.
    Gone(u32),
}

/// Opens, in the calling thread's network namespace, a socket subscribed
/// to interface changes, then lists the interfaces there. Subscribing
/// first means no interface falls between the list and the watch.
pub fn subscribe_and_list() -> io::Result<(Socket, Vec<Interface>)> {
    let mut watch = Socket::new(NETLINK_ROUTE)?;
    watch.bind(&SocketAddr::new(0, 0))?;
    watch.add_membership(libc::RTNLGRP_LINK)?;
    watch.set_non_blocking(true)?;
    let mut list = Socket::new(NETLINK_ROUTE)?;
    list.bind_auto()?;
    list.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    request.finalize();
    let mut buffer = vec![0; request.buffer_len()];
    request.serialize(&mut buffer);
    list.send(&buffer, 0)?;
    let mut interfaces = Vec::new();
    let mut received = Vec::with_capacity(64 * 1024);
    loop {
        received.clear();
        list.recv(&mut received, 0)?;
        let (events, done) = parse(&received)?;
        interfaces.extend(events.into_iter().filter_map(|event| match event {
            LinkEvent::Present(interface) => Some(interface),
            LinkEvent::Gone(_) => None,
        }));
        if done {
            return Ok((watch, interfaces));
        }
    }
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
                Ok(Ok(_)) => return parse(&self.received).map(|(events, _)| events),
                // The kernel drops events when the socket overflows: the
                // caller must not trust its view then.
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => {}
            }
        }
    }
}

/// The link messages in one netlink datagram, and whether a dump ended.
fn parse(datagram: &[u8]) -> io::Result<(Vec<LinkEvent>, bool)> {
    let mut events = Vec::new();
    let mut offset = 0;
    while offset < datagram.len() {
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
            .map_err(|error| {
                io::Error::new(io::ErrorKind::InvalidData, format!("rtnetlink: {error}"))
            })?;
        let length = message.header.length as usize;
        match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                events.push(LinkEvent::Present(interface(&link)));
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                events.push(LinkEvent::Gone(link.header.index));
            }
            NetlinkPayload::Done(_) => return Ok((events, true)),
            NetlinkPayload::Error(error) => {
                return Err(io::Error::other(format!("rtnetlink: {error}")));
            }
            _ => {}
        }
        if length == 0 {
            break;
        }
        offset += length;
    }
    Ok((events, false))
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
        LinkLayerType::None => Some(0),
        _ => None,
    };
    Interface {
        index: link.header.index,
        name,
        l3_offset,
    }
}
