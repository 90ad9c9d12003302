//! Policy errors that say where: file, line, column and field.

use std::{borrow::Cow, fmt, ops::Range, path::PathBuf};

/// One thing wrong with a policy, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// The policy file.
    pub file: PathBuf,
    /// 1-based line of the offending text.
    pub line: usize,
    /// 1-based column of the offending text.
    pub column: usize,
    /// Dotted path of the offending field, e.g. `scope[0].forward[1].to`;
    /// empty where the file as a whole is at fault.
    pub field: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Turns byte spans of one policy text into located errors. Where each
/// line starts is found once per text: locating a span is a binary search,
/// so a policy of many entries is read in linear time.
pub struct Locator<'a> {
    file: PathBuf,
    /// Byte offset of each line's start: 0, then after each newline.
    line_starts: Cow<'a, [usize]>,
}

impl<'a> Locator<'a> {
    /// A locator of `text`, indexing its lines.
    #[must_use]
    pub fn new(file: impl Into<PathBuf>, text: &str) -> Self {
        Self {
            file: file.into(),
            line_starts: Cow::Owned(line_starts(text)),
        }
    }

    /// A locator of a text whose lines are indexed already.
    #[must_use]
    pub fn indexed(file: impl Into<PathBuf>, line_starts: &'a [usize]) -> Self {
        Self {
            file: file.into(),
            line_starts: Cow::Borrowed(line_starts),
        }
    }

    /// An error about `field`, whose text is at byte `span` of the policy.
    #[must_use]
    pub fn error(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> PolicyError {
        let line = self
            .line_starts
            .partition_point(|&start| start <= span.start)
            .max(1);
        let column = span.start.saturating_sub(self.line_starts[line - 1]) + 1;
        PolicyError {
            file: self.file.clone(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }

    /// A TOML syntax or schema error (unknown key, wrong type, missing field).
    #[must_use]
    pub fn toml_error(&self, error: &toml::de::Error) -> PolicyError {
        self.error(
            error.span().unwrap_or(0..0),
            "",
            error.message().trim_end().to_owned(),
        )
    }
}

/// Where each line of `text` starts: 0, then after each newline.
#[must_use]
pub fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(at, _)| at + 1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_lines_and_columns_from_one() {
        let text = "a = 1\nbb = 2\n";
        let locator = Locator::new("p.toml", text);
        let error = locator.error(8..9, "bb", "bad");
        assert_eq!((error.line, error.column), (2, 3));
        assert_eq!(error.to_string(), "p.toml:2:3: bb: bad");
        assert_eq!(locator.error(0..1, "", "x").to_string(), "p.toml:1:1: x");
        // The newline itself is the line's last column; past the end, the
        // last line.
        assert_eq!(
            (
                locator.error(5..6, "", "").line,
                locator.error(5..6, "", "").column
            ),
            (1, 6)
        );
        assert_eq!(locator.error(13..13, "", "").line, 3);
    }
}
