//! netbpf: an eBPF datapath and node agent that fixes container-to-host
//! networking in the kernel. This library holds the logic; the `netbpf`
//! binary is a thin command line over [`cli`].
//!
//! The modules are layers, and imports run one way, down:
//!
//! - [`cli`]: the command line, one file per verb, and the tables people
//!   read;
//! - [`agent`]: the running netbpf (reconcile loop, control socket);
//! - [`doctor`]: what is wrong with a node's container networking, read-only;
//! - [`api`]: what the agent and its clients say over the control socket
//!   (requests, answers, the status document);
//! - [`datapath`]: the kernel programs, the features they need, and their
//!   maps (load, attach, fill from a plan);
//! - [`plan`]: a policy and what matches it, compiled to map entries (pure);
//! - [`containers`]: what runs on the node (cgroups, runtimes, discovery);
//! - [`policy`]: the policy files, parsed and validated (pure);
//! - [`host`]: facts of this host (cgroups, network namespaces, sockets,
//!   interfaces), read from the kernel.

pub mod agent;
pub mod api;
pub mod cli;
pub mod containers;
pub mod datapath;
pub mod doctor;
pub mod host;
pub mod plan;
pub mod policy;

#[cfg(test)]
mod layers;
#[cfg(test)]
mod parser_fuzz;
