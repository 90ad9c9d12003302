//! Scraping a running agent's Prometheus metrics with curl, as a
//! Prometheus server would, and reading series out of the text.

use std::{net::SocketAddr, process::Command};

use anyhow::{Context as _, bail};

/// One scrape: its media type and its series.
#[derive(Debug)]
pub struct Scrape {
    pub content_type: String,
    pub text: String,
}

impl Scrape {
    /// `GET /metrics` at `address`, run in network namespace `netns` (None:
    /// this process's).
    pub fn fetch(address: SocketAddr, netns: Option<&str>) -> anyhow::Result<Self> {
        let url = format!("http://{address}/metrics");
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, "curl"]);
                command
            }
            None => Command::new("curl"),
        };
        let output = command
            .args([
                "-sS",
                "--fail",
                "--max-time",
                "5",
                "-w",
                "\n%{content_type}",
            ])
            .arg(&url)
            .output()
            .context("running curl")?;
        if !output.status.success() {
            bail!(
                "scraping {url} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let body = String::from_utf8(output.stdout)?;
        let (text, content_type) = body
            .rsplit_once('\n')
            .context("curl printed the content type last")?;
        Ok(Self {
            content_type: content_type.to_owned(),
            text: text.to_owned(),
        })
    }

    /// The value of series `name` whose labels include every `labels`
    /// pair; None when no series matches.
    #[must_use]
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (series_name, series_labels) = match series.split_once('{') {
                    Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                let matches = series_name == name
                    && labels.iter().all(|(key, wanted)| {
                        series_labels
                            .split(',')
                            .any(|pair| pair == format!("{key}=\"{wanted}\""))
                    });
                matches.then(|| value.parse().ok()).flatten()
            })
    }

    /// The count series `name` with `labels` holds (a counter, a gauge of
    /// things, a histogram's `_count`), failing with the whole text when
    /// absent or not a whole number.
    #[must_use]
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let value = self
            .value(name, labels)
            .unwrap_or_else(|| panic!("no series {name} {labels:?} in:\n{}", self.text));
        assert!(
            value >= 0.0 && value.fract() == 0.0,
            "{name} {labels:?} is {value}, no count"
        );
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "checked whole and not negative"
        )]
        let count = value as u64;
        count
    }
}
