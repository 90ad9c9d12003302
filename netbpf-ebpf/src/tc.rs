//! Programs on tc (TCX, or a clsact qdisc on older kernels): MSS clamping
//! of the TCP handshakes that cross an interface, and the grant guard of
//! host services on containers' host-side interfaces.

use aya_ebpf::{macros::classifier, programs::TcContext};

use crate::{
    host_service,
    maps::{MSS_INTERFACES, MSS_STATS},
    mss,
};

/// `TC_ACT_UNSPEC` (`TCX_NEXT`): the packet goes on to the next program,
/// or on its way. The MSS clamp only ever edits packets.
const TC_NEXT: i32 = -1;
/// `TC_ACT_SHOT`: the packet is dropped.
const TC_DROP: i32 = 2;

/// Drops packets for a host service whose granted source address came
/// through another container's interface than the granted one's, and
/// packets toward a service's address it cannot parse.
/// (clsact: Linux 4.5; TCX: 6.6.)
#[classifier]
pub fn netbpf_grant_guard(ctx: TcContext) -> i32 {
    if host_service::refused(&ctx) {
        TC_DROP
    } else {
        TC_NEXT
    }
}

/// Clamps the MSS of SYN and SYN-ACK segments leaving an interface.
/// (`bpf_check_mtu`: Linux 5.12; TCX: 6.6, else clsact.)
#[classifier]
pub fn netbpf_mss_out(ctx: TcContext) -> i32 {
    clamp_on(&ctx, mss::Way::Out)
}

/// Clamps the MSS of SYN and SYN-ACK segments arriving on an interface.
/// (`bpf_check_mtu`: Linux 5.12; TCX: 6.6, else clsact.)
#[classifier]
pub fn netbpf_mss_in(ctx: TcContext) -> i32 {
    clamp_on(&ctx, mss::Way::In)
}

#[inline(always)]
fn clamp_on(ctx: &TcContext, way: mss::Way) -> i32 {
    // SAFETY: `skb` is the program's context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is copied out at once.
    let Some(config) = (unsafe { MSS_INTERFACES.get(ifindex) }).copied() else {
        return TC_NEXT;
    };
    if let Some(stats) = MSS_STATS.get_ptr_mut(config.slot) {
        // SAFETY: `stats` points at this CPU's slot of a valid element.
        mss::clamp(ctx, &config, way, unsafe { &mut *stats });
    }
    TC_NEXT
}
