//! Keeps each host service's listening socket in the datapath: found on
//! the node's loopback with `sock_diag`, checked to be its owner's where
//! the policy names one, taken from the process that holds it with
//! `pidfd_open` + `pidfd_getfd`, and swapped in again when the service
//! restarts (a new socket) without netbpf restarting.

use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use netbpf_common::{PROTO_TCP, ServiceStats};

use crate::{
    datapath::{Datapath, DatapathError},
    host::{
        cgroup, netns,
        sock_diag::{self, DiagSocket},
        socket_fds,
    },
    policy::HostService,
};

/// Why a listener could not be handed to the datapath.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("listing the sockets of the node's network namespace")]
    Listing(#[source] io::Error),
    #[error("no process owns the socket listening on {0} (socket inode {1})")]
    NoOwner(std::net::SocketAddr, u32),
    #[error("taking the listening socket from process {pid} (pidfd_open + pidfd_getfd)")]
    Take {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("the socket listening on {0} changed while it was taken: trying again")]
    Changed(std::net::SocketAddr),
    #[error(
        "the socket listening on {listen} is not the service's: {found} holds it, the policy's owner is {owner}; connections are refused"
    )]
    NotOwner {
        listen: std::net::SocketAddr,
        found: Unowned,
        owner: crate::policy::Owner,
    },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

/// The listener a service's connections go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// The socket's cookie: a new one means the service restarted.
    pub cookie: u64,
    /// The process that owns it.
    pub pid: u32,
}

/// A listener on a service's address that its owner did not make: never
/// handed connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unowned {
    pub pid: u32,
    /// The user that made the socket.
    pub uid: u32,
    /// The systemd unit of the process that holds it, if any.
    pub unit: Option<String>,
}

impl std::fmt::Display for Unowned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "process {} (uid {}", self.pid, self.uid)?;
        if let Some(unit) = &self.unit {
            write!(f, ", {unit}")?;
        }
        write!(f, ")")
    }
}

/// A listener that could not be taken, and when to try it again: less
/// often while it fails the same way (each try walks `/proc`).
#[derive(Debug)]
struct Untaken {
    cookie: u64,
    error: String,
    delay: Duration,
    next: Instant,
}

/// The longest wait before a listener that could not be taken is tried
/// again.
const LONGEST_WAIT: Duration = Duration::from_secs(30);

/// The host services of a policy and their current listeners.
pub struct HostServices {
    services: Vec<HostService>,
    /// The node's network namespace; None: netbpf's own.
    netns: Option<PathBuf>,
    listeners: Vec<Option<Listener>>,
    /// Each service's listener that could not be taken, if any.
    untaken: Vec<Option<Untaken>>,
    /// Each service's listener that is not its owner's, if any.
    unowned: Vec<Option<Unowned>>,
    /// Each service's `down` counter at the last look.
    down_seen: Vec<u64>,
}

impl HostServices {
    #[must_use]
    pub fn new(services: Vec<HostService>, netns: Option<&Path>) -> Self {
        let listeners = vec![None; services.len()];
        let untaken = services.iter().map(|_| None).collect();
        let unowned = vec![None; services.len()];
        let down_seen = vec![0; services.len()];
        Self {
            services,
            netns: netns.map(Path::to_owned),
            listeners,
            untaken,
            unowned,
            down_seen,
        }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Looks for every service's listener and hands a new one to the
    /// datapath. A listener that went away leaves the datapath by itself
    /// (the kernel takes a closed socket out of the map); until another
    /// one listens, connections are refused.
    pub fn refresh(&mut self, datapath: &mut Datapath) -> Result<(), ServiceError> {
        let sockets = netns::in_netns_or_here(self.netns.as_deref(), sock_diag::bound_sockets)
            .and_then(|listed| listed)
            .map_err(ServiceError::Listing)?;
        for (index, service) in self.services.iter().enumerate() {
            let found = sockets.iter().find(|socket| listens_on(socket, service));
            // A socket that stopped listening and listens again keeps its
            // cookie but has left the map: granted connections that found
            // no listener since the last look say so.
            let slot = u32::try_from(index).expect("services are few");
            let down = datapath.service_stats(slot).map_or(0, |stats| stats.down);
            let missed = down > self.down_seen[index];
            self.down_seen[index] = down;
            match (found, self.listeners[index]) {
                (Some(socket), Some(current)) if current.cookie == socket.cookie && !missed => {}
                (Some(socket), _) => {
                    let untaken = &mut self.untaken[index];
                    if untaken.as_ref().is_some_and(|untaken| {
                        untaken.cookie == socket.cookie && Instant::now() < untaken.next
                    }) {
                        continue;
                    }
                    let taken = take_listener(datapath, index, service, socket);
                    self.unowned[index] = match &taken {
                        Err(ServiceError::NotOwner { found, .. }) => Some(found.clone()),
                        _ => None,
                    };
                    match taken {
                        Ok(pid) => {
                            tracing::info!(service = %service.name, listen = %service.listen, pid, "handing connections to the listener");
                            self.listeners[index] = Some(Listener {
                                cookie: socket.cookie,
                                pid,
                            });
                            *untaken = None;
                        }
                        // One service's trouble is not the others': it is
                        // tried again, said again when it changes. Until
                        // then nobody gets its connections.
                        Err(error) => {
                            if self.listeners[index].take().is_some() {
                                datapath.clear_service_sockets([slot])?;
                            }
                            let error = format!("{error:#}");
                            let delay = match untaken.as_ref() {
                                Some(last)
                                    if last.cookie == socket.cookie && last.error == error =>
                                {
                                    (last.delay * 2).min(LONGEST_WAIT)
                                }
                                _ => {
                                    tracing::warn!(service = %service.name, %error, "listener not taken: trying again, less often while it fails so");
                                    Duration::from_secs(1)
                                }
                            };
                            *untaken = Some(Untaken {
                                cookie: socket.cookie,
                                error,
                                delay,
                                next: Instant::now() + delay,
                            });
                        }
                    }
                }
                (None, current) => {
                    self.unowned[index] = None;
                    if current.is_some() {
                        tracing::warn!(service = %service.name, listen = %service.listen, "the listener is gone: connections are refused until one listens again");
                        self.listeners[index] = None;
                    }
                    // Whatever the slot holds is not this service's (an
                    // agent of another policy may have left it).
                    datapath.clear_service_sockets([slot])?;
                }
            }
        }
        Ok(())
    }

    /// Says which services nobody listens for yet, with what is needed: at
    /// boot the agent starts before them, so this is news, not a fault (a
    /// listener that goes is warned of).
    pub fn report_missing(&self) {
        for (service, listener) in self.services.iter().zip(&self.listeners) {
            if listener.is_none() {
                tracing::info!(
                    service = %service.name,
                    "no process listens on {}: connections to this service are refused until one does",
                    service.listen
                );
            }
        }
    }

    /// Each service, its listener, a listener on its address that is not
    /// its owner's, and its counters.
    pub fn status(&self, datapath: &Datapath) -> Result<Vec<ServiceState>, DatapathError> {
        (0u32..)
            .zip(self.services.iter().zip(&self.listeners).zip(&self.unowned))
            .map(|(index, ((service, listener), unowned))| {
                Ok(ServiceState {
                    service: service.clone(),
                    listener: *listener,
                    unowned: unowned.clone(),
                    stats: datapath.service_stats(index)?,
                })
            })
            .collect()
    }
}

/// A host service as it stands, for status.
pub struct ServiceState {
    pub service: HostService,
    pub listener: Option<Listener>,
    pub unowned: Option<Unowned>,
    pub stats: ServiceStats,
}

fn listens_on(socket: &DiagSocket, service: &HostService) -> bool {
    socket.protocol == PROTO_TCP && socket.local == service.listen && socket.remote.port() == 0
}

/// Puts the listening `socket` into the datapath as service `index`'s;
/// returns its owner's pid. Netbpf keeps no descriptor of it: the
/// service's own close takes it out again.
fn take_listener(
    datapath: &mut Datapath,
    index: usize,
    service: &HostService,
    socket: &DiagSocket,
) -> Result<u32, ServiceError> {
    let (pid, fd) = socket_fds::owners(&[socket.inode])
        .remove(&socket.inode)
        .ok_or(ServiceError::NoOwner(service.listen, socket.inode))?;
    if let Some(owner) = &service.owner {
        let unit = cgroup::unit_of(pid);
        if !owner.owns(socket.uid, unit.as_deref()) {
            return Err(ServiceError::NotOwner {
                listen: service.listen,
                found: Unowned {
                    pid,
                    uid: socket.uid,
                    unit,
                },
                owner: owner.clone(),
            });
        }
    }
    // Only the very socket sock_diag reported, still listening, may get
    // the traffic.
    let duplicate = socket_fds::take(pid, fd, socket.cookie)
        .map_err(|source| ServiceError::Take { pid, source })?
        .filter(socket_fds::is_listening)
        .ok_or(ServiceError::Changed(service.listen))?;
    datapath.set_service_socket(u32::try_from(index).expect("services are few"), &duplicate)?;
    Ok(pid)
}
