//! The status document as people read it: a header, then one table per
//! kind of rule (forwards, remaps and aliases, host services, MSS clamps).

use std::fmt::Write as _;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use netbpf_common::MssStats;

use crate::api::status::{HostServiceStatus, ReloadStatus, ScopeStatus, Status};

/// Above this many scope instances, the tables of rules give way to one
/// row per scope: `--scope` and `--container` list instances.
pub const SUMMARY_ABOVE: usize = 50;

/// How many refused instances are named one by one in a summary.
const REFUSALS_NAMED: usize = 5;

/// The status as people read it: a header, one table row per forward,
/// one per interface an MSS clamp is on.
#[must_use]
pub fn render(status: &Status) -> String {
    let programs: Vec<String> = status
        .programs
        .iter()
        .map(|program| format!("{} (id {})", program.name, program.id))
        .collect();
    let mut text = format!(
        "netbpf {} (map layout {}), {}\npolicy: {}\ncgroup root: {} ({} cgroups followed)\nprograms: {}\n",
        status.version,
        status.map_layout,
        status.pinned.as_ref().map_or_else(
            || "not pinned: the datapath goes when netbpf stops".to_owned(),
            |dir| format!("pinned at {}", dir.display())
        ),
        status.policy.display(),
        status.cgroup_root.display(),
        status.discovery.cgroups,
        programs.join(", ")
    );
    if let (Some(p50), Some(p99)) = (status.discovery.delay_p50_us, status.discovery.delay_p99_us) {
        let _ = writeln!(
            text,
            "from a cgroup appearing to its scope in the maps: p50 {p50} us, p99 {p99} us ({} measured)",
            status.discovery.delays_measured
        );
    }
    if status.discovery.resyncs > 0 {
        let _ = writeln!(
            text,
            "cgroup events lost {} times (the inotify queue overflowed): the cgroup tree was listed again each time",
            status.discovery.resyncs
        );
    }
    for missing in &status.unavailable {
        let _ = writeln!(
            text,
            "kernel feature unavailable: {} ({}): {}",
            missing.feature, missing.error, missing.lost
        );
    }
    if let Some(ReloadStatus {
        error: Some(error), ..
    }) = &status.last_reload
    {
        let _ = writeln!(
            text,
            "last reload failed, the policy before it stays: {error}"
        );
    }
    if status.scopes.len() > SUMMARY_ABOVE {
        summarise_instances(status, &mut text);
    } else {
        list_instances(status, &mut text);
    }
    if !status.host_services.is_empty() {
        let _ = writeln!(text, "{}", host_services_table(status));
        let _ = writeln!(text, "grant guard on: {}", status.grant_guard.join(", "));
    }
    if !status.mss_clamps.is_empty() {
        let _ = writeln!(text, "{}", mss_table(status));
    }
    text
}

/// Each instance: why it is not applied, its forwards, remaps and aliases.
fn list_instances(status: &Status, text: &mut String) {
    for scope in &status.scopes {
        if let Some(error) = &scope.error {
            let _ = writeln!(text, "not applied: {}: {error}", scope.name);
        }
    }
    if status.scopes.iter().any(|scope| !scope.forwards.is_empty()) {
        let _ = writeln!(text, "{}", forwards_table(status));
    }
    if status
        .scopes
        .iter()
        .any(|scope| !scope.binds.is_empty() || !scope.aliases.is_empty())
    {
        let _ = writeln!(text, "{}", remaps_table(status));
    }
}

/// One row per scope, with how many instances it has, how many are
/// applied and what their forwards counted; the first refusals by name.
fn summarise_instances(status: &Status, text: &mut String) {
    let _ = writeln!(
        text,
        "{} scope instances: one row per scope (`--scope NAME` or `--container NAME` lists instances)",
        status.scopes.len()
    );
    let refused: Vec<&ScopeStatus> = status
        .scopes
        .iter()
        .filter(|scope| scope.error.is_some())
        .collect();
    for scope in refused.iter().take(REFUSALS_NAMED) {
        let error = scope.error.as_deref().unwrap_or_default();
        let _ = writeln!(text, "not applied: {}: {error}", scope.name);
    }
    if refused.len() > REFUSALS_NAMED {
        let _ = writeln!(text, "not applied: {} more", refused.len() - REFUSALS_NAMED);
    }
    let mut table = table_with(&[
        "SCOPE",
        "INSTANCES",
        "APPLIED",
        "CONNECTS",
        "DATAGRAMS",
        "LOCAL SKIPS",
    ]);
    let mut rows: Vec<(&str, [u64; 5])> = Vec::new();
    for scope in &status.scopes {
        let found = rows.iter().position(|(name, _)| *name == scope.scope);
        let at = found.unwrap_or_else(|| {
            rows.push((&scope.scope, [0; 5]));
            rows.len() - 1
        });
        let row = &mut rows[at].1;
        row[0] += 1;
        row[1] += u64::from(scope.error.is_none());
        for forward in &scope.forwards {
            row[2] += forward.connects;
            row[3] += forward.datagrams;
            row[4] += forward.local_skips;
        }
    }
    for (name, counts) in rows {
        let mut cells = vec![name.to_owned()];
        cells.extend(counts.iter().map(u64::to_string));
        table.add_row(cells);
    }
    let _ = writeln!(text, "{table}");
}

fn forwards_table(status: &Status) -> Table {
    let mut table = table_with(&[
        "SCOPE",
        "KEYED BY",
        "PROTO",
        "FROM",
        "TO",
        "CONNECTS",
        "DATAGRAMS",
        "LOCAL SKIPS",
        "REVERSE LOST",
    ]);
    for scope in status.scopes.iter().filter(|scope| scope.error.is_none()) {
        let selector = match (&scope.container_id, &scope.cgroup, &scope.netns) {
            (Some(id), _, _) => format!(
                "{} container {}",
                scope.runtime.as_deref().unwrap_or("a"),
                id.get(..12).unwrap_or(id)
            ),
            (None, Some(cgroup), _) => format!("cgroup {}", cgroup.display()),
            (None, _, Some(netns)) => format!("netns {}", netns.display()),
            _ => String::new(),
        };
        if scope.forwards.is_empty() {
            table.add_row([
                scope.name.as_str(),
                &selector,
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
            ]);
        }
        for forward in &scope.forwards {
            table.add_row([
                scope.name.clone(),
                selector.clone(),
                format!("{:?}", forward.proto).to_lowercase(),
                forward.from.clone(),
                forward.to.clone(),
                forward.connects.to_string(),
                forward.datagrams.to_string(),
                forward.local_skips.to_string(),
                forward.unremembered.to_string(),
            ]);
        }
    }
    table
}

fn remaps_table(status: &Status) -> Table {
    let mut table = table_with(&["SCOPE", "REMAP", "PROTO", "FROM", "TO", "REWRITTEN"]);
    for scope in &status.scopes {
        for bind in &scope.binds {
            let on = bind
                .address
                .map_or_else(|| "*".to_owned(), |address| address.to_string());
            table.add_row([
                scope.name.clone(),
                "bind".to_owned(),
                format!("{:?}", bind.proto).to_lowercase(),
                format!("{on} port {}", bind.port),
                format!("port {}", bind.to),
                format!("{} binds", bind.binds),
            ]);
        }
        for alias in &scope.aliases {
            table.add_row([
                scope.name.clone(),
                "alias".to_owned(),
                format!("{:?}", alias.proto).to_lowercase(),
                alias.from.to_string(),
                alias.to.to_string(),
                format!(
                    "{} connects, {} datagrams, {} reverse lost",
                    alias.connects, alias.datagrams, alias.unremembered
                ),
            ]);
        }
    }
    table
}

fn host_services_table(status: &Status) -> Table {
    let mut table = table_with(&[
        "HOST SERVICE",
        "LISTEN",
        "LISTENER",
        "GRANTED TO",
        "STEERED",
        "REFUSED",
        "DOWN",
        "FORGED",
        "BORROWED",
        "UNPARSED",
    ]);
    for service in &status.host_services {
        let granted: Vec<String> = status
            .scopes
            .iter()
            .flat_map(|scope| {
                scope
                    .grants
                    .iter()
                    .filter(|grant| grant.service == service.name)
                    .map(|grant| {
                        format!(
                            "{} dials {} (via {}, {} connects)",
                            scope.name, grant.dial, grant.gateway, grant.connects
                        )
                    })
            })
            .collect();
        table.add_row([
            service.name.clone(),
            service.listen.to_string(),
            listener_cell(service),
            granted.join("\n"),
            service.steered.to_string(),
            service.refused.to_string(),
            service.down.to_string(),
            service.forged.to_string(),
            service.borrowed.to_string(),
            service.unparsed.to_string(),
        ]);
    }
    table
}

fn mss_table(status: &Status) -> Table {
    let mut table = table_with(&[
        "MSS CLAMP",
        "DIRECTION",
        "MSS",
        "INTERFACE",
        "SEEN",
        "CLAMPED",
        "INSERTED",
        "ALREADY SMALL",
        "WITHOUT OPTION",
        "MALFORMED",
        "UNPARSED",
    ]);
    for clamp in &status.mss_clamps {
        let head = [
            clamp.interface.clone(),
            clamp.direction.to_string(),
            clamp.mss.to_string(),
        ];
        if clamp.attached.is_empty() {
            let waiting = ["(none yet)", "-", "-", "-", "-", "-", "-", "-"].map(str::to_owned);
            table.add_row(head.iter().cloned().chain(waiting));
        }
        for interface in &clamp.attached {
            let MssStats {
                seen,
                clamped,
                inserted,
                already_small,
                without_option,
                malformed,
                unparsed,
            } = interface.stats;
            let counters = [
                seen,
                clamped,
                inserted,
                already_small,
                without_option,
                malformed,
                unparsed,
            ]
            .map(|count| count.to_string());
            table.add_row(
                head.iter()
                    .cloned()
                    .chain([format!(
                        "{} (ifindex {}{})",
                        interface.name,
                        interface.ifindex,
                        interface
                            .attachment
                            .map(|attachment| format!(", {attachment}"))
                            .unwrap_or_default()
                    )])
                    .chain(counters),
            );
        }
    }
    table
}

/// An empty table in the look every section of the status shares.
fn table_with(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    table
}

/// Who gets a host service's connections, as its table says.
fn listener_cell(service: &HostServiceStatus) -> String {
    match (&service.listener_pid, &service.unowned_listener) {
        (Some(pid), _) => format!("pid {pid}"),
        (None, Some(unowned)) => format!(
            "none: refused, pid {} (uid {}{}) listens but is not the owner ({})",
            unowned.pid,
            unowned.uid,
            unowned
                .unit
                .as_deref()
                .map_or_else(String::new, |unit| format!(", {unit}")),
            service.owner.as_deref().unwrap_or("anyone")
        ),
        (None, None) => "none: refused".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A status of `instances` instances of scope `apps`, each with one
    /// forward that counted 2 connects; the first one refused.
    fn status_of(instances: usize) -> Status {
        let scopes: Vec<serde_json::Value> = (0..instances)
            .map(|index| {
                json!({
                    "name": format!("apps/c{index}"), "scope": "apps", "instance": format!("c{index}"),
                    "runtime": null, "container_id": null, "match": {"cgroup": "c*"},
                    "cgroup": format!("/sys/fs/cgroup/c{index}"), "cgroup_id": index, "netns": null,
                    "netns_cookie": null, "id": index,
                    "error": if index == 0 { json!("map CGROUP_SCOPES is full") } else { json!(null) },
                    "forwards": [{"rule": index, "proto": "tcp", "from": "localhost:8082",
                        "to": "10.0.0.1:8082", "connects": 2, "datagrams": 0, "local_skips": 0,
                        "unremembered": 0, "unrecorded_binds": 0}],
                    "grants": [], "binds": [], "aliases": [],
                })
            })
            .collect();
        serde_json::from_value(json!({
            "version": "0.1.0", "map_layout": 3, "pinned": null, "cgroup_root": "/sys/fs/cgroup",
            "policy": "/etc/netbpf/policy.d", "programs": [],
            "discovery": {"cgroups": instances, "delay_p50_us": null, "delay_p99_us": null, "delays_measured": 0, "resyncs": 0},
            "last_reload": null, "scopes": scopes, "host_services": [], "grant_guard": [],
            "mss_clamps": [], "unavailable": [],
        }))
        .unwrap()
    }

    #[test]
    fn a_few_instances_are_listed_one_by_one() {
        let text = render(&status_of(3));
        assert!(text.contains("apps/c2"), "{text}");
        assert!(text.contains("not applied: apps/c0"), "{text}");
        assert!(
            !text.contains("scope instances: one row per scope"),
            "{text}"
        );
    }

    #[test]
    fn many_instances_are_summarised_per_scope() {
        let text = render(&status_of(SUMMARY_ABOVE + 10));
        assert!(
            text.contains("60 scope instances: one row per scope"),
            "{text}"
        );
        assert!(!text.contains("apps/c12"), "no instance listed: {text}");
        let row = text
            .lines()
            .find(|line| line.contains(" apps "))
            .unwrap_or_else(|| panic!("no row of apps: {text}"));
        let cells: Vec<&str> = row
            .split(['│', '┆'])
            .map(str::trim)
            .filter(|cell| !cell.is_empty())
            .collect();
        assert_eq!(cells, ["apps", "60", "59", "120", "0", "0"], "{text}");
        assert_eq!(text.matches("not applied:").count(), 1, "{text}");
    }
}
