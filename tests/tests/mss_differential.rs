//! netbpf's MSS clamp against the kernel's own TCPMSS target, packet by
//! packet: crafted SYN and SYN-ACK segments (many option layouts, IPv4
//! and IPv6) go through `iptables -j TCPMSS` on a router namespace and
//! through netbpf's tc program, run with `BPF_PROG_TEST_RUN` or attached to
//! the router by `netbpf run`; the TCP segments that come out must be the
//! same bytes, with valid checksums.
//!
//! Privileged: run as root (`cargo xtask test`).

use std::{net::IpAddr, time::Duration};

use aya::programs::{TestRun as _, TestRunOptions};
use netbpf::{
    datapath::{Datapath, Optional},
    plan::Capacity,
};
use netbpf_common::{MssConfig, names::program};
use netbpf_testenv::{
    NetbpfRun, Netns, PacketSocket, fuzz_cases, kernel, links_of, mac_address,
    packet::{ACK, Parsed, RST, SYN, Segment},
    require_root,
};
use proptest::{prelude::*, test_runner::TestRunner};

const CLAMP: u16 = 1300;

/// A crafted segment: a name for failure messages, flags, options.
struct Case {
    name: &'static str,
    flags: u8,
    options: Vec<u8>,
    payload: Vec<u8>,
}

const MSS_1460: [u8; 4] = [2, 4, 0x05, 0xb4];
const NOP: u8 = 1;
const TIMESTAMPS: [u8; 10] = [8, 10, 0, 0, 0, 1, 0, 0, 0, 0];
const WINDOW_SCALE: [u8; 3] = [3, 3, 7];
const SACK_PERMITTED: [u8; 2] = [4, 2];

fn options(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Every layout the clamp must handle as TCPMSS does.
fn cases() -> Vec<Case> {
    let syn = |name, options| Case {
        name,
        flags: SYN,
        options,
        payload: vec![],
    };
    vec![
        syn("MSS first", options(&[&MSS_1460])),
        syn(
            "MSS last, after NOP, SACK, timestamps and window scale (Linux's layout)",
            options(&[
                &SACK_PERMITTED,
                &TIMESTAMPS,
                &[NOP],
                &WINDOW_SCALE,
                &MSS_1460,
            ]),
        ),
        syn(
            "MSS at an odd offset, after three NOPs",
            options(&[&[NOP, NOP, NOP], &MSS_1460, &[NOP]]),
        ),
        syn("MSS below the clamp", options(&[&[2, 4, 0x04, 0xb0]])),
        syn("MSS equal to the clamp", options(&[&[2, 4, 0x05, 0x14]])),
        syn("MSS 65535", options(&[&[2, 4, 0xff, 0xff]])),
        syn("no option at all", vec![]),
        syn(
            "no MSS among other options",
            options(&[&SACK_PERMITTED, &TIMESTAMPS, &[NOP], &WINDOW_SCALE]),
        ),
        Case {
            name: "no MSS, with payload",
            flags: SYN,
            options: options(&[&WINDOW_SCALE]),
            payload: b"fast open data".to_vec(),
        },
        syn("full header (40 option bytes), no MSS", vec![NOP; 40]),
        syn(
            "full header with MSS at its very end",
            options(&[&[NOP; 36], &MSS_1460]),
        ),
        syn(
            "MSS after an EOL (TCPMSS walks past EOL)",
            options(&[&[0], &[NOP, NOP, NOP], &MSS_1460]),
        ),
        syn(
            "an option of length 0 before MSS",
            options(&[&[30, 0], &[NOP, NOP], &MSS_1460]),
        ),
        syn(
            "an option of length 1 before MSS",
            options(&[&[30, 1], &[NOP, NOP], &MSS_1460]),
        ),
        syn(
            "an option longer than the header",
            options(&[&[30, 40, 0, 0]]),
        ),
        syn(
            "an option that swallows the MSS",
            options(&[&[30, 6], &MSS_1460, &[NOP, NOP]]),
        ),
        syn("MSS with a wrong length", options(&[&[2, 3, 0x05, 0xb4]])),
        syn(
            "MSS cut by the end of the header",
            options(&[&[NOP, NOP], &[2, 4]]),
        ),
        Case {
            name: "SYN-ACK with MSS",
            flags: SYN | ACK,
            options: options(&[&MSS_1460, &[NOP, NOP], &SACK_PERMITTED]),
            payload: vec![],
        },
        Case {
            name: "SYN-ACK without MSS",
            flags: SYN | ACK,
            options: vec![],
            payload: vec![],
        },
        Case {
            name: "ACK with an MSS option (not a handshake)",
            flags: ACK,
            options: options(&[&MSS_1460]),
            payload: vec![],
        },
        Case {
            name: "SYN with RST (not a handshake)",
            flags: SYN | RST,
            options: options(&[&MSS_1460]),
            payload: vec![],
        },
    ]
}

/// Three namespaces in a row: frames sent from `sender` are forwarded by
/// `router` to `capture`.
struct ForwardingPath {
    /// Kept for their lifetime: the namespaces go with the router.
    _sender: Netns,
    router: Netns,
    _capture: Netns,
    /// The router's interface from `sender`.
    router_in: String,
    /// The router's interface towards `capture`.
    router_out: String,
    send: PacketSocket,
    receive: PacketSocket,
    sender_mac: [u8; 6],
    router_mac: [u8; 6],
}

impl ForwardingPath {
    fn new() -> Self {
        require_root();
        let (sender, router, capture) = (
            Netns::new("nbsnd").unwrap(),
            Netns::new("nbrtr").unwrap(),
            Netns::new("nbcap").unwrap(),
        );
        let (sender_if, router_in) = sender.veth_to(&router).unwrap();
        let (router_out, capture_if) = router.veth_to(&capture).unwrap();
        let addresses = [
            (&sender, &sender_if, ["10.1.0.2/24", "fd01::2/64"]),
            (&router, &router_in, ["10.1.0.1/24", "fd01::1/64"]),
            (&router, &router_out, ["10.2.0.1/24", "fd02::1/64"]),
            (&capture, &capture_if, ["10.2.0.2/24", "fd02::2/64"]),
        ];
        for (netns, interface, [v4, v6]) in addresses {
            netns.ip(&["addr", "add", v4, "dev", interface]).unwrap();
            netns
                .ip(&["addr", "add", v6, "dev", interface, "nodad"])
                .unwrap();
            netns.ip(&["link", "set", interface, "up"]).unwrap();
        }
        // Forwarding and neighbours of the router's own namespace only.
        for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            router.exec(&["sysctl", "-qw", sysctl]).unwrap();
        }
        let capture_mac = mac_address(&capture, &capture_if).unwrap();
        let capture_mac = capture_mac.map(|byte| format!("{byte:02x}")).join(":");
        for address in ["10.2.0.2", "fd02::2"] {
            router
                .ip(&[
                    "neigh",
                    "replace",
                    address,
                    "lladdr",
                    &capture_mac,
                    "dev",
                    &router_out,
                    "nud",
                    "permanent",
                ])
                .unwrap();
        }
        let send = PacketSocket::open(&sender, &sender_if).unwrap();
        let receive = PacketSocket::open(&capture, &capture_if).unwrap();
        let sender_mac = mac_address(&sender, &sender_if).unwrap();
        let router_mac = mac_address(&router, &router_in).unwrap();
        Self {
            _sender: sender,
            router,
            _capture: capture,
            router_in: router_in.clone(),
            router_out,
            send,
            receive,
            sender_mac,
            router_mac,
        }
    }

    /// Clamps with TCPMSS on the router's FORWARD chain, IPv4 and IPv6.
    fn add_tcpmss(&self, target: &[&str]) {
        for program in ["iptables", "ip6tables"] {
            let mut command = vec![program, "-t", "mangle", "-A", "FORWARD"];
            command.extend(["-p", "tcp", "--tcp-flags", "SYN,RST", "SYN", "-j", "TCPMSS"]);
            command.extend(target);
            self.router.exec(&command).unwrap();
        }
    }

    fn remove_tcpmss(&self) {
        for program in ["iptables", "ip6tables"] {
            self.router
                .exec(&[program, "-t", "mangle", "-F", "FORWARD"])
                .unwrap();
        }
    }

    /// Sends `segment` through the router; what arrives on the far side.
    fn forward(&self, segment: &Segment) -> Parsed {
        self.try_forward(segment, Duration::from_secs(3))
            .unwrap_or_else(|error| panic!("port {}: {error:#}", segment.src_port))
    }

    /// Sends `segment` through the router; what arrives on the far side
    /// within `timeout`.
    fn try_forward(&self, segment: &Segment, timeout: Duration) -> anyhow::Result<Parsed> {
        let port = segment.src_port;
        self.send
            .send(&segment.frame(self.sender_mac, self.router_mac))?;
        let frame = self.receive.receive(timeout, |frame| {
            Parsed::read(frame).is_some_and(|parsed| parsed.src_port() == port)
        })?;
        Ok(Parsed::read(&frame).expect("the frame was read once"))
    }
}

/// The crafted segment of `case` in `family`, with a port of its own.
fn segment(case: &Case, v6: bool, port: u16) -> Segment {
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        ("fd01::2".parse().unwrap(), "fd02::2".parse().unwrap())
    } else {
        ("10.1.0.2".parse().unwrap(), "10.2.0.2".parse().unwrap())
    };
    Segment {
        src,
        dst,
        src_port: port,
        dst_port: 443,
        flags: case.flags,
        options: case.options.clone(),
        payload: case.payload.clone(),
    }
}

/// Runs netbpf's clamp program on `frame` with `BPF_PROG_TEST_RUN`.
fn test_run(datapath: &mut Datapath, frame: &[u8]) -> Parsed {
    let mut out = vec![0u8; frame.len() + 64];
    let result = datapath
        .classifier(program::MSS_OUT)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    Parsed::read(&out).expect("the program keeps a TCP frame")
}

/// Asserts that netbpf's output is TCPMSS's, byte for byte, with valid
/// checksums. One intended difference: where TCPMSS rewrites an MSS at an
/// odd offset of the header its incremental checksum update is wrong
/// (`xt_TCPMSS` treats the value as a 16-bit aligned word); netbpf's is
/// right, so there only the checksum field differs.
#[track_caller]
fn assert_same(name: &str, family: &str, kernel: &Parsed, netbpf: &Parsed) {
    assert!(
        netbpf.tcp_checksum_ok(),
        "{name} ({family}): netbpf left a bad TCP checksum"
    );
    assert!(
        netbpf.ip_checksum_ok,
        "{name} ({family}): netbpf left a bad IPv4 checksum"
    );
    assert!(
        kernel.ip_checksum_ok,
        "{name} ({family}): TCPMSS broke the IPv4 checksum"
    );
    assert_eq!(netbpf.mss(), kernel.mss(), "{name} ({family}): MSS");
    if kernel.tcp_checksum_ok() {
        assert_eq!(
            netbpf.tcp, kernel.tcp,
            "{name} ({family}): TCP segment bytes"
        );
    } else {
        assert!(
            name.contains("odd offset"),
            "{name} ({family}): TCPMSS broke the TCP checksum where no difference is known"
        );
        let without_checksum = |tcp: &[u8]| [&tcp[..16], &tcp[18..]].concat();
        assert_eq!(
            without_checksum(&netbpf.tcp),
            without_checksum(&kernel.tcp),
            "{name} ({family}): TCP segment bytes but the checksum"
        );
    }
}

/// netbpf's egress clamp to `CLAMP`, loaded for `BPF_PROG_TEST_RUN`.
fn clamp_for_test_runs() -> Datapath {
    let mut datapath = Datapath::load(
        Optional {
            mss_egress: true,
            ..Optional::default()
        },
        &Capacity::default(),
        None,
    )
    .expect("loading the datapath");
    // BPF_PROG_TEST_RUN runs on the loopback device: ifindex 1.
    datapath
        .set_mss_interface(
            1,
            MssConfig {
                mss: CLAMP,
                l3_offset: 14,
                slot: 0,
            },
        )
        .unwrap();
    datapath
}

#[test]
fn set_mss_agrees_with_iptables_tcpmss_on_every_crafted_segment() {
    let router = ForwardingPath::new();
    router.add_tcpmss(&["--set-mss", &CLAMP.to_string()]);
    let mut datapath = clamp_for_test_runs();

    let mut checked = 0;
    for (index, case) in cases().iter().enumerate() {
        for (v6, family) in [(false, "IPv4"), (true, "IPv6")] {
            let port = 20000 + u16::try_from(index * 2).unwrap() + u16::from(v6);
            let segment = segment(case, v6, port);
            let kernel = router.forward(&segment);
            let netbpf = test_run(
                &mut datapath,
                &segment.frame(router.sender_mac, router.router_mac),
            );
            assert_same(case.name, family, &kernel, &netbpf);
            checked += 1;
        }
    }
    assert_eq!(checked, cases().len() * 2);
    let stats = datapath.mss_stats(0).unwrap();
    assert!(
        stats.clamped > 0 && stats.inserted > 0 && stats.already_small > 0,
        "{stats:?}"
    );
    assert!(stats.malformed > 0 && stats.without_option > 0, "{stats:?}");
}

#[test]
fn clamp_to_pmtu_agrees_with_iptables_tcpmss_attached_to_the_way_out() {
    pmtu_agrees_when_attached(false);
}

#[test]
fn clamp_to_pmtu_agrees_with_iptables_tcpmss_attached_to_the_way_in() {
    pmtu_agrees_when_attached(true);
}

/// Clamps to the path MTU with TCPMSS on the router, then with netbpf
/// attached to the router's interface in (`ingress`) or out, and compares.
fn pmtu_agrees_when_attached(ingress: bool) {
    let router = ForwardingPath::new();
    let (interface, direction, program) = if ingress {
        (&router.router_in, "ingress", program::MSS_IN)
    } else {
        (&router.router_out, "egress", program::MSS_OUT)
    };
    // The way out has a smaller MTU than the way in, as a tunnel has.
    // (Both follow the device MTU and learned path MTUs; TCPMSS also
    // follows an unlocked `mtu` metric on a route, which the kernel's
    // forwarding and its FIB lookup for BPF ignore: netbpf clamps to what
    // forwarding enforces. docs/guides/mss-clamping.md says so.)
    router
        .router
        .ip(&["link", "set", &router.router_out, "mtu", "1400"])
        .unwrap();
    let attached_cases: Vec<Case> = cases()
        .into_iter()
        .filter(|case| case.name.starts_with("MSS") || case.name.starts_with("no "))
        .collect();
    let port = |index: usize, v6: bool| 30000 + u16::try_from(index * 2).unwrap() + u16::from(v6);

    router.add_tcpmss(&["--clamp-mss-to-pmtu"]);
    let mut by_kernel = Vec::new();
    for (index, case) in attached_cases.iter().enumerate() {
        for v6 in [false, true] {
            by_kernel.push(router.forward(&segment(case, v6, port(index, v6))));
        }
    }
    router.remove_tcpmss();

    let work = tempfile::tempdir().unwrap();
    let policy = work.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "version = 1\n[[mss_clamp]]\ninterface = \"{interface}\"\ndirection = \"{direction}\"\nmss = \"pmtu\"\n"
        ),
    )
    .unwrap();
    let cgroup =
        netbpf_testenv::Cgroup::new_test_root(&netbpf_testenv::unique_name("nbm")).unwrap();
    let netbpf = NetbpfRun::start_with(
        &netbpf_testenv::netbpf_binary(),
        &policy,
        cgroup.path(),
        work.path(),
        &["--netns", router.router.path().to_str().unwrap()],
    )
    .unwrap();
    let mut by_netbpf = Vec::new();
    for (index, case) in attached_cases.iter().enumerate() {
        for v6 in [false, true] {
            by_netbpf.push((
                case.name,
                v6,
                router.forward(&segment(case, v6, port(index, v6))),
            ));
        }
    }
    let table = netbpf.status(&[]).unwrap();
    for ((name, v6, netbpf_out), kernel_out) in by_netbpf.iter().zip(&by_kernel) {
        let family = if *v6 { "IPv6" } else { "IPv4" };
        assert_same(
            name,
            &format!("{family}, attached; status:\n{table}"),
            kernel_out,
            netbpf_out,
        );
    }
    let status = netbpf.status_json().unwrap();
    let attached = &status["mss_clamps"][0]["attached"][0];
    assert_eq!(attached["name"], interface.as_str(), "{status}");
    assert!(attached["clamped"].as_u64().unwrap() > 0, "{status}");
    // TCX where the kernel has it (6.6), a clsact qdisc before: as netbpf
    // reports it, and as the kernel shows it.
    let clamp_program = netbpf.programs().unwrap()[program];
    let (attachment, attached_there) = if kernel::has_tcx() {
        ("tcx", links_of(clamp_program).unwrap())
    } else {
        (
            "clsact",
            router.router.clsact_filters_of(clamp_program).unwrap(),
        )
    };
    assert_eq!(attached["attachment"], attachment, "{status}");
    assert_eq!(attached_there, 1, "attached once, through {attachment}");
    assert!(netbpf.stop().unwrap().success());
    assert_eq!(
        router.router.tc_attachments_of(clamp_program).unwrap(),
        0,
        "netbpf left its {attachment} attachment behind"
    );
}

/// Options of a random segment: well-formed ones in any order, and the
/// malformed kinds TCPMSS and netbpf must agree on.
fn random_options() -> impl Strategy<Value = Vec<u8>> {
    let option = prop_oneof![
        Just(vec![NOP]),
        Just(vec![0]),
        any::<u16>().prop_map(|mss| {
            let [high, low] = mss.to_be_bytes();
            vec![2, 4, high, low]
        }),
        (0..=6u8, any::<[u8; 4]>()).prop_map(|(length, bytes)| {
            let mut option = vec![2, length];
            option.extend_from_slice(&bytes[..usize::from(length.saturating_sub(2)).min(4)]);
            option
        }),
        Just(SACK_PERMITTED.to_vec()),
        Just(TIMESTAMPS.to_vec()),
        Just(WINDOW_SCALE.to_vec()),
        (3..=255u8, 0..=12u8).prop_map(|(kind, length)| {
            let mut option = vec![kind, length];
            option.resize(usize::from(length).max(2), 0);
            option
        }),
    ];
    prop_oneof![
        3 => prop::collection::vec(option, 0..8).prop_map(|options| {
            let mut bytes = options.concat();
            bytes.truncate(40);
            bytes
        }),
        1 => prop::collection::vec(any::<u8>(), 0..=40),
    ]
}

/// Random segments ([`fuzz_cases`], 100,000 by default): TCPMSS on the
/// router and netbpf's program under `BPF_PROG_TEST_RUN` give the same
/// bytes, but where TCPMSS's checksum update is wrong (an MSS at an odd
/// offset, as above).
#[test]
fn set_mss_agrees_with_iptables_tcpmss_on_random_segments() {
    let router = ForwardingPath::new();
    router.add_tcpmss(&["--set-mss", &CLAMP.to_string()]);
    let datapath = std::cell::RefCell::new(clamp_for_test_runs());
    let sent = std::cell::Cell::new(0u32);
    let odd_offsets = std::cell::Cell::new(0u32);
    let cases = fuzz_cases();
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let flags = prop::sample::select(vec![SYN, SYN | ACK, ACK, SYN | RST]);
    let payload =
        prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(any::<u8>(), 1..32)];
    runner
        .run(
            &(any::<bool>(), flags, random_options(), payload),
            |(v6, flags, options, payload)| {
                let port = 1024 + u16::try_from(sent.get() % 60_000).unwrap();
                sent.set(sent.get() + 1);
                let case = Case {
                    name: "random",
                    flags,
                    options,
                    payload,
                };
                let segment = segment(&case, v6, port);
                let kernel = router
                    .try_forward(&segment, Duration::from_secs(1))
                    .map_err(|error| TestCaseError::fail(format!("TCPMSS: {error:#}")))?;
                let netbpf = test_run(
                    &mut datapath.borrow_mut(),
                    &segment.frame(router.sender_mac, router.router_mac),
                );
                prop_assert!(netbpf.tcp_checksum_ok() && netbpf.ip_checksum_ok);
                prop_assert_eq!(netbpf.mss(), kernel.mss());
                if kernel.tcp_checksum_ok() {
                    prop_assert_eq!(&netbpf.tcp, &kernel.tcp);
                } else {
                    // The one known difference: TCPMSS's checksum of an MSS
                    // it rewrote at an odd offset.
                    prop_assert!(
                        kernel.mss_offset().is_some_and(|at| at % 2 == 1),
                        "TCPMSS broke the checksum where no difference is known"
                    );
                    let without_checksum = |tcp: &[u8]| [&tcp[..16], &tcp[18..]].concat();
                    prop_assert_eq!(without_checksum(&netbpf.tcp), without_checksum(&kernel.tcp));
                    odd_offsets.set(odd_offsets.get() + 1);
                }
                Ok(())
            },
        )
        .unwrap_or_else(|failure| panic!("{failure}"));
    println!(
        "{cases} random segments agree; {} differ only in TCPMSS's checksum of an MSS at an odd offset",
        odd_offsets.get()
    );
}
