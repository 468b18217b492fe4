//! Login tokens and API keys: an account lists and revokes its own, and makes API keys for
//! scripts; an operator lists and revokes any account's (`?account=<email or user id>`).
//! Tokens and keys are rows of the registry, so a revocation is one Raft entry and every node
//! refuses the credential once it has applied it.

use axum::extract::Path;
use axum::extract::RawQuery;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::routing::delete;
use axum::routing::get;
use axum::routing::post;
use axum::Json;
use axum::Router;
use mysocket_api::types::*;
use mysocket_raft_store::Command;
use mysocket_raft_store::Credential;
use mysocket_raft_store::CredentialKind;
use mysocket_raft_store::Response as RegResponse;
use uuid::Uuid;

use crate::api::accounts::caller_and_credential;
use crate::api::accounts::Caller;
use crate::api::ApiError;
use crate::api::ApiResult;
use crate::api::Body;
use crate::control::auth;
use crate::control::NodeRef;

/// The longest an API key may be made to last.
const MAX_DAYS: u32 = 3650;

pub fn routes() -> Router<NodeRef> {
    Router::new()
        .route("/credentials", get(list))
        .route("/credentials/{id}", delete(revoke))
        .route("/apikeys", post(create_key))
}

/// A time in ms since the epoch as RFC 3339 (UTC, seconds).
pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn view(c: &Credential, current: Option<Uuid>) -> CredentialView {
    CredentialView {
        id: c.id.to_string(),
        kind: match c.kind {
            CredentialKind::Token => "token",
            CredentialKind::ApiKey => "api_key",
        }
        .to_string(),
        name: c.name.clone(),
        created_at: rfc3339(c.created_at_ms),
        expires_at: c.expires_at_ms.map(rfc3339),
        current: Some(c.id) == current,
    }
}

/// Whose credentials a request is about: the caller's own, or for an operator the account
/// `?account=` names (by email or user id). Anything else in the query is refused.
async fn whose(node: &NodeRef, headers: &HeaderMap, query: Option<String>) -> ApiResult<(Uuid, Option<Uuid>)> {
    let mut account = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "account" if account.is_none() => account = Some(v.into_owned()),
            _ => return Err(ApiError::bad(format!("unknown or repeated query parameter {k:?}; only account="))),
        }
    }
    match (caller_and_credential(node, headers).await?, account) {
        ((Caller::Account(me), current), None) => Ok((me, current)),
        ((Caller::Account(_), _), Some(_)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "?account= is for operators; an account sees only its own credentials".into(),
        )),
        ((Caller::Operator, _), Some(a)) => {
            node.linearizable().await?;
            let found = node.read(|r| match a.parse::<Uuid>() {
                Ok(id) => r.account(&id).map(|x| x.user_id),
                Err(_) => r.account_by_email(a.trim()).map(|x| x.user_id),
            });
            found.map(|id| (id, None)).ok_or_else(|| ApiError::not_found("no such account"))
        }
        ((Caller::Operator, _), None) => {
            Err(ApiError::bad("the operator names the account: ?account=<email or user id>"))
        }
        ((Caller::Anonymous, _), _) => Err(ApiError::unauthorized()),
    }
}

#[utoipa::path(get, path = "/credentials", tag = "account", params(("account" = Option<String>, Query, description = "operators: the account's email or user id")), responses((status = 200, body = Vec<CredentialView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)), security(("token" = []), ("operator" = [])))]
pub(crate) async fn list(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Vec<CredentialView>>> {
    let (user, current) = whose(&node, &headers, query).await?;
    node.linearizable().await?;
    let now = crate::control::now_ms();
    Ok(Json(node.read(|r| {
        r.credentials_of(&user)
            .into_iter()
            .filter(|c| c.expires_at_ms.is_none_or(|e| e > now))
            .map(|c| view(c, current))
            .collect()
    })))
}

#[utoipa::path(delete, path = "/credentials/{id}", tag = "account", params(("id" = String, Path), ("account" = Option<String>, Query, description = "operators: the account's email or user id")), responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)), security(("token" = []), ("operator" = [])))]
pub(crate) async fn revoke(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<StatusCode> {
    let (user, _) = whose(&node, &headers, query).await?;
    // Another account's credential answers exactly like a missing one.
    let id = id.parse::<Uuid>().map_err(|_| ApiError::not_found("no such token or API key"))?;
    match node.write(Command::RevokeCredential { user_id: user, id }).await? {
        RegResponse::Done => Ok(StatusCode::NO_CONTENT),
        RegResponse::Rejected(r) => Err(r.into()),
        other => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("unexpected registry answer {other}"))),
    }
}

/// An API key's name: 1 to 64 letters, digits, `-`, `_`, `.`.
fn key_name(s: &str) -> ApiResult<String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(ApiError::bad("an API key's name is 1 to 64 letters, digits, '-', '_' or '.'"));
    }
    Ok(s.to_string())
}

#[utoipa::path(post, path = "/apikeys", tag = "account", request_body = ApiKeyCreate, responses((status = 200, body = ApiKeyCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)), security(("token" = [])))]
pub(crate) async fn create_key(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    Body(req): Body<ApiKeyCreate>,
) -> ApiResult<Json<ApiKeyCreated>> {
    let me = match caller_and_credential(&node, &headers).await? {
        (Caller::Account(me), _) => me,
        (Caller::Operator, _) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "the operator credential owns no account; an account makes its own API keys".into(),
            ))
        }
        (Caller::Anonymous, _) => return Err(ApiError::unauthorized()),
    };
    let name = key_name(&req.name)?;
    let days = match req.expires_in_days {
        Some(d) if d == 0 || d > MAX_DAYS => {
            return Err(ApiError::bad(format!("expires_in_days: 1 to {MAX_DAYS}, or absent for no expiry")))
        }
        d => d,
    };
    let id = Uuid::new_v4();
    let (key, hash) = auth::new_api_key(&id);
    let cred = Credential {
        id,
        user_id: me,
        kind: CredentialKind::ApiKey,
        name,
        created_at_ms: 0,
        expires_at_ms: days.map(|d| crate::control::now_ms() + u64::from(d) * 86_400_000),
        secret_hash: Some(hash),
    };
    match node.write(Command::IssueCredential(cred)).await? {
        RegResponse::Credential(c) => Ok(Json(ApiKeyCreated { key, credential: view(&c, None) })),
        RegResponse::Rejected(r) => Err(r.into()),
        other => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("unexpected registry answer {other}"))),
    }
}
