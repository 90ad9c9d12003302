//! The names and labels of containers, from the runtimes' own API: the
//! Docker Engine API, which Docker serves and Podman's API service serves
//! too (its compatible endpoints). The containers running are listed when
//! the socket answers, then the event stream says which come and go;
//! nothing is polled. The client is `bollard`, the maintained Rust client
//! of that API.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use bollard::{
    API_DEFAULT_VERSION, Docker,
    models::EventMessageTypeEnum,
    query_parameters::{EventsOptions, ListContainersOptions},
};
use futures_util::StreamExt as _;
use tokio::sync::mpsc;

use super::{Container, Runtime};

/// What a runtime said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// A container exists, with this name and these labels.
    Known(Container),
    /// The container with this id is gone.
    Gone(String),
    /// The container with this id joined or left a network: its addresses
    /// and gateway are not what they were.
    Rewired(String),
    /// The runtime's containers are these, and no others (after the
    /// socket answered, again after it went away and came back).
    All(Runtime, Vec<Container>),
}

/// Follows the runtime serving the Engine API at `socket`, sending what it
/// says to `events`, until `events` is closed. A socket that is not there
/// (yet), or that goes away, is tried again every second.
pub async fn follow(runtime: Runtime, socket: PathBuf, events: mpsc::Sender<EngineEvent>) {
    let mut said_down = false;
    loop {
        match follow_once(runtime, &socket, &events).await {
            Ok(()) => return,
            Err(error) => {
                if !said_down {
                    tracing::info!(%runtime, socket = %socket.display(), %error, "runtime API not answering: trying again every second");
                    said_down = true;
                }
            }
        }
        if events.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One connection: the list, then the events until the stream ends.
async fn follow_once(
    runtime: Runtime,
    socket: &std::path::Path,
    events: &mpsc::Sender<EngineEvent>,
) -> Result<(), bollard::errors::Error> {
    let docker = connect(socket).await?;
    // Subscribed before listing: nothing that starts in between is missed.
    let types = vec!["container".to_owned(), "network".to_owned()];
    let filters = [("type".to_owned(), types)].into();
    let mut stream = docker.events(Some(EventsOptions {
        filters: Some(filters),
        ..EventsOptions::default()
    }));
    let all = list_containers(&docker, runtime).await?;
    tracing::info!(%runtime, socket = %socket.display(), "following the runtime's containers");
    if events.send(EngineEvent::All(runtime, all)).await.is_err() {
        return Ok(());
    }
    while let Some(message) = stream.next().await {
        let message = message?;
        let (Some(action), Some(actor)) = (message.action, message.actor) else {
            continue;
        };
        let Some(id) = actor.id else {
            continue;
        };
        if message.typ == Some(EventMessageTypeEnum::NETWORK) {
            // A network event's actor is the network; the container that
            // joined or left it is an attribute.
            let container = actor
                .attributes
                .and_then(|mut attributes| attributes.remove("container"));
            if let (Some(container), "connect" | "disconnect") = (container, action.as_str())
                && events.send(EngineEvent::Rewired(container)).await.is_err()
            {
                return Ok(());
            }
            continue;
        }
        let event = match action.as_str() {
            // The create event names the container before its cgroup is
            // made: matched by name and labels, its scope is ready when
            // the cgroup appears. Its attributes are its labels, and its
            // image and name.
            "create" | "rename" | "update" => {
                let mut labels = actor.attributes.unwrap_or_default();
                let name = labels.remove("name");
                // Not labels: what Docker adds of its own.
                labels.remove("image");
                labels.remove("oldName");
                EngineEvent::Known(container(runtime, id, name, labels))
            }
            "destroy" | "remove" => EngineEvent::Gone(id),
            _ => continue,
        };
        if events.send(event).await.is_err() {
            return Ok(());
        }
    }
    Err(bollard::errors::Error::IOError {
        err: std::io::Error::other("the event stream ended"),
    })
}

/// The containers of every runtime in `sockets` that answers within
/// `timeout`: what the agent knows before its first update of the maps,
/// so that a restart does not drop the scopes of containers named by
/// their runtime. A runtime that does not answer is said and skipped.
pub async fn list_all(sockets: &[(Runtime, PathBuf)], timeout: Duration) -> Vec<Container> {
    let mut all = Vec::new();
    for (runtime, socket) in sockets {
        if !socket.exists() {
            continue;
        }
        let listed = tokio::time::timeout(timeout, async {
            list_containers(&connect(socket).await?, *runtime).await
        })
        .await;
        match listed {
            Ok(Ok(containers)) => all.extend(containers),
            Ok(Err(error)) => {
                tracing::warn!(%runtime, %error, "listing the runtime's containers at start");
            }
            Err(_) => {
                tracing::warn!(%runtime, "the runtime did not list its containers in {timeout:?} at start");
            }
        }
    }
    all
}

/// A client of the Engine API at `socket`, at the version both speak.
async fn connect(socket: &std::path::Path) -> Result<Docker, bollard::errors::Error> {
    Docker::connect_with_unix(&socket.to_string_lossy(), 30, API_DEFAULT_VERSION)?
        .negotiate_version()
        .await
}

/// Every container the runtime has, with its name and labels.
async fn list_containers(
    docker: &Docker,
    runtime: Runtime,
) -> Result<Vec<Container>, bollard::errors::Error> {
    let listed = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            ..ListContainersOptions::default()
        }))
        .await?;
    Ok(listed
        .into_iter()
        .filter_map(|summary| {
            let name = summary.names?.first()?.trim_start_matches('/').to_owned();
            Some(container(
                runtime,
                summary.id?,
                Some(name),
                summary.labels.unwrap_or_default(),
            ))
        })
        .collect())
}

fn container(
    runtime: Runtime,
    id: String,
    name: Option<String>,
    labels: std::collections::HashMap<String, String>,
) -> Container {
    Container {
        runtime: Some(runtime),
        id,
        name,
        labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
        pod: None,
    }
}
