//! The `from` and `to` strings of a forward: `localhost:8082`,
//! `localhost:9000-9010`, `localhost:*`, `10.200.1.1:8082`, `[fd00::1]:80`.

use std::{fmt, net::IpAddr, ops::RangeInclusive};

use serde::Serialize;

/// The ports a rule applies to, or maps onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ports {
    /// One port.
    Single(u16),
    /// An inclusive range `low-high`.
    Range(u16, u16),
    /// Every port (`*`); as a target: the port that was dialed.
    Every,
}

impl Ports {
    /// How many ports these are (never zero).
    #[must_use]
    pub fn count(self) -> u32 {
        let range = self.range();
        u32::from(*range.end()) - u32::from(*range.start()) + 1
    }

    /// The fewest port prefixes that cover these ports exactly, as (first
    /// port, number of leading port bits fixed): how the forward trie
    /// stores them.
    #[must_use]
    pub fn prefixes(self) -> Vec<(u16, u32)> {
        port_prefixes(&self.range())
    }

    /// The ports as an inclusive range; `Every` is 0-65535.
    #[must_use]
    pub fn range(self) -> RangeInclusive<u16> {
        match self {
            Self::Single(port) => port..=port,
            Self::Range(low, high) => low..=high,
            Self::Every => 0..=u16::MAX,
        }
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(port) => write!(f, "{port}"),
            Self::Range(low, high) => write!(f, "{low}-{high}"),
            Self::Every => f.write_str("*"),
        }
    }
}

/// Where a forward goes: an address and the ports on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Target {
    pub addr: IpAddr,
    pub ports: Ports,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.addr, self.ports) {
            (addr, Ports::Every) => write!(f, "{addr}"),
            (IpAddr::V4(addr), ports) => write!(f, "{addr}:{ports}"),
            (IpAddr::V6(addr), ports) => write!(f, "[{addr}]:{ports}"),
        }
    }
}

/// The fewest port prefixes that cover `ports` exactly, as (first port,
/// number of leading port bits fixed).
fn port_prefixes(ports: &RangeInclusive<u16>) -> Vec<(u16, u32)> {
    let (mut low, high) = (u32::from(*ports.start()), u32::from(*ports.end()));
    let mut prefixes = Vec::new();
    while low <= high {
        // The largest aligned block that starts at `low` and ends by `high`.
        let mut size: u32 = if low == 0 {
            1 << 16
        } else {
            1 << low.trailing_zeros()
        };
        while low + size - 1 > high {
            size >>= 1;
        }
        let port = u16::try_from(low).expect("low is a port");
        prefixes.push((port, 16 - size.trailing_zeros()));
        low += size;
    }
    prefixes
}

/// Parses the `from` of a forward: `localhost:` and a port, a range or `*`.
pub fn parse_from(text: &str) -> Result<Ports, String> {
    let Some(ports) = text.strip_prefix("localhost:") else {
        return Err(format!(
            "expected \"localhost:PORT\", \"localhost:LOW-HIGH\" or \"localhost:*\", found \
             {text:?} (every localhost address matches: 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104)"
        ));
    };
    parse_ports(ports)
}

/// Parses the `to` of a forward: an address, optionally with a port, a
/// range or `*` (no port, or `*`, keeps the dialed port).
pub fn parse_to(text: &str) -> Result<Target, String> {
    let (host, ports) = split_host_port(text)?;
    let addr = host
        .parse::<IpAddr>()
        .map_err(|_| {
            format!(
                "{host:?} is not an IPv4 or IPv6 address (IPv6 with a port is written [ADDR]:PORT)"
            )
        })?
        // ::ffff:a.b.c.d is a.b.c.d: IPv4 sockets can reach it too.
        .to_canonical();
    let ports = match ports {
        Some(ports) => parse_ports(ports)?,
        None => Ports::Every,
    };
    Ok(Target { addr, ports })
}

/// Splits `host:ports`, `[v6]:ports`, `[v6]` and a bare address.
fn split_host_port(text: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| {
            format!("{text:?} opens a bracket it does not close: write [ADDR]:PORT")
        })?;
        return match after {
            "" => Ok((host, None)),
            _ => after
                .strip_prefix(':')
                .map(|ports| (host, Some(ports)))
                .ok_or_else(|| {
                    format!("{text:?} has {after:?} after the address: write [ADDR]:PORT")
                }),
        };
    }
    Ok(match text.rsplit_once(':') {
        // More than one colon and no brackets: a bare IPv6 address.
        Some((host, _)) if host.contains(':') => (text, None),
        Some((host, ports)) => (host, Some(ports)),
        None => (text, None),
    })
}

fn parse_ports(text: &str) -> Result<Ports, String> {
    if text == "*" {
        return Ok(Ports::Every);
    }
    let Some((low, high)) = text.split_once('-') else {
        return parse_port(text).map(Ports::Single);
    };
    let (low, high) = (parse_port(low)?, parse_port(high)?);
    if low > high {
        return Err(format!(
            "port range {low}-{high} is empty: write LOW-HIGH with LOW <= HIGH"
        ));
    }
    Ok(Ports::Range(low, high))
}

fn parse_port(text: &str) -> Result<u16, String> {
    let port: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a port: expected a number from 1 to 65535"))?;
    match u16::try_from(port) {
        Ok(0) => Err("port 0 is not a port: expected a number from 1 to 65535".to_owned()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!(
            "port {port} is out of range: expected a number from 1 to 65535"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ports a list of prefixes covers, in order.
    fn covered(prefixes: &[(u16, u32)]) -> Vec<u32> {
        prefixes
            .iter()
            .flat_map(|&(port, bits)| {
                let port = u32::from(port);
                port..port + (1 << (16 - bits))
            })
            .collect()
    }

    #[test]
    fn prefixes_cover_a_range_exactly() {
        for (low, high) in [
            (9000, 9010),
            (1, 65535),
            (8082, 8082),
            (0, 65535),
            (1024, 2047),
            (65535, 65535),
        ] {
            let prefixes = port_prefixes(&(low..=high));
            assert_eq!(
                covered(&prefixes),
                (u32::from(low)..=u32::from(high)).collect::<Vec<_>>()
            );
            assert!(
                prefixes.len() <= 30,
                "{low}-{high}: {} prefixes",
                prefixes.len()
            );
        }
        assert_eq!(port_prefixes(&(0..=65535)), vec![(0, 0)]);
        assert_eq!(port_prefixes(&(8082..=8082)), vec![(8082, 16)]);
    }

    #[test]
    fn parses_every_form_of_from() {
        assert_eq!(parse_from("localhost:8082"), Ok(Ports::Single(8082)));
        assert_eq!(
            parse_from("localhost:9000-9010"),
            Ok(Ports::Range(9000, 9010))
        );
        assert_eq!(parse_from("localhost:*"), Ok(Ports::Every));
    }

    #[test]
    fn rejects_bad_ports_with_the_reason() {
        assert!(
            parse_from("127.0.0.1:80")
                .unwrap_err()
                .contains("localhost:PORT")
        );
        assert!(parse_from("localhost:0").unwrap_err().contains("port 0"));
        assert!(
            parse_from("localhost:65536")
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            parse_from("localhost:http")
                .unwrap_err()
                .contains("not a port")
        );
        assert!(parse_from("localhost:10-9").unwrap_err().contains("empty"));
    }

    #[test]
    fn parses_targets_of_both_families() {
        let v4 = parse_to("10.200.1.1:8082").unwrap();
        assert_eq!(v4.addr, "10.200.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(v4.ports, Ports::Single(8082));
        assert_eq!(parse_to("10.200.1.1").unwrap().ports, Ports::Every);
        assert_eq!(
            parse_to("[fd00::1]:80-90").unwrap().ports,
            Ports::Range(80, 90)
        );
        assert_eq!(parse_to("[fd00::1]").unwrap().ports, Ports::Every);
        assert_eq!(
            parse_to("fd00::1").unwrap().addr,
            "fd00::1".parse::<IpAddr>().unwrap()
        );
        assert!(
            parse_to("10.200.1.300:80")
                .unwrap_err()
                .contains("not an IPv4 or IPv6")
        );
        assert!(
            parse_to("[fd00::1]junk")
                .unwrap_err()
                .contains("after the address")
        );
        assert!(
            parse_to("[fd00::1:80")
                .unwrap_err()
                .contains("does not close")
        );
        assert_eq!(
            parse_to("[::ffff:10.0.0.1]:80").unwrap().addr,
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            parse_to("[fd00::1]:80").unwrap().to_string(),
            "[fd00::1]:80"
        );
    }
}
