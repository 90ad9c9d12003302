//! netbpf: an eBPF datapath and node agent that fixes container-to-host
//! networking in the kernel. This library holds the logic; the `netbpf`
//! binary is a thin command line over [`cli`].

pub mod agent;
pub mod cgroup;
pub mod cli;
pub mod control;
pub mod datapath;
pub mod existing_binds;
pub mod host_services;
pub mod links;
pub mod mss_clamp;
pub mod netns;
pub mod plan;
pub mod policy;
pub mod resolve;
pub mod rtnetlink;
pub mod scope_net;
pub mod sock_diag;
pub mod status;
