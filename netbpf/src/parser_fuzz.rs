//! The policy and configuration parsers on mutated and random input: they
//! never panic, and every error names a place inside the text. A short run
//! in the suite (`PROPTEST_CASES`, 2,000 by default here); longer locally:
//! `PROPTEST_CASES=200000 cargo test -p netbpf --lib parsers_on_hostile_input`.
//! It sits at the crate root because it tests the parsers of two layers:
//! the policy's and the agent configuration's.

use std::path::Path;

use proptest::prelude::*;

use crate::agent::config::Config;
use crate::policy::parse;

/// Valid policies using every kind of rule: what the mutations start from.
const SEEDS: [&str; 3] = [
    "version = 1\n\
     [[host_service]]\nname = \"gpu\"\nlisten = \"127.0.0.1:18188\"\nowner = { uid = 0, unit = \"gpu.service\" }\n\
     [[scope]]\nname = \"desktop\"\nmatch = { container = \"zed-{name}-*\" }\n\
     forward = [\n  { from = \"localhost:8082\", to = \"10.200.1.1:8082\" },\n  \
     { from = \"localhost:9000-9010\", to = \"10.200.1.1:9000-9010\", proto = \"udp\" },\n]\n\
     host_services = [{ service = \"gpu\", dial = \"172.17.0.1:18188\" }]\n",
    "version = 1\n\
     [[scope]]\nname = \"onetime\"\nmatch = { cgroup = \"system.slice/onetime@{port}.service\" }\n\
     bind = [{ port = 3000, to = \"{port}\" }]\n\
     alias = [{ from = \"10.10.10.10:6379\", to = \"10.0.0.5:6379\" }, { from = \"[fd00::1]\", to = \"[fd00::2]\" }]\n\
     [[scope]]\nname = \"pods\"\nmatch = { pod = \"shop/web-*\" }\n\
     forward = [{ from = \"localhost:53\", to = \"[fd21::1]:53\", proto = \"both\" }]\n",
    "version = 1\n\
     [[mss_clamp]]\ninterface = \"wg*\"\ndirection = \"egress\"\nmss = \"pmtu\"\n\
     [[mss_clamp]]\ninterface = \"tun0\"\ndirection = \"ingress\"\nmss = 1300\n\
     [[scope]]\nname = \"labelled\"\nmatch = { label = { \"app.port\" = \"{port}\" } }\n\
     bind = [{ port = 3000, to = \"{port}\" }]\n",
];

/// A configuration using every section.
const CONFIG_SEED: &str = "policy_dir = \"/etc/netbpf/policy.d\"\npin_dir = \"/sys/fs/bpf/netbpf\"\n\
    cgroup_root = \"/sys/fs/cgroup\"\nmetrics = \"127.0.0.1:9590\"\n\
    [runtimes]\ndocker = \"/run/docker.sock\"\npodman = \"\"\ncontainerd = \"/run/containerd\"\n\
    [capacity]\nscopes = 4096\nlocal_binds = 65536\nlocal_binds_per_scope = 16\n";

/// What the mutations insert: TOML's punctuation, and pieces of what the
/// fields hold.
const PIECES: [&str; 24] = [
    "\"",
    "'",
    "[",
    "]",
    "{",
    "}",
    "=",
    ",",
    "\n",
    "#",
    ".",
    ":",
    "-",
    "*",
    "{port}",
    "0",
    "65536",
    "4294967296",
    "-1",
    "::",
    "[[scope]]\n",
    "localhost",
    "\\u0000",
    "é",
];

/// An edit of a text: at a position (modulo its length), delete some
/// characters, or insert a piece.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(
        prop_oneof![
            (any::<usize>(), 1..8usize).prop_map(|(at, len)| Edit::Delete(at, len)),
            (any::<usize>(), 0..PIECES.len()).prop_map(|(at, piece)| Edit::Insert(at, piece)),
        ],
        1..6,
    )
}

/// `text` with `edits` applied, at character boundaries.
fn mutated(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for edit in edits {
        match *edit {
            Edit::Delete(at, len) if !chars.is_empty() => {
                let at = at % chars.len();
                chars.drain(at..(at + len).min(chars.len()));
            }
            Edit::Delete(..) => {}
            Edit::Insert(at, piece) => {
                let at = at % (chars.len() + 1);
                chars.splice(at..at, PIECES[piece].chars());
            }
        }
    }
    chars.into_iter().collect()
}

/// Checks that an error of `text` points inside it.
fn points_inside(text: &str, line: usize, column: usize) -> Result<(), TestCaseError> {
    let lines = text.lines().count().max(1) + 1;
    prop_assert!(line >= 1 && line <= lines, "line {line} of {lines}");
    prop_assert!(column >= 1, "column {column}");
    Ok(())
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(2_000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parsers_on_hostile_input_a_mutated_policy(seed in 0..SEEDS.len(), edits in edits()) {
        let text = mutated(SEEDS[seed], &edits);
        if let Err(error) = parse(Path::new("fuzz.toml"), &text) {
            points_inside(&text, error.line, error.column)?;
            prop_assert!(error.to_string().contains("fuzz.toml"), "{error}");
        }
    }

    #[test]
    fn parsers_on_hostile_input_random_text(text in "\\PC{0,200}") {
        if let Err(error) = parse(Path::new("fuzz.toml"), &text) {
            points_inside(&text, error.line, error.column)?;
        }
    }

    #[test]
    fn parsers_on_hostile_input_a_mutated_configuration(edits in edits()) {
        let text = mutated(CONFIG_SEED, &edits);
        if let Err(error) = Config::parse(Path::new("config.toml"), &text) {
            points_inside(&text, error.line, error.column)?;
        }
    }
}

#[test]
fn the_seeds_are_valid() {
    for seed in SEEDS {
        parse(Path::new("seed.toml"), seed).unwrap();
    }
    Config::parse(Path::new("config.toml"), CONFIG_SEED).unwrap();
}
