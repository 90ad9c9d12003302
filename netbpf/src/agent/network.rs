//! The agent's part in the node's network outside the cgroup: the MSS
//! clamps on interfaces, the host services' listeners and the program
//! that steers to them, the grant guard on granted containers' bridges,
//! and the interface events all of them follow.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    path::PathBuf,
};

use super::{
    grant_guard::GrantGuard,
    host_services::HostServices,
    mss_clamp::{ClampError, MssClamper},
};
use crate::{
    datapath::{Datapath, Optional},
    host::{
        Node,
        links::{self, Interface, LinkEvent, LinkWatcher},
        netns,
    },
    plan::Plan,
    policy::Policy,
};

/// What interface events mean for the grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewired {
    /// Nothing under them changed.
    Nothing,
    /// These interfaces went, moved to another bridge or were
    /// re-addressed: the grants through them are resolved again.
    Through(Vec<u32>),
    /// Events were lost: every grant is resolved again.
    All,
}

/// Interfaces, clamps, the guard and host-service listeners.
pub struct HostNetwork {
    pub clamper: MssClamper,
    pub host_services: HostServices,
    /// The grant guard on granted containers' bridges.
    pub guard: GrantGuard,
    /// Whether the host service program is attached to the node.
    host_services_attached: bool,
    /// Interface changes, where the policy clamps MSS or has host services.
    links: Option<LinkWatcher>,
    /// The node's interfaces, while `links` follows them.
    interfaces: BTreeMap<u32, Interface>,
    /// The node's network namespace, and whether it is another than the
    /// agent's.
    netns: PathBuf,
    other_netns: Option<PathBuf>,
}

impl HostNetwork {
    /// What `policy` asks of the node's network, nothing applied yet.
    #[must_use]
    pub fn new(policy: &Policy, node: &Node) -> Self {
        let other = node.other_netns.as_deref();
        Self {
            clamper: MssClamper::new(policy.mss_clamps.clone(), other),
            host_services: HostServices::new(policy.host_services.clone(), other),
            guard: GrantGuard::new(other),
            host_services_attached: false,
            links: None,
            interfaces: BTreeMap::new(),
            netns: node.netns.clone(),
            other_netns: node.other_netns.clone(),
        }
    }

    /// Whether interfaces are followed.
    #[must_use]
    pub fn follows_interfaces(&self) -> bool {
        self.links.is_some()
    }

    /// The next interface changes, or never when none are followed.
    pub async fn next_link_events(&mut self) -> io::Result<Vec<LinkEvent>> {
        match self.links.as_mut() {
            Some(links) => links.next().await,
            None => std::future::pending().await,
        }
    }

    /// Starts what `policy`'s host services and MSS clamps need: the
    /// listeners of the services, the interface watch of the clamps, and
    /// the guard on what `plan` grants.
    pub fn apply(
        &mut self,
        datapath: &mut Datapath,
        policy: &Policy,
        plan: &Plan,
        starting: bool,
    ) -> anyhow::Result<()> {
        // The MSS clamp takes the verifier about a second: its programs
        // are loaded when a policy first asks for them.
        datapath.load_programs(Optional::for_policy(policy))?;
        if self.host_services.is_empty() {
            if self.host_services_attached {
                datapath.detach_host_services();
                self.host_services_attached = false;
            }
            datapath.prune_links("hostsvc-");
        } else {
            // Attached only where a host service is: it runs for every
            // connection the node accepts.
            if !self.host_services_attached {
                datapath.attach_host_services(&self.netns)?;
                self.host_services_attached = true;
            }
            self.refresh_host_services(datapath);
            self.host_services.report_missing();
        }
        let wants_interfaces = !self.clamper.is_empty() || !self.host_services.is_empty();
        if wants_interfaces && self.links.is_none() {
            self.follow_interfaces(datapath, starting)?;
        } else if !self.clamper.is_empty() {
            self.clamper.resync(datapath)?;
        }
        self.clamper.prune(datapath)?;
        self.apply_guard(datapath, plan);
        datapath.prune_links("guard-");
        Ok(())
    }

    /// Subscribes to the node's interface events and clamps the
    /// interfaces there now. At start, more interfaces to clamp than the
    /// clamp holds is an error; later it is logged.
    fn follow_interfaces(&mut self, datapath: &mut Datapath, starting: bool) -> anyhow::Result<()> {
        let (socket, interfaces) =
            netns::in_netns_or_here(self.other_netns.as_deref(), links::subscribe_and_list)
                .and_then(|listed| listed)
                .map_err(|error| anyhow::anyhow!("listing the network interfaces: {error}"))?;
        self.links = Some(LinkWatcher::new(socket)?);
        self.interfaces = interfaces
            .iter()
            .map(|interface| (interface.index, interface.clone()))
            .collect();
        for interface in interfaces {
            match self
                .clamper
                .handle(datapath, &LinkEvent::Present(interface))
            {
                Err(error @ ClampError::TooManyInterfaces) if starting => return Err(error.into()),
                Err(error) => tracing::warn!(error = format!("{error:#}"), "not clamping MSS"),
                Ok(()) => {}
            }
        }
        Ok(())
    }

    /// Applies interface and address changes to the MSS clamps; says what
    /// they mean for the grants. A change that cannot be applied is
    /// logged: the rest of the datapath runs on.
    pub fn follow_links(
        &mut self,
        datapath: &mut Datapath,
        events: io::Result<Vec<LinkEvent>>,
    ) -> Rewired {
        let events = match events {
            Ok(events) => events,
            // The kernel dropped events (ENOBUFS): look at everything again.
            Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {
                tracing::warn!("interface events were lost: listing the interfaces again");
                self.relist_interfaces();
                if let Err(error) = self.clamper.resync(datapath) {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "MSS clamps not resynchronised"
                    );
                }
                return Rewired::All;
            }
            Err(error) => {
                tracing::warn!(%error, "reading interface changes failed");
                return Rewired::Nothing;
            }
        };
        let mut through = Vec::new();
        for event in &events {
            match event {
                LinkEvent::Present(interface) => {
                    let known = self.interfaces.insert(interface.index, interface.clone());
                    // A port moved to another bridge: what arrives
                    // through it arrives elsewhere now.
                    if known.is_some_and(|known| known.master != interface.master) {
                        through.push(interface.index);
                    }
                }
                LinkEvent::Gone(index) => {
                    self.interfaces.remove(index);
                    through.push(*index);
                }
                // The gateway a grant's connections go to may be an
                // address of it no more.
                LinkEvent::Readdressed(index) => through.push(*index),
            }
            if let Err(error) = self.clamper.handle(datapath, event) {
                tracing::warn!(error = format!("{error:#}"), "MSS clamp not applied");
            }
        }
        if through.is_empty() {
            Rewired::Nothing
        } else {
            Rewired::Through(through)
        }
    }

    /// Lists the node's interfaces again, whatever events are still queued.
    pub fn relist_interfaces(&mut self) {
        match netns::in_netns_or_here(self.other_netns.as_deref(), links::list)
            .and_then(|listed| listed)
        {
            Ok(listed) => {
                self.interfaces = listed
                    .into_iter()
                    .map(|interface| (interface.index, interface))
                    .collect();
            }
            Err(error) => tracing::warn!(%error, "listing the interfaces failed"),
        }
    }

    /// Keeps the grant guard on what the grants of `plan` call for.
    pub fn apply_guard(&mut self, datapath: &mut Datapath, plan: &Plan) {
        if self.links.is_none() {
            return;
        }
        let vias: BTreeSet<u32> = plan
            .grants
            .values()
            .map(|path| path.port)
            .filter(|port| *port != 0)
            .collect();
        self.guard.apply(datapath, &vias, &self.interfaces);
    }

    /// Follows the host services of `policy`, none of their listeners
    /// taken yet.
    pub fn restart_host_services(&mut self, policy: &Policy) {
        self.host_services =
            HostServices::new(policy.host_services.clone(), self.other_netns.as_deref());
    }

    /// Hands the host services' listeners to the datapath, logging trouble.
    pub fn refresh_host_services(&mut self, datapath: &mut Datapath) {
        if let Err(error) = self.host_services.refresh(datapath) {
            tracing::warn!(
                error = format!("{error:#}"),
                "looking for the host services' listeners"
            );
        }
    }

    /// Takes `policy`'s MSS clamps in place of `old`'s, if they differ:
    /// the old ones are detached.
    pub fn replace_clamps(&mut self, datapath: &mut Datapath, old: &Policy, policy: &Policy) {
        if policy.mss_clamps != old.mss_clamps {
            self.clamper.release_all(datapath);
            self.clamper = MssClamper::new(policy.mss_clamps.clone(), self.other_netns.as_deref());
        }
    }

    /// Detaches what is attached outside the cgroup (MSS clamps, the
    /// guard).
    pub fn release(&mut self, datapath: &mut Datapath) {
        self.clamper.release_all(datapath);
        self.guard.release_all(datapath);
    }
}
