//! The REST API on the API port: cluster administration and health, accounts and login.
//! Every error is `{"message": ...}`; bad input never yields a 500 and never changes state.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::extract::FromRequest;
use axum::extract::Path;
use axum::extract::Request;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::delete;
use axum::routing::get;
use axum::routing::post;
use axum::Json;
use axum::Router;
use mysocket_api::types::*;
use mysocket_raft_store::Command;
use mysocket_raft_store::Rejection;
use mysocket_raft_store::Response as RegResponse;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use uuid::Uuid;

use crate::auth;
use crate::cluster::ClusterError;
use crate::cluster::MembershipChange;
use crate::cluster::NodeRef;
use crate::validate;

/// Largest request body accepted (413 beyond it).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest request head accepted (431 beyond it).
const MAX_HEAD: usize = 64 * 1024;
/// Most API connections open at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 10_000;

/// Serves the REST API (HTTP/1.1) until `stop`, then lets the requests in flight finish. A
/// request head must come whole within the header timeout and fit in [`MAX_HEAD`], so a
/// client that says nothing, or sends a head without end, does not keep its connection.
pub async fn serve(node: NodeRef, listener: tokio::net::TcpListener, stop: CancellationToken) {
    let app = router(node);
    let open = TaskTracker::new();
    crate::accept::serve(listener, MAX_CONNECTIONS, crate::metrics::Listener::Api, stop.clone(), |stream, _peer| {
        let (app, stop, open) = (app.clone(), stop.clone(), open.token());
        async move {
            let svc = hyper::service::service_fn(move |req| app.clone().oneshot(req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(crate::proxy::HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(open);
        }
    })
    .await;
    open.close();
    open.wait().await;
}

/// An error answer: status and `{"message"}`.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub fn bad(msg: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, msg.into())
    }
    pub fn unauthorized() -> ApiError {
        ApiError(StatusCode::UNAUTHORIZED, "missing, invalid or expired token; log in again".into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { message: self.1 })).into_response()
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> ApiError {
        match e {
            ClusterError::Membership(m) => ApiError(StatusCode::CONFLICT, m),
            e => ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> ApiError {
        let status = match &r {
            Rejection::Conflict(_) => StatusCode::CONFLICT,
            Rejection::NotFound(_) => StatusCode::NOT_FOUND,
            Rejection::Limit(_) => StatusCode::FORBIDDEN,
            Rejection::Invalid(_) => StatusCode::BAD_REQUEST,
            Rejection::Stale(_) => StatusCode::CONFLICT,
        };
        ApiError(status, r.to_string())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body, decoded with clear errors: 413 when too large, 400 when malformed or of the
/// wrong shape. The content type is not required (the original client is lax about it);
/// unknown fields are ignored.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e: BytesRejection| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is larger than {MAX_BODY} bytes"))
            } else {
                ApiError::bad(format!("cannot read request body: {e}"))
            }
        })?;
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) { Bytes::from_static(b"{}") } else { bytes };
        serde_json::from_slice(&bytes).map(Body).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
    }
}

pub fn router(node: NodeRef) -> Router {
    Router::new()
        .route("/", get(crate::dashboard::page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/cluster", get(cluster))
        .route("/cluster/digest", get(digest))
        .route("/cluster/ca.pem", get(ca_pem))
        .route("/cluster/nodes", post(add_node))
        .route("/cluster/nodes/{id}", delete(remove_node))
        .route("/user", post(create_user))
        .route("/user/{user_id}", get(get_user))
        .route("/login", post(login))
        .route("/login/refresh", post(refresh))
        .route("/openapi.json", get(|| async { Json(crate::openapi::document()) }))
        .merge(crate::sockets::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(node)
}

#[utoipa::path(get, path = "/healthz", tag = "cluster", responses((status = 200, body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into(), reason: None })
}

#[utoipa::path(get, path = "/readyz", tag = "cluster", responses((status = 200, body = Health), (status = 503, body = Health)))]
pub(crate) async fn readyz(State(node): State<NodeRef>) -> Response {
    let reason = if node.leader().is_none() {
        Some("no leader")
    } else if !node.is_member() {
        Some("this node is not a member of the cluster")
    } else if node.read(|r| r.config().is_none()) {
        Some("cluster not bootstrapped yet")
    } else {
        None
    };
    match reason {
        None => Json(Health { status: "ready".into(), reason: None }).into_response(),
        Some(r) => (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status: "unready".into(), reason: Some(r.into()) }))
            .into_response(),
    }
}

/// Builds the `GET /cluster` view: membership and leader from this node's Raft metrics,
/// addresses from the registry, each node's applied index asked of the node itself.
pub async fn cluster_view(node: &NodeRef) -> ClusterView {
    let m = node.metrics();
    let membership = m.membership_config.membership().clone();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let members: Vec<(u64, String)> = membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
    let asks = members.iter().map(|(id, addr)| {
        let node = node.clone();
        let (id, addr) = (*id, addr.clone());
        async move {
            if id == node.id {
                return node.metrics().last_applied.map(|l| l.index);
            }
            let mut c = node.peers.client(&addr).ok()?;
            let r = tokio::time::timeout(Duration::from_millis(500), c.node_status(mysocket_api::internal::Empty {}))
                .await
                .ok()?
                .ok()?;
            Some(r.get_ref().last_applied)
        }
    });
    let applied = futures::future::join_all(asks).await;
    let nodes = node.read(|reg| {
        members
            .iter()
            .zip(applied)
            .map(|((id, addr), last_applied)| NodeView {
                id: *id,
                api_addr: reg.node(*id).map(|r| r.api_addr.clone()).unwrap_or_default(),
                raft_addr: addr.clone(),
                ssh_addr: reg.node(*id).map(|r| r.ssh_addr.clone()).unwrap_or_default(),
                voter: voters.contains(id),
                last_applied,
                tunnels: reg.sessions_on(*id),
            })
            .collect()
    });
    let ssh_host_key = node
        .read(|r| r.config().map(|c| c.ssh_host_key.clone()))
        .and_then(|pem| russh::keys::PrivateKey::from_openssh(&pem).ok())
        .and_then(|k| k.public_key().to_openssh().ok());
    ClusterView { leader: m.current_leader, term: m.current_term, nodes, ssh_host_key }
}

#[utoipa::path(get, path = "/metrics", tag = "cluster", responses((status = 200, description = "Prometheus metrics (text format 0.0.4)", content_type = "text/plain")))]
pub(crate) async fn metrics(State(node): State<NodeRef>) -> Response {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], crate::metrics::render(&node)).into_response()
}

#[utoipa::path(get, path = "/cluster", tag = "cluster", responses((status = 200, body = ClusterView)))]
pub(crate) async fn cluster(State(node): State<NodeRef>) -> Json<ClusterView> {
    Json(cluster_view(&node).await)
}

#[utoipa::path(get, path = "/cluster/digest", tag = "cluster", responses((status = 200, body = DigestView)))]
pub(crate) async fn digest(State(node): State<NodeRef>) -> Json<DigestView> {
    // Metrics and registry are read under one lock so the digest belongs to the index.
    let m = node.metrics();
    let (last_applied, digest, (accounts, sockets, tunnels, sessions)) =
        node.read(|r| (r.applied_index(), r.digest(), r.counts()));
    Json(DigestView {
        node_id: node.id,
        last_applied,
        digest,
        accounts,
        sockets,
        tunnels,
        sessions,
        snapshots_installed: node.state_machine.snapshots_installed(),
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
    })
}

#[utoipa::path(get, path = "/cluster/ca.pem", tag = "cluster", responses((status = 200, description = "The cluster CA certificate (PEM), for curl --cacert", content_type = "application/x-pem-file"), (status = 503, body = ErrorBody)))]
pub(crate) async fn ca_pem(State(node): State<NodeRef>) -> ApiResult<Response> {
    let ca = node
        .read(|r| r.config().map(|c| c.tls_ca_cert.clone()))
        .ok_or_else(|| ApiError(StatusCode::SERVICE_UNAVAILABLE, "cluster not bootstrapped yet".into()))?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-pem-file")], ca).into_response())
}

#[utoipa::path(post, path = "/cluster/nodes", tag = "cluster", request_body = AddNode, responses((status = 200, body = ClusterView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn add_node(State(node): State<NodeRef>, Body(req): Body<AddNode>) -> ApiResult<Json<ClusterView>> {
    if req.id == 0 {
        return Err(ApiError::bad("node ids are positive integers"));
    }
    crate::config::parse_initial_cluster(&format!("{}={}", req.id, req.raft_addr))
        .map_err(|e| ApiError::bad(format!("raft_addr: {}", e.0)))?;
    node.change_membership(MembershipChange::Add { id: req.id, raft_addr: req.raft_addr }).await?;
    Ok(Json(cluster_view(&node).await))
}

#[utoipa::path(delete, path = "/cluster/nodes/{id}", tag = "cluster", params(("id" = u64, Path)), responses((status = 204), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn remove_node(State(node): State<NodeRef>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let id: u64 = id.parse().map_err(|_| ApiError::bad("node id must be a positive integer"))?;
    node.change_membership(MembershipChange::Remove { id }).await?;
    // Retire the id for good and release whatever tunnels the node held.
    node.write(Command::RetireNode { node_id: id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn user_json(a: &mysocket_raft_store::Account) -> User {
    User {
        user_id: a.user_id.to_string(),
        name: a.name.clone(),
        email: a.email.clone(),
        user_name: a.user_name.clone(),
        sshkey: a.sshkey.clone(),
    }
}

#[utoipa::path(post, path = "/user", tag = "account", request_body = UserCreate, responses((status = 200, body = User), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(crate) async fn create_user(State(node): State<NodeRef>, Body(req): Body<UserCreate>) -> ApiResult<Json<User>> {
    let name = validate::name(&req.name)?;
    let email = validate::email(&req.email)?;
    validate::password(&req.password)?;
    let sshkey = validate::ssh_public_key(&req.sshkey)?;
    // Checked up front for a quick answer; apply checks again, atomically.
    node.linearizable().await?;
    if node.read(|r| r.account_by_email(&email).is_some()) {
        return Err(ApiError(StatusCode::CONFLICT, format!("an account with email {email} already exists")));
    }
    let password = req.password.clone();
    let password_hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let cmd = Command::CreateAccount { user_id: Uuid::new_v4(), name, email, password_hash, sshkey };
    match node.write(cmd).await? {
        RegResponse::Account(a) => Ok(Json(user_json(&a))),
        RegResponse::Rejected(r) => Err(r.into()),
        other => Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("unexpected registry answer {other}"))),
    }
}

fn token_key(node: &NodeRef) -> ApiResult<String> {
    node.read(|r| r.config().map(|c| c.token_key.clone()))
        .ok_or_else(|| ApiError(StatusCode::SERVICE_UNAVAILABLE, "cluster not bootstrapped yet".into()))
}

fn now_secs() -> u64 {
    crate::cluster::now_ms() / 1000
}

/// The account id a request's token proves, from `x-access-token` or `Authorization: Bearer`.
pub fn authenticate(node: &NodeRef, headers: &HeaderMap) -> ApiResult<Uuid> {
    let token = headers
        .get("x-access-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .ok_or_else(ApiError::unauthorized)?;
    let claims = auth::verify_token(&token_key(node)?, token.trim()).ok_or_else(ApiError::unauthorized)?;
    claims.user_id.parse::<Uuid>().map_err(|_| ApiError::unauthorized())
}

#[utoipa::path(post, path = "/login", tag = "account", request_body = Login, responses((status = 200, body = TokenReply), (status = 401, body = ErrorBody)))]
pub(crate) async fn login(State(node): State<NodeRef>, Body(req): Body<Login>) -> ApiResult<Json<TokenReply>> {
    let wrong = || ApiError(StatusCode::UNAUTHORIZED, "wrong email or password".into());
    node.linearizable().await?;
    let acct = node.read(|r| r.account_by_email(&req.email).cloned()).ok_or_else(wrong)?;
    let (password, hash) = (req.password.clone(), acct.password_hash.clone());
    let ok = tokio::task::spawn_blocking(move || auth::verify_password(&password, &hash)).await.unwrap_or(false);
    if !ok {
        return Err(wrong());
    }
    let token = auth::issue_token(&token_key(&node)?, &acct.user_id.to_string(), node.config.token_ttl, now_secs());
    Ok(Json(TokenReply { token }))
}

#[utoipa::path(post, path = "/login/refresh", tag = "account", responses((status = 200, body = TokenReply), (status = 401, body = ErrorBody)), security(("token" = [])))]
pub(crate) async fn refresh(State(node): State<NodeRef>, headers: HeaderMap) -> ApiResult<Json<TokenReply>> {
    let user_id = authenticate(&node, &headers)?;
    node.linearizable().await?;
    if node.read(|r| r.account(&user_id).is_none()) {
        return Err(ApiError::unauthorized());
    }
    let token = auth::issue_token(&token_key(&node)?, &user_id.to_string(), node.config.token_ttl, now_secs());
    Ok(Json(TokenReply { token }))
}

#[utoipa::path(get, path = "/user/{user_id}", tag = "account", params(("user_id" = String, Path)), responses((status = 200, body = User), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("token" = [])))]
pub(crate) async fn get_user(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<User>> {
    let me = authenticate(&node, &headers)?;
    // Another account's id answers exactly like a missing one.
    if id.parse::<Uuid>().ok() != Some(me) {
        return Err(ApiError::not_found("user not found"));
    }
    node.linearizable().await?;
    node.read(|r| r.account(&me).map(user_json)).map(Json).ok_or_else(|| ApiError::not_found("user not found"))
}
