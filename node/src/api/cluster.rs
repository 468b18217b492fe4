//! Health, the cluster's view, metrics, the CA certificate and membership changes.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use axum::extract::Path;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Json;
use mysocket_api::types::*;
use mysocket_raft_store::Command;

use crate::api::caller;
use crate::api::ApiError;
use crate::api::ApiResult;
use crate::api::Body;
use crate::api::Caller;
use crate::api::Operator;
use crate::control::applied::applied_indexes;
use crate::control::MembershipChange;
use crate::control::NodeRef;

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
    ClusterView {
        leader: m.current_leader,
        term: m.current_term,
        nodes,
        ssh_host_key,
        identity_provider: node.oidc.is_some(),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "cluster", responses((status = 200, description = "Prometheus metrics (text format 0.0.4)", content_type = "text/plain"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)), security(("operator" = [])))]
pub(crate) async fn metrics(_: Operator, State(node): State<NodeRef>) -> Response {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], crate::api::metrics::render(&node)).into_response()
}

#[utoipa::path(get, path = "/cluster", tag = "cluster", responses((status = 200, body = ClusterView)))]
pub(crate) async fn cluster(State(node): State<NodeRef>, headers: HeaderMap) -> Json<ClusterView> {
    let who = caller(&node, &headers).await.unwrap_or(Caller::Anonymous);
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
