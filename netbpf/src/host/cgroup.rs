//! cgroup v2: where the hierarchy is mounted and the ids the kernel gives
//! its directories.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

/// The mount point of the cgroup v2 hierarchy, from `/proc/self/mountinfo`
/// (`/sys/fs/cgroup` on most hosts, `/sys/fs/cgroup/unified` in hybrid
/// mode).
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    find_cgroup2_mount(&mountinfo).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no cgroup2 file system is mounted (see /proc/self/mountinfo)",
        )
    })
}

/// The first cgroup2 mount point listed in a mountinfo text.
fn find_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        if filesystem.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        mount
            .split_whitespace()
            .nth(4)
            .map(|point| PathBuf::from(unescape_octal(point)))
    })
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
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            find_cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }

    #[test]
    fn unescapes_spaces_in_mount_points() {
        assert_eq!(unescape_octal(r"/mnt/my\040cgroups"), "/mnt/my cgroups");
        assert_eq!(unescape_octal(r"/odd\x"), r"/odd\x");
    }
}
