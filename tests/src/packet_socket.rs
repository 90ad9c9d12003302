//! Raw `AF_PACKET` sockets on an interface of a test namespace: to put
//! crafted frames on the wire and to read the frames that arrive.

use std::{
    fs::File,
    io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::sched::{CloneFlags, setns};

use crate::Netns;

/// `ETH_P_ALL`, in network byte order as `socket(2)` wants it.
const ETH_P_ALL_BE: u16 = 0x0003u16.to_be();

/// A raw socket bound to one interface.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens a socket on `interface` of `netns`.
    pub fn open(netns: &Netns, interface: &str) -> anyhow::Result<Self> {
        let namespace = File::open(netns.path())?;
        let interface = interface.to_owned();
        std::thread::scope(|scope| {
            scope
                .spawn(move || -> anyhow::Result<Self> {
                    setns(namespace.as_fd(), CloneFlags::CLONE_NEWNET)?;
                    let index = nix::net::if_::if_nametoindex(interface.as_str())
                        .with_context(|| format!("no interface {interface}"))?;
                    // SAFETY: plain socket(2); the result is checked.
                    let raw = unsafe {
                        libc::socket(
                            libc::AF_PACKET,
                            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                            i32::from(ETH_P_ALL_BE),
                        )
                    };
                    if raw < 0 {
                        return Err(io::Error::last_os_error()).context("socket(AF_PACKET)");
                    }
                    // SAFETY: `raw` is a new descriptor nobody else owns.
                    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                    // SAFETY: an all-zero sockaddr_ll is valid; fields set below.
                    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                    address.sll_family = u16::try_from(libc::AF_PACKET)?;
                    address.sll_protocol = ETH_P_ALL_BE;
                    address.sll_ifindex = i32::try_from(index)?;
                    // SAFETY: `address` is a valid sockaddr_ll of the size given.
                    let bound = unsafe {
                        libc::bind(
                            fd.as_raw_fd(),
                            (&raw const address).cast(),
                            u32::try_from(size_of::<libc::sockaddr_ll>())?,
                        )
                    };
                    if bound != 0 {
                        return Err(io::Error::last_os_error()).context("bind(AF_PACKET)");
                    }
                    Ok(Self { fd })
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the packet socket thread panicked"))?
        })
    }

    /// Sends `frame` out of the interface.
    pub fn send(&self, frame: &[u8]) -> anyhow::Result<()> {
        // SAFETY: `frame` is valid for reads of its length.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if usize::try_from(sent).ok() != Some(frame.len()) {
            return Err(io::Error::last_os_error()).context("send(AF_PACKET)");
        }
        Ok(())
    }

    /// The first frame arriving on the interface (not sent from it) for
    /// which `wanted` holds, within `timeout`.
    pub fn receive(
        &self,
        timeout: Duration,
        wanted: impl Fn(&[u8]) -> bool,
    ) -> anyhow::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buffer = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no such frame arrived within {timeout:?}");
            }
            let mut poll = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let millis = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&raw mut poll, 1, millis) } <= 0 {
                continue;
            }
            // SAFETY: zeroed sockaddr_ll is valid; recvfrom fills it.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = u32::try_from(size_of::<libc::sockaddr_ll>())?;
            // SAFETY: `buffer` and `from` are valid for writes of the sizes given.
            let received = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                    (&raw mut from).cast(),
                    &raw mut from_len,
                )
            };
            let Ok(length) = usize::try_from(received) else {
                return Err(io::Error::last_os_error()).context("recvfrom(AF_PACKET)");
            };
            let frame = &buffer[..length];
            if from.sll_pkttype != libc::PACKET_OUTGOING && wanted(frame) {
                return Ok(frame.to_vec());
            }
        }
    }
}

/// The MAC address of `interface` in `netns`.
pub fn mac_address(netns: &Netns, interface: &str) -> anyhow::Result<[u8; 6]> {
    let shown = netns.ip(&["-j", "link", "show", "dev", interface])?;
    let address = shown
        .split("\"address\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .with_context(|| format!("no MAC address for {interface} in {shown}"))?;
    let bytes: Vec<u8> = address
        .split(':')
        .map(|byte| u8::from_str_radix(byte, 16))
        .collect::<Result<_, _>>()?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{address} is not a MAC address"))
}
