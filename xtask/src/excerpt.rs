//! Excerpts of long logs for a page or a failure message.

/// The first `head` and last `tail` lines of `text`, with a line saying how
/// many were left out between them.
pub fn excerpt(text: &str, head: usize, tail: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    if lines.len() <= head + tail {
        return lines.join("\n");
    }
    let left_out = format!("[… {} lines …]", lines.len() - head - tail);
    lines[..head]
        .iter()
        .copied()
        .chain([left_out.as_str()])
        .chain(lines[lines.len() - tail..].iter().copied())
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a failed test binary's log says of its failure: libtest's
/// `failures:` section onwards (each failed test's output and its panic),
/// or, when it never got there (killed, out of time), the log's end.
pub fn test_failure(log: &str) -> String {
    let failures = log
        .match_indices("\nfailures:\n")
        .next()
        .map_or(log, |(at, _)| &log[at + 1..]);
    excerpt(failures, FAILURE_HEAD, FAILURE_TAIL)
}

/// Lines of a test failure shown from its start (which tests failed, their
/// first output) and from its end (the panics).
const FAILURE_HEAD: usize = 40;
const FAILURE_TAIL: usize = 80;

#[cfg(test)]
mod tests {
    use super::{excerpt, test_failure};

    #[test]
    fn an_excerpt_keeps_both_ends_and_counts_the_rest() {
        let lines: Vec<String> = (1..=10).map(|n| n.to_string()).collect();
        let text = lines.join("\n") + "\n";
        assert_eq!(excerpt(&text, 2, 3), "1\n2\n[… 5 lines …]\n8\n9\n10");
        assert_eq!(excerpt(&text, 6, 4), lines.join("\n"));
        assert_eq!(excerpt(&text, 0, 2), "[… 8 lines …]\n9\n10");
    }

    #[test]
    fn a_test_failure_starts_at_libtest_failures_section() {
        let log = "running 2 tests\ntest a ... ok\ntest b ... FAILED\n\nfailures:\n\n---- b stdout ----\npanicked\n";
        assert_eq!(
            test_failure(log),
            "failures:\n\n---- b stdout ----\npanicked"
        );
        assert_eq!(
            test_failure("running 1 test\nkilled"),
            "running 1 test\nkilled"
        );
    }
}
