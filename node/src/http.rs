//! The REST API on the API port: cluster administration and health, accounts and login.
//! Every error is `{"message": ...}`; bad input never yields a 500 and never changes state.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ConnectInfo;
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
use mysocket_api::internal::Empty;
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
/// Time a request body gets to arrive whole once its head has (408 beyond it).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (431 beyond it).
const MAX_HEAD: usize = 64 * 1024;
/// Most API connections open at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 10_000;

/// Serves the REST API (HTTP/1.1, over TLS when `--api-tls` asks for it, with the acceptor
/// `tls` is filled with) until `stop`, then lets the requests in flight finish. A request head
/// (and a TLS handshake) must come whole within the header timeout and the head fit in
/// [`MAX_HEAD`], so a client that says nothing, or sends a head without end, does not keep
/// its connection.
pub async fn serve(node: NodeRef, listener: tokio::net::TcpListener, tls: crate::tls::Slot, stop: CancellationToken) {
    let https = !matches!(node.config.api_tls, crate::config::ApiTls::Off);
    let per_source = node.config.max_connections_per_source;
    let app = router(node);
    let open = TaskTracker::new();
    crate::accept::serve(
        listener,
        MAX_CONNECTIONS,
        per_source,
        crate::metrics::Listener::Api,
        stop.clone(),
        |stream, peer| {
            let (app, stop, open) = (app.clone(), stop.clone(), open.token());
            let acceptor = if https { tls.read().expect("tls slot").clone() } else { None };
            async move {
                match (https, acceptor) {
                    (false, _) => serve_connection(app, stream, peer, stop).await,
                    // Not bootstrapped yet (no certificate from the cluster CA): nothing to offer.
                    (true, None) => {}
                    (true, Some(a)) => {
                        if let Ok(Ok(s)) = tokio::time::timeout(crate::proxy::HEADER_TIMEOUT, a.accept(stream)).await {
                            serve_connection(app, s, peer, stop).await;
                        }
                    }
                }
                drop(open);
            }
        },
    )
    .await;
    open.close();
    open.wait().await;
}

/// One API connection (HTTP/1.1, plain or after TLS) until it ends, or until `stop`, after
/// which the request in flight finishes.
async fn serve_connection<I>(app: Router, io: I, peer: std::net::SocketAddr, stop: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The caller's address, for the rate limits kept per source.
    let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(crate::proxy::HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// An error answer: status and `{"message"}`, with `Retry-After` when the caller should come
/// back later.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds after which the same call may succeed (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: String) -> ApiError {
        ApiError { status, message, retry_after: None }
    }
    /// 429: the caller went past a rate limit; it may try again after `retry_after` seconds.
    pub fn too_many(message: impl Into<String>, retry_after: u64) -> ApiError {
        ApiError {
            retry_after: Some(retry_after.max(1)),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, message.into())
        }
    }
    /// 503: the node is busy; try again shortly.
    pub fn busy(message: impl Into<String>) -> ApiError {
        ApiError { retry_after: Some(1), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message.into()) }
    }
    pub fn bad(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, msg.into())
    }
    pub fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "missing, invalid or expired token; log in again".into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(ErrorBody { message: self.message })).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        r
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> ApiError {
        match e {
            ClusterError::Membership(m) => ApiError::new(StatusCode::CONFLICT, m),
            e => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
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
        ApiError::new(status, r.to_string())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body, decoded with clear errors: 413 when too large, 408 when it does not arrive
/// within [`BODY_TIMEOUT`], 400 when malformed or of the wrong shape. The content type is not
/// required (the original client is lax about it); unknown fields are ignored.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let read = tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(req, state)).await.map_err(|_| {
            crate::metrics::get().refused(crate::metrics::Refusal::SlowBody);
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
            )
        })?;
        let bytes = read.map_err(|e: BytesRejection| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is larger than {MAX_BODY} bytes"))
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
        .route("/operator", get(crate::dashboard::operator_page))
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

/// How long the members' applied indexes (one RPC to each) are reused for `GET /cluster`.
const APPLIED_TTL: Duration = Duration::from_secs(1);

/// Each member's applied index, asked of the member itself, at most once per [`APPLIED_TTL`]
/// however often it is wanted: callers while an ask is on its way wait for its answer.
#[derive(Default)]
pub struct AppliedCache(tokio::sync::Mutex<Option<(std::time::Instant, Applied)>>);

/// Each member's applied index; `None` when it did not answer.
type Applied = BTreeMap<u64, Option<u64>>;

async fn applied_indexes(node: &NodeRef, members: &[(u64, String)]) -> Applied {
    let mut cached = node.applied_cache.0.lock().await;
    if let Some((at, map)) = &*cached {
        if at.elapsed() < APPLIED_TTL && members.iter().all(|(id, _)| map.contains_key(id)) {
            return map.clone();
        }
    }
    let asks = members.iter().map(|(id, addr)| {
        let node = node.clone();
        let (id, addr) = (*id, addr.clone());
        async move {
            if id == node.id {
                return (id, node.metrics().last_applied.map(|l| l.index));
            }
            let ask = async {
                let mut c = node.peers.client(&addr).ok()?;
                let r = tokio::time::timeout(Duration::from_millis(500), c.node_status(Empty {})).await.ok()?.ok()?;
                Some(r.get_ref().last_applied)
            };
            (id, ask.await)
        }
    });
    let map: Applied = futures::future::join_all(asks).await.into_iter().collect();
    *cached = Some((std::time::Instant::now(), map.clone()));
    map
}

/// Builds the `GET /cluster` view: membership and leader from this node's Raft metrics,
/// addresses from the registry. An operator also gets each node's internal address, role,
/// tunnels and applied index (asked of the node itself, through [`applied_indexes`]); anyone
/// else only what clients need, which costs no call to another node.
pub async fn cluster_view(node: &NodeRef, who: Caller) -> ClusterView {
    let m = node.metrics();
    let membership = m.membership_config.membership().clone();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let members: Vec<(u64, String)> = membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
    let operator = who == Caller::Operator;
    let applied = if operator { applied_indexes(node, &members).await } else { BTreeMap::new() };
    let nodes = node.read(|reg| {
        members
            .iter()
            .map(|(id, addr)| {
                let public = NodeView {
                    id: *id,
                    api_addr: reg.node(*id).map(|r| r.api_addr.clone()).unwrap_or_default(),
                    ssh_addr: reg.node(*id).map(|r| r.ssh_addr.clone()).unwrap_or_default(),
                    ..NodeView::default()
                };
                if !operator {
                    return public;
                }
                NodeView {
                    raft_addr: Some(addr.clone()),
                    voter: Some(voters.contains(id)),
                    last_applied: applied.get(id).copied().flatten(),
                    tunnels: Some(reg.sessions_on(*id)),
                    ..public
                }
            })
            .collect()
    });
    let ssh_host_key = node
        .read(|r| r.config().map(|c| c.ssh_host_key.clone()))
        .and_then(|pem| russh::keys::PrivateKey::from_openssh(&pem).ok())
        .and_then(|k| k.public_key().to_openssh().ok());
    ClusterView { leader: m.current_leader, term: m.current_term, nodes, ssh_host_key }
}

#[utoipa::path(get, path = "/metrics", tag = "cluster", responses((status = 200, description = "Prometheus metrics (text format 0.0.4)", content_type = "text/plain"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)), security(("operator" = [])))]
pub(crate) async fn metrics(_: Operator, State(node): State<NodeRef>) -> Response {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], crate::metrics::render(&node)).into_response()
}

#[utoipa::path(get, path = "/cluster", tag = "cluster", responses((status = 200, body = ClusterView)))]
pub(crate) async fn cluster(State(node): State<NodeRef>, headers: HeaderMap) -> Json<ClusterView> {
    let who = caller(&node, &headers).unwrap_or(Caller::Anonymous);
    Json(cluster_view(&node, who).await)
}

#[utoipa::path(get, path = "/cluster/digest", tag = "cluster", responses((status = 200, body = DigestView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)), security(("operator" = [])))]
pub(crate) async fn digest(_: Operator, State(node): State<NodeRef>) -> Json<DigestView> {
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
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cluster not bootstrapped yet".into()))?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-pem-file")], ca).into_response())
}

#[utoipa::path(post, path = "/cluster/nodes", tag = "cluster", request_body = AddNode, responses((status = 200, body = ClusterView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)), security(("operator" = [])))]
pub(crate) async fn add_node(
    _: Operator,
    State(node): State<NodeRef>,
    Body(req): Body<AddNode>,
) -> ApiResult<Json<ClusterView>> {
    if req.id == 0 {
        return Err(ApiError::bad("node ids are positive integers"));
    }
    crate::config::parse_initial_cluster(&format!("{}={}", req.id, req.raft_addr))
        .map_err(|e| ApiError::bad(format!("raft_addr: {}", e.0)))?;
    node.change_membership(MembershipChange::Add { id: req.id, raft_addr: req.raft_addr }).await?;
    Ok(Json(cluster_view(&node, Caller::Operator).await))
}

#[utoipa::path(delete, path = "/cluster/nodes/{id}", tag = "cluster", params(("id" = u64, Path)), responses((status = 204), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)), security(("operator" = [])))]
pub(crate) async fn remove_node(
    _: Operator,
    State(node): State<NodeRef>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
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

#[utoipa::path(post, path = "/user", tag = "account", request_body = UserCreate, responses((status = 200, body = User), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 408, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)), security((), ("operator" = [])))]
pub(crate) async fn create_user(
    State(node): State<NodeRef>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Body(req): Body<UserCreate>,
) -> ApiResult<Json<User>> {
    let operator = caller(&node, &headers).ok() == Some(Caller::Operator);
    if !operator {
        node.limits.signup(peer.ip())?;
    }
    if node.config.signup == crate::config::Signup::Closed && !operator {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "sign-up is closed on this cluster: an operator creates accounts (mysocketctl account create with the \
             operator credential)"
                .into(),
        ));
    }
    let name = validate::name(&req.name)?;
    let email = validate::email(&req.email)?;
    validate::password(&req.password)?;
    let sshkey = validate::ssh_public_key(&req.sshkey)?;
    // The password is hashed before the email is looked up, so a taken email is not answered
    // sooner than a free one.
    let password = req.password.clone();
    let password_hash = node
        .limits
        .hash(move || auth::hash_password(&password))
        .await?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let max_accounts = Some(node.config.max_accounts);
    let id = request_id(&headers, &format!("user/{}", email.to_lowercase()))?;
    let user_id = Uuid::new_v4();
    // What a new account's answer looks like, given to a stranger whose email is taken (the
    // registry refused it, after the same hash and the same Raft round trip), so sign-up does
    // not tell whether an email has an account. Nothing is created; the owner's account stays
    // as it was. An operator is told the truth (409).
    let unchanged = User {
        user_id: user_id.to_string(),
        name: name.clone(),
        email: email.clone(),
        user_name: user_id.simple().to_string(),
        sshkey: sshkey.clone(),
    };
    let cmd = Command::CreateAccount { user_id, name, email, password_hash, sshkey, max_accounts };
    match node.write_as(cmd, id).await? {
        RegResponse::Account(a) => Ok(Json(user_json(&a))),
        RegResponse::Rejected(Rejection::Conflict(_)) if !operator => Ok(Json(unchanged)),
        RegResponse::Rejected(r) => Err(r.into()),
        other => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("unexpected registry answer {other}"))),
    }
}

fn token_key(node: &NodeRef) -> ApiResult<String> {
    node.read(|r| r.config().map(|c| c.token_key.clone()))
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cluster not bootstrapped yet".into()))
}

fn now_secs() -> u64 {
    crate::cluster::now_ms() / 1000
}

/// The credential a request carries: `x-access-token`, `Authorization: Bearer`, or the
/// password of `Authorization: Basic` (how a browser sends the operator token to the
/// dashboard).
fn credential(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = headers.get("x-access-token").and_then(|v| v.to_str().ok()) {
        return Some(t.trim().to_string());
    }
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())?;
    if let Some(t) = auth.strip_prefix("Bearer ") {
        return Some(t.trim().to_string());
    }
    use base64::Engine;
    let b64 = auth.strip_prefix("Basic ")?;
    let pair = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let pair = String::from_utf8(pair).ok()?;
    pair.split_once(':').map(|(_, password)| password.to_string())
}

/// Who a request comes from, as its credential proves (invariant I8: three credentials, never
/// interchangeable; the cluster credential is never accepted here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No credential.
    Anonymous,
    /// A valid token of this account.
    Account(Uuid),
    /// The operator credential.
    Operator,
}

/// The caller a request's credential proves; a credential that proves nothing is 401.
pub fn caller(node: &NodeRef, headers: &HeaderMap) -> ApiResult<Caller> {
    let Some(token) = credential(headers) else { return Ok(Caller::Anonymous) };
    let operator = node.read(|r| r.config().map(|c| auth::is_operator_token(&c.operator_token_hash, &token)));
    if operator == Some(true) {
        return Ok(Caller::Operator);
    }
    let claims = auth::verify_token(&token_key(node)?, &token).ok_or_else(ApiError::unauthorized)?;
    claims.user_id.parse::<Uuid>().map(Caller::Account).map_err(|_| ApiError::unauthorized())
}

/// The account id a request's token proves, from `x-access-token` or `Authorization: Bearer`.
pub fn authenticate(node: &NodeRef, headers: &HeaderMap) -> ApiResult<Uuid> {
    match caller(node, headers)? {
        Caller::Account(id) => Ok(id),
        Caller::Anonymous => Err(ApiError::unauthorized()),
        Caller::Operator => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this call needs an account's token (log in); the operator credential owns no sockets".into(),
        )),
    }
}

/// Refuses anyone but an operator: 401 without a valid credential, 403 for an account.
pub fn require_operator(node: &NodeRef, headers: &HeaderMap) -> ApiResult<()> {
    match caller(node, headers) {
        Ok(Caller::Operator) => Ok(()),
        Ok(Caller::Account(_)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this call needs the operator credential; an account's token cannot make it".into(),
        )),
        Ok(Caller::Anonymous) | Err(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this call needs the operator credential (mysocketctl: --operator-token-file or MYSOCKET_OPERATOR_TOKEN)"
                .into(),
        )),
    }
}

/// The request id of a change: the client's `Idempotency-Key` (1 to 128 visible characters)
/// under `scope` (the account, or the email of a sign-up), so a key repeats only the caller's
/// own change; none without a key. A repeat, through any node, gets the first answer.
pub fn request_id(headers: &HeaderMap, scope: &str) -> ApiResult<Option<String>> {
    let Some(v) = headers.get(mysocket_api::client::IDEMPOTENCY_KEY) else { return Ok(None) };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(format!("{scope}/{k}")))
        }
        _ => Err(ApiError::bad("Idempotency-Key: 1 to 128 visible ASCII characters")),
    }
}

/// An extractor that lets only an operator through (see [`require_operator`]); it runs before
/// the body is read, so a stranger's call is refused before any of its input is looked at.
pub struct Operator;

impl axum::extract::FromRequestParts<NodeRef> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, node: &NodeRef) -> Result<Self, ApiError> {
        require_operator(node, &parts.headers).map(|()| Operator)
    }
}

/// An argon2id hash of a password nobody has, verified against when a login names an email
/// that has no account, so such a login takes as long as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| auth::hash_password(&auth::new_operator_token()).unwrap_or_default())
}

#[utoipa::path(post, path = "/login", tag = "account", request_body = Login, responses((status = 200, body = TokenReply), (status = 401, body = ErrorBody), (status = 408, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn login(
    State(node): State<NodeRef>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Body(req): Body<Login>,
) -> ApiResult<Json<TokenReply>> {
    node.limits.login(peer.ip(), &req.email)?;
    let wrong = || ApiError::new(StatusCode::UNAUTHORIZED, "wrong email or password".into());
    node.linearizable().await?;
    let acct = node.read(|r| r.account_by_email(&req.email).cloned());
    // An unknown email costs the same argon2 verification as a wrong password, so the answer's
    // time does not tell whether the email has an account.
    let (password, hash) = (req.password.clone(), acct.as_ref().map(|a| a.password_hash.clone()));
    let ok = node
        .limits
        .hash(move || match &hash {
            Some(h) => auth::verify_password(&password, h),
            None => auth::verify_password(&password, decoy_hash()),
        })
        .await?;
    let Some(acct) = acct.filter(|_| ok) else {
        node.limits.login_failed(&req.email);
        return Err(wrong());
    };
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
