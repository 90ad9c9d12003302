//! The patterns of selectors: container names, pods, label values and
//! cgroup paths, with `*`, `?`, `[...]` and named captures (`{port}`)
//! whose text per-instance rules use.

use std::{collections::BTreeMap, fmt};

/// What the captures of a match hold: capture name -> the text it matched.
pub type Captures = BTreeMap<String, String>;

/// A compiled pattern. `*` matches any text without `/`, `?` one
/// character but `/`, `[abc]`, `[a-z]` and `[!a-z]` one character of (or
/// not of) a set, `{NAME}` any non-empty text without `/`, which the
/// match keeps under NAME; anything else matches itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(char),
    Any,
    One,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Capture(String),
}

impl Pattern {
    /// Compiles `text`; says what is wrong with it otherwise.
    pub fn new(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            parts.push(match c {
                '*' => Part::Any,
                '?' => Part::One,
                '[' => {
                    let negated = chars.next_if(|&c| c == '!' || c == '^').is_some();
                    let mut ranges = Vec::new();
                    loop {
                        match chars.next() {
                            None => return Err(format!("{text:?} opens a [ it does not close")),
                            Some(']') if !ranges.is_empty() => break,
                            Some(low) => {
                                if chars.next_if_eq(&'-').is_some() {
                                    let high = chars.next().filter(|&high| high != ']').ok_or_else(
                                        || format!("{text:?} has a range without its end in [...]"),
                                    )?;
                                    ranges.push((low, high));
                                } else {
                                    ranges.push((low, low));
                                }
                            }
                        }
                    }
                    Part::Class { negated, ranges }
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("{text:?} opens a {{ it does not close")),
                        }
                    }
                    if !is_capture_name(&name) {
                        return Err(format!(
                            "{text:?} has a capture {{{name}}} that is not a name: write {{NAME}} with letters, digits and _"
                        ));
                    }
                    if parts.iter().any(|part| part == &Part::Capture(name.clone())) {
                        return Err(format!("{text:?} captures {{{name}}} twice"));
                    }
                    Part::Capture(name)
                }
                '}' => return Err(format!("{text:?} closes a }} it did not open")),
                c => Part::Literal(c),
            });
        }
        Ok(Self {
            text: text.to_owned(),
            parts,
        })
    }

    /// The names this pattern captures.
    pub fn captures(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Capture(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Matches `subject` whole; the captures on success, added to `into`.
    /// Each `*` and capture takes the shortest text that lets the rest
    /// match (`{name}-{port}` splits at the first `-`).
    #[must_use]
    pub fn matches(&self, subject: &str, into: &mut Captures) -> bool {
        // The literal prefix matches itself: only the rest needs the table.
        let prefix = self.literal_prefix();
        let Some(rest) = subject.strip_prefix(prefix) else {
            return false;
        };
        let parts = &self.parts[prefix.chars().count()..];
        let subject: Vec<char> = rest.chars().collect();
        let table = Matchable::new(parts, &subject);
        if !table.from(0, 0) {
            return false;
        }
        let mut at = 0;
        for (index, part) in parts.iter().enumerate() {
            let taken = match part {
                Part::Any | Part::Capture(_) => {
                    let least = usize::from(matches!(part, Part::Capture(_)));
                    (least..=subject.len() - at)
                        .find(|&taken| {
                            subject[at..at + taken].iter().all(|&c| c != '/')
                                && table.from(index + 1, at + taken)
                        })
                        .expect("the table says the rest matches")
                }
                _ => 1,
            };
            if let Part::Capture(name) = part {
                into.insert(name.clone(), subject[at..at + taken].iter().collect());
            }
            at += taken;
        }
        true
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The text every match starts with: the pattern up to its first
    /// wildcard, class or capture.
    #[must_use]
    pub fn literal_prefix(&self) -> &str {
        let end = self
            .text
            .find(['*', '?', '[', '{'])
            .unwrap_or(self.text.len());
        &self.text[..end]
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether `name` may name a capture: letters, digits and `_`, not empty.
pub(super) fn is_capture_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Which suffixes of a pattern match which suffixes of a subject,
/// computed once for all (time and space in the product of their lengths,
/// whatever the subject: a label value is anybody's text).
struct Matchable {
    /// `ok[part * (len + 1) + at]`: `parts[part..]` matches `subject[at..]`.
    ok: Vec<bool>,
    len: usize,
}

impl Matchable {
    fn new(parts: &[Part], subject: &[char]) -> Self {
        let len = subject.len();
        let mut table = Self {
            ok: vec![false; (parts.len() + 1) * (len + 1)],
            len,
        };
        table.set(parts.len(), len, true);
        for (index, part) in parts.iter().enumerate().rev() {
            for at in (0..=len).rev() {
                let next = subject.get(at).copied();
                let one = |accepts: &dyn Fn(char) -> bool| {
                    next.is_some_and(accepts) && table.from(index + 1, at + 1)
                };
                let ok = match part {
                    Part::Literal(literal) => one(&|c| c == *literal),
                    Part::One => one(&|c| c != '/'),
                    Part::Class { negated, ranges } => one(&|c| {
                        c != '/'
                            && ranges.iter().any(|&(low, high)| (low..=high).contains(&c))
                                != *negated
                    }),
                    // Nothing more, or one more character and the same part.
                    Part::Any => {
                        table.from(index + 1, at)
                            || (next.is_some_and(|c| c != '/') && table.from(index, at + 1))
                    }
                    // One character, then the rest or more of the same.
                    Part::Capture(_) => {
                        next.is_some_and(|c| c != '/')
                            && (table.from(index + 1, at + 1) || table.from(index, at + 1))
                    }
                };
                table.set(index, at, ok);
            }
        }
        table
    }

    fn from(&self, part: usize, at: usize) -> bool {
        self.ok[part * (self.len + 1) + at]
    }

    fn set(&mut self, part: usize, at: usize, ok: bool) {
        self.ok[part * (self.len + 1) + at] = ok;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(pattern: &str, subject: &str) -> Option<Captures> {
        let mut captures = Captures::new();
        Pattern::new(pattern)
            .unwrap()
            .matches(subject, &mut captures)
            .then_some(captures)
    }

    #[test]
    fn matches_wildcards_classes_and_captures() {
        assert!(captured("zed-external-*", "zed-external-42").is_some());
        assert!(captured("zed-external-*", "zed-other").is_none());
        assert!(captured("web-?", "web-1").is_some());
        assert!(captured("tun[0-9]", "tun7").is_some());
        assert!(captured("tun[!0-9]", "tun7").is_none());
        let port = captured("onetime@{port}", "onetime@7043").unwrap();
        assert_eq!(port["port"], "7043");
        let two = captured("{project}-{service}-1", "llamasketch-app-1").unwrap();
        assert_eq!(
            (two["project"].as_str(), two["service"].as_str()),
            ("llamasketch", "app")
        );
        assert!(
            captured("onetime-{port}", "onetime-").is_none(),
            "captures are not empty"
        );
    }

    #[test]
    fn long_subjects_match_as_short_ones_do() {
        let subject = format!("{}b", "a".repeat(5000));
        assert!(captured("*a*a*a*a*a*b", &subject).is_some());
        assert!(captured("*a*a*a*a*a*c", &subject).is_none());
        assert_eq!(captured("{head}a*b", &subject).unwrap()["head"], "a");
    }

    #[test]
    fn wildcards_stay_inside_one_path_segment() {
        assert!(captured("test/*", "test/a").is_some());
        assert!(captured("test/*", "test/a/b").is_none());
        assert!(captured("test/*/b", "test/a/b").is_some());
        assert!(captured("default/{pod}", "default/web-0").is_some());
    }

    #[test]
    fn rejects_malformed_patterns_with_the_reason() {
        assert!(Pattern::new("a[b").unwrap_err().contains("does not close"));
        assert!(Pattern::new("a{b").unwrap_err().contains("does not close"));
        assert!(Pattern::new("a{b c}").unwrap_err().contains("not a name"));
        assert!(Pattern::new("a{}").unwrap_err().contains("not a name"));
        assert!(Pattern::new("a}").unwrap_err().contains("did not open"));
        assert!(Pattern::new("{p}-{p}").unwrap_err().contains("twice"));
    }
}
