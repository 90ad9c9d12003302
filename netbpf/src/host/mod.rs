//! Facts of this host, read from the kernel: the capabilities held, cgroups, network namespaces,
//! sockets (`sock_diag`, and the descriptors that hold them), interfaces, addresses and routes (rtnetlink).

pub mod addressing;
pub mod capabilities;
pub mod cgroup;
pub mod links;
pub mod netns;
mod node;
pub mod rtnetlink;
pub mod scope_net;
pub mod sock_diag;
pub mod socket_fds;

pub use self::node::Node;
