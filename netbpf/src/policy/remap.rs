//! A scope's `bind` remaps (its bind to one port gets another) and
//! `alias` entries (its connections to one address go to another).

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use serde::Deserialize;
use toml::Spanned;

use super::{Captures, Locator, OnMove, PolicyError, Protocols, on_move};

/// A bind to `port` (on `address`, or any) gets `to` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindRemap {
    pub rule: u32,
    pub protocols: Protocols,
    pub port: u16,
    pub to: u16,
    /// Only binds to this address; None: any.
    pub address: Option<IpAddr>,
}

/// Connections to `from` (one port, or every port when its port is 0) go
/// to `to` (the same port when its port is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alias {
    pub rule: u32,
    pub protocols: Protocols,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub on_move: OnMove,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBind {
    port: Spanned<RawPort>,
    to: Spanned<RawPort>,
    #[serde(default)]
    address: Option<Spanned<String>>,
    #[serde(default)]
    proto: Protocols,
}

/// A port, or a value of the instance: `"{NAME}"` (what the match
/// captured as NAME) or `"@"` (the number after the last `@` in the
/// instance's name: `onetime@7043.service` -> 7043).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawPort {
    Number(i64),
    Template(String),
}

/// A forward or an alias as written: where to, from where, for what.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedirect {
    pub(super) from: Spanned<String>,
    pub(super) to: Spanned<String>,
    #[serde(default)]
    pub(super) proto: Protocols,
    #[serde(default)]
    pub(super) on_move: Option<Spanned<OnMove>>,
}

impl RawBind {
    /// A bind remap read from a label: ports as written (a number, or a
    /// value of the instance).
    pub(super) fn new(port: Spanned<String>, to: Spanned<String>, proto: Protocols) -> Self {
        let port_of = |text: Spanned<String>| {
            let span = text.span();
            let text = text.into_inner();
            Spanned::new(
                span,
                text.parse()
                    .map_or(RawPort::Template(text), RawPort::Number),
            )
        };
        Self {
            port: port_of(port),
            to: port_of(to),
            address: None,
            proto,
        }
    }

    pub(super) fn target_span(&self) -> std::ops::Range<usize> {
        self.to.span()
    }
}

impl RawRedirect {
    /// A forward or an alias read from a label.
    pub(super) fn new(from: Spanned<String>, to: Spanned<String>, proto: Protocols) -> Self {
        Self {
            from,
            to,
            proto,
            on_move: None,
        }
    }

    pub(super) fn source_span(&self) -> std::ops::Range<usize> {
        self.from.span()
    }
}

/// Validates one bind remap: for an instance (its name and what its
/// match captured), or alone, when a port the instance gives is only
/// checked to be one it can give (None then).
pub(super) fn validate_bind(
    locator: &Locator<'_>,
    field: &str,
    raw: &RawBind,
    known: &BTreeSet<&str>,
    instance: Option<(&str, &Captures)>,
) -> Result<Option<BindRemap>, PolicyError> {
    let port = port_value(locator, field, "port", &raw.port, known, instance)?;
    let to = port_value(locator, field, "to", &raw.to, known, instance)?;
    let address = raw
        .address
        .as_ref()
        .map(|address| {
            address
                .get_ref()
                .parse::<IpAddr>()
                .map(|addr| addr.to_canonical())
                .map_err(|_| {
                    locator.error(
                        address.span(),
                        format!("{field}.address"),
                        format!("{:?} is not an IPv4 or IPv6 address", address.get_ref()),
                    )
                })
        })
        .transpose()?;
    let (Some(port), Some(to)) = (port, to) else {
        return Ok(None);
    };
    Ok(Some(BindRemap {
        rule: 0,
        protocols: raw.proto,
        port,
        to,
        address,
    }))
}

/// The port `raw` gives (`field.name`), for `instance`; None when it is
/// the instance's and there is none.
fn port_value(
    locator: &Locator<'_>,
    field: &str,
    name: &str,
    raw: &Spanned<RawPort>,
    known: &BTreeSet<&str>,
    instance: Option<(&str, &Captures)>,
) -> Result<Option<u16>, PolicyError> {
    let error = |message: String| locator.error(raw.span(), format!("{field}.{name}"), message);
    let number = |value: i64| {
        u16::try_from(value)
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| {
                error(format!(
                    "port {value} is out of range: expected a number from 1 to 65535"
                ))
            })
    };
    match raw.get_ref() {
        RawPort::Number(value) => number(*value).map(Some),
        RawPort::Template(template) if template == "@" => {
            let Some((instance, _)) = instance else {
                return Ok(None);
            };
            instance_port(instance).map(Some).ok_or_else(|| {
                error(format!(
                    "{instance:?} has no @PORT in its name for {name} = \"@\""
                ))
            })
        }
        RawPort::Template(template) => {
            let capture = template
                .strip_prefix('{')
                .and_then(|rest| rest.strip_suffix('}'))
                .filter(|capture| known.contains(capture))
                .ok_or_else(|| {
                    error(format!(
                        "expected a port, \"@\" (the port in the instance's name) or \"{{NAME}}\" with a NAME \
                         the match captures ({known:?}), found {template:?}"
                    ))
                })?;
            let Some((_, captures)) = instance else {
                return Ok(None);
            };
            let text = &captures[capture];
            match text.parse::<i64>() {
                Ok(value) => number(value).map(Some),
                Err(_) => Err(error(format!("{{{capture}}} is {text:?}, not a port"))),
            }
        }
    }
}

/// The port an instance's name carries after its last `@`:
/// `onetime@7043.service` and `onetime@7043` give 7043.
fn instance_port(instance: &str) -> Option<u16> {
    let (_, after) = instance.rsplit_once('@')?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|port| *port != 0)
}

/// Validates one alias.
pub(super) fn validate_alias(
    locator: &Locator<'_>,
    field: &str,
    raw: &RawRedirect,
    rule: u32,
) -> Result<Alias, PolicyError> {
    let endpoint = |value: &Spanned<String>, name: &str| {
        parse_endpoint(value.get_ref())
            .map_err(|message| locator.error(value.span(), format!("{field}.{name}"), message))
    };
    let from = endpoint(&raw.from, "from")?;
    let to = endpoint(&raw.to, "to")?;
    if from.ip().is_loopback() {
        return Err(locator.error(
            raw.from.span(),
            format!("{field}.from"),
            "a localhost destination is a forward: write it under forward = [...]",
        ));
    }
    if from.is_ipv4() != to.is_ipv4() {
        return Err(locator.error(
            raw.to.span(),
            format!("{field}.to"),
            format!("{from} and {to} are of different IP families"),
        ));
    }
    if from.port() == 0 && to.port() != 0 {
        return Err(locator.error(
            raw.to.span(),
            format!("{field}.to"),
            "every port of `from` goes to the same port: write `to` without a port",
        ));
    }
    Ok(Alias {
        rule,
        protocols: raw.proto,
        from,
        to,
        on_move: on_move(locator, field, raw.proto, raw.on_move.as_ref())?,
    })
}

/// `ADDR:PORT`, `[V6]:PORT`, or an address alone (port 0: every port).
fn parse_endpoint(text: &str) -> Result<SocketAddr, String> {
    let parsed = text
        .parse::<SocketAddr>()
        .or_else(|_| {
            text.trim_matches(['[', ']'])
                .parse::<IpAddr>()
                .map(|addr| SocketAddr::new(addr, 0))
        })
        .map_err(|_| format!("{text:?} is not ADDR:PORT, [ADDR]:PORT or an address"))?;
    let addr = parsed.ip().to_canonical();
    if addr.is_unspecified() || addr.is_multicast() {
        return Err(format!("{addr} cannot be dialed: give a unicast address"));
    }
    Ok(SocketAddr::new(addr, parsed.port()))
}

#[cfg(test)]
mod tests {
    use super::instance_port;

    #[test]
    fn instance_ports_come_after_the_last_at() {
        assert_eq!(instance_port("onetime@7043.service"), Some(7043));
        assert_eq!(instance_port("onetime@7043"), Some(7043));
        assert_eq!(instance_port("a@b@8080"), Some(8080));
        assert_eq!(instance_port("onetime"), None);
        assert_eq!(instance_port("onetime@x"), None);
        assert_eq!(instance_port("onetime@0"), None);
    }
}
