//! Docker runs no OCI hook: the agent learns of a container from its
//! cgroup, Docker's state files and its API, and applies the container's
//! scope as soon as it knows enough (for a grant, the container's network,
//! known once a process of it runs). This measures the window that
//! leaves, as an application feels it: each container's first process (a
//! busybox shell) reads the clock at once, then dials a host service its
//! scope is granted until the service answers. The time until then is the
//! window; 0 when its first dial was answered.

use std::time::Duration;

use netbpf_testenv::{DockerNode, NODE_PUBLISHED};
use serde::{Deserialize, Serialize};

use crate::agent_scale::in_parallel;

/// The granted service's port, on the node's loopback and dialed at the
/// bridge's gateway.
const SERVICE_PORT: u16 = 18188;
const ANSWER: &str = "granted";
/// Dials after which a container gives up: the agent never applied it.
const MOST_DIALS: usize = 3000;
/// Containers started at once, as a compose project's are.
const PARALLEL: usize = 4;

/// The window of every container of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartWindow {
    /// Per container, seconds from its first process reading the clock to
    /// its first answered dial (in `/proc/uptime`'s 10 ms steps).
    pub windows_s: Vec<f64>,
    /// Containers whose very first dial was answered.
    pub first_dial_answered: usize,
}

impl StartWindow {
    /// The `fraction` quantile of the windows (nearest rank), in seconds.
    #[must_use]
    pub fn quantile(&self, fraction: f64) -> f64 {
        let mut sorted = self.windows_s.clone();
        sorted.sort_by(f64::total_cmp);
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank among a few containers"
        )]
        let rank = ((fraction * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted.get(rank - 1).copied().unwrap_or(f64::NAN)
    }
}

/// Starts `count` containers of a Docker daemon of the bench's own under
/// the agent, and reads each one's window.
pub fn measure(count: usize) -> anyhow::Result<StartWindow> {
    let node = DockerNode::new();
    let _service =
        node.site()
            .start_http_server(node.work.path(), "127.0.0.1", SERVICE_PORT, ANSWER)?;
    let (_setup, _agent) = node.agent(&format!(
        "version = 1\n\
         [[host_service]]\nname = \"svc\"\nlisten = \"127.0.0.1:{SERVICE_PORT}\"\n\
         [[scope]]\nname = \"window\"\nmatch = {{ container = \"win-*\" }}\n\
         host_services = [{{ service = \"svc\", dial = \"{NODE_PUBLISHED}:{SERVICE_PORT}\" }}]\n"
    ));
    let script = format!(
        "read started _ </proc/uptime; refused=0; \
         until printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {NODE_PUBLISHED} {SERVICE_PORT} 2>/dev/null | grep -q {ANSWER}; do \
           refused=$((refused+1)); [ $refused -ge {MOST_DIALS} ] && break; \
         done; \
         read answered _ </proc/uptime; echo \"window $started $answered $refused\""
    );
    let names: Vec<String> = (0..count).map(|i| format!("win-{i}")).collect();
    in_parallel(&names, PARALLEL, |name| {
        node.daemon
            .docker(&[
                "run",
                "--detach",
                "--name",
                name,
                netbpf_testenv::NODE_IMAGE,
                "sh",
                "-c",
                &script,
            ])
            .map(drop)
    })?;
    let mut windows_s = Vec::with_capacity(count);
    let mut first_dial_answered = 0;
    for name in &names {
        node.daemon.docker(&["wait", name])?;
        let logs = node.daemon.docker(&["logs", name])?;
        let (window, refused) = parse(&logs)
            .ok_or_else(|| anyhow::anyhow!("container {name} reported no window: {logs:?}"))?;
        anyhow::ensure!(
            refused < MOST_DIALS,
            "container {name} was refused {refused} times: its scope was never applied"
        );
        if refused == 0 {
            first_dial_answered += 1;
        }
        windows_s.push(window.as_secs_f64());
    }
    Ok(StartWindow {
        windows_s,
        first_dial_answered,
    })
}

/// A container's report, `window STARTED ANSWERED REFUSED` (uptimes in
/// seconds with two decimals): the window and the refused dials.
fn parse(logs: &str) -> Option<(Duration, usize)> {
    let line = logs.lines().find(|line| line.starts_with("window "))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [_, started, answered, refused] = fields[..] else {
        return None;
    };
    let [started, answered] = [started, answered].map(|uptime| uptime.parse::<f64>().ok());
    let window = answered? - started?;
    Some((
        Duration::from_secs_f64(window.max(0.0)),
        refused.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(clippy::float_cmp, reason = "ranks of whole numbers, exact")]
    fn quantiles_are_nearest_ranks() {
        let window = StartWindow {
            windows_s: (1..=100).rev().map(f64::from).collect(),
            first_dial_answered: 0,
        };
        assert_eq!(window.quantile(0.5), 50.0);
        assert_eq!(window.quantile(0.99), 99.0);
        assert_eq!(window.quantile(1.0), 100.0);
    }

    #[test]
    fn reads_a_containers_report() {
        assert_eq!(
            parse("window 812.34 812.87 41\n"),
            Some((Duration::from_secs_f64(812.87 - 812.34), 41))
        );
        assert_eq!(parse("nc: bad address\n"), None);
    }
}
