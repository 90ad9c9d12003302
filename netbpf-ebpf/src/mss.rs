//! TCP MSS clamping of SYN and SYN-ACK segments, the way iptables' TCPMSS
//! target does it (`net/netfilter/xt_TCPMSS.c`): the same option walk, an
//! MSS is only ever lowered, and a SYN without one gets one inserted.
//! Where TCPMSS would drop a packet it cannot parse, this passes it on
//! untouched and counts it: netbpf fails open. The arithmetic is
//! `netbpf_common::mss`'s, tested on the host.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{
        BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, bpf_fib_lookup,
    },
    helpers::{bpf_check_mtu, bpf_fib_lookup, bpf_skb_change_tail},
    programs::TcContext,
};
use netbpf_common::{MSS_PATH_MTU, MssConfig, MssStats, mss};

use crate::{
    ip::{AF_INET, IPPROTO_TCP, Parsed, Segment, TCP_FLAG_SYN, parse, surely_not_syn},
    maps::MSS_WALK,
};

const TCP_FLAG_RST: u8 = 0x04;
const TCPOPT_MSS: u8 = 2;
const TCPOLEN_MSS: usize = 4;
/// The TCP header without options.
const TCP_HEADER: usize = 20;
/// The most option bytes a TCP header holds.
const MAX_OPTIONS: usize = 40;
/// Offset of the checksum in the TCP header.
const TCP_CHECKSUM: usize = 16;

/// Which way a packet crosses the interface.
#[derive(Clone, Copy)]
pub enum Way {
    /// Leaving through it (tc egress).
    Out,
    /// Arriving on it (tc ingress).
    In,
}

/// Clamps the MSS of `ctx`'s packet if it is a SYN or SYN-ACK, counting
/// what it did in `stats`.
#[inline(always)]
pub fn clamp(ctx: &TcContext, config: &MssConfig, way: Way, stats: &mut MssStats) {
    if surely_not_syn(ctx, config.l3_offset) {
        return;
    }
    let segment = match parse(ctx, usize::from(config.l3_offset)) {
        Parsed::Tcp(segment) => segment,
        Parsed::NotTcp => return,
        Parsed::Unparsed => {
            stats.unparsed += 1;
            return;
        }
    };
    let Ok(flags) = ctx.load::<u8>(segment.l4 + 13) else {
        return;
    };
    if flags & TCP_FLAG_SYN == 0 || flags & TCP_FLAG_RST != 0 {
        return;
    }
    stats.seen += 1;
    let Ok(offset_byte) = ctx.load::<u8>(segment.l4 + 12) else {
        stats.unparsed += 1;
        return;
    };
    let header_len = usize::from(offset_byte >> 4) * 4;
    if header_len < TCP_HEADER || segment.len < header_len {
        stats.unparsed += 1;
        return;
    }
    let Some(target) = target_mss(ctx, config, way, &segment) else {
        stats.unparsed += 1;
        return;
    };
    let walk = find_mss_option(ctx, segment.l4 + TCP_HEADER, header_len - TCP_HEADER);
    if walk.malformed {
        stats.malformed += 1;
    }
    if walk.unreadable {
        stats.unparsed += 1;
        return;
    }
    match walk.mss {
        Some((at, old)) => lower_mss(ctx, &segment, at, old, target, stats),
        None => insert_mss(ctx, &segment, header_len, target, stats),
    }
}

/// What the option walk found.
struct Walk {
    /// Offset of the MSS option within the options, and its value.
    mss: Option<(usize, u16)>,
    /// Whether an option's length did not add up.
    malformed: bool,
    /// Whether an option could not be read from the packet.
    unreadable: bool,
}

/// Walks the `len` option bytes at `options_at` as TCPMSS does: EOL and
/// NOP take one byte, as does an option whose length is 0; the walk stops
/// where an MSS option could no longer fit.
///
/// Where the next option starts goes through [`MSS_WALK`] at each step,
/// and each option is read from the packet at an offset the helper checks:
/// the verifier then checks each step once, not once for every offset an
/// option could start at. (Kept in a register and read from a stack copy,
/// the walk took the verifier half a million instructions, and 6.12's
/// verifier lost the bounds of the index on the way and refused it.)
#[inline(always)]
fn find_mss_option(ctx: &TcContext, options_at: usize, len: usize) -> Walk {
    let mut walk = Walk {
        mss: None,
        malformed: false,
        unreadable: false,
    };
    let Some(next) = MSS_WALK.get_ptr_mut(0) else {
        walk.unreadable = true;
        return walk;
    };
    // SAFETY: `next` points at this CPU's slot of a valid element. tc
    // programs run with bottom halves off, so no other run interleaves on
    // this CPU (on PREEMPT_RT one could: the walk would then miss the
    // option at worst; every read is bounds-checked by the helper).
    let next = unsafe { &mut *next };
    *next = 0;
    for _ in 0..MAX_OPTIONS {
        let at = *next as usize;
        if at > MAX_OPTIONS || at + TCPOLEN_MSS > len {
            break;
        }
        // Four bytes fit from here: an MSS option's whole.
        let Ok([kind, length, high, low]) = ctx.load::<[u8; 4]>(options_at + at) else {
            walk.unreadable = true;
            break;
        };
        if kind == TCPOPT_MSS && usize::from(length) == TCPOLEN_MSS {
            walk.mss = Some((at, u16::from_be_bytes([high, low])));
            break;
        }
        let step = if kind <= 1 || length == 0 {
            walk.malformed |= kind > 1;
            1
        } else {
            walk.malformed |= length < 2 || at + usize::from(length) > len;
            u32::from(length)
        };
        *next += step;
    }
    walk
}

/// Lowers the MSS option at `at`, whose value is `old`, to `target`, if
/// it is above.
#[inline(always)]
fn lower_mss(
    ctx: &TcContext,
    segment: &Segment,
    at: usize,
    old: u16,
    target: u16,
    stats: &mut MssStats,
) {
    let Some(lowered) = mss::lowered_mss(old, target) else {
        stats.already_small += 1;
        return;
    };
    let new = lowered.to_be_bytes();
    let offset = segment.l4 + TCP_HEADER + at + 2;
    let (old_word, new_word) = mss::checksum_words(old, lowered, at);
    // No BPF_F_RECOMPUTE_CSUM: the checksum field moves by as much as the
    // MSS, so a received packet's checksum of the whole stays right.
    let stored = ctx.store(offset, &new, 0).and_then(|()| {
        ctx.l4_csum_replace(
            segment.l4 + TCP_CHECKSUM,
            u64::from(u16::from_ne_bytes(old_word)),
            u64::from(u16::from_ne_bytes(new_word)),
            2,
        )
    });
    if stored.is_ok() {
        stats.clamped += 1;
    } else {
        stats.unparsed += 1;
    }
}

/// Inserts an MSS option right after the fixed TCP header of a SYN that
/// has none, as TCPMSS does: only without payload, with room in the
/// header, never in a fragment, and with at most the protocol's default
/// MSS.
#[inline(always)]
fn insert_mss(
    ctx: &TcContext,
    segment: &Segment,
    header_len: usize,
    target: u16,
    stats: &mut MssStats,
) {
    if segment.len > header_len || header_len >= 15 * 4 || segment.fragmented {
        stats.without_option += 1;
        return;
    }
    let Some(header) = Header::read(ctx, segment, header_len) else {
        stats.unparsed += 1;
        return;
    };
    let mss = mss::inserted_mss(target, segment.family == AF_INET).to_be_bytes();
    if add_option(ctx, segment, &header, [TCPOPT_MSS, 4, mss[0], mss[1]]).is_ok() {
        stats.inserted += 1;
    } else {
        stats.unparsed += 1;
    }
}

/// The TCP header as read before any change.
struct Header {
    /// Its length in bytes.
    len: usize,
    /// Byte 12 and 13: data offset and flags.
    word: [u8; 2],
    options: [u8; MAX_OPTIONS],
}

impl Header {
    /// Reads the `len` bytes of `segment`'s TCP header.
    #[inline(always)]
    fn read(ctx: &TcContext, segment: &Segment, len: usize) -> Option<Self> {
        let word = ctx.load::<[u8; 2]>(segment.l4 + 12).ok()?;
        let options_len = len - TCP_HEADER;
        // Read in fixed 4-byte words (option space always is whole words):
        // a variable-length read would have the verifier lose the bound.
        let mut options = [0u8; MAX_OPTIONS];
        for word in 0..MAX_OPTIONS / 4 {
            let at = word * 4;
            if at >= options_len {
                break;
            }
            let bytes = ctx.load::<[u8; 4]>(segment.l4 + TCP_HEADER + at).ok()?;
            options[at..at + 4].copy_from_slice(&bytes);
        }
        Some(Self { len, word, options })
    }
}

/// Puts `option` between the fixed TCP header and its options, and fixes
/// the TCP checksum and the IP length. The packet grows at its end, as
/// TCPMSS grows it: every header stays where it was, and so do the offsets
/// checksum offload works from.
#[inline(always)]
fn add_option(
    ctx: &TcContext,
    segment: &Segment,
    header: &Header,
    option: [u8; 4],
) -> Result<(), i64> {
    let l4 = segment.l4;
    let l3 = segment.l3;
    // Every read before the first write: a failure must not leave a half
    // rewritten packet behind.
    let old_ip_length: u16 = ctx.load(if segment.family == AF_INET {
        l3 + 2
    } else {
        l3 + 4
    })?;
    // SAFETY: `skb` is the program's context.
    let grown = unsafe { bpf_skb_change_tail(ctx.skb.skb, ctx.len() + 4, 0) };
    if grown != 0 {
        return Err(grown);
    }
    let options_len = header.len - TCP_HEADER;
    for word in 0..MAX_OPTIONS / 4 {
        let at = word * 4;
        if at >= options_len {
            break;
        }
        let bytes = [
            header.options[at],
            header.options[at + 1],
            header.options[at + 2],
            header.options[at + 3],
        ];
        ctx.store(l4 + TCP_HEADER + 4 + at, &bytes, 0)?;
    }
    ctx.store(l4 + TCP_HEADER, &option, 0)?;
    let new_word = [header.word[0] + 0x10, header.word[1]];
    ctx.store(l4 + 12, &new_word, 0)?;

    let len = u16::try_from(segment.len).map_err(|_| -1i64)?;
    let checksum = l4 + TCP_CHECKSUM;
    ctx.l4_csum_replace(
        checksum,
        u64::from(len.to_be()),
        u64::from((len + 4).to_be()),
        u64::from(BPF_F_PSEUDO_HDR) | 2,
    )?;
    ctx.l4_csum_replace(checksum, 0, u64::from(u32::from_ne_bytes(option)), 4)?;
    ctx.l4_csum_replace(
        checksum,
        u64::from(u16::from_ne_bytes(header.word)),
        u64::from(u16::from_ne_bytes(new_word)),
        2,
    )?;

    let new_ip_length = (u16::from_be(old_ip_length) + 4).to_be();
    if segment.family == AF_INET {
        ctx.store(l3 + 2, &new_ip_length, 0)?;
        ctx.l3_csum_replace(
            l3 + 10,
            u64::from(old_ip_length),
            u64::from(new_ip_length),
            2,
        )?;
    } else {
        // No IPv6 header checksum: a received packet's checksum of the
        // whole (CHECKSUM_COMPLETE) must follow the change instead.
        ctx.store(l3 + 4, &new_ip_length, u64::from(BPF_F_RECOMPUTE_CSUM))?;
    }
    Ok(())
}

/// The MSS to clamp to: the configured one, or the path MTU minus the IP
/// and TCP headers (the lower of the forward and the reverse route, as
/// TCPMSS takes it).
#[inline(always)]
fn target_mss(ctx: &TcContext, config: &MssConfig, way: Way, segment: &Segment) -> Option<u16> {
    if config.mss != MSS_PATH_MTU {
        return Some(config.mss);
    }
    // Leaving, the route out is an output lookup through this device and
    // the route back an input lookup from it; arriving, the other way round.
    let out = matches!(way, Way::Out);
    let forward = route_mtu(ctx, segment.family, segment.dst, out).or_else(|| device_mtu(ctx))?;
    let reverse = route_mtu(ctx, segment.family, segment.src, !out).unwrap_or(u16::MAX);
    mss::path_mss(forward, reverse, segment.family == AF_INET)
}

/// The MTU of the route to `addr`, from the kernel's FIB: an egress
/// lookup through this device for the destination, an ingress lookup for
/// the way back. Asking for a 64 KiB packet makes the FIB report the MTU.
#[inline(always)]
fn route_mtu(ctx: &TcContext, family: u8, addr: [u32; 4], egress: bool) -> Option<u16> {
    // Zeroed word by word and written in place: LLVM lowers zeroing (or
    // moving) the whole request to a call to `memset`, a byte loop.
    let mut request = MaybeUninit::<bpf_fib_lookup>::uninit();
    let params = request.as_mut_ptr();
    let words = params.cast::<u32>();
    // SAFETY: every write is within the request, which is 4-byte aligned
    // and all zero before its fields are set (a valid, empty request);
    // `skb` is the program's context.
    unsafe {
        for word in 0..size_of::<bpf_fib_lookup>() / size_of::<u32>() {
            words.add(word).write_volatile(0);
        }
        (*params).family = family;
        (*params).l4_protocol = IPPROTO_TCP;
        (*params).ifindex = (*ctx.skb.skb).ifindex;
        (*params).__bindgen_anon_1.tot_len = u16::MAX;
        if family == AF_INET {
            (*params).__bindgen_anon_4.ipv4_dst = addr[0];
        } else {
            (*params).__bindgen_anon_4.ipv6_dst = addr;
        }
    }
    let flags = if egress { BPF_FIB_LOOKUP_OUTPUT } else { 0 };
    let size = i32::try_from(size_of::<bpf_fib_lookup>()).unwrap_or(0);
    // SAFETY: the request lives on the stack for the call; `skb` is the
    // context.
    let result = unsafe { bpf_fib_lookup(ctx.skb.skb.cast(), params, size, flags) };
    match u32::try_from(result) {
        // SAFETY: the kernel wrote the MTU into the union.
        Ok(BPF_FIB_LKUP_RET_FRAG_NEEDED) => Some(unsafe { (*params).__bindgen_anon_1.mtu_result }),
        Ok(BPF_FIB_LKUP_RET_SUCCESS) => Some(u16::MAX),
        _ => None,
    }
}

/// The MTU of the device the packet is on.
#[inline(always)]
fn device_mtu(ctx: &TcContext) -> Option<u16> {
    let mut mtu: u32 = 0;
    // SAFETY: `mtu` lives on the stack for the call; `skb` is the context.
    let result = unsafe { bpf_check_mtu(ctx.skb.skb.cast(), 0, &raw mut mtu, 0, 0) };
    (result >= 0).then(|| u16::try_from(mtu).unwrap_or(u16::MAX))
}
