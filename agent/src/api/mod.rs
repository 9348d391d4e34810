//! The local HTTP/JSON API on a unix socket (mode 0600), used by the CLI.
//!
//! Routes (all under [`types::API_PREFIX`]):
//! - `GET /v1/status`: agent and Podman status
//! - `GET /v1/nodes`: this node and the mesh members it knows of
//! - `GET /metrics`: Prometheus metrics (placements, bids, declines by reason, awards,
//!   re-auctions, peers by state, refused messages by kind)
//! - `GET /v1/workloads/{name}/explain`: why each replica is or is not placed
//! - `GET /v1/workloads/{name}/logs?replica=I&tail=N&since_micros=T&follow=true`: a
//!   replica's output, from whichever node runs it
//! - `GET /v1/workloads`: workloads with container states
//! - `POST /v1/workloads`: run a workload (body: a `WorkloadSpec`)
//! - `DELETE /v1/workloads/{name}`: remove a workload
//! - `GET /v1/events?limit=N`: the newest audit events
//! - `POST /v1/join-tokens`: a one-time join token for one node name (body:
//!   `{"ttl_secs": N, "node": "NAME", "replace": false}`), on an agent that holds the root
//!   key
//! - `POST /v1/revocations`: revoke a node's key (body: `{"node": "NAME"}`), on the agent
//!   that holds the root key

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use parley_negotiation::WorkloadSpec;
use tokio::net::UnixListener;

use parley_store::StoreError;

use crate::node::{Node, NodeError};
use crate::runtime::{ContainerRuntime, RuntimeError};

pub mod client;
pub mod types;

use types::ApiError;

/// Largest request body accepted; a workload spec is a few KiB at most.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The API's routes over a node.
pub fn router<R: ContainerRuntime>(node: Arc<Node<R>>) -> Router {
    Router::new()
        .route("/v1/status", get(status::<R>))
        .route("/v1/nodes", get(nodes::<R>))
        .route("/metrics", get(metrics::<R>))
        .route("/v1/workloads/{name}/explain", get(explain::<R>))
        .route("/v1/workloads/{name}/logs", get(logs::<R>))
        .route("/v1/workloads", get(list::<R>).post(run::<R>))
        .route("/v1/workloads/{name}", delete(remove::<R>))
        .route(
            "/v1/workloads/{name}/scale",
            axum::routing::post(scale::<R>),
        )
        .route(
            "/v1/workloads/{name}/update",
            axum::routing::post(update::<R>),
        )
        .route("/v1/workloads/{name}/undo", axum::routing::post(undo::<R>))
        .route("/v1/events", get(events::<R>))
        .route("/v1/join-tokens", axum::routing::post(join_token::<R>))
        .route("/v1/revocations", axum::routing::post(revocation::<R>))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(node)
}

/// Binds the API socket: creates its directory (0700) if needed, refuses to take over a
/// socket another agent still answers on, replaces a stale one, and restricts the socket
/// to its owner (0600).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        crate::runtime::podman::service::create_private_dir(parent)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "another agent is already listening on {}; stop it or pass a different --api-socket",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// An error answer with a JSON body.
struct Failure(StatusCode, ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, axum::Json(self.1)).into_response()
    }
}

impl From<NodeError> for Failure {
    fn from(error: NodeError) -> Self {
        let (status, kind) = match &error {
            NodeError::InvalidSpec(_) => (StatusCode::BAD_REQUEST, "invalid-spec"),
            NodeError::AlreadyExists { .. } => (StatusCode::CONFLICT, "already-exists"),
            NodeError::NotFound { .. } => (StatusCode::NOT_FOUND, "not-found"),
            NodeError::TooManyReplicas { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "too-many-replicas")
            }
            NodeError::DoesNotFit { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "does-not-fit"),
            NodeError::NeedsMesh { .. } => (StatusCode::CONFLICT, "needs-a-mesh"),
            NodeError::TooFewForStrong { .. } => (StatusCode::CONFLICT, "too-few-agents"),
            NodeError::Unsupported { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "unsupported"),
            NodeError::NothingToUndo { .. } => (StatusCode::CONFLICT, "nothing-to-undo"),
            NodeError::NothingChanged { .. } => (StatusCode::CONFLICT, "nothing-changed"),
            NodeError::MeshStopped => (StatusCode::SERVICE_UNAVAILABLE, "mesh-stopped"),
            NodeError::Denied(_) | NodeError::Remote { denied: true, .. } => {
                (StatusCode::FORBIDDEN, "policy-denied")
            }
            NodeError::Remote { .. } => (StatusCode::BAD_GATEWAY, "node-unavailable"),
            NodeError::ReplicaNotPlaced { .. } => (StatusCode::NOT_FOUND, "not-placed"),
            NodeError::NotIssuer(_) => (StatusCode::CONFLICT, "not-an-issuer"),
            NodeError::Token(crate::enroll::join::TokenError::Ttl(_)) => {
                (StatusCode::BAD_REQUEST, "invalid-ttl")
            }
            NodeError::Token(crate::enroll::join::TokenError::BadName { .. }) => {
                (StatusCode::BAD_REQUEST, "invalid-node-name")
            }
            NodeError::Token(
                crate::enroll::join::TokenError::AlreadyEnrolled { .. }
                | crate::enroll::join::TokenError::OwnName(_),
            ) => (StatusCode::CONFLICT, "already-enrolled"),
            NodeError::Revoke(
                crate::enroll::join::RevokeError::BadName { .. }
                | crate::enroll::join::RevokeError::OwnName(_),
            ) => (StatusCode::BAD_REQUEST, "invalid-node-name"),
            NodeError::Revoke(crate::enroll::join::RevokeError::UnknownKey(_)) => {
                (StatusCode::NOT_FOUND, "unknown-node-key")
            }
            NodeError::Revoke(
                crate::enroll::join::RevokeError::Registry(_)
                | crate::enroll::join::RevokeError::Store(_),
            ) => (StatusCode::INTERNAL_SERVER_ERROR, "store-failed"),
            NodeError::Token(crate::enroll::join::TokenError::Store(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "store-failed")
            }
            NodeError::Runtime(RuntimeError::ImageNotFound { .. }) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "image-not-found")
            }
            NodeError::Runtime(RuntimeError::NameInUse { .. }) => {
                (StatusCode::CONFLICT, "container-name-in-use")
            }
            NodeError::Runtime(RuntimeError::Unavailable { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "podman-unavailable")
            }
            NodeError::Runtime(RuntimeError::Failed { .. }) => {
                (StatusCode::BAD_GATEWAY, "podman-failed")
            }
            NodeError::Store(StoreError::DiskFull { .. }) | NodeError::StoreUnavailable { .. } => {
                (StatusCode::INSUFFICIENT_STORAGE, "store-unavailable")
            }
            NodeError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store-failed"),
        };
        Failure(
            status,
            ApiError {
                kind: kind.to_owned(),
                message: error.to_string(),
            },
        )
    }
}

fn bad_request(message: String) -> Failure {
    Failure(
        StatusCode::BAD_REQUEST,
        ApiError {
            kind: "bad-request".to_owned(),
            message,
        },
    )
}

async fn not_found() -> Failure {
    Failure(
        StatusCode::NOT_FOUND,
        ApiError {
            kind: "no-such-endpoint".to_owned(),
            message: "no such API endpoint; is the CLI newer than the agent?".to_owned(),
        },
    )
}

async fn explain<R: ContainerRuntime>(
    State(node): State<Arc<Node<R>>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, Failure> {
    Ok(axum::Json(node.explain(&name).await?).into_response())
}

async fn scale<R: ContainerRuntime>(
    State(node): State<Arc<Node<R>>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let request: types::ScaleRequest = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("invalid scale request: {e}")))?;
    Ok(axum::Json(node.scale(&name, request.replicas).await?).into_response())
}

async fn update<R: ContainerRuntime>(
    State(node): State<Arc<Node<R>>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let request: types::UpdateRequest = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("invalid update request: {e}")))?;
    Ok(axum::Json(node.update(&name, request).await?).into_response())
}

async fn undo<R: ContainerRuntime>(
    State(node): State<Arc<Node<R>>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, Failure> {
    Ok(axum::Json(node.undo(&name).await?).into_response())
}

async fn logs<R: ContainerRuntime>(
    State(node): State<Arc<Node<R>>>,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<types::LogsQuery>,
) -> Result<Response, Failure> {
    Ok(axum::Json(node.logs(&name, &query).await?).into_response())
}

async fn metrics<R: ContainerRuntime>(State(node): State<Arc<Node<R>>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        node.metrics_text(),
    )
        .into_response()
}

async fn nodes<R: ContainerRuntime>(State(node): State<Arc<Node<R>>>) -> Response {
    axum::Json(node.nodes()).into_response()
}

async fn status<R: ContainerRuntime>(State(node): State<Arc<Node<R>>>) -> Response {
    axum::Json(node.status().await).into_response()
}

async fn list<R: ContainerRuntime>(State(node): State<Arc<Node<R>>>) -> Result<Response, Failure> {
    Ok(axum::Json(node.list().await?).into_response())
}

async fn run<R: ContainerRuntime>(
    State(node): State<Arc<Node<R>>>,
    body: Bytes,
) -> Result<Response, Failure> {
    // Parsed by hand rather than with axum's Json extractor so that every malformed body
    // gets the same JSON error shape as the other failures.
    let spec: WorkloadSpec = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("invalid workload spec: {e}")))?;
    let status = node.run(spec).await?;
    Ok((StatusCode::CREATED, axum::Json(status)).into_response())
}

async fn join_token<R: ContainerRuntime>(
    State(node): State<Arc<Node<R>>>,
    body: Bytes,
) -> Result<Response, Failure> {
    let request: types::JoinTokenRequest = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("invalid join token request: {e}")))?;
    let issued = node
        .create_join_token(request.ttl_secs, &request.node, request.replace)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(issued)).into_response())
}

async fn revocation<R: ContainerRuntime>(
    State(node): State<Arc<Node<R>>>,
    body: Bytes,
) -> Result<Response, Failure> {
    let request: types::RevocationRequest = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("invalid revocation request: {e}")))?;
    let issued = node.revoke_node(&request.node).await?;
    Ok((StatusCode::CREATED, axum::Json(issued)).into_response())
}

async fn remove<R: ContainerRuntime>(
    State(node): State<Arc<Node<R>>>,
    UrlPath(name): UrlPath<String>,
) -> Result<StatusCode, Failure> {
    node.remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /v1/events`.
#[derive(Debug, serde::Deserialize)]
struct EventsQuery {
    /// Newest events to return (default 50, at most 10,000).
    limit: Option<usize>,
}

async fn events<R: ContainerRuntime>(
    State(node): State<Arc<Node<R>>>,
    axum::extract::Query(query): axum::extract::Query<EventsQuery>,
) -> Result<Response, Failure> {
    let limit = query
        .limit
        .unwrap_or(50)
        .min(parley_store::DEFAULT_MAX_EVENTS);
    Ok(axum::Json(node.events(limit)?).into_response())
}
