//! Ctrl-C (SIGINT) and SIGTERM stop the bench at its next step, so that
//! what it made (network namespaces, cgroups, pinned maps, its servers)
//! is removed as it unwinds: killed outright, it would leave them all
//! behind. The clients and servers it runs are other programs, which
//! the signal stops at once as before.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// Set by the handler: a signal asked the bench to stop.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn ask_to_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// From now on, SIGINT and SIGTERM only ask the bench to stop.
pub fn catch() -> anyhow::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(ask_to_stop),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which a signal
        // handler may do.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// Fails once a signal asked the bench to stop.
pub fn check() -> anyhow::Result<()> {
    anyhow::ensure!(
        !STOP.load(Ordering::Relaxed),
        "stopped by a signal; what the bench made is removed"
    );
    Ok(())
}
