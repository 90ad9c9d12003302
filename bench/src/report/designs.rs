//! The section of the reverse path's designs: what each adds to a
//! connect and holds per live socket, beside netbpf's connect4.

use std::fmt::Write as _;

use netbpf_common::names::program;

use super::{Results, net};
use crate::{
    designs::{Design, DesignCost},
    programs::Cost,
    stats::Summary,
};

pub(super) fn section(text: &mut String, results: &Results) {
    if results.designs.is_empty() {
        return;
    }
    text.push_str(
        "## The reverse path's designs\n\n\
         What a connect hook adds to remember what a socket dialed, so that `getpeername()` and \
         UDP replies show it, design by design: each design is a program of the bench's own, \
         alone at connect4 of a cgroup of its own (and at the release hook, for the design that \
         deletes there), beside three empty programs, timed by the kernel's statistics over a \
         process's UDP connects (each socket closed at once) while it holds some live connected \
         sockets, the designs taking turns round by round; a round in which any of them, or \
         the least of the empty programs beside it, stalled (more than 1.5 times its median per run) is \
         measured again, as the per-program costs are. *net*: ns per run above the least \
         empty program, median (interquartile range) of the rounds; *memory*: what the design held for \
         the live sockets (its map's `bytes_memlock`, and the option memory the sockets were \
         charged for their storage).\n\n\
         | design | live sockets | connect4 net ns | to Cilium's | release net ns | memory |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let median_of = |design: Design, live: usize| {
        results
            .designs
            .get(&design)
            .and_then(|by_live| by_live.get(&live))
            .map(|rounds| connect_net(rounds).median)
    };
    // The rows whose ratio to Cilium's is beyond what the page leaves
    // unexplained, and why.
    let mut far = Vec::new();
    for (&design, by_live) in results
        .designs
        .iter()
        .filter(|(design, _)| !design.is_part())
    {
        for (&live, rounds) in by_live {
            let connect = connect_net(rounds);
            let ratio = median_of(Design::FlowLru, live)
                .filter(|peer| *peer > 0.0)
                .map(|peer| connect.median / peer);
            if let Some(ratio) = ratio.filter(|ratio| !(0.5..=2.0).contains(ratio)) {
                far.push(format!(
                    "- {} with {live} live sockets, {ratio:.2}× Cilium's: {}",
                    design.label(),
                    what_a_connect_does(design)
                ));
            }
            let to_peer = ratio.map_or_else(|| "-".to_owned(), |ratio| format!("{ratio:.2}×"));
            let release = release_net(rounds);
            let bytes = Summary::of(&rounds.iter().map(memory).collect::<Vec<_>>()).median;
            let _ = writeln!(
                text,
                "| {} | {live} | {} | {to_peer} | {release} | {} |",
                design.label(),
                connect.show(0),
                human_bytes(bytes)
            );
        }
    }
    text.push('\n');
    if !far.is_empty() {
        text.push_str("Beyond half or twice the cost of Cilium's way, and why:\n\n");
        for line in far {
            let _ = writeln!(text, "{line}");
        }
        text.push('\n');
    }
    let fewest = |design: Design| {
        results
            .designs
            .get(&design)
            .and_then(|by_live| by_live.values().next())
            .map(|rounds| connect_net(rounds).median)
    };
    if let (Some(whole), Some(storage), Some(no_scope)) = (
        results.programs.scoped.get(program::CONNECT4),
        fewest(Design::SocketStorage),
        fewest(Design::NoScope),
    ) {
        let _ = write!(
            text,
            "netbpf's connect4 of a rewritten TCP connect (the programs' table) keeps nothing: \
             its forward alone reaches its target in its scope, so `getpeername()` derives what \
             it dialed from the rule. It takes {:.0} ns net, where the socket storage alone would \
             add about {storage:.0} ns (it still keeps storage for UDP, and for a forward that \
             shares its target with another). It finds its forward with the cgroup helper and \
             one hash lookup, keyed by the cgroup and the port; finding a scope the long way, \
             the helper and a lookup per map, is about {no_scope:.0} ns when there is none \
             (the parts below).",
            net(whole).median
        );
        if let Some(floor) = fewest(Design::RewriteFloor) {
            rewrite_floor(text, net(whole).median, floor);
        }
        text.push_str("\n\n");
    }
    parts(text, results);
}

/// What a rewrite at its floor (`floor` ns net) leaves of netbpf's whole
/// connect4 (`whole` ns net): what netbpf checks beyond it.
fn rewrite_floor(text: &mut String, whole: f64, floor: f64) {
    let _ = write!(
        text,
        " A rewrite at its floor, the helper, that lookup and the destination written and \
         nothing else, takes {floor:.0} ns"
    );
    let beyond = whole - floor;
    if beyond > 0.0 {
        let _ = write!(
            text,
            ": the other {beyond:.0} ns are what netbpf checks beyond it (the port's bit, the \
             rule's counters, the scope's local binds, the host-service check) and the cache \
             lines they read."
        );
    } else {
        text.push_str(
            ", no less than netbpf's whole connect4 here: this run's rounds of the two cannot \
             tell what netbpf checks beyond the floor.",
        );
    }
}

/// The table of the parts: of finding a scope, of finding no storage, of
/// a rewrite.
fn parts(text: &mut String, results: &Results) {
    let parts: Vec<_> = results
        .designs
        .iter()
        .filter(|(design, _)| design.is_part())
        .filter_map(|(design, by_live)| Some((design, by_live.values().next()?)))
        .collect();
    if parts.is_empty() {
        return;
    }
    text.push_str(
        "What finding a socket's scope costs, part by part, measured the same way: the floor of \
         every program that needs the scope, a socket of no scope included (it is found in no \
         map). Then the floor of the hooks that answer from a socket's storage (release, \
         recvmsg, `getpeername()`) for a socket that has none, at connect4 and at the release \
         hook, and the floor of a rewritten connect that keeps nothing.\n\n\
         | part | connect4 net ns | release net ns |\n\
         | --- | ---: | ---: |\n",
    );
    for (design, rounds) in parts {
        let _ = writeln!(
            text,
            "| {} | {} | {} |",
            design.label(),
            connect_net(rounds).show(0),
            release_net(rounds)
        );
    }
    text.push('\n');
}

/// What a design's connect does to remember what its socket dialed.
fn what_a_connect_does(design: Design) -> &'static str {
    match design {
        Design::SocketStorage => {
            "the socket's first connect allocates its storage (`bpf_sk_storage_get` with \
             `F_CREATE`: an allocation, then links into the socket's list and the map's, each \
             under its lock), where the tables fill an entry allocated in advance. The storage \
             is freed with the socket: no release hook, nothing evicted."
        }
        Design::CookieHash => {
            "an entry taken from the table's own free list and linked into its bucket under the \
             bucket's lock; the release hook unlinks it."
        }
        Design::FlowLru => {
            "an entry taken from the LRU's free lists, the least recently used one evicted when \
             they run dry."
        }
        Design::CgroupHelper
        | Design::HashMiss
        | Design::NoScope
        | Design::StorageMiss
        | Design::RewriteFloor => "a part of netbpf's programs, not a design.",
    }
}

/// The net ns per run of a design's program at connect4, over its rounds.
fn connect_net(rounds: &[DesignCost]) -> Summary {
    net(&rounds.iter().map(|round| round.connect).collect::<Vec<_>>())
}

/// The net ns per run of a design's program at the release hook, over
/// its rounds; "-" when it has none there.
fn release_net(rounds: &[DesignCost]) -> String {
    let releases: Vec<Cost> = rounds.iter().filter_map(|round| round.release).collect();
    if releases.is_empty() {
        "-".to_owned()
    } else {
        net(&releases).show(0)
    }
}

fn memory(round: &DesignCost) -> f64 {
    #[expect(
        clippy::cast_precision_loss,
        reason = "memory sizes are far below 2^52"
    )]
    let bytes = round.bytes as f64;
    bytes
}

/// `bytes` in KiB below a MiB, else in MiB.
fn human_bytes(bytes: f64) -> String {
    if bytes < f64::from(1 << 20) {
        format!("{:.1} KiB", bytes / 1024.0)
    } else {
        format!("{:.1} MiB", bytes / f64::from(1 << 20))
    }
}
