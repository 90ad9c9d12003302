//! cgroup v2: where the hierarchy is mounted and the ids the kernel gives
//! its directories.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

/// The cgroup v2 hierarchy as this process sees it mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2Mount {
    /// Where it is mounted (`/sys/fs/cgroup` on most hosts,
    /// `/sys/fs/cgroup/unified` in hybrid mode).
    pub point: PathBuf,
    /// How deep in the hierarchy the mounted directory is: 0 when the
    /// mount shows the whole hierarchy, more when it shows a subtree. The
    /// kernel counts cgroup levels from the hierarchy's root.
    pub root_level: u16,
    /// Whether the mount's root is above this process's cgroup namespace
    /// (mountinfo shows it as `/..`): the whole hierarchy bound in from the
    /// host, as a container's hostPath of `/sys/fs/cgroup` is. Its depth is
    /// then known, in a cgroup namespace too.
    pub above_namespace: bool,
}

/// The cgroup v2 mount, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> io::Result<Cgroup2Mount> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    find_cgroup2_mount(&mountinfo).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no cgroup2 file system is mounted (see /proc/self/mountinfo)",
        )
    })
}

/// Whether cgroup v1 hierarchies are mounted beside cgroup v2 (the hybrid
/// layout, cgroup2 at `/sys/fs/cgroup/unified`), rather than v2 alone.
pub fn is_hybrid() -> io::Result<bool> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mountinfo.lines().any(|line| {
        line.split_once(" - ")
            .and_then(|(_, filesystem)| filesystem.split_whitespace().next())
            == Some("cgroup")
    }))
}

/// Where the cgroup v1 hierarchy of `controller` is mounted, on hybrid
/// hosts.
#[must_use]
pub fn v1_mount(controller: &str) -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        let mut filesystem = filesystem.split_whitespace();
        let options = (filesystem.next()? == "cgroup").then(|| filesystem.nth(1))??;
        if !options.split(',').any(|option| option == controller) {
            return None;
        }
        Some(PathBuf::from(unescape_octal(
            mount.split_whitespace().nth(4)?,
        )))
    })
}

/// The first cgroup2 mount listed in a mountinfo text: its mount point
/// (field 5) and the depth of its root (field 4).
fn find_cgroup2_mount(mountinfo: &str) -> Option<Cgroup2Mount> {
    mountinfo.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        if filesystem.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = mount.split_whitespace().skip(3);
        let root = unescape_octal(fields.next()?);
        let point = PathBuf::from(unescape_octal(fields.next()?));
        let depth = Path::new(&root)
            .components()
            .filter(|component| matches!(component, std::path::Component::Normal(_)))
            .count();
        Some(Cgroup2Mount {
            point,
            root_level: u16::try_from(depth).unwrap_or(u16::MAX),
            above_namespace: root.starts_with("/.."),
        })
    })
}

/// The inode of the initial cgroup namespace (`PROC_CGROUP_INIT_INO`).
const INITIAL_CGROUP_NAMESPACE: u64 = 0xEFFF_FFFB;

/// Whether this process runs in a cgroup namespace of its own. The
/// hierarchy it sees then starts at the namespace's cgroup, and the depths
/// it computes from its paths fall short of the kernel's.
pub fn in_own_cgroup_namespace() -> io::Result<bool> {
    Ok(fs::metadata("/proc/self/ns/cgroup")?.ino() != INITIAL_CGROUP_NAMESPACE)
}

/// Undoes mountinfo's `\040`-style escapes of spaces, tabs and newlines.
fn unescape_octal(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest
            .get(at + 1..at + 4)
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        if let Some(code) = code {
            out.push(char::from(code));
            rest = &rest[at + 4..];
        } else {
            out.push('\\');
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// The cgroup v2 id of a directory: what `bpf_get_current_cgroup_id()`
/// returns for its processes. Fails if `path` is not on a cgroup2 mount.
pub fn cgroup_id(path: &Path) -> io::Result<u64> {
    let fs = statfs(path).map_err(io::Error::from)?;
    if fs.filesystem_type() != CGROUP2_SUPER_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not on a cgroup v2 file system", path.display()),
        ));
    }
    Ok(fs::metadata(path)?.ino())
}

/// The ids of the cgroup at `dir` and of every cgroup below it.
pub fn subtree_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = vec![fs::metadata(dir)?.ino()];
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            ids.extend(subtree_ids(&entry.path())?);
        }
    }
    Ok(ids)
}

/// The systemd unit process `pid` runs in (`NAME.service` or
/// `NAME.scope`, the deepest of its cgroup v2 path); None when it is in
/// none, or gone.
#[must_use]
pub fn unit_of(pid: u32) -> Option<String> {
    unit_in(&fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// The deepest systemd unit of the cgroup v2 line of `/proc/PID/cgroup`.
fn unit_in(cgroups: &str) -> Option<String> {
    let path = cgroups.lines().find_map(|line| line.strip_prefix("0::"))?;
    path.rsplit('/')
        .find(|part| {
            // systemd's unit suffixes are lowercase, as it names them.
            part.rsplit_once('.')
                .is_some_and(|(_, kind)| kind == "service" || kind == "scope")
        })
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in_hybrid_mode() {
        let mountinfo = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(
            find_cgroup2_mount(mountinfo),
            Some(Cgroup2Mount {
                point: PathBuf::from("/sys/fs/cgroup/unified"),
                root_level: 0,
                above_namespace: false,
            })
        );
        assert_eq!(
            find_cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }

    #[test]
    fn counts_the_depth_of_a_mounted_subtree() {
        let mountinfo =
            "40 30 0:27 /kubepods.slice/pod\\040a /host/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_cgroup2_mount(mountinfo),
            Some(Cgroup2Mount {
                point: PathBuf::from("/host/cgroup"),
                root_level: 2,
                above_namespace: false,
            })
        );
        let bound_in = "41 30 0:27 /../../.. /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        let mount = find_cgroup2_mount(bound_in).unwrap();
        assert_eq!((mount.root_level, mount.above_namespace), (0, true));
    }

    #[test]
    fn unescapes_spaces_in_mount_points() {
        assert_eq!(unescape_octal(r"/mnt/my\040cgroups"), "/mnt/my cgroups");
        assert_eq!(unescape_octal(r"/odd\x"), r"/odd\x");
    }

    #[test]
    fn a_process_is_in_the_deepest_unit_of_its_cgroup_v2_path() {
        let hybrid = "12:pids:/system.slice/ssh.service\n0::/system.slice/gpu-tunnel.service\n";
        assert_eq!(unit_in(hybrid).as_deref(), Some("gpu-tunnel.service"));
        let delegated =
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/tunnel.scope/x\n";
        assert_eq!(unit_in(delegated).as_deref(), Some("tunnel.scope"));
        assert_eq!(unit_in("0::/kubepods/pod1/abc\n"), None);
    }
}
