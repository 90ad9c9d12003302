//! What a running netbpf and its clients say to each other over the
//! control socket: the requests, the answers, and the status document.
//! Types and client calls only: no rendering, nothing of the agent's
//! insides.

pub mod control;
pub mod status;
