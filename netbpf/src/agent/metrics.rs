//! The agent's metrics, in the OpenMetrics text format Prometheus scrapes
//! (`GET /metrics` on the configured address): what the agent counts as
//! things happen (reloads, discovery delays, instances a full map refused),
//! and what it reads at each scrape (the counters of rules, host services
//! and MSS clamps, the containers followed, how full the maps are).

use std::{collections::BTreeMap, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::api::status::Status;

/// What the agent counts as things happen, for as long as it runs.
#[derive(Debug, Clone)]
pub struct Events {
    reloads: Counter,
    reload_errors: Counter,
    discovery_delay: Histogram,
    map_full: Family<MapLabels, Counter>,
    cgroup_resyncs: Counter,
    destroyed_on_move: Family<ProtocolLabels, Counter>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            reloads: Counter::default(),
            reload_errors: Counter::default(),
            // 100 µs to about 3 s.
            discovery_delay: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            map_full: Family::default(),
            cgroup_resyncs: Counter::default(),
            destroyed_on_move: Family::default(),
        }
    }
}

impl Events {
    /// A reload of the policy, which `failed` or not.
    pub fn reloaded(&self, failed: bool) {
        self.reloads.inc();
        if failed {
            self.reload_errors.inc();
        }
    }

    /// A cgroup's policy in the maps `delay` after it appeared.
    pub fn discovered(&self, delay: Duration) {
        self.discovery_delay.observe(delay.as_secs_f64());
    }

    /// Cgroup events were lost (the inotify queue overflowed): the tree
    /// was listed again.
    pub fn resynced(&self) {
        self.cgroup_resyncs.inc();
    }

    /// How many times cgroup events were lost.
    #[must_use]
    pub fn resyncs(&self) -> u64 {
        self.cgroup_resyncs.get()
    }

    /// A scope instance not applied because map `map` is full.
    pub fn refused_for_full_map(&self, map: &str) {
        self.map_full
            .get_or_create(&MapLabels {
                map: map.to_owned(),
            })
            .inc();
    }

    /// Sockets connected through rules whose target moved, destroyed:
    /// `udp` connected UDP sockets, `tcp` connections reset.
    pub fn destroyed_on_move(&self, udp: u64, tcp: u64) {
        for (protocol, count) in [("udp", udp), ("tcp", tcp)] {
            self.destroyed_on_move
                .get_or_create(&ProtocolLabels {
                    protocol: protocol.to_owned(),
                })
                .inc_by(count);
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "policy_reloads",
            "Reloads of the policy (SIGHUP, netbpf reload, a change of the policy directory)",
            self.reloads.clone(),
        );
        registry.register(
            "policy_reload_errors",
            "Reloads that failed, leaving the running policy in force",
            self.reload_errors.clone(),
        );
        registry.register(
            "discovery_delay_seconds",
            "Time from a cgroup appearing to its scope being in the maps",
            self.discovery_delay.clone(),
        );
        registry.register(
            "cgroup_resyncs",
            "Times cgroup events were lost (the inotify queue overflowed) and the cgroup tree was listed again",
            self.cgroup_resyncs.clone(),
        );
        registry.register(
            "map_full_errors",
            "Scope instances not applied because a map was full (raise its capacity)",
            self.map_full.clone(),
        );
        registry.register(
            "moved_sockets_destroyed",
            "Sockets connected through a forward or alias whose target moved, destroyed so that their applications connect to the new target",
            self.destroyed_on_move.clone(),
        );
    }
}

/// What is read at a scrape.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub status: Status,
    /// Containers followed, by runtime (`unknown` until one describes it).
    pub containers: BTreeMap<String, i64>,
    /// The maps the policy fills: (name, entries, capacity).
    pub maps: Vec<(&'static str, usize, u32)>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

/// A rule of a scope instance: which scope, which instance, what kind of
/// rule (`forward`, `alias`, `grant`, `bind`) and the rule itself.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    scope: String,
    instance: String,
    kind: String,
    rule: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceLabels {
    interface: String,
    direction: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuntimeLabels {
    runtime: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    version: String,
    map_layout: String,
}

/// Counter families filled from one scrape's figures, each registered under
/// its name and help.
struct Counters<L> {
    families: Vec<(&'static str, &'static str, Family<L, Counter>)>,
}

impl<L> Counters<L>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    fn new(names: &[(&'static str, &'static str)]) -> Self {
        Self {
            families: names
                .iter()
                .map(|&(name, help)| (name, help, Family::default()))
                .collect(),
        }
    }

    /// Adds each of `values` (a family's name, its figure) for `labels`.
    fn add(&self, labels: &L, values: &[(&str, u64)]) {
        for &(name, value) in values {
            let (_, _, family) = self
                .families
                .iter()
                .find(|(family, _, _)| *family == name)
                .expect("a family of this set");
            family.get_or_create(labels).inc_by(value);
        }
    }

    fn register(self, registry: &mut Registry) {
        for (name, help, family) in self.families {
            registry.register(name, help, family);
        }
    }
}

/// The metrics text of one scrape.
#[must_use]
pub fn render(events: &Events, snapshot: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("netbpf");
    events.register(&mut registry);
    register_rules(&mut registry, &snapshot.status);
    register_host_services(&mut registry, &snapshot.status);
    register_mss(&mut registry, &snapshot.status);
    register_node(&mut registry, snapshot);
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String does not fail");
    text
}

fn register_rules(registry: &mut Registry, status: &Status) {
    let rules = Counters::<RuleLabels>::new(&[
        (
            "rule_connects",
            "Connections a rule rewrote (forwards, aliases, grants)",
        ),
        ("rule_datagrams", "UDP datagrams a rule rewrote"),
        (
            "rule_local_skips",
            "Connections a forward left alone: the scope serves that port itself",
        ),
        (
            "rule_reverse_lost",
            "Rewrites whose reverse path could not be remembered: replies and getpeername() show the target",
        ),
        ("rule_binds", "Binds a bind remap moved to another port"),
        (
            "rule_unrecorded_binds",
            "Binds of a forwarded port inside its scope the local-binds table could not record (full)",
        ),
    ]);
    for scope in &status.scopes {
        let labels = |kind: &str, rule: String| RuleLabels {
            scope: scope.scope.clone(),
            instance: scope.instance.clone(),
            kind: kind.to_owned(),
            rule,
        };
        for forward in &scope.forwards {
            rules.add(
                &labels("forward", format!("{} -> {}", forward.from, forward.to)),
                &[
                    ("rule_connects", forward.connects),
                    ("rule_datagrams", forward.datagrams),
                    ("rule_local_skips", forward.local_skips),
                    ("rule_reverse_lost", forward.unremembered),
                    ("rule_unrecorded_binds", forward.unrecorded_binds),
                ],
            );
        }
        for alias in &scope.aliases {
            rules.add(
                &labels("alias", format!("{} -> {}", alias.from, alias.to)),
                &[
                    ("rule_connects", alias.connects),
                    ("rule_datagrams", alias.datagrams),
                    ("rule_reverse_lost", alias.unremembered),
                ],
            );
        }
        for grant in &scope.grants {
            rules.add(
                &labels("grant", format!("{} -> {}", grant.dial, grant.service)),
                &[("rule_connects", grant.connects)],
            );
        }
        for bind in &scope.binds {
            rules.add(
                &labels("bind", format!("{} -> {}", bind.port, bind.to)),
                &[("rule_binds", bind.binds)],
            );
        }
    }
    rules.register(registry);
}

fn register_host_services(registry: &mut Registry, status: &Status) {
    let services = Counters::<ServiceLabels>::new(&[
        (
            "host_service_steered",
            "Connections handed to a host service's listener",
        ),
        (
            "host_service_refused",
            "Connections to a host service from a container not granted it",
        ),
        (
            "host_service_down",
            "Connections to a host service while nothing listened for it",
        ),
        (
            "host_service_forged",
            "Packets with a granted address that came through another container's interface or arrived on another interface, dropped",
        ),
        (
            "host_service_borrowed",
            "connect() calls to a host service from a scope not granted it (a process sharing a granted container's network namespace), refused",
        ),
        (
            "host_service_unparsed",
            "Packets toward a host service's address that the grant guard could not parse, dropped",
        ),
    ]);
    for service in &status.host_services {
        services.add(
            &ServiceLabels {
                service: service.name.clone(),
            },
            &[
                ("host_service_steered", service.steered),
                ("host_service_refused", service.refused),
                ("host_service_down", service.down),
                ("host_service_forged", service.forged),
                ("host_service_borrowed", service.borrowed),
                ("host_service_unparsed", service.unparsed),
            ],
        );
    }
    services.register(registry);
    let unowned = Family::<ServiceLabels, Gauge>::default();
    for service in &status.host_services {
        unowned
            .get_or_create(&ServiceLabels {
                service: service.name.clone(),
            })
            .set(i64::from(service.unowned_listener.is_some()));
    }
    registry.register(
        "host_service_unowned_listener",
        "1 while a process that is not the service's owner listens on its address (it gets no connection)",
        unowned,
    );
}

fn register_mss(registry: &mut Registry, status: &Status) {
    let mss = Counters::<InterfaceLabels>::new(&[
        (
            "mss_syn_seen",
            "TCP segments with SYN set an MSS clamp looked at",
        ),
        ("mss_clamped", "SYN segments whose MSS option was lowered"),
        (
            "mss_inserted",
            "SYN segments without an MSS option that got one",
        ),
        (
            "mss_unparsed",
            "Segments an MSS clamp passed untouched because it could not parse them",
        ),
    ]);
    for clamp in &status.mss_clamps {
        for interface in &clamp.attached {
            let counted = &interface.stats;
            mss.add(
                &InterfaceLabels {
                    interface: interface.name.clone(),
                    direction: clamp.direction.to_string(),
                },
                &[
                    ("mss_syn_seen", counted.seen),
                    ("mss_clamped", counted.clamped),
                    ("mss_inserted", counted.inserted),
                    ("mss_unparsed", counted.unparsed),
                ],
            );
        }
    }
    mss.register(registry);
}

fn register_node(registry: &mut Registry, snapshot: &Snapshot) {
    let containers = Family::<RuntimeLabels, Gauge>::default();
    for (runtime, count) in &snapshot.containers {
        containers
            .get_or_create(&RuntimeLabels {
                runtime: runtime.clone(),
            })
            .set(*count);
    }
    registry.register("containers", "Containers followed, by runtime", containers);
    let instances = Family::<StateLabels, Gauge>::default();
    for scope in &snapshot.status.scopes {
        let state = if scope.error.is_none() {
            "applied"
        } else {
            "failed"
        };
        instances
            .get_or_create(&StateLabels {
                state: state.to_owned(),
            })
            .inc();
    }
    registry.register(
        "scope_instances",
        "Scope instances, applied or not (netbpf status says why)",
        instances,
    );
    let (entries, capacity) = (
        Family::<MapLabels, Gauge>::default(),
        Family::<MapLabels, Gauge>::default(),
    );
    for &(map, held, size) in &snapshot.maps {
        let labels = MapLabels {
            map: map.to_owned(),
        };
        entries
            .get_or_create(&labels)
            .set(i64::try_from(held).unwrap_or(i64::MAX));
        capacity.get_or_create(&labels).set(i64::from(size));
    }
    registry.register("map_entries", "Entries a map holds", entries);
    registry.register(
        "map_capacity_entries",
        "Entries a map can hold (its capacity setting)",
        capacity,
    );
    let info = Family::<InfoLabels, Gauge>::default();
    info.get_or_create(&InfoLabels {
        version: snapshot.status.version.clone(),
        map_layout: snapshot.status.map_layout.to_string(),
    })
    .set(1);
    registry.register("build", "The running agent's version and map layout", info);
}

/// Where a scrape asks the agent for the metrics text.
pub type Scrapes = tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<String>>;

/// Serves `GET /metrics` on `listener`, each scrape answered by the agent
/// through `scrapes`; other paths get 404. Each connection is served in a
/// task of its own, so a slow scraper never holds up another.
pub async fn serve(listener: tokio::net::TcpListener, scrapes: Scrapes) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "accepting a metrics scrape failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let scrapes = scrapes.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request| answer(request, scrapes.clone()));
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "a metrics scraper went away");
            }
        });
    }
}

/// The OpenMetrics text format's media type.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn answer(
    request: hyper::Request<hyper::body::Incoming>,
    scrapes: Scrapes,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    let respond = |status: hyper::StatusCode, content_type: &str, body: String| {
        hyper::Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .expect("a response of constant parts builds")
    };
    if request.method() != hyper::Method::GET || request.uri().path() != "/metrics" {
        return Ok(respond(
            hyper::StatusCode::NOT_FOUND,
            "text/plain",
            "netbpf serves GET /metrics only\n".to_owned(),
        ));
    }
    let (reply, text) = tokio::sync::oneshot::channel();
    let text = match scrapes.send(reply).await {
        Ok(()) => text.await.ok(),
        Err(_) => None,
    };
    Ok(match text {
        Some(text) => respond(hyper::StatusCode::OK, OPENMETRICS, text),
        None => respond(
            hyper::StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "the agent is stopping\n".to_owned(),
        ),
    })
}
