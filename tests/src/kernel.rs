//! What the running kernel offers, by the version each feature came with:
//! the oracle the tests hold netbpf's own probes to.

/// Whether the kernel attaches tc programs with TCX links (Linux 6.6).
#[must_use]
pub fn has_tcx() -> bool {
    at_least(6, 6)
}

/// Whether the running kernel is `major.minor` or newer.
fn at_least(major: u32, minor: u32) -> bool {
    let release = nix::sys::utsname::uname()
        .expect("uname")
        .release()
        .to_string_lossy()
        .into_owned();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let found = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    found >= (major, minor)
}
