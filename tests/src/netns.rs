//! Network namespaces made for one test, deleted on drop.

use std::path::PathBuf;

use crate::{bpftool::links_of, run_checked, unique_name};

/// A named network namespace (`ip netns add`), with `lo` up.
pub struct Netns {
    name: String,
}

impl Netns {
    /// A new namespace whose name starts with `prefix`.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let name = unique_name(prefix);
        run_checked("ip", ["netns", "add", &name])?;
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`: what a policy or `setns` takes.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `command` inside the namespace (`ip netns exec`); its output.
    pub fn exec(&self, command: &[&str]) -> anyhow::Result<String> {
        run_checked(
            "ip",
            ["netns", "exec", self.name.as_str()].iter().chain(command),
        )
    }

    /// How many filters of a clsact qdisc (how tc programs attach before
    /// TCX) run program `id` on the namespace's interfaces.
    pub fn clsact_filters_of(&self, id: u64) -> anyhow::Result<usize> {
        let listing: serde_json::Value =
            serde_json::from_str(&self.exec(&["bpftool", "-j", "net", "show"])?)?;
        Ok(listing
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|namespace| namespace["tc"].as_array())
            .flatten()
            .filter(|filter| {
                filter["kind"]
                    .as_str()
                    .is_some_and(|kind| kind.starts_with("clsact/"))
            })
            // bpftool 7.1 (Debian's) says `id`; later ones `prog_id`.
            .filter(|filter| filter["id"].as_u64().or(filter["prog_id"].as_u64()) == Some(id))
            .count())
    }

    /// Where tc program `id` is attached on the namespace's interfaces:
    /// its TCX links (Linux 6.6) and its clsact filters.
    pub fn tc_attachments_of(&self, id: u64) -> anyhow::Result<usize> {
        Ok(links_of(id)? + self.clsact_filters_of(id)?)
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run_checked("ip", ["-n", self.name.as_str()].iter().chain(args))
    }

    /// Creates a veth pair from this namespace to `peer`: `(ours, theirs)`
    /// are the interface names. The pair never stays in the host's own
    /// namespace: it is created in this one.
    pub fn veth_to(&self, peer: &Netns) -> anyhow::Result<(String, String)> {
        let (ours, theirs) = (unique_name("nbv"), unique_name("nbv"));
        self.ip(&[
            "link",
            "add",
            &ours,
            "type",
            "veth",
            "peer",
            "name",
            &theirs,
            "netns",
            peer.name(),
        ])?;
        Ok((ours, theirs))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes its interfaces (and veth peers).
        if let Err(error) = run_checked("ip", ["netns", "del", self.name.as_str()]) {
            eprintln!("warning: {error:#}");
        }
    }
}
