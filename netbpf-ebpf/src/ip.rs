//! The IP and TCP headers of a packet on tc: where its TCP segment is, for
//! IPv4 and IPv6 (extension headers walked, non-first fragments skipped).

use aya_ebpf::programs::TcContext;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
/// The SYN bit of the TCP flags.
pub const TCP_FLAG_SYN: u8 = 0x02;
/// Offset of the flags byte in the TCP header.
const TCP_FLAGS: usize = 13;
/// The IPv4 header without options.
const IPV4_HEADER: usize = 20;
/// The fixed IPv6 header.
const IPV6_HEADER: usize = 40;
/// Extension headers walked before giving up on an IPv6 packet.
const MAX_IPV6_EXTENSIONS: usize = 8;

/// Where the TCP segment of a packet is.
pub struct Segment {
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the TCP header.
    pub l4: usize,
    /// Length of the TCP segment, header included.
    pub len: usize,
    /// Whether the packet is the first fragment of a larger one: its
    /// length is not the segment's, so no option is inserted.
    pub fragmented: bool,
    /// Source and destination addresses, network order, IPv4 in `[0]`.
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

/// The TCP segment of `ctx`'s packet, whose IP header is at `l3`.
#[inline(always)]
pub fn parse(ctx: &TcContext, l3: usize) -> Parsed {
    // SAFETY: `skb` is the program's context.
    let protocol = u16::try_from(unsafe { (*ctx.skb.skb).protocol }).map_or(0, u16::from_be);
    match protocol {
        ETH_P_IP => ipv4_segment(ctx, l3),
        ETH_P_IPV6 => ipv6_segment(ctx, l3),
        _ => Parsed::NotTcp,
    }
}

/// The fast path of the MSS clamp: whether the packet's linear data shows
/// at once that it is no TCP SYN (another protocol, or a TCP segment
/// without SYN), read directly from the packet, without a helper call.
/// False when in doubt (a fragment, IPv6 extension headers, headers out
/// of the linear data, an L3 offset other than 0 or 14): the full parse
/// decides then.
#[inline(always)]
pub fn surely_not_syn(ctx: &TcContext, l3_offset: u16) -> bool {
    // Constants the verifier can bound the packet offsets with.
    let l3 = match l3_offset {
        0 => 0,
        14 => 14,
        _ => return false,
    };
    let (start, end) = (ctx.data(), ctx.data_end());
    // Whether the first `len` bytes from `offset` are in the linear data.
    // One check covers a header: the verifier then allows every read in it.
    let holds = |offset: usize, len: usize| start + offset + len <= end;
    // SAFETY (of every call): the byte is inside a range `holds` checked.
    let byte = |offset: usize| unsafe { *((start + offset) as *const u8) };
    // SAFETY: `skb` is the program's context.
    let protocol = u16::try_from(unsafe { (*ctx.skb.skb).protocol }).map_or(0, u16::from_be);
    match protocol {
        ETH_P_IP => {
            if !holds(l3, IPV4_HEADER) {
                return false;
            }
            // More fragments, or a fragment offset: the full parse.
            if byte(l3 + 6) & 0x3f != 0 || byte(l3 + 7) != 0 {
                return false;
            }
            if byte(l3 + 9) != IPPROTO_TCP {
                return true;
            }
            let header_len = usize::from(byte(l3) & 0x0f) * 4;
            // A header shorter than the minimum is malformed: the full
            // parse decides.
            if header_len < IPV4_HEADER {
                return false;
            }
            let l4 = l3 + header_len;
            holds(l4, TCP_FLAGS + 1) && byte(l4 + TCP_FLAGS) & TCP_FLAG_SYN == 0
        }
        ETH_P_IPV6 => {
            if !holds(l3, IPV6_HEADER + TCP_FLAGS + 1) {
                return false;
            }
            match byte(l3 + 6) {
                IPPROTO_TCP => byte(l3 + IPV6_HEADER + TCP_FLAGS) & TCP_FLAG_SYN == 0,
                IPPROTO_UDP | IPPROTO_ICMPV6 => true,
                _ => false,
            }
        }
        _ => true,
    }
}

/// The destination address of `ctx`'s IP packet, whose header is at `l3`,
/// read from the fixed header alone: for packets [`parse`] gave up on.
#[inline(always)]
pub fn destination(ctx: &TcContext, l3: usize) -> Option<([u32; 4], u8)> {
    // SAFETY: `skb` is the program's context.
    let protocol = u16::try_from(unsafe { (*ctx.skb.skb).protocol }).map_or(0, u16::from_be);
    match protocol {
        ETH_P_IP => Some(([ctx.load::<u32>(l3 + 16).ok()?, 0, 0, 0], AF_INET)),
        ETH_P_IPV6 => Some((ctx.load::<[u32; 4]>(l3 + 24).ok()?, AF_INET6)),
        _ => None,
    }
}

/// What parsing the IP header found.
pub enum Parsed {
    Tcp(Segment),
    /// Another protocol, or a fragment without the TCP header.
    NotTcp,
    /// Headers it cannot walk: malformed, cut short, ESP, or more IPv6
    /// extension headers than it walks.
    Unparsed,
}

#[inline(always)]
fn ipv4_segment(ctx: &TcContext, l3: usize) -> Parsed {
    let (Ok(version_ihl), Ok(total), Ok(fragment), Ok(protocol), Ok(src), Ok(dst)) = (
        ctx.load::<u8>(l3),
        ctx.load::<u16>(l3 + 2),
        ctx.load::<u16>(l3 + 6),
        ctx.load::<u8>(l3 + 9),
        ctx.load::<u32>(l3 + 12),
        ctx.load::<u32>(l3 + 16),
    ) else {
        return Parsed::Unparsed;
    };
    let fragment = u16::from_be(fragment);
    if protocol != IPPROTO_TCP || fragment & 0x1fff != 0 {
        return Parsed::NotTcp;
    }
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    let total = usize::from(u16::from_be(total));
    if header_len < 20 || total < header_len {
        return Parsed::Unparsed;
    }
    Parsed::Tcp(Segment {
        family: AF_INET,
        l3,
        l4: l3 + header_len,
        len: total - header_len,
        fragmented: fragment & 0x2000 != 0,
        src: [src, 0, 0, 0],
        dst: [dst, 0, 0, 0],
    })
}

#[inline(always)]
fn ipv6_segment(ctx: &TcContext, l3: usize) -> Parsed {
    let (Ok(payload), Ok(first_next), Ok(src), Ok(dst)) = (
        ctx.load::<u16>(l3 + 4),
        ctx.load::<u8>(l3 + 6),
        ctx.load::<[u32; 4]>(l3 + 8),
        ctx.load::<[u32; 4]>(l3 + 24),
    ) else {
        return Parsed::Unparsed;
    };
    let mut next = first_next;
    let mut offset = l3 + IPV6_HEADER;
    let mut fragmented = false;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next {
            IPPROTO_TCP => {
                let skipped = offset - (l3 + IPV6_HEADER);
                let Some(len) = usize::from(u16::from_be(payload)).checked_sub(skipped) else {
                    return Parsed::Unparsed;
                };
                return Parsed::Tcp(Segment {
                    family: AF_INET6,
                    l3,
                    l4: offset,
                    len,
                    fragmented,
                    src,
                    dst,
                });
            }
            // Hop-by-hop, routing and destination options: 8-byte units
            // after the first 8.
            0 | 43 | 60 => {
                let (Ok(following), Ok(units)) =
                    (ctx.load::<u8>(offset), ctx.load::<u8>(offset + 1))
                else {
                    return Parsed::Unparsed;
                };
                next = following;
                offset += (usize::from(units) + 1) * 8;
            }
            // Fragment: only the first fragment carries the TCP header.
            44 => {
                let (Ok(following), Ok(fragment)) =
                    (ctx.load::<u8>(offset), ctx.load::<u16>(offset + 2))
                else {
                    return Parsed::Unparsed;
                };
                if u16::from_be(fragment) & 0xfff8 != 0 {
                    return Parsed::NotTcp;
                }
                fragmented = true;
                next = following;
                offset += 8;
            }
            // Authentication header: 4-byte units after the first 8.
            51 => {
                let (Ok(following), Ok(units)) =
                    (ctx.load::<u8>(offset), ctx.load::<u8>(offset + 1))
                else {
                    return Parsed::Unparsed;
                };
                next = following;
                offset += (usize::from(units) + 2) * 4;
            }
            // ESP hides what follows; anything else is not TCP.
            50 => return Parsed::Unparsed,
            _ => return Parsed::NotTcp,
        }
    }
    Parsed::Unparsed
}
