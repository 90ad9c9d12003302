//! Which scopes may select a workload, found without trying every scope:
//! each workload scope is filed under one condition every match needs (a
//! literal prefix of the container's name, id, pod or cgroup path, or a
//! label key), and a workload looks up only the files its own name, id,
//! pod, path and labels lead to. The scopes found are then matched in
//! policy order, so the first that selects a workload still wins.

use std::collections::{BTreeSet, HashMap};

use super::{
    Captures, ScopeDef,
    pattern::Pattern,
    selector::{Candidate, Selector, WorkloadSelector},
};

/// The workload scopes of a policy, filed by what their matches need.
#[derive(Debug, Clone, Default)]
pub struct ScopeIndex {
    container: Prefixes,
    id: Prefixes,
    pod: Prefixes,
    /// Patterns of cgroup paths relative to the cgroup v2 mount.
    relative_cgroup: Prefixes,
    /// Patterns of absolute cgroup paths.
    absolute_cgroup: Prefixes,
    /// Label key -> the scopes that need the label.
    label: HashMap<String, Vec<usize>>,
    /// Scopes with no condition to file them under: tried for every
    /// workload.
    everywhere: Vec<usize>,
}

/// Where a scope is filed.
enum Filed<'a> {
    /// Under a literal prefix of one of the workload's texts.
    Prefix(Text, &'a str),
    /// Under a label key.
    Label(&'a str),
    Everywhere,
}

/// The texts of a workload that selectors match patterns against.
#[derive(Clone, Copy)]
enum Text {
    Container,
    Id,
    Pod,
    Cgroup,
}

impl ScopeIndex {
    /// Files each workload scope of `scopes` by its index.
    #[must_use]
    pub fn new(scopes: &[ScopeDef]) -> Self {
        let mut index = Self::default();
        for (at, def) in scopes.iter().enumerate() {
            let Selector::Workload(selector) = &def.selector else {
                continue;
            };
            match filed(selector) {
                Filed::Prefix(text, prefix) => {
                    let prefixes = match text {
                        Text::Container => &mut index.container,
                        Text::Id => &mut index.id,
                        Text::Pod => &mut index.pod,
                        Text::Cgroup if prefix.starts_with('/') => &mut index.absolute_cgroup,
                        Text::Cgroup => &mut index.relative_cgroup,
                    };
                    prefixes.file(prefix, at);
                }
                Filed::Label(key) => index.label.entry(key.to_owned()).or_default().push(at),
                Filed::Everywhere => index.everywhere.push(at),
            }
        }
        index
    }

    /// The first of `scopes` (in their order) whose selector selects
    /// `candidate`: its index, its captures, and whether it selects pods.
    #[must_use]
    pub fn first_selecting(
        &self,
        scopes: &[ScopeDef],
        candidate: &Candidate<'_>,
    ) -> Option<(usize, Captures, bool)> {
        self.candidates(candidate).into_iter().find_map(|at| {
            let Selector::Workload(selector) = &scopes.get(at)?.selector else {
                return None;
            };
            Some((at, selector.matches(candidate)?, selector.pod.is_some()))
        })
    }

    /// The scopes that may select `candidate`, in policy order.
    fn candidates(&self, candidate: &Candidate<'_>) -> BTreeSet<usize> {
        let mut found: BTreeSet<usize> = self.everywhere.iter().copied().collect();
        let relative = candidate.cgroup.to_string_lossy();
        self.relative_cgroup.find(&relative, &mut found);
        if !self.absolute_cgroup.is_empty() {
            let absolute = candidate.mount.join(candidate.cgroup);
            self.absolute_cgroup
                .find(&absolute.to_string_lossy(), &mut found);
        }
        if let Some(container) = &candidate.container {
            if let Some(name) = container.name {
                self.container.find(name, &mut found);
            }
            self.id.find(container.id, &mut found);
            if let Some(pod) = container.pod {
                self.pod.find(pod, &mut found);
            }
            for key in container.labels.keys() {
                found.extend(self.label.get(key).into_iter().flatten());
            }
        }
        found
    }
}

/// The condition a scope is filed under: the longest literal prefix its
/// match needs, else a label it needs, else none.
fn filed(selector: &WorkloadSelector) -> Filed<'_> {
    let prefixes = [
        (
            Text::Container,
            selector.container.as_ref().map(Pattern::literal_prefix),
        ),
        (Text::Id, selector.id.as_deref()),
        (
            Text::Pod,
            selector.pod.as_ref().map(Pattern::literal_prefix),
        ),
        (
            Text::Cgroup,
            selector.cgroup.as_ref().map(Pattern::literal_prefix),
        ),
    ];
    let longest = prefixes
        .into_iter()
        .filter_map(|(text, prefix)| Some((text, prefix.filter(|p| !p.is_empty())?)))
        .max_by_key(|(_, prefix)| prefix.len());
    match (longest, selector.labels.keys().next()) {
        (Some((text, prefix)), _) => Filed::Prefix(text, prefix),
        (None, Some(key)) => Filed::Label(key),
        (None, None) => Filed::Everywhere,
    }
}

/// Scopes filed by a literal prefix of one text.
#[derive(Debug, Clone, Default)]
struct Prefixes {
    /// Prefix -> the scopes filed under it.
    scopes: HashMap<String, Vec<usize>>,
    /// The lengths (in bytes) of the prefixes, to look up only those.
    lengths: BTreeSet<usize>,
}

impl Prefixes {
    fn file(&mut self, prefix: &str, scope: usize) {
        self.lengths.insert(prefix.len());
        self.scopes
            .entry(prefix.to_owned())
            .or_default()
            .push(scope);
    }

    fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// Adds to `found` the scopes filed under a prefix of `text`.
    fn find(&self, text: &str, found: &mut BTreeSet<usize>) {
        for &length in self.lengths.range(..=text.len()) {
            if let Some(prefix) = text.get(..length)
                && let Some(scopes) = self.scopes.get(prefix)
            {
                found.extend(scopes);
            }
        }
    }
}
