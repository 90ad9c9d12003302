//! Rules that containers carry in their labels, where the node's policy
//! honours them: a scope with `labels = ["forward", ...]` takes its
//! instances' rules from the labels `io.netbpf.forward`, `io.netbpf.bind`,
//! `io.netbpf.alias` and `io.netbpf.host_services` of each container, and
//! checks them exactly as the same rules written in a policy file.
//!
//! A label holds entries separated by commas, each `LEFT=RIGHT`, with
//! `/tcp`, `/udp` or `/both` after it where the rule has a protocol:
//!
//! | label | entry | the policy's rule |
//! | --- | --- | --- |
//! | `io.netbpf.forward` | `localhost:8082=10.200.1.1:8082/tcp` | `{ from = "localhost:8082", to = "10.200.1.1:8082", proto = "tcp" }` |
//! | `io.netbpf.alias` | `10.99.99.99:6379=10.0.0.5:6379` | `{ from = "10.99.99.99:6379", to = "10.0.0.5:6379" }` |
//! | `io.netbpf.bind` | `3000=7041/both` | `{ port = 3000, to = 7041, proto = "both" }` |
//! | `io.netbpf.host_services` | `gpu-tunnel=10.203.0.1:18188` | `{ service = "gpu-tunnel", dial = "10.203.0.1:18188" }` |
//!
//! The honoured labels are read as one text, a line per label (`KEY:
//! VALUE`), so that an error says which label, entry and column.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{
    Protocols,
    host::RawGrant,
    remap::{RawBind, RawRedirect},
    scope::RawRules,
};

/// What the labels of a container give: the keys every label starts with.
pub const PREFIX: &str = "io.netbpf";

/// A kind of rule a scope may take from labels: the label
/// `io.netbpf.KIND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelKind {
    Forward,
    Bind,
    Alias,
    HostServices,
}

impl LabelKind {
    /// The scope's key of these rules in a policy file: `forward`, ...
    #[must_use]
    pub fn array(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Bind => "bind",
            Self::Alias => "alias",
            Self::HostServices => "host_services",
        }
    }

    /// Its label's key: `io.netbpf.` and the array's.
    #[must_use]
    pub fn key(self) -> String {
        format!("{PREFIX}.{}", self.array())
    }
}

/// The netbpf labels (`io.netbpf.*`) among `labels`.
#[must_use]
pub fn ours(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(key, _)| is_ours(key))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// Whether `key` is a netbpf label's.
fn is_ours(key: &str) -> bool {
    key.strip_prefix(PREFIX)
        .is_some_and(|kind| kind.starts_with('.'))
}

/// A digest of `labels` (0 without any): rules read from them are read
/// again when it changes.
#[must_use]
pub fn digest(labels: &BTreeMap<String, String>) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    if labels.is_empty() {
        return 0;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    labels.hash(&mut hasher);
    hasher.finish()
}

/// The rules of one container's honoured labels, spans into [`Self::text`].
#[derive(Debug, Default)]
pub(super) struct LabelRules {
    /// The honoured labels present, a line each: `KEY: VALUE`.
    pub text: String,
    pub rules: RawRules,
}

/// Reads the labels of `kinds` among `labels`.
pub(super) fn read(labels: &BTreeMap<String, String>, kinds: &[LabelKind]) -> LabelRules {
    let mut rules = LabelRules::default();
    for &kind in kinds {
        let key = kind.key();
        let Some(value) = labels.get(&key) else {
            continue;
        };
        let start = rules.text.len() + key.len() + 2;
        let _ = writeln!(rules.text, "{key}: {value}");
        for entry in entries(value, start, kind != LabelKind::HostServices) {
            let spanned = |value: Piece| Spanned::new(value.span.clone(), value.text.to_owned());
            let whole = entry.whole.clone();
            match kind {
                LabelKind::Forward => rules.rules.forward.push(Spanned::new(
                    whole,
                    RawRedirect::new(spanned(entry.left), spanned(entry.right), entry.proto),
                )),
                LabelKind::Alias => rules.rules.alias.push(Spanned::new(
                    whole,
                    RawRedirect::new(spanned(entry.left), spanned(entry.right), entry.proto),
                )),
                LabelKind::Bind => rules.rules.bind.push(Spanned::new(
                    whole,
                    RawBind::new(spanned(entry.left), spanned(entry.right), entry.proto),
                )),
                LabelKind::HostServices => rules.rules.host_services.push(Spanned::new(
                    whole,
                    RawGrant::new(spanned(entry.left), spanned(entry.right)),
                )),
            }
        }
    }
    rules
}

/// A part of a label's value, and where it is in the labels' text.
#[derive(Debug, Clone)]
struct Piece<'a> {
    text: &'a str,
    span: std::ops::Range<usize>,
}

/// One entry of a label: `LEFT=RIGHT`, and `/PROTO` where `has_proto`.
#[derive(Debug, Clone)]
struct Entry<'a> {
    whole: std::ops::Range<usize>,
    left: Piece<'a>,
    right: Piece<'a>,
    proto: Protocols,
}

/// The entries of `value`, which starts at byte `start` of the labels'
/// text; a protocol after them where `has_proto`. An entry without `=` is
/// all left, its right empty: the rule's check says what is missing.
fn entries(value: &str, start: usize, has_proto: bool) -> Vec<Entry<'_>> {
    let mut found = Vec::new();
    let mut at = 0;
    for raw in value.split(',') {
        let offset = at;
        at += raw.len() + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            continue;
        }
        let begin = start + offset + (raw.len() - raw.trim_start().len());
        let (left, right) = trimmed.split_once('=').unwrap_or((trimmed, ""));
        let (right, proto) = match right.rsplit_once('/').filter(|_| has_proto) {
            Some((target, "tcp")) => (target, Protocols::Tcp),
            Some((target, "udp")) => (target, Protocols::Udp),
            Some((target, "both")) => (target, Protocols::Both),
            _ => (right, Protocols::Tcp),
        };
        let right_begin = begin + left.len() + 1;
        found.push(Entry {
            whole: begin..begin + trimmed.len(),
            left: Piece {
                text: left.trim(),
                span: begin..begin + left.len(),
            },
            right: Piece {
                text: right.trim(),
                span: right_begin..right_begin + right.len(),
            },
            proto,
        });
    }
    found
}
