//! `[[mss_clamp]]`: which interfaces clamp the MSS of TCP handshakes, in
//! which direction, to what.

use std::fmt;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{Locator, PolicyError};

/// The lowest MSS a clamp may set: Linux's own floor (`TCP_MIN_MSS`).
pub const MIN_MSS: u16 = 88;

/// MSS clamping on the interfaces whose name matches a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MssClamp {
    /// An interface name, or a glob (`wg*`, `veth?`, `tun[0-9]`).
    pub interface: String,
    pub direction: Direction,
    pub mss: Mss,
}

impl MssClamp {
    /// Whether the clamp applies to the interface `name`.
    #[must_use]
    pub fn matches(&self, name: &str) -> bool {
        glob::Pattern::new(&self.interface).is_ok_and(|pattern| pattern.matches(name))
    }
}

/// Which way packets cross the interface to be clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Leaving through it, as `iptables -o IFACE` matches (the default).
    #[default]
    Egress,
    /// Arriving on it, as `iptables -i IFACE` matches.
    Ingress,
    Both,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Egress => "egress",
            Self::Ingress => "ingress",
            Self::Both => "both",
        })
    }
}

impl Direction {
    #[must_use]
    pub fn egress(self) -> bool {
        matches!(self, Self::Egress | Self::Both)
    }

    #[must_use]
    pub fn ingress(self) -> bool {
        matches!(self, Self::Ingress | Self::Both)
    }
}

/// What the MSS is clamped to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mss {
    /// A fixed value, like `TCPMSS --set-mss`.
    Fixed(u16),
    /// The path MTU minus 40 (IPv4) or 60 (IPv6) bytes of headers, like
    /// `TCPMSS --clamp-mss-to-pmtu`.
    PathMtu,
}

impl fmt::Display for Mss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(mss) => write!(f, "{mss}"),
            Self::PathMtu => f.write_str("pmtu"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMssClamp {
    interface: Spanned<String>,
    #[serde(default)]
    direction: Direction,
    mss: Spanned<RawMss>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawMss {
    Number(i64),
    Text(String),
}

/// Validates the clamps of one policy file, adding them to `clamps`: those
/// of the files before it, each with its place.
pub(super) fn validate(
    locator: &Locator<'_>,
    raw: Vec<Spanned<RawMssClamp>>,
    clamps: &mut Vec<(MssClamp, String)>,
) -> Result<(), PolicyError> {
    for (index, raw) in raw.into_iter().enumerate() {
        let raw = raw.into_inner();
        let here = super::place(locator, raw.interface.span());
        let field = format!("mss_clamp[{index}]");
        let interface = raw.interface.get_ref().trim().to_owned();
        let interface_error = |message: String| {
            locator.error(raw.interface.span(), format!("{field}.interface"), message)
        };
        check_interface(&interface).map_err(interface_error)?;
        if let Some((_, first)) = clamps
            .iter()
            .find(|(clamp, _)| clamp.interface == interface)
        {
            return Err(interface_error(format!(
                "{interface:?} is clamped twice: at {first} and at {here}; one clamp per interface"
            )));
        }
        let mss = match raw.mss.get_ref() {
            RawMss::Text(text) if text == "pmtu" => Mss::PathMtu,
            RawMss::Number(number) => u16::try_from(*number)
                .ok()
                .filter(|mss| *mss >= MIN_MSS)
                .map(Mss::Fixed)
                .ok_or_else(|| {
                    locator.error(
                        raw.mss.span(),
                        format!("{field}.mss"),
                        format!(
                            "MSS {number} is out of range: expected {MIN_MSS} to 65535, or \"pmtu\""
                        ),
                    )
                })?,
            RawMss::Text(text) => {
                return Err(locator.error(
                    raw.mss.span(),
                    format!("{field}.mss"),
                    format!("expected a number or \"pmtu\", found {text:?}"),
                ));
            }
        };
        clamps.push((
            MssClamp {
                interface,
                direction: raw.direction,
                mss,
            },
            here,
        ));
    }
    Ok(())
}

/// Checks that `interface` is a name or a glob that can match one.
fn check_interface(interface: &str) -> Result<(), String> {
    if interface.is_empty() {
        return Err("an interface name or glob is needed, e.g. \"wg0\" or \"wg*\"".to_owned());
    }
    if let Some(bad) = interface.chars().find(|c| c.is_whitespace() || *c == '/') {
        return Err(format!(
            "{interface:?} cannot name an interface: it contains {bad:?}"
        ));
    }
    let is_glob = interface.contains(['*', '?', '[']);
    if !is_glob && interface.len() > 15 {
        return Err(format!(
            "{interface:?} is longer than the 15 characters of an interface name"
        ));
    }
    glob::Pattern::new(interface)
        .map(drop)
        .map_err(|error| format!("{interface:?} is not a valid glob: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_interface_names() {
        let clamp = MssClamp {
            interface: "wg*".to_owned(),
            direction: Direction::Egress,
            mss: Mss::PathMtu,
        };
        assert!(clamp.matches("wg0") && clamp.matches("wg-office"));
        assert!(!clamp.matches("eth0"));
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(check_interface("wg0").is_ok());
        assert!(check_interface("veth[0-9]*").is_ok());
        assert!(check_interface("").unwrap_err().contains("needed"));
        assert!(
            check_interface("a-very-long-interface")
                .unwrap_err()
                .contains("15 characters")
        );
        assert!(check_interface("wg 0").unwrap_err().contains("contains"));
        assert!(
            check_interface("wg[")
                .unwrap_err()
                .contains("not a valid glob")
        );
    }
}
