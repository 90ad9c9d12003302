//! Follows the cgroup v2 tree below the agent's cgroup root with inotify:
//! every directory made or removed there, with no polling. The tree is
//! listed whole at start and again whenever the kernel dropped events.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ffi::OsString,
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use futures_util::{FutureExt as _, StreamExt as _};
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask};

/// The most events read at once before the agent looks at its other
/// sources: as many as the kernel queues by default
/// (`fs.inotify.max_queued_events`), so that a node draining is read
/// faster than the queue fills and overflows.
const MOST_AT_ONCE: usize = 16_384;

/// A change below the cgroup root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupEvent {
    /// A cgroup appeared: its path below the cgroup v2 mount and its id.
    Added(PathBuf, u64),
    /// The cgroup at this path (and everything below it) is gone.
    Removed(PathBuf),
    /// Events were lost: these are all the cgroups there are now.
    Resynced(Vec<(PathBuf, u64)>),
}

/// The inotify watches on the cgroup tree.
pub struct CgroupWatcher {
    events: EventStream<Vec<u8>>,
    /// Watch -> the directory it watches, below the mount.
    watched: HashMap<WatchDescriptor, PathBuf>,
    /// Directory -> its watch: the watches of a removed subtree are found
    /// by path. The kernel ends the watch of a removed cgroup (`IN_IGNORED`)
    /// only once its inode is evicted, which may be never on a quiet node:
    /// until then the watch counts against `fs.inotify.max_user_watches`.
    watch_of: BTreeMap<PathBuf, WatchDescriptor>,
    mount: PathBuf,
    root: PathBuf,
}

impl CgroupWatcher {
    /// Watches every cgroup from `root` (absolute, on the cgroup v2 file
    /// system mounted at `mount`) down; returns the watcher and the cgroups
    /// there now. Needs a tokio runtime.
    pub fn start(mount: &Path, root: &Path) -> io::Result<(Self, Vec<(PathBuf, u64)>)> {
        let inotify = Inotify::init()?;
        let events = inotify.into_event_stream(vec![0; 64 * 1024])?;
        let mut watcher = Self {
            events,
            watched: HashMap::new(),
            watch_of: BTreeMap::new(),
            mount: mount.to_owned(),
            root: root.to_owned(),
        };
        let mut found = Vec::new();
        watcher.watch_tree(root, &mut found)?;
        Ok((watcher, found))
    }

    /// The next changes: the first to come, and those ready with it.
    pub async fn next(&mut self) -> io::Result<Vec<CgroupEvent>> {
        let first = self
            .events
            .next()
            .await
            .ok_or_else(|| io::Error::other("the inotify stream ended"))??;
        let mut events = Vec::new();
        self.apply(first.mask, &first.wd, first.name, &mut events)?;
        // What is ready too, for one update of the maps (a pod's or a
        // compose project's containers start together).
        for _ in 0..MOST_AT_ONCE {
            let Some(Some(ready)) = self.events.next().now_or_never() else {
                break;
            };
            let ready = ready?;
            self.apply(ready.mask, &ready.wd, ready.name, &mut events)?;
        }
        Ok(events)
    }

    fn apply(
        &mut self,
        mask: EventMask,
        watch: &WatchDescriptor,
        name: Option<OsString>,
        events: &mut Vec<CgroupEvent>,
    ) -> io::Result<()> {
        if mask.contains(EventMask::Q_OVERFLOW) {
            events.push(CgroupEvent::Resynced(self.resync()?));
            return Ok(());
        }
        if mask.contains(EventMask::IGNORED) {
            if let Some(path) = self.watched.remove(watch)
                && self.watch_of.get(&path) == Some(watch)
            {
                self.watch_of.remove(&path);
            }
            return Ok(());
        }
        let (Some(parent), Some(name)) = (self.watched.get(watch), name) else {
            return Ok(());
        };
        let path = parent.join(name);
        if mask.contains(EventMask::CREATE) && mask.contains(EventMask::ISDIR) {
            let mut found = Vec::new();
            // Gone again already: nothing to report.
            if self.watch_tree(&self.mount.join(&path), &mut found).is_ok() {
                events.extend(
                    found
                        .into_iter()
                        .map(|(path, id)| CgroupEvent::Added(path, id)),
                );
            }
        } else if mask.contains(EventMask::DELETE) && mask.contains(EventMask::ISDIR) {
            self.unwatch_below(&path);
            events.push(CgroupEvent::Removed(path));
        }
        Ok(())
    }

    /// Ends the watches of `path` and of every directory below it, all
    /// removed.
    fn unwatch_below(&mut self, path: &Path) {
        let gone: Vec<PathBuf> = self
            .watch_of
            .range(path.to_owned()..)
            .take_while(|(below, _)| below.starts_with(path))
            .map(|(below, _)| below.clone())
            .collect();
        for below in gone {
            let Some(watch) = self.watch_of.remove(&below) else {
                continue;
            };
            self.watched.remove(&watch);
            // Ended by the kernel already (IN_IGNORED on its way): fine.
            let _ = self.events.watches().remove(watch);
        }
    }

    /// Gives back the memory of watches that went.
    pub fn shrink(&mut self) {
        self.watched.shrink_to_fit();
    }

    /// Watches `dir` and every directory below it, watch first and list
    /// second, so that none made meanwhile is missed; lists them in `found`.
    fn watch_tree(&mut self, dir: &Path, found: &mut Vec<(PathBuf, u64)>) -> io::Result<()> {
        let relative = dir
            .strip_prefix(&self.mount)
            .map_err(|_| {
                io::Error::other(format!(
                    "{} is not below {}",
                    dir.display(),
                    self.mount.display()
                ))
            })?
            .to_owned();
        let id = fs::metadata(dir)?.ino();
        match self.events.watches().add(
            dir,
            WatchMask::CREATE | WatchMask::DELETE | WatchMask::ONLYDIR,
        ) {
            Ok(watch) => {
                self.watched.insert(watch.clone(), relative.clone());
                self.watch_of.insert(relative.clone(), watch);
            }
            // Out of watches (fs.inotify.max_user_watches): the cgroup is
            // still followed, what is made below it is not.
            Err(error) => tracing::warn!(
                cgroup = %relative.display(),
                %error,
                "cgroups made below this one will not be seen: raise fs.inotify.max_user_watches"
            ),
        }
        found.push((relative, id));
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                // A directory removed while we look is no error.
                let _ = self.watch_tree(&entry.path(), found);
            }
        }
        Ok(())
    }

    /// Lists the whole tree again, watching what is not yet watched and
    /// ending the watches of what is gone (its events were lost).
    fn resync(&mut self) -> io::Result<Vec<(PathBuf, u64)>> {
        let mut found = Vec::new();
        let root = self.root.clone();
        self.watch_tree(&root, &mut found)?;
        let present: HashSet<&Path> = found.iter().map(|(path, _)| path.as_path()).collect();
        let gone: Vec<PathBuf> = self
            .watch_of
            .keys()
            .filter(|path| !present.contains(path.as_path()))
            .cloned()
            .collect();
        for path in gone {
            self.unwatch_below(&path);
        }
        Ok(found)
    }
}
