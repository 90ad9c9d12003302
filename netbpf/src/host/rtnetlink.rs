//! Dumps over rtnetlink in the calling thread's network namespace: the
//! requests behind listing interfaces, addresses and routes.

use std::io;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Every message the kernel answers `request` with, as a dump.
pub fn dump(request: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
    message.finalize();
    let mut buffer = vec![0; message.buffer_len()];
    message.serialize(&mut buffer);
    socket.send(&buffer, 0)?;
    let mut answers = Vec::new();
    let mut received = Vec::with_capacity(64 * 1024);
    loop {
        received.clear();
        socket.recv(&mut received, 0)?;
        if parse(&received, &mut answers)? {
            return Ok(answers);
        }
    }
}

/// Appends the messages of one netlink datagram to `into`; true when it
/// ends a dump.
pub fn parse(datagram: &[u8], into: &mut Vec<RouteNetlinkMessage>) -> io::Result<bool> {
    let mut offset = 0;
    while offset < datagram.len() {
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
            .map_err(|error| {
                io::Error::new(io::ErrorKind::InvalidData, format!("rtnetlink: {error}"))
            })?;
        let length = message.header.length as usize;
        match message.payload {
            NetlinkPayload::InnerMessage(inner) => into.push(inner),
            NetlinkPayload::Done(_) => return Ok(true),
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
    Ok(false)
}
