//! Present so that cargo sees a library target; the programs are in the
//! `netbpf` binary target, built for `bpfel-unknown-none`.
#![no_std]
