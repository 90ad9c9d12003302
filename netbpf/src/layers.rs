//! The layers of `lib.rs`, checked: every `crate::` path in a module's
//! files names only its own layer or a lower one.

use std::{fs, path::Path};

/// The top-level modules, highest first, as `lib.rs` lists them.
const LAYERS: [&str; 9] = [
    "cli",
    "agent",
    "doctor",
    "api",
    "datapath",
    "plan",
    "containers",
    "policy",
    "host",
];

/// Every `crate::MODULE` a text names, in `use crate::{...}` groups too.
fn named_modules(text: &str) -> Vec<&str> {
    let mut named: Vec<&str> = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The group's top-level names: each up to `::`, `,` or `}` at
            // the group's own depth.
            let mut depth = 0;
            let mut start = 0;
            for (index, byte) in group.bytes().enumerate() {
                match byte {
                    b'{' => depth += 1,
                    b'}' if depth == 0 => {
                        named.push(first_segment(&group[start..index]));
                        break;
                    }
                    b'}' => depth -= 1,
                    b',' if depth == 0 => {
                        named.push(first_segment(&group[start..index]));
                        start = index + 1;
                    }
                    _ => {}
                }
            }
        } else {
            named.push(first_segment(rest));
        }
    }
    named.retain(|name| !name.is_empty());
    named
}

/// The first path segment of `path`.
fn first_segment(path: &str) -> &str {
    let path = path.trim_start();
    let end = path
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(path.len());
    &path[..end]
}

/// The `.rs` files below `dir`, or `dir` itself as a file.
fn sources(dir: &Path) -> Vec<std::path::PathBuf> {
    if dir.is_file() {
        return vec![dir.to_owned()];
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn imports_run_one_way_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut upward = Vec::new();
    for (rank, layer) in LAYERS.iter().enumerate() {
        let dir = src.join(layer);
        let root = if dir.is_dir() {
            dir
        } else {
            src.join(format!("{layer}.rs"))
        };
        for file in sources(&root) {
            let text = fs::read_to_string(&file).unwrap();
            for named in named_modules(&text) {
                if let Some(above) = LAYERS[..rank].iter().find(|higher| **higher == named) {
                    upward.push(format!(
                        "{} names crate::{above}",
                        file.strip_prefix(&src).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(upward.is_empty(), "imports running up: {upward:#?}");
}

#[test]
fn every_module_is_in_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    let public: Vec<&str> = lib
        .lines()
        .filter_map(|line| line.strip_prefix("pub mod "))
        .map(|name| name.trim_end_matches(';'))
        .collect();
    let mut layered = LAYERS.to_vec();
    layered.sort_unstable();
    let mut public = public.clone();
    public.sort_unstable();
    assert_eq!(public, layered);
}

#[test]
fn a_group_names_each_of_its_modules() {
    let text = "use crate::{\n    api::status::{A, B},\n    host::{Node, cgroup},\n};\nlet x = crate::plan::Plan::default();";
    assert_eq!(named_modules(text), ["api", "host", "plan"]);
}
