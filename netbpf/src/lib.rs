//! netbpf: an eBPF datapath and node agent that fixes container-to-host
//! networking in the kernel. This library holds the logic; the `netbpf`
//! binary is a thin command line over [`cli`].
//!
//! The modules are layers, and imports run one way, down:
//!
//! - [`cli`]: the command line, one file per verb;
//! - [`agent`]: the running netbpf (reconcile loop, control socket, status);
//! - [`doctor`]: what is wrong with a node's container networking, read-only;
//! - [`containers`]: what runs on the node (cgroups, runtimes, discovery);
//! - [`plan`]: a policy and what matches it, compiled to map entries (pure);
//! - [`policy`]: the policy files, parsed and validated (pure);
//! - [`datapath`]: the kernel programs and their maps (load, attach, fill);
//! - [`host`]: facts of this host (cgroups, network namespaces, sockets,
//!   interfaces), read from the kernel.

pub mod agent;
pub mod cli;
pub mod containers;
pub mod datapath;
pub mod doctor;
pub mod host;
pub mod plan;
pub mod policy;
