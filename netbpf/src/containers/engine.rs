//! The names and labels of containers, from the runtimes' own API: the
//! Docker Engine API, which Docker serves and Podman's API service serves
//! too (its compatible endpoints). The containers running are listed when
//! the socket answers, then the event stream says which come and go;
//! nothing is polled. The client is `bollard`, the maintained Rust client
//! of that API.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bollard::{
    API_DEFAULT_VERSION, ClientVersion, Docker,
    models::EventMessageTypeEnum,
    query_parameters::{EventsOptions, ListContainersOptions},
};
use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::Empty;
use hyper::{
    Request, Uri,
    header::{self, HeaderValue},
};
use hyper_util::rt::TokioIo;
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
    socket: &Path,
    events: &mpsc::Sender<EngineEvent>,
) -> Result<(), bollard::errors::Error> {
    let docker = connect(socket).await?;
    // The events from a second before the list on (the stream is only
    // requested when first read, after the list): a container that comes
    // or goes in between is in one or the other, and one in both is said
    // twice, which changes nothing.
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |now| now.as_secs())
        .saturating_sub(1);
    let all = list_containers(&docker, runtime).await?;
    let types = vec!["container".to_owned(), "network".to_owned()];
    let filters = [("type".to_owned(), types)].into();
    let mut stream = docker.events(Some(EventsOptions {
        since: Some(since.to_string()),
        filters: Some(filters),
        ..EventsOptions::default()
    }));
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
/// their runtime. A runtime that does not answer is said and skipped: at
/// boot the agent starts before the runtimes (its unit is ordered so), and
/// follows each one once it answers.
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
                tracing::info!(%runtime, %error, "the runtime's containers are not listed at start: followed once it answers");
            }
            Err(_) => {
                tracing::info!(%runtime, "the runtime did not list its containers in {timeout:?} at start: followed once it answers");
            }
        }
    }
    all
}

/// How long one request to a runtime may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of the Engine API at `socket`, at the version both speak: the
/// lower of bollard's and the one the runtime's `/_ping` names in its
/// `API-Version` header, as the Docker CLI negotiates. Not bollard's own
/// negotiation, which asks `/version`: Podman answers that only after
/// asking the package manager which package each of its binaries came
/// from (a second on a node, a minute in an emulated VM).
async fn connect(socket: &Path) -> Result<Docker, bollard::errors::Error> {
    let spoken = tokio::time::timeout(REQUEST_TIMEOUT, ping_api_version(socket))
        .await
        .map_err(|_| bollard::errors::Error::RequestTimeoutError)??;
    let version = if spoken < *API_DEFAULT_VERSION {
        spoken
    } else {
        *API_DEFAULT_VERSION
    };
    Docker::connect_with_unix(
        &socket.to_string_lossy(),
        REQUEST_TIMEOUT.as_secs(),
        &version,
    )
}

/// The API version the runtime serving `socket` names in the
/// `API-Version` header of its `/_ping` answer.
async fn ping_api_version(socket: &Path) -> Result<ClientVersion, bollard::errors::Error> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Drives the connection; it ends when `sender` is dropped.
    tokio::spawn(connection);
    let mut request = Request::new(Empty::<Bytes>::new());
    *request.uri_mut() = Uri::from_static("/_ping");
    request
        .headers_mut()
        .insert(header::HOST, HeaderValue::from_static("localhost"));
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        return Err(bollard::errors::Error::DockerResponseServerError {
            status_code: response.status().as_u16(),
            message: "the runtime's /_ping failed".to_owned(),
        });
    }
    response
        .headers()
        .get("api-version")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_api_version)
        .ok_or(bollard::errors::Error::APIVersionParseError {})
}

/// `1.41` as the version it names.
fn parse_api_version(text: &str) -> Option<ClientVersion> {
    let (major, minor) = text.trim().split_once('.')?;
    Some(ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_are_read_as_the_runtimes_write_them() {
        let version = |major_version, minor_version| ClientVersion {
            major_version,
            minor_version,
        };
        assert_eq!(parse_api_version("1.41"), Some(version(1, 41)));
        assert_eq!(parse_api_version("1.51 "), Some(version(1, 51)));
        for junk in ["", "1", "1.", "one.two", "1.41.0"] {
            assert_eq!(parse_api_version(junk), None, "{junk:?}");
        }
    }
}
