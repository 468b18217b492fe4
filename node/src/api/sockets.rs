//! Sockets and tunnels over REST, compatible with the original mysocket.io API. Every object
//! is scoped to the token's account: another account's ids answer 404, exactly like missing
//! ones.

use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;
use axum::Router;
use mysocket_api::types::ErrorBody;
use mysocket_api::types::RecentLog;
use mysocket_api::types::Socket as SocketJson;
use mysocket_api::types::SocketCreate;
use mysocket_api::types::SocketUpdate;
use mysocket_api::types::Tunnel as TunnelJson;
use mysocket_api::types::TunnelHolder;
use mysocket_api::types::TunnelLog;
use mysocket_raft_store::Command;
use mysocket_raft_store::NewSocket;
use mysocket_raft_store::NewTunnel;
use mysocket_raft_store::Registry;
use mysocket_raft_store::Response as RegResponse;
use mysocket_raft_store::SocketLimits;
use mysocket_raft_store::SocketType;
use mysocket_raft_store::SocketView;
use rand::seq::SliceRandom;
use rand::Rng;
use uuid::Uuid;

use crate::api::authenticate;
use crate::api::request_id;
use crate::api::validate;
use crate::api::ApiError;
use crate::api::ApiResult;
use crate::api::Body;
use crate::control::NodeRef;

const ADJECTIVES: &[&str] = &[
    "able", "amber", "ancient", "autumn", "bold", "brave", "bright", "brisk", "calm", "clever", "cosmic", "crimson",
    "curious", "daring", "dawn", "eager", "early", "electric", "emerald", "fancy", "fast", "fierce", "fluffy",
    "gentle", "giant", "glad", "golden", "graceful", "green", "happy", "hidden", "humble", "icy", "jolly", "keen",
    "kind", "lively", "lucky", "lunar", "merry", "mighty", "misty", "noble", "polar", "proud", "quick", "quiet",
    "rapid", "royal", "rustic", "shiny", "silent", "silver", "smooth", "snowy", "solar", "steady", "sunny", "swift",
    "tidy", "vivid", "wild", "wise", "young",
];
const NOUNS: &[&str] = &[
    "anchor", "badger", "beacon", "bear", "bison", "breeze", "brook", "canyon", "cedar", "comet", "coral", "crane",
    "dolphin", "dragon", "eagle", "falcon", "fern", "finch", "forest", "fox", "galaxy", "glacier", "harbor", "hawk",
    "heron", "island", "jaguar", "koala", "lake", "lantern", "leopard", "lynx", "maple", "meadow", "meteor", "moon",
    "moose", "nebula", "oak", "ocean", "orca", "otter", "owl", "panda", "panther", "pebble", "pine", "planet",
    "puffin", "raven", "reef", "river", "rocket", "sparrow", "spruce", "star", "summit", "thunder", "tiger", "valley",
    "walrus", "willow", "wolf", "zebra",
];

/// Routes under `/socket` and `/connect`.
pub fn routes() -> Router<NodeRef> {
    Router::new()
        .route("/socket", get(list).post(create))
        .route("/connect", get(list_connect).post(connect))
        .route("/socket/{socket_id}", get(show).patch(update).delete(remove))
        .route("/socket/{socket_id}/tunnel", get(list_tunnels).post(create_tunnel))
        .route("/socket/{socket_id}/tunnel/{tunnel_id}", get(show_tunnel).delete(remove_tunnel))
        .route("/socket/{socket_id}/log", get(recent_log))
}

fn limits(node: &NodeRef) -> SocketLimits {
    SocketLimits {
        max_http: node.config.max_http_sockets,
        max_tcp: node.config.max_tcp_sockets,
        ..SocketLimits::default()
    }
}

fn tunnel_json(node: &NodeRef, reg: &Registry, t: &mysocket_raft_store::Tunnel) -> TunnelJson {
    TunnelJson {
        tunnel_id: t.tunnel_id.to_string(),
        local_port: t.local_port,
        tunnel_server: node.config.advertised(node.config.ssh_addr),
        session: reg.session(&t.tunnel_id).map(|s| TunnelHolder { node_id: s.node_id, epoch: s.epoch }),
    }
}

fn socket_json(node: &NodeRef, reg: &Registry, v: &SocketView) -> SocketJson {
    let s = &v.socket;
    SocketJson {
        socket_id: s.socket_id.to_string(),
        dnsname: s.dnsname.clone(),
        name: s.name.clone(),
        socket_type: s.socket_type.as_str().to_string(),
        socket_tcp_ports: match s.port {
            Some(p) => vec![p],
            None => vec![80, 443],
        },
        protected_socket: s.access.protected,
        protected_username: s.access.protected_username.clone().unwrap_or_default(),
        protected_password: String::new(),
        cloud_authentication_enabled: s.access.cloud_auth_enabled,
        cloud_authentication_email_allowed_addressses: s.access.allowed_emails.clone(),
        cloud_authentication_email_allowed_domains: s.access.allowed_domains.clone(),
        ip_allow: s.access.ip_allow.clone(),
        ip_deny: s.access.ip_deny.clone(),
        rate_limit: s.access.rate_limit,
        custom_domain: s.custom_domain.as_ref().map(|d| mysocket_api::CustomDomain {
            name: d.name.clone(),
            verified: d.verified,
            txt_name: d.txt_name(),
            txt_value: d.token.clone(),
            cname_target: s.dnsname.clone(),
        }),
        proxy_protocol: s.access.proxy_protocol.map(|p| p.as_str().to_string()),
        upstream_protocol: (!s.socket_type.needs_port()).then(|| s.access.upstream.as_str().to_string()),
        tunnels: v.tunnels.iter().map(|t| tunnel_json(node, reg, t)).collect(),
        user_name: reg.account(&s.user_id).map(|a| a.user_name.clone()).unwrap_or_default(),
        urls: urls(node, s),
    }
}

/// Where visitors reach a socket through this node's public ports.
fn urls(node: &NodeRef, s: &mysocket_raft_store::Socket) -> Vec<String> {
    if let Some(port) = s.port {
        return vec![format!("{}://{}:{port}", s.socket_type.as_str(), s.dnsname)];
    }
    let at = |default: u16, port: u16| if port == default { String::new() } else { format!(":{port}") };
    let (http, https) = (at(80, node.config.http_addr.port()), at(443, node.config.https_addr.port()));
    let mut names = vec![s.dnsname.as_str()];
    names.extend(s.custom_domain.as_ref().filter(|d| d.verified).map(|d| d.name.as_str()));
    names.iter().flat_map(|n| [format!("http://{n}{http}/"), format!("https://{n}{https}/")]).collect()
}

/// Parses an id from the path; a malformed id is just another missing object.
fn parse_id(s: &str, what: &str) -> ApiResult<Uuid> {
    s.parse().map_err(|_| ApiError::not_found(format!("{what} not found")))
}

fn owned_view(reg: &Registry, user: &Uuid, socket_id: &Uuid) -> ApiResult<SocketView> {
    match reg.socket_view(socket_id) {
        Some(v) if &v.socket.user_id == user => Ok(v),
        _ => Err(ApiError::not_found("socket not found")),
    }
}

fn dnsname_hint() -> String {
    let mut rng = rand::thread_rng();
    format!(
        "{}-{}-{:04}",
        ADJECTIVES.choose(&mut rng).expect("words"),
        NOUNS.choose(&mut rng).expect("words"),
        rng.gen_range(0..10_000)
    )
}

fn relay_port_hint() -> u16 {
    rand::thread_rng()
        .gen_range(mysocket_raft_store::registry::RELAY_PORT_MIN..=mysocket_raft_store::registry::RELAY_PORT_MAX)
}

fn new_socket(node: &NodeRef, req: &SocketCreate) -> ApiResult<NewSocket> {
    let name = validate::name(if req.name.trim().is_empty() { "socket" } else { &req.name })?;
    let socket_type = match req.socket_type.as_deref().map(str::trim) {
        None | Some("") => SocketType::Http,
        Some(t) => SocketType::parse(t)
            .ok_or_else(|| ApiError::bad(format!("socket_type {t:?} is not one of http, https, tcp, tls")))?,
    };
    let access = crate::api::access::for_create(node, socket_type, req)?;
    let (pmin, pmax) = node.config.tcp_ports;
    let label = req.subdomain.as_deref().map(validate::subdomain).transpose()?;
    if let Some(p) = req.port {
        if !socket_type.needs_port() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "port applies to tcp and tls sockets; {} sockets answer on the cluster's HTTP and HTTPS ports",
                    socket_type.as_str()
                ),
            ));
        }
        if !(pmin..=pmax).contains(&p) {
            return Err(ApiError::bad(format!("port {p} is outside the cluster's range {pmin}-{pmax}")));
        }
    }
    Ok(NewSocket {
        socket_id: Uuid::new_v4(),
        name,
        socket_type,
        label_chosen: label.is_some(),
        dnsname_hint: label.unwrap_or_else(dnsname_hint),
        port_chosen: req.port.is_some(),
        port_hint: req.port.unwrap_or_else(|| rand::thread_rng().gen_range(pmin..=pmax)),
        access,
        custom_domain: req.custom_domain.as_deref().map(claim).transpose()?,
    })
}

/// A custom domain as claimed: its name and a fresh proof token, not verified.
fn claim(name: &str) -> ApiResult<mysocket_raft_store::CustomDomain> {
    Ok(mysocket_raft_store::CustomDomain {
        name: validate::custom_domain(name)?,
        token: format!("mysocket-{}", Uuid::new_v4().simple()),
        verified: false,
    })
}

fn unexpected(r: RegResponse) -> ApiError {
    match r {
        RegResponse::Rejected(rej) => rej.into(),
        other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("unexpected registry answer {other}")),
    }
}

#[utoipa::path(get, path = "/socket", tag = "socket", responses((status = 200, body = Vec<SocketJson>), (status = 401, body = ErrorBody)), security(("token" = [])))]
pub(crate) async fn list(State(node): State<NodeRef>, headers: HeaderMap) -> ApiResult<Json<Vec<SocketJson>>> {
    let me = authenticate(&node, &headers).await?;
    node.linearizable().await?;
    Ok(Json(node.read(|reg| {
        let mut socks = reg.sockets_of(&me);
        socks.sort_by_key(|s| (s.created_at_ms, s.socket_id));
        socks.iter().filter_map(|s| reg.socket_view(&s.socket_id)).map(|v| socket_json(&node, reg, &v)).collect()
    })))
}

#[utoipa::path(get, path = "/connect", tag = "socket", responses((status = 200, body = Vec<SocketJson>), (status = 401, body = ErrorBody)), security(("token" = [])))]
pub(crate) async fn list_connect(state: State<NodeRef>, headers: HeaderMap) -> ApiResult<Json<Vec<SocketJson>>> {
    list(state, headers).await
}

async fn create_socket(
    node: NodeRef,
    headers: HeaderMap,
    req: SocketCreate,
    with_tunnel: bool,
) -> ApiResult<Json<SocketJson>> {
    let me = authenticate(&node, &headers).await?;
    node.limits.write(me)?;
    let socket = new_socket(&node, &req)?;
    let first_tunnel = with_tunnel.then(|| NewTunnel { tunnel_id: Uuid::new_v4(), local_port_hint: relay_port_hint() });
    let cmd = Command::CreateSocket { user_id: me, socket, limits: limits(&node), first_tunnel };
    match node.write_as(cmd, request_id(&headers, &me.to_string())?).await? {
        RegResponse::Socket(v) => Ok(Json(node.read(|reg| socket_json(&node, reg, &v)))),
        other => Err(unexpected(other)),
    }
}

#[utoipa::path(post, path = "/socket", tag = "socket", request_body = SocketCreate, responses((status = 200, body = SocketJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)), security(("token" = [])))]
pub(crate) async fn create(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    Body(req): Body<SocketCreate>,
) -> ApiResult<Json<SocketJson>> {
    create_socket(node, headers, req, false).await
}

#[utoipa::path(post, path = "/connect", tag = "socket", request_body = SocketCreate, responses((status = 200, body = SocketJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)), security(("token" = [])))]
pub(crate) async fn connect(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    Body(req): Body<SocketCreate>,
) -> ApiResult<Json<SocketJson>> {
    create_socket(node, headers, req, true).await
}

#[utoipa::path(get, path = "/socket/{socket_id}", tag = "socket", params(("socket_id" = String, Path)), responses((status = 200, body = SocketJson), (status = 404, body = ErrorBody)), security(("token" = [])))]
pub(crate) async fn show(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    Path(sid): Path<String>,
) -> ApiResult<Json<SocketJson>> {
    let me = authenticate(&node, &headers).await?;
    let sid = parse_id(&sid, "socket")?;
    node.linearizable().await?;
    node.read(|reg| owned_view(reg, &me, &sid).map(|v| Json(socket_json(&node, reg, &v))))
}

#[utoipa::path(get, path = "/socket/{socket_id}/log", tag = "socket", params(("socket_id" = String, Path)), responses((status = 200, body = RecentLog, description = "Each tunnel's last log lines (requests and connections), from the node holding it"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("token" = [])))]
pub(crate) async fn recent_log(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    Path(sid): Path<String>,
) -> ApiResult<Json<RecentLog>> {
    let me = authenticate(&node, &headers).await?;
    let sid = parse_id(&sid, "socket")?;
    let held: Vec<(Uuid, Option<u64>)> = node.read(|reg| {
        owned_view(reg, &me, &sid)
            .map(|v| v.tunnels.iter().map(|t| (t.tunnel_id, reg.session(&t.tunnel_id).map(|s| s.node_id))).collect())
    })?;
    let mut by_holder: std::collections::BTreeMap<u64, Vec<Uuid>> = Default::default();
    for (t, holder) in &held {
        if let Some(h) = holder {
            by_holder.entry(*h).or_default().push(*t);
        }
    }
    let asks = by_holder.into_iter().map(|(holder, tunnels)| {
        let node = node.clone();
        async move {
            let lines = crate::control::recent::lines_at(&node, holder, &tunnels).await;
            tunnels.into_iter().zip(lines).collect::<Vec<_>>()
        }
    });
    let found: std::collections::HashMap<Uuid, Option<Vec<String>>> =
        futures::future::join_all(asks).await.into_iter().flatten().collect();
    let tunnels = held
        .into_iter()
        .map(|(t, holder)| TunnelLog {
            tunnel_id: t.to_string(),
            node_id: holder,
            lines: found.get(&t).cloned().flatten().unwrap_or_default(),
        })
        .collect();
    Ok(Json(RecentLog { tunnels }))
}

#[utoipa::path(patch, path = "/socket/{socket_id}", tag = "socket", params(("socket_id" = String, Path)), request_body = SocketUpdate, responses((status = 200, body = SocketJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 408, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)), security(("token" = [])))]
pub(crate) async fn update(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    Path(sid): Path<String>,
    Body(req): Body<SocketUpdate>,
) -> ApiResult<Json<SocketJson>> {
    let me = authenticate(&node, &headers).await?;
    node.limits.write(me)?;
    let sid = parse_id(&sid, "socket")?;
    node.linearizable().await?;
    let (socket_type, now) =
        node.read(|reg| owned_view(reg, &me, &sid).map(|v| (v.socket.socket_type, v.socket.access)))?;
    let access = crate::api::access::for_update(&node, socket_type, &now, &req)?;
    if let Some(name) = req.custom_domain.as_deref().map(str::trim) {
        let domain = if name.is_empty() { None } else { Some(claim(name)?) };
        let unchanged = node.read(|r| {
            r.socket(&sid).and_then(|s| s.custom_domain.as_ref()).map(|d| d.name.clone())
                == domain.as_ref().map(|d| d.name.clone())
        });
        if !unchanged {
            let cmd = Command::SetSocketDomain { user_id: me, socket_id: sid, domain };
            match node.write_as(cmd, request_id(&headers, &me.to_string())?.map(|id| format!("{id}/domain"))).await? {
                RegResponse::Socket(_) => {}
                other => return Err(unexpected(other)),
            }
        }
    }
    let cmd = Command::SetSocketAccess { user_id: me, socket_id: sid, access };
    match node.write_as(cmd, request_id(&headers, &me.to_string())?).await? {
        RegResponse::Socket(v) => Ok(Json(node.read(|reg| socket_json(&node, reg, &v)))),
        other => Err(unexpected(other)),
    }
}

#[utoipa::path(delete, path = "/socket/{socket_id}", tag = "socket", params(("socket_id" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)), security(("token" = [])))]
pub(crate) async fn remove(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    Path(sid): Path<String>,
) -> ApiResult<StatusCode> {
    let me = authenticate(&node, &headers).await?;
    node.limits.write(me)?;
    let sid = parse_id(&sid, "socket")?;
    let id = request_id(&headers, &me.to_string())?;
    match node.write_as(Command::DeleteSocket { user_id: me, socket_id: sid }, id).await? {
        RegResponse::Deleted(_) => Ok(StatusCode::NO_CONTENT),
        other => Err(unexpected(other)),
    }
}

#[utoipa::path(get, path = "/socket/{socket_id}/tunnel", tag = "tunnel", params(("socket_id" = String, Path)), responses((status = 200, body = Vec<TunnelJson>), (status = 404, body = ErrorBody)), security(("token" = [])))]
pub(crate) async fn list_tunnels(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    Path(sid): Path<String>,
) -> ApiResult<Json<Vec<TunnelJson>>> {
    let me = authenticate(&node, &headers).await?;
    let sid = parse_id(&sid, "socket")?;
    node.linearizable().await?;
    node.read(|reg| {
        owned_view(reg, &me, &sid).map(|v| Json(v.tunnels.iter().map(|t| tunnel_json(&node, reg, t)).collect()))
    })
}

#[utoipa::path(post, path = "/socket/{socket_id}/tunnel", tag = "tunnel", params(("socket_id" = String, Path)), responses((status = 200, body = TunnelJson), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)), security(("token" = [])))]
pub(crate) async fn create_tunnel(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    Path(sid): Path<String>,
    Body(_req): Body<serde_json::Value>,
) -> ApiResult<Json<TunnelJson>> {
    let me = authenticate(&node, &headers).await?;
    node.limits.write(me)?;
    let sid = parse_id(&sid, "socket")?;
    let tunnel = NewTunnel { tunnel_id: Uuid::new_v4(), local_port_hint: relay_port_hint() };
    let cmd = Command::CreateTunnel { user_id: me, socket_id: sid, tunnel, limits: limits(&node) };
    match node.write_as(cmd, request_id(&headers, &me.to_string())?).await? {
        RegResponse::Tunnel(t) => Ok(Json(node.read(|reg| tunnel_json(&node, reg, &t)))),
        other => Err(unexpected(other)),
    }
}

#[utoipa::path(get, path = "/socket/{socket_id}/tunnel/{tunnel_id}", tag = "tunnel", params(("socket_id" = String, Path), ("tunnel_id" = String, Path)), responses((status = 200, body = TunnelJson), (status = 404, body = ErrorBody)), security(("token" = [])))]
pub(crate) async fn show_tunnel(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    Path((sid, tid)): Path<(String, String)>,
) -> ApiResult<Json<TunnelJson>> {
    let me = authenticate(&node, &headers).await?;
    let sid = parse_id(&sid, "socket")?;
    let tid = parse_id(&tid, "tunnel")?;
    node.linearizable().await?;
    node.read(|reg| {
        let v = owned_view(reg, &me, &sid)?;
        v.tunnels
            .iter()
            .find(|t| t.tunnel_id == tid)
            .map(|t| Json(tunnel_json(&node, reg, t)))
            .ok_or_else(|| ApiError::not_found("tunnel not found"))
    })
}

#[utoipa::path(delete, path = "/socket/{socket_id}/tunnel/{tunnel_id}", tag = "tunnel", params(("socket_id" = String, Path), ("tunnel_id" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)), security(("token" = [])))]
pub(crate) async fn remove_tunnel(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    Path((sid, tid)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let me = authenticate(&node, &headers).await?;
    node.limits.write(me)?;
    let sid = parse_id(&sid, "socket")?;
    let tid = parse_id(&tid, "tunnel")?;
    let id = request_id(&headers, &me.to_string())?;
    match node.write_as(Command::DeleteTunnel { user_id: me, socket_id: sid, tunnel_id: tid }, id).await? {
        RegResponse::Deleted(_) => Ok(StatusCode::NO_CONTENT),
        other => Err(unexpected(other)),
    }
}
