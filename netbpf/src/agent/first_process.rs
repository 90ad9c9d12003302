//! Instances that wait for their network, watched closely while their
//! runtime starts them, so that their rules are in force before (or as
//! soon as can be after) the container's own command runs.
//!
//! An instance whose rules need its network (a grant) waits until a
//! process of it runs in its network namespace and that namespace has a
//! default route. Docker runs no hook that would say when. The kernel says
//! when a cgroup gets its first process (`populated 1` in its
//! `cgroup.events`, followed with inotify); that is runc's first stage,
//! still in the node's namespaces. Its last stage enters the container's
//! namespaces a few milliseconds later, and Docker sets up the network
//! around then. From `populated`, such a cgroup is looked at every
//! [`LOOK_EVERY`] (two small reads of `/proc`) until a process of it is in
//! a namespace with a default route, for at most [`LOOK_FOR`]; the retries
//! look at it after that.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use futures_util::StreamExt as _;
use inotify::{EventStream, Inotify, WatchDescriptor, WatchMask};
use tokio::time::Instant;

use crate::host::scope_net;

/// How often a populated cgroup is looked at.
const LOOK_EVERY: Duration = Duration::from_millis(2);
/// How long after `populated` a cgroup is looked at that often; the
/// retries look at it after that.
const LOOK_FOR: Duration = Duration::from_secs(5);
/// The most cgroups looked at that often at once (a node starting
/// thousands of containers at boot): the others wait for the retries.
const MOST_LOOKED_AT: usize = 64;

/// The waiting instances' `cgroup.events`, and the populated ones looked
/// at closely.
pub struct FirstProcesses {
    events: EventStream<Vec<u8>>,
    /// Each waiting instance's cgroup directory -> its watch.
    watch_of: HashMap<PathBuf, WatchDescriptor>,
    /// Watch -> the cgroup directory.
    watched: HashMap<WatchDescriptor, PathBuf>,
    /// Populated cgroups looked at closely, until when.
    looked_at: HashMap<PathBuf, Instant>,
}

impl FirstProcesses {
    /// Needs a tokio runtime.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            events: Inotify::init()?.into_event_stream(vec![0; 4096])?,
            watch_of: HashMap::new(),
            watched: HashMap::new(),
            looked_at: HashMap::new(),
        })
    }

    /// Follows the cgroup directories of the instances that wait for
    /// their first process now, and no others.
    pub fn follow(&mut self, waiting: &[PathBuf]) {
        // A node starting thousands of containers waits for as many.
        let waiting_now: HashSet<&PathBuf> = waiting.iter().collect();
        let gone: Vec<PathBuf> = self
            .watch_of
            .keys()
            .filter(|dir| !waiting_now.contains(dir))
            .cloned()
            .collect();
        for dir in gone {
            self.looked_at.remove(&dir);
            if let Some(watch) = self.watch_of.remove(&dir) {
                self.watched.remove(&watch);
                // Ended by the kernel already (the cgroup is gone): fine.
                let _ = self.events.watches().remove(watch);
            }
        }
        for dir in waiting {
            if self.watch_of.contains_key(dir) {
                continue;
            }
            match self
                .events
                .watches()
                .add(dir.join("cgroup.events"), WatchMask::MODIFY)
            {
                Ok(watch) => {
                    self.watched.insert(watch.clone(), dir.clone());
                    self.watch_of.insert(dir.clone(), watch);
                    // Populated before the watch: looked at from now.
                    self.look_if_populated(dir);
                }
                // Gone, or out of watches: the retries look at it.
                Err(error) => {
                    tracing::debug!(cgroup = %dir.display(), %error, "not watching for the first process");
                }
            }
        }
    }

    /// Returns once a process of a waiting instance runs in its own
    /// namespace with a default route: its rules can be resolved. Never
    /// while none waits.
    pub async fn ready(&mut self) {
        loop {
            let next_look = (!self.looked_at.is_empty()).then(|| Instant::now() + LOOK_EVERY);
            tokio::select! {
                Some(event) = self.events.next() => {
                    if let Ok(event) = event
                        && let Some(dir) = self.watched.get(&event.wd).cloned()
                    {
                        self.look_if_populated(&dir);
                    }
                }
                () = sleep_until(next_look) => {
                    let now = Instant::now();
                    self.looked_at.retain(|_, until| *until > now);
                    let before = self.looked_at.len();
                    self.looked_at.retain(|dir, _| !has_its_network(dir));
                    if self.looked_at.len() < before {
                        return;
                    }
                }
            }
        }
    }

    /// Looks at `dir` closely from now if it has a process.
    fn look_if_populated(&mut self, dir: &Path) {
        if self.looked_at.len() < MOST_LOOKED_AT && is_populated(dir) {
            self.looked_at
                .entry(dir.to_owned())
                .or_insert_with(|| Instant::now() + LOOK_FOR);
        }
    }
}

/// Whether the cgroup at `dir` (or one below it) has a process:
/// `populated 1` in its `cgroup.events`.
fn is_populated(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|events| events.lines().any(|line| line == "populated 1"))
}

/// Whether a process of the cgroup at `dir` runs in the container's own
/// namespaces (not one of runc's first stages), and its namespace has a
/// default route.
fn has_its_network(dir: &Path) -> bool {
    scope_net::own_process(dir).is_ok_and(|pid| pid.is_some_and(scope_net::has_default_route))
}

/// Sleeps until `when`; never without one.
async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when).await,
        None => std::future::pending().await,
    }
}
