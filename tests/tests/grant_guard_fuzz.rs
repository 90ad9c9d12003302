//! The grant guard against a reference written here, on random and
//! mutated frames (100,000 by default: `fuzz_cases`) run through the real
//! program with
//! `BPF_PROG_TEST_RUN`: SYNs toward host services and elsewhere, from
//! granted and other sources, behind chains of IPv6 extension headers of
//! any length, cut short, with bytes flipped.
//!
//! The reference walks headers as the kernel's own input path does (any
//! number of them) and says what the guard must do:
//! - drop a TCP segment toward a service from a granted address whose
//!   grant names another port than the one it arrived on;
//! - pass what goes nowhere near a service, or comes from where its grant
//!   says;
//! - either, where the guard may fail closed: a packet toward a service's
//!   address whose headers a bounded parser cannot walk (more than 8 IPv6
//!   extension headers, ESP, inconsistent lengths).
//!
//! The guard may never pass what must be dropped, nor drop what must
//! pass. How often it failed closed is printed.
//!
//! Privileged: run as root (`cargo xtask test`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun as _, TestRunOptions};
use netbpf::{
    datapath::{Datapath, Optional},
    plan::{Capacity, Plan},
};
use netbpf_common::{AF_INET, AF_INET6, GrantKey, GrantPath, ServiceKey, names::program};
use netbpf_testenv::{
    fuzz_cases,
    packet::{ACK, SYN, Segment},
    require_root,
};
use proptest::{prelude::*, test_runner::TestRunner};

/// `TC_ACT_SHOT`, the guard's drop.
const DROP: u32 = 2;
/// `BPF_PROG_TEST_RUN` runs tc programs on the loopback device.
const ARRIVED_ON: u32 = 1;

const SERVICE_V4: Ipv4Addr = Ipv4Addr::new(10, 210, 1, 1);
const SERVICE_V6: Ipv6Addr = Ipv6Addr::new(0xfd21, 0, 0, 0, 0, 0, 0, 1);
const SERVICE_PORT: u16 = 18188;
/// Granted, but through another port than the one frames arrive on.
const FORGED_V4: Ipv4Addr = Ipv4Addr::new(10, 210, 1, 2);
const FORGED_V6: Ipv6Addr = Ipv6Addr::new(0xfd21, 0, 0, 0, 0, 0, 0, 2);
/// Granted through the port frames arrive on.
const HONEST_V4: Ipv4Addr = Ipv4Addr::new(10, 210, 1, 4);
const HONEST_V6: Ipv6Addr = Ipv6Addr::new(0xfd21, 0, 0, 0, 0, 0, 0, 4);
/// Granted nothing.
const OTHER_V4: Ipv4Addr = Ipv4Addr::new(10, 210, 1, 3);
const OTHER_V6: Ipv6Addr = Ipv6Addr::new(0xfd21, 0, 0, 0, 0, 0, 0, 3);

/// Extension header kinds the generator chains.
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const ESP: u8 = 50;
const AUTHENTICATION: u8 = 51;
const DESTINATION_OPTIONS: u8 = 60;
const TCP: u8 = 6;
const UDP: u8 = 17;
/// Extension headers the guard walks before it fails closed.
const MAX_WALKED: usize = 8;

/// What the reference says of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    Drop,
    Pass,
    /// Toward a service's address, headers a bounded parser cannot walk.
    Either,
}

/// The reference's reading of a frame: its transport, as the kernel would
/// find it, or why it cannot.
enum Reading {
    Tcp {
        src: IpAddr,
        dst: IpAddr,
        dst_port: u16,
    },
    NotTcp,
    Unwalkable {
        dst: IpAddr,
    },
}

/// The guard's maps: two services, one granted source of each family
/// through another port, one through the port frames arrive on.
fn plan() -> Plan {
    let mut plan = Plan::default();
    for (addr, family, service) in [
        (words(IpAddr::V4(SERVICE_V4)), AF_INET, 0),
        (words(IpAddr::V6(SERVICE_V6)), AF_INET6, 1),
    ] {
        for port in [SERVICE_PORT, 0] {
            plan.services
                .insert(ServiceKey { addr, port, family }, service);
        }
    }
    for (source, service, port) in [
        (IpAddr::V4(FORGED_V4), 0, 7),
        (IpAddr::V6(FORGED_V6), 1, 7),
        (IpAddr::V4(HONEST_V4), 0, ARRIVED_ON),
        (IpAddr::V6(HONEST_V6), 1, ARRIVED_ON),
    ] {
        let family = if source.is_ipv4() { AF_INET } else { AF_INET6 };
        plan.grants.insert(
            GrantKey::new(service, words(source), family),
            GrantPath { port, ingress: 3 },
        );
    }
    plan
}

/// An address as the maps hold it: network-order words, IPv4 in the first.
fn words(addr: IpAddr) -> [u32; 4] {
    let octets = match addr {
        IpAddr::V4(v4) => {
            let mut all = [0; 16];
            all[..4].copy_from_slice(&v4.octets());
            all
        }
        IpAddr::V6(v6) => v6.octets(),
    };
    std::array::from_fn(|word| {
        u32::from_ne_bytes(octets[word * 4..word * 4 + 4].try_into().unwrap())
    })
}

/// What the guard must do with `frame`.
fn expected(frame: &[u8]) -> Expected {
    let toward_service =
        |dst: IpAddr| dst == IpAddr::V4(SERVICE_V4) || dst == IpAddr::V6(SERVICE_V6);
    match read(frame) {
        Reading::Tcp { src, dst, dst_port } => {
            let forged = src == IpAddr::V4(FORGED_V4) || src == IpAddr::V6(FORGED_V6);
            if toward_service(dst) && dst_port == SERVICE_PORT && forged {
                Expected::Drop
            } else {
                Expected::Pass
            }
        }
        Reading::Unwalkable { dst } if toward_service(dst) => Expected::Either,
        Reading::NotTcp | Reading::Unwalkable { .. } => Expected::Pass,
    }
}

/// Reads `frame` as the kernel's input path would: IPv4 with its options,
/// IPv6 behind any number of extension headers.
fn read(frame: &[u8]) -> Reading {
    let Some(ethertype) = frame.get(12..14) else {
        return Reading::NotTcp;
    };
    let ip = &frame[14..];
    match u16::from_be_bytes([ethertype[0], ethertype[1]]) {
        0x0800 => read_v4(ip),
        0x86dd => read_v6(ip),
        _ => Reading::NotTcp,
    }
}

fn read_v4(ip: &[u8]) -> Reading {
    let Some(header) = ip.get(..20) else {
        return Reading::NotTcp;
    };
    let dst = IpAddr::from(<[u8; 4]>::try_from(&header[16..20]).unwrap());
    let unwalkable = Reading::Unwalkable { dst };
    let fragment = u16::from_be_bytes([header[6], header[7]]);
    if header[9] != TCP || fragment & 0x1fff != 0 {
        return Reading::NotTcp;
    }
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if header_len < 20 || total < header_len {
        return unwalkable;
    }
    let Some(ports) = ip.get(header_len..header_len + 4) else {
        return unwalkable;
    };
    Reading::Tcp {
        src: IpAddr::from(<[u8; 4]>::try_from(&header[12..16]).unwrap()),
        dst,
        dst_port: u16::from_be_bytes([ports[2], ports[3]]),
    }
}

fn read_v6(ip: &[u8]) -> Reading {
    let Some(header) = ip.get(..40) else {
        return Reading::NotTcp;
    };
    let dst = IpAddr::from(<[u8; 16]>::try_from(&header[24..40]).unwrap());
    let unwalkable = Reading::Unwalkable { dst };
    let payload = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let (mut next, mut offset) = (header[6], 40);
    for walked in 0.. {
        // The guard's documented bound: past it, it may fail closed.
        if walked == MAX_WALKED {
            return unwalkable;
        }
        match next {
            TCP => {
                if payload < offset - 40 {
                    return unwalkable;
                }
                let Some(ports) = ip.get(offset..offset + 4) else {
                    return unwalkable;
                };
                return Reading::Tcp {
                    src: IpAddr::from(<[u8; 16]>::try_from(&header[8..24]).unwrap()),
                    dst,
                    dst_port: u16::from_be_bytes([ports[2], ports[3]]),
                };
            }
            HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS | AUTHENTICATION => {
                let Some(extension) = ip.get(offset..offset + 2) else {
                    return unwalkable;
                };
                offset += if next == AUTHENTICATION {
                    (usize::from(extension[1]) + 2) * 4
                } else {
                    (usize::from(extension[1]) + 1) * 8
                };
                next = extension[0];
            }
            FRAGMENT => {
                let Some(extension) = ip.get(offset..offset + 4) else {
                    return unwalkable;
                };
                if u16::from_be_bytes([extension[2], extension[3]]) & 0xfff8 != 0 {
                    return Reading::NotTcp;
                }
                next = extension[0];
                offset += 8;
            }
            ESP => return unwalkable,
            _ => return Reading::NotTcp,
        }
    }
    unreachable!("the walk returns")
}

/// One extension header of a generated chain.
#[derive(Debug, Clone, Copy)]
enum Extension {
    /// Hop-by-hop, routing or destination options: 8 bytes.
    Options(u8),
    /// A fragment header; a non-first fragment carries no TCP header.
    Fragment { first: bool },
    /// An authentication header: 12 bytes.
    Authentication,
    /// ESP: what follows is opaque.
    Esp,
    /// Something that is not an extension header (UDP, an unknown number).
    Other(u8),
}

impl Extension {
    fn number(self) -> u8 {
        match self {
            Self::Options(kind) | Self::Other(kind) => kind,
            Self::Fragment { .. } => FRAGMENT,
            Self::Authentication => AUTHENTICATION,
            Self::Esp => ESP,
        }
    }

    /// Its bytes, `next` being what follows it.
    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            Self::Options(_) => vec![next, 0, 1, 4, 0, 0, 0, 0],
            Self::Fragment { first } => {
                let offset: u16 = if first { 0x0001 } else { 0x0009 };
                let [high, low] = offset.to_be_bytes();
                vec![next, 0, high, low, 0, 0, 0, 7]
            }
            Self::Authentication => vec![next, 1, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1],
            Self::Esp => vec![0, 0, 0, 9, 0, 0, 0, 1],
            Self::Other(_) => Vec::new(),
        }
    }
}

/// A generated frame: a segment, its IPv6 chain, then damage.
#[derive(Debug, Clone)]
struct Case {
    segment: Segment,
    chain: Vec<Extension>,
    flips: Vec<(usize, u8)>,
    keep: Option<usize>,
}

impl Case {
    fn frame(&self) -> Vec<u8> {
        let plain = self.segment.frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut frame = if self.segment.dst.is_ipv6() && !self.chain.is_empty() {
            let (header, tcp) = plain.split_at(14 + 40);
            let mut frame = header.to_vec();
            frame[14 + 6] = self.chain[0].number();
            let mut extensions = Vec::new();
            for (index, extension) in self.chain.iter().enumerate() {
                let next = self.chain.get(index + 1).map_or(TCP, |next| next.number());
                extensions.extend(extension.bytes(next));
                if matches!(extension, Extension::Esp | Extension::Other(_)) {
                    break;
                }
            }
            let payload = u16::try_from(extensions.len() + tcp.len()).unwrap();
            frame[14 + 4..14 + 6].copy_from_slice(&payload.to_be_bytes());
            frame.extend(extensions);
            frame.extend_from_slice(tcp);
            frame
        } else {
            plain
        };
        for &(at, byte) in &self.flips {
            // Only the IP and TCP headers: the Ethernet type stays.
            let at = 14 + at % (frame.len() - 14);
            frame[at] ^= byte;
        }
        if let Some(keep) = self.keep {
            // BPF_PROG_TEST_RUN takes no packet shorter than its IP header.
            let header = if self.segment.dst.is_ipv6() { 40 } else { 20 };
            let least = 14 + header;
            frame.truncate(least + keep % (frame.len() - least + 1));
        }
        frame
    }
}

fn frames() -> impl Strategy<Value = Case> {
    let v4 = (
        prop::sample::select(vec![FORGED_V4, HONEST_V4, OTHER_V4]),
        prop::sample::select(vec![SERVICE_V4, Ipv4Addr::new(10, 210, 1, 9)]),
    )
        .prop_map(|(src, dst)| (IpAddr::V4(src), IpAddr::V4(dst)));
    let v6 = (
        prop::sample::select(vec![FORGED_V6, HONEST_V6, OTHER_V6]),
        prop::sample::select(vec![SERVICE_V6, Ipv6Addr::new(0xfd21, 0, 0, 0, 0, 0, 0, 9)]),
    )
        .prop_map(|(src, dst)| (IpAddr::V6(src), IpAddr::V6(dst)));
    let extension = prop_oneof![
        4 => prop::sample::select(vec![HOP_BY_HOP, ROUTING, DESTINATION_OPTIONS]).prop_map(Extension::Options),
        1 => any::<bool>().prop_map(|first| Extension::Fragment { first }),
        1 => Just(Extension::Authentication),
        1 => Just(Extension::Esp),
        1 => prop::sample::select(vec![UDP, 99, 253]).prop_map(Extension::Other),
    ];
    (
        prop_oneof![v4, v6],
        prop_oneof![Just(SERVICE_PORT), any::<u16>()],
        prop::sample::select(vec![SYN, SYN | ACK, ACK]),
        prop::collection::vec(extension, 0..14),
        prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec((any::<usize>(), 1..=255u8), 1..4)],
        prop_oneof![4 => Just(None), 1 => any::<usize>().prop_map(Some)],
    )
        .prop_map(|((src, dst), dst_port, flags, chain, flips, keep)| Case {
            segment: Segment {
                src,
                dst,
                src_port: 40000,
                dst_port,
                flags,
                options: vec![2, 4, 0x05, 0xb4],
                payload: Vec::new(),
            },
            chain,
            flips,
            keep,
        })
}

#[test]
fn the_guard_drops_what_the_reference_says_on_random_frames() {
    require_root();
    let mut datapath = Datapath::load(
        Optional {
            host_services: true,
            ..Optional::default()
        },
        &Capacity::default(),
        None,
    )
    .expect("loading the datapath");
    datapath.update(&Plan::default(), &plan()).unwrap();
    let datapath = std::cell::RefCell::new(datapath);
    let failed_closed = std::cell::Cell::new(0u32);
    let dropped = std::cell::Cell::new(0u32);
    let cases = fuzz_cases();
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&frames(), |case| {
            let frame = case.frame();
            let mut datapath = datapath.borrow_mut();
            let result = datapath
                .classifier(program::GRANT_GUARD)
                .unwrap()
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    ..TestRunOptions::default()
                })
                .expect("BPF_PROG_TEST_RUN");
            let drops = result.return_value == DROP;
            dropped.set(dropped.get() + u32::from(drops));
            match expected(&frame) {
                Expected::Drop => {
                    prop_assert!(drops, "the guard passed a forged segment: {frame:02x?}");
                }
                Expected::Pass => {
                    prop_assert!(!drops, "the guard dropped a good frame: {frame:02x?}");
                }
                Expected::Either => failed_closed.set(failed_closed.get() + u32::from(drops)),
            }
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    println!(
        "{cases} frames: {} dropped, {} of them failing closed (toward a service, headers past the guard's walk)",
        dropped.get(),
        failed_closed.get()
    );
    assert!(
        dropped.get() > cases / 100 && failed_closed.get() > cases / 1000,
        "the frames exercise both drops"
    );
}
