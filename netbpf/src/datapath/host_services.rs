//! Host services: the `sk_lookup` program on the node's network namespace,
//! the services and grants it checks, and the listening sockets it hands
//! connections to.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt as _},
    path::Path,
};

use aya::{
    maps::{MapError, SockMap},
    programs::{SkLookup, TcAttachType, links::FdLink},
};
use netbpf_common::{
    MAX_HOST_SERVICES, ServiceStats,
    names::{self, program},
};

use super::{Datapath, DatapathError, TcLink, map_error};

impl Datapath {
    /// Attaches the host service program to the network namespace at
    /// `netns` through a bpf link.
    pub fn attach_host_services(&mut self, netns: &Path) -> Result<(), DatapathError> {
        let attach_error = |source| DatapathError::SkLookupAttach {
            netns: netns.to_owned(),
            source: Box::new(source),
        };
        let namespace = File::open(netns).map_err(|error| attach_error(error.into()))?;
        let inode = namespace
            .metadata()
            .map_err(|error| attach_error(error.into()))?
            .ino();
        self.attach_linked(
            program::HOST_SERVICE,
            format!("hostsvc-{inode}"),
            |program| {
                let program: &mut SkLookup = program
                    .try_into()
                    .map_err(|_| DatapathError::MissingProgram(program::HOST_SERVICE))?;
                let id = program.attach(namespace).map_err(attach_error)?;
                let link = program.take_link(id).map_err(attach_error)?;
                Ok(FdLink::from(link))
            },
        )
    }

    /// Detaches the host service program from the node's network namespace.
    pub fn detach_host_services(&mut self) {
        self.detach_links("hostsvc-");
    }

    /// Attaches the grant guard to `interface` of the calling thread's
    /// network namespace, on ingress: where a container's packets arrive.
    pub fn attach_grant_guard(&mut self, interface: &str) -> Result<TcLink, DatapathError> {
        self.attach_tc(
            program::GRANT_GUARD,
            interface,
            TcAttachType::Ingress,
            "guard-{ifindex}",
        )
    }

    /// Makes `socket` (a listening TCP socket) service `index`'s listener.
    /// The map holds the socket itself, not the descriptor: when its owner
    /// closes it, it leaves the map.
    pub fn set_service_socket(
        &mut self,
        index: u32,
        socket: &impl AsRawFd,
    ) -> Result<(), DatapathError> {
        let mut sockets: SockMap<_> = self.map_mut(names::SERVICE_SOCKETS.name)?;
        sockets
            .set(index, socket, 0)
            .map_err(map_error(names::SERVICE_SOCKETS.name))
    }

    /// Empties the listener slots `indexes`: slots of services with no
    /// listener, slots no service holds any more, or every slot when the
    /// services change places, so that no connection is ever handed to
    /// another service's listener.
    pub fn clear_service_sockets(
        &mut self,
        indexes: impl IntoIterator<Item = u32>,
    ) -> Result<(), DatapathError> {
        let mut sockets: SockMap<_> = self.map_mut(names::SERVICE_SOCKETS.name)?;
        for index in indexes {
            match sockets.clear_index(&index) {
                // A socket map says EINVAL for a slot already empty.
                Err(MapError::SyscallError(error))
                    if matches!(
                        error.io_error.raw_os_error(),
                        Some(libc::EINVAL | libc::ENOENT)
                    ) => {}
                result => result.map_err(map_error(names::SERVICE_SOCKETS.name))?,
            }
        }
        Ok(())
    }

    /// Empties every listener slot and zeroes every service counter: the
    /// services are about to change places.
    pub fn reset_service_slots(&mut self) -> Result<(), DatapathError> {
        self.clear_service_sockets(0..MAX_HOST_SERVICES)?;
        self.reset_counters::<ServiceStats>(names::SERVICE_COUNTERS, 0..MAX_HOST_SERVICES)
    }

    /// Empties the listener slots no service of a policy of `services`
    /// services holds: what an agent with another policy left pinned.
    pub fn clear_unused_service_sockets(&mut self, services: usize) -> Result<(), DatapathError> {
        let first = u32::try_from(services).unwrap_or(MAX_HOST_SERVICES);
        self.clear_service_sockets(first..MAX_HOST_SERVICES)
    }

    /// The counters of service `index`, summed over CPUs.
    pub fn service_stats(&self, index: u32) -> Result<ServiceStats, DatapathError> {
        self.summed_counters(names::SERVICE_COUNTERS, index)
    }
}
