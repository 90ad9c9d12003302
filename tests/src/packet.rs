//! Ethernet frames carrying a TCP segment, built byte by byte with valid
//! checksums, and read back: what the MSS clamp tests feed to netbpf's
//! program and to the kernel's TCPMSS target.

use std::net::IpAddr;

/// `ETH_P_IP`.
const ETHERTYPE_IPV4: u16 = 0x0800;
/// `ETH_P_IPV6`.
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERNET_HEADER: usize = 14;

pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// A TCP segment to send from `src` to `dst`.
#[derive(Debug, Clone)]
pub struct Segment {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags (`SYN`, `SYN | ACK`, ...).
    pub flags: u8,
    /// The option bytes; padded with zeros (EOL) to whole words.
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Segment {
    /// The segment in an Ethernet frame from `src_mac` to `dst_mac`.
    #[must_use]
    pub fn frame(&self, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
        let mut options = self.options.clone();
        options.resize(options.len().div_ceil(4) * 4, 0);
        let header_len = 20 + options.len();
        let mut tcp = Vec::with_capacity(header_len + self.payload.len());
        tcp.extend_from_slice(&self.src_port.to_be_bytes());
        tcp.extend_from_slice(&self.dst_port.to_be_bytes());
        tcp.extend_from_slice(&0x1000_0000u32.to_be_bytes()); // sequence
        tcp.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment
        tcp.push(u8::try_from(header_len / 4).expect("at most 60 bytes") << 4);
        tcp.push(self.flags);
        tcp.extend_from_slice(&64240u16.to_be_bytes()); // window
        tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        tcp.extend_from_slice(&options);
        tcp.extend_from_slice(&self.payload);
        let checksum = tcp_checksum(self.src, self.dst, &tcp);
        tcp[16..18].copy_from_slice(&checksum.to_be_bytes());

        let mut frame = Vec::new();
        frame.extend_from_slice(&dst_mac);
        frame.extend_from_slice(&src_mac);
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
                let total = u16::try_from(20 + tcp.len()).expect("a small segment");
                let mut ip = vec![0x45, 0];
                ip.extend_from_slice(&total.to_be_bytes());
                ip.extend_from_slice(&[0x12, 0x34, 0x40, 0]); // id, DF
                ip.extend_from_slice(&[64, 6, 0, 0]); // TTL, TCP, checksum
                ip.extend_from_slice(&src.octets());
                ip.extend_from_slice(&dst.octets());
                let checksum = fold(sum(&ip));
                ip[10..12].copy_from_slice(&checksum.to_be_bytes());
                frame.extend_from_slice(&ip);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
                frame.extend_from_slice(&[0x60, 0, 0, 0]);
                frame.extend_from_slice(
                    &u16::try_from(tcp.len())
                        .expect("a small segment")
                        .to_be_bytes(),
                );
                frame.extend_from_slice(&[6, 64]); // TCP, hop limit
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
            }
            _ => panic!("source and destination of different families"),
        }
        frame.extend_from_slice(&tcp);
        frame
    }

    /// The IPv6 segment in an Ethernet frame, with `headers` Destination
    /// Options headers (8 bytes each, one `PadN` option) between the IPv6
    /// header and TCP: a chain the kernel walks whatever its length.
    #[must_use]
    pub fn frame_behind_destination_options(
        &self,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        headers: usize,
    ) -> Vec<u8> {
        const DESTINATION_OPTIONS: u8 = 60;
        const NEXT_HEADER: usize = ETHERNET_HEADER + 6;
        const PAYLOAD_LENGTH: usize = ETHERNET_HEADER + 4;
        let plain = self.frame(src_mac, dst_mac);
        assert!(self.dst.is_ipv6(), "extension headers are IPv6's");
        let (header, tcp) = plain.split_at(ETHERNET_HEADER + 40);
        let mut frame = header.to_vec();
        for index in 0..headers {
            let next = if index + 1 == headers {
                6
            } else {
                DESTINATION_OPTIONS
            };
            // Next header, length 0 (8 bytes), PadN of 4 bytes.
            frame.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        }
        if headers > 0 {
            frame[NEXT_HEADER] = DESTINATION_OPTIONS;
        }
        let payload = u16::try_from(tcp.len() + 8 * headers).expect("a small segment");
        frame[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 2].copy_from_slice(&payload.to_be_bytes());
        frame.extend_from_slice(tcp);
        frame
    }
}

/// A received frame, read as Ethernet + IPv4/IPv6 (no extension header) +
/// TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The whole TCP segment.
    pub tcp: Vec<u8>,
    /// Whether the IPv4 header checksum is right (always true for IPv6).
    pub ip_checksum_ok: bool,
}

impl Parsed {
    /// Reads `frame`; None if it is not TCP over IPv4 or IPv6.
    #[must_use]
    pub fn read(frame: &[u8]) -> Option<Self> {
        let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
        let ip = frame.get(ETHERNET_HEADER..)?;
        match ethertype {
            ETHERTYPE_IPV4 => {
                let header_len = usize::from(ip.first()? & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
                if *ip.get(9)? != 6 {
                    return None;
                }
                let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
                let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
                Some(Self {
                    src: IpAddr::from(src),
                    dst: IpAddr::from(dst),
                    tcp: ip.get(header_len..total)?.to_vec(),
                    ip_checksum_ok: fold(sum(ip.get(..header_len)?)) == 0,
                })
            }
            ETHERTYPE_IPV6 => {
                let payload = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
                if *ip.get(6)? != 6 {
                    return None;
                }
                let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
                let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
                Some(Self {
                    src: IpAddr::from(src),
                    dst: IpAddr::from(dst),
                    tcp: ip.get(40..40 + payload)?.to_vec(),
                    ip_checksum_ok: true,
                })
            }
            _ => None,
        }
    }

    #[must_use]
    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes([self.tcp[0], self.tcp[1]])
    }

    /// Whether the TCP checksum (pseudo-header included) is right.
    #[must_use]
    pub fn tcp_checksum_ok(&self) -> bool {
        tcp_checksum(self.src, self.dst, &self.tcp) == 0
    }

    /// The TCP header length in bytes.
    #[must_use]
    pub fn header_len(&self) -> usize {
        usize::from(self.tcp[12] >> 4) * 4
    }

    /// The value of the first well-formed MSS option (kind 2, length 4),
    /// walked the way TCPMSS walks options.
    #[must_use]
    pub fn mss(&self) -> Option<u16> {
        let at = self.mss_offset()?;
        Some(u16::from_be_bytes([self.tcp[at + 2], self.tcp[at + 3]]))
    }

    /// Where in the TCP header that MSS option starts.
    #[must_use]
    pub fn mss_offset(&self) -> Option<usize> {
        let header = self.tcp.get(..self.header_len())?;
        let mut at = 20;
        while at + 4 <= header.len() {
            let (kind, length) = (header[at], header[at + 1]);
            if kind == 2 && length == 4 {
                return Some(at);
            }
            at += if kind <= 1 || length == 0 {
                1
            } else {
                usize::from(length)
            };
        }
        None
    }
}

/// The TCP checksum of `segment` (checksum field included: 0 when right).
fn tcp_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, 6]);
            pseudo.extend_from_slice(&u16::try_from(segment.len()).expect("small").to_be_bytes());
        }
        (src, dst) => {
            let octets = |addr: IpAddr| match addr {
                IpAddr::V6(v6) => v6.octets(),
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            };
            pseudo.extend_from_slice(&octets(src));
            pseudo.extend_from_slice(&octets(dst));
            pseudo.extend_from_slice(&u32::try_from(segment.len()).expect("small").to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 6]);
        }
    }
    fold(sum(&pseudo) + sum(segment))
}

/// The one's complement sum of `bytes` as 16-bit big-endian words.
fn sum(bytes: &[u8]) -> u64 {
    bytes
        .chunks(2)
        .map(|pair| u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum()
}

/// Folds a sum into the 16-bit one's complement checksum.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_read_back_with_valid_checksums() {
        for (src, dst) in [("10.1.0.2", "10.2.0.2"), ("fd01::2", "fd02::2")] {
            let segment = Segment {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                src_port: 40000,
                dst_port: 80,
                flags: SYN,
                options: vec![1, 1, 2, 4, 0x05, 0xb4],
                payload: vec![],
            };
            let parsed = Parsed::read(&segment.frame([2; 6], [4; 6])).unwrap();
            assert!(parsed.tcp_checksum_ok() && parsed.ip_checksum_ok);
            assert_eq!(
                (parsed.mss(), parsed.header_len(), parsed.src_port()),
                (Some(1460), 28, 40000)
            );
        }
    }
}
