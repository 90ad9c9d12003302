//! `[[host_service]]` and the scopes' `host_services` grants: services
//! that listen only on the host's loopback, and which containers may reach
//! them at which address.

use std::net::{IpAddr, SocketAddr};

use netbpf_common::MAX_HOST_SERVICES;
use serde::Deserialize;
use toml::Spanned;

use super::{Locator, PolicyError};
pub use crate::host::scope_net::ScopeNetwork;

/// A service listening on the host's loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostService {
    pub name: String,
    /// Where it listens: `127.0.0.0/8` or `[::1]`, and a port.
    pub listen: SocketAddr,
    /// Who may listen for it; None: whoever listens there.
    pub owner: Option<Owner>,
    /// Whether containers' labels may grant it (where a scope takes
    /// `host_services` from labels).
    pub grantable_by_label: bool,
}

/// The owner a host service's listener must have: connections are never
/// handed to a socket anybody else listens on (a local user who binds the
/// port while the real service is down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The user that made the listening socket.
    pub uid: Option<u32>,
    /// The systemd unit (`NAME.service`, `NAME.scope`) whose process holds
    /// it.
    pub unit: Option<String>,
}

impl Owner {
    /// Whether a listener made by `uid`, held by a process of `unit`, is
    /// this owner's.
    #[must_use]
    pub fn owns(&self, uid: u32, unit: Option<&str>) -> bool {
        self.uid.is_none_or(|wanted| wanted == uid)
            && self
                .unit
                .as_deref()
                .is_none_or(|wanted| unit == Some(wanted))
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.uid, &self.unit) {
            (Some(uid), Some(unit)) => write!(f, "uid {uid} in {unit}"),
            (Some(uid), None) => write!(f, "uid {uid}"),
            (None, Some(unit)) => write!(f, "{unit}"),
            (None, None) => write!(f, "anyone"),
        }
    }
}

/// A scope's grant of a host service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Index of the rule across the policy: its counters' slot.
    pub rule: u32,
    /// Index of the service in the policy's host services.
    pub service: usize,
    /// The address the container dials (a "host alias").
    pub dial: SocketAddr,
    /// The host side of the container's network, where the connection is
    /// sent and handed to the service.
    pub gateway: IpAddr,
    /// The container's own addresses of the dialed family: only
    /// connections from them reach the service.
    pub sources: Vec<IpAddr>,
    /// The host-side interface the container's packets arrive through;
    /// packets from `sources` through any other are forged.
    pub via: Option<u32>,
    /// The interface the node receives the container's packets on (the
    /// bridge `via` is a port of, or `via`); connections from `sources`
    /// received on any other are forged.
    pub ingress: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHostService {
    name: Spanned<String>,
    listen: Spanned<String>,
    #[serde(default)]
    owner: Option<Spanned<RawOwner>>,
    #[serde(default)]
    grantable_by_label: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOwner {
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    unit: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrant {
    service: Spanned<String>,
    dial: Spanned<String>,
    #[serde(default)]
    gateway: Option<Spanned<String>>,
}

impl RawGrant {
    /// A grant read from a label.
    pub(super) fn new(service: Spanned<String>, dial: Spanned<String>) -> Self {
        Self {
            service,
            dial,
            gateway: None,
        }
    }

    /// Where `dial` stands in the policy text.
    pub(super) fn dial_span(&self) -> std::ops::Range<usize> {
        self.dial.span()
    }
}

/// Validates the host services of one policy file, adding them to
/// `services`: those of the files before it, each with its place.
pub(super) fn validate_services(
    locator: &Locator<'_>,
    raw: Vec<Spanned<RawHostService>>,
    services: &mut Vec<(HostService, String)>,
) -> Result<(), PolicyError> {
    for (index, raw) in raw.into_iter().enumerate() {
        let raw = raw.into_inner();
        let here = super::place(locator, raw.name.span());
        let field = format!("host_service[{index}]");
        if services.len() >= MAX_HOST_SERVICES as usize {
            return Err(locator.error(
                raw.name.span(),
                format!("{field}.name"),
                format!("too many host services: this netbpf holds at most {MAX_HOST_SERVICES}"),
            ));
        }
        let name = raw.name.get_ref().trim().to_owned();
        if name.is_empty() {
            return Err(locator.error(
                raw.name.span(),
                format!("{field}.name"),
                "a host service needs a name",
            ));
        }
        if let Some((_, first)) = services.iter().find(|(service, _)| service.name == name) {
            return Err(locator.error(
                raw.name.span(),
                format!("{field}.name"),
                format!("host service {name:?} is defined twice: at {first} and at {here}"),
            ));
        }
        let listen = raw
            .listen
            .get_ref()
            .parse::<SocketAddr>()
            .ok()
            .filter(|listen| listen.ip().is_loopback() && listen.port() != 0)
            .ok_or_else(|| {
                locator.error(
                    raw.listen.span(),
                    format!("{field}.listen"),
                    format!(
                        "{:?} is not a loopback address and port: write \"127.0.0.1:PORT\" or \"[::1]:PORT\"",
                        raw.listen.get_ref()
                    ),
                )
            })?;
        if let Some((_, first)) = services
            .iter()
            .find(|(service, _)| service.listen == listen)
        {
            return Err(locator.error(
                raw.listen.span(),
                format!("{field}.listen"),
                format!("the host service at {first} listens on {listen} too"),
            ));
        }
        let owner = raw
            .owner
            .map(|owner| {
                let span = owner.span();
                let owner = owner.into_inner();
                let error = |message: &str| locator.error(span.clone(), format!("{field}.owner"), message);
                if owner.uid.is_none() && owner.unit.is_none() {
                    return Err(error(
                        "an owner names a uid, a systemd unit, or both: owner = { uid = 0, unit = \"gpu-tunnel.service\" }",
                    ));
                }
                if let Some(unit) = &owner.unit
                    && !is_unit_name(unit)
                {
                    return Err(error(&format!(
                        "{unit:?} is not a systemd unit's name: write NAME.service or NAME.scope"
                    )));
                }
                Ok(Owner {
                    uid: owner.uid,
                    unit: owner.unit,
                })
            })
            .transpose()?;
        services.push((
            HostService {
                name,
                listen,
                owner,
                grantable_by_label: raw.grantable_by_label,
            },
            here,
        ));
    }
    Ok(())
}

/// Whether `name` is a systemd service's or scope's name.
fn is_unit_name(name: &str) -> bool {
    let stem = name
        .strip_suffix(".service")
        .or_else(|| name.strip_suffix(".scope"));
    stem.is_some_and(|stem| !stem.is_empty() && !stem.contains('/'))
}

/// A grant as the policy gives it, before an instance's network is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GrantDef {
    service: usize,
    dial: SocketAddr,
    /// The gateway the policy names; None: the instance's default route's.
    gateway: Option<IpAddr>,
}

impl GrantDef {
    /// The index of the service it grants.
    pub(super) fn service(&self) -> usize {
        self.service
    }

    /// The address the container dials.
    pub(super) fn dial(&self) -> SocketAddr {
        self.dial
    }

    /// The gateway the policy names, if it names one.
    pub(super) fn gateway(&self) -> Option<IpAddr> {
        self.gateway
    }
}

/// Validates one grant on its own.
pub(super) fn validate_grant(
    locator: &Locator<'_>,
    services: &[HostService],
    field: &str,
    raw: &RawGrant,
) -> Result<GrantDef, PolicyError> {
    let service = services
        .iter()
        .position(|service| service.name == *raw.service.get_ref())
        .ok_or_else(|| {
            let known: Vec<&str> = services
                .iter()
                .map(|service| service.name.as_str())
                .collect();
            locator.error(
                raw.service.span(),
                format!("{field}.service"),
                format!(
                    "no host service is named {:?} (the policy defines: {known:?})",
                    raw.service.get_ref()
                ),
            )
        })?;
    let dial_error =
        |message: String| locator.error(raw.dial.span(), format!("{field}.dial"), message);
    let dial: SocketAddr = raw.dial.get_ref().parse().map_err(|_| {
        dial_error(format!(
            "{:?} is not ADDR:PORT (IPv6 as [ADDR]:PORT)",
            raw.dial.get_ref()
        ))
    })?;
    let dial = SocketAddr::new(dial.ip().to_canonical(), dial.port());
    if dial.port() == 0
        || dial.ip().is_loopback()
        || dial.ip().is_unspecified()
        || dial.ip().is_multicast()
    {
        return Err(dial_error(format!(
            "{dial} cannot be a host alias: give a unicast, non-loopback address and a port"
        )));
    }
    if dial.is_ipv4() != services[service].listen.is_ipv4() {
        return Err(dial_error(format!(
            "{dial} and the service's {} are of different IP families",
            services[service].listen
        )));
    }
    let gateway = raw
        .gateway
        .as_ref()
        .map(|gateway| {
            gateway
                .get_ref()
                .parse::<IpAddr>()
                .ok()
                .filter(|addr| addr.is_ipv4() == dial.is_ipv4())
                .ok_or_else(|| {
                    locator.error(
                        gateway.span(),
                        format!("{field}.gateway"),
                        format!(
                            "{:?} is not an address of the same family as dial",
                            gateway.get_ref()
                        ),
                    )
                })
        })
        .transpose()?;
    Ok(GrantDef {
        service,
        dial,
        gateway,
    })
}

/// The grant `def` for an instance whose network is `network`.
pub(super) fn resolve_grant(
    locator: &Locator<'_>,
    def: &GrantDef,
    network: &ScopeNetwork,
    node_addresses: &[IpAddr],
    field: &str,
    raw: &RawGrant,
    rule: u32,
) -> Result<Grant, PolicyError> {
    let dial_error =
        |message: String| locator.error(raw.dial.span(), format!("{field}.dial"), message);
    let same_family = |addr: &&IpAddr| addr.is_ipv4() == def.dial.is_ipv4();
    let gateway = match def.gateway {
        Some(gateway) => gateway,
        None => *network.gateways.iter().find(same_family).ok_or_else(|| {
            dial_error(format!(
                "{}: give gateway = \"ADDR\" (the host side of its network)",
                super::NO_DEFAULT_ROUTE
            ))
        })?,
    };
    check_gateway(gateway, network, node_addresses).map_err(dial_error)?;
    let sources: Vec<IpAddr> = network
        .route_addresses
        .iter()
        .filter(same_family)
        .copied()
        .collect();
    if sources.is_empty() {
        return Err(dial_error(
            "the container has no address of this family: nothing could be granted".to_owned(),
        ));
    }
    Ok(Grant {
        rule,
        service: def.service,
        dial: def.dial,
        gateway,
        sources,
        via: network.host_interface,
        ingress: network.ingress_interface,
    })
}

/// Checks that connections sent to `gateway` reach the node, where the
/// `sk_lookup` program waits for them.
fn check_gateway(
    gateway: IpAddr,
    network: &ScopeNetwork,
    node_addresses: &[IpAddr],
) -> Result<(), String> {
    if let IpAddr::V6(v6) = gateway
        && v6.is_unicast_link_local()
    {
        return Err(format!(
            "the gateway {v6} is link-local, which a connection cannot be sent to without an interface: \
             give gateway = \"ADDR\" (a global or ULA address of the host side)"
        ));
    }
    if !node_addresses.contains(&gateway) {
        return Err(format!(
            "the gateway {gateway} is not an address of the node: connections sent there would never \
             reach the host service (give gateway = \"ADDR\", the host side of the container's network)"
        ));
    }
    if network.node {
        return Err("the scope shares the node's network namespace (host networking): its connections reach \
                    the host's loopback already, and its addresses are the host's, which cannot be granted"
            .to_owned());
    }
    Ok(())
}
