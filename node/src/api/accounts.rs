//! Accounts, logins and tokens; who a caller is (an account, the operator, or anyone).

use axum::extract::ConnectInfo;
use axum::extract::Path;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::Json;
use mysocket_api::types::*;
use mysocket_raft_store::Command;
use mysocket_raft_store::Credential;
use mysocket_raft_store::CredentialKind;
use mysocket_raft_store::Rejection;
use mysocket_raft_store::Response as RegResponse;
use uuid::Uuid;

use crate::api::validate;
use crate::api::ApiError;
use crate::api::ApiResult;
use crate::api::Body;
use crate::control::auth;
use crate::control::NodeRef;

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
    let operator = caller(&node, &headers).await.ok() == Some(Caller::Operator);
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

pub(crate) fn token_key(node: &NodeRef) -> ApiResult<String> {
    node.read(|r| r.config().map(|c| c.token_key.clone()))
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cluster not bootstrapped yet".into()))
}

fn now_secs() -> u64 {
    crate::control::now_ms() / 1000
}

/// The credential a request carries: `x-access-token`, `Authorization: Bearer`, the
/// password of `Authorization: Basic` (how a browser sends the operator token to the
/// dashboard), or the console's session cookie when the request is the console's own
/// ([`crate::api::console::session_cookie`]).
fn credential(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = headers.get("x-access-token").and_then(|v| v.to_str().ok()) {
        return Some(t.trim().to_string());
    }
    let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return crate::api::console::session_cookie(headers);
    };
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
pub async fn caller(node: &NodeRef, headers: &HeaderMap) -> ApiResult<Caller> {
    Ok(caller_and_credential(node, headers).await?.0)
}

/// The caller, and for an account the id of the token or API key it came with. A token or
/// key is accepted while the registry holds it: revoked (or dropped as the account's oldest),
/// it is refused by every node once the revocation is applied there. One the local replica
/// does not know yet (issued through another node a moment ago) is looked up again after a
/// linearizable read.
pub async fn caller_and_credential(node: &NodeRef, headers: &HeaderMap) -> ApiResult<(Caller, Option<Uuid>)> {
    let Some(given) = credential(headers) else { return Ok((Caller::Anonymous, None)) };
    let operator = node.read(|r| r.config().map(|c| auth::is_operator_token(&c.operator_token_hash, &given)));
    if operator == Some(true) {
        return Ok((Caller::Operator, None));
    }
    let now = crate::control::now_ms();
    let (id, proof) = match auth::parse_api_key(&given) {
        Some((id, secret)) => (id, Proof::Key(secret.to_string())),
        None => {
            let claims = auth::verify_token(&token_key(node)?, &given).ok_or_else(ApiError::unauthorized)?;
            let user = claims.user_id.parse::<Uuid>().map_err(|_| ApiError::unauthorized())?;
            let id = claims.jti.as_deref().and_then(|j| j.parse::<Uuid>().ok()).ok_or_else(ApiError::unauthorized)?;
            (id, Proof::Token(user))
        }
    };
    let check = |c: &Credential| match &proof {
        Proof::Key(secret) => {
            c.kind == CredentialKind::ApiKey
                && c.secret_hash.as_deref().is_some_and(|h| auth::api_key_matches(h, secret))
        }
        Proof::Token(user) => c.kind == CredentialKind::Token && &c.user_id == user,
    };
    let lookup = || {
        node.read(|r| {
            r.credential(&id)
                .filter(|c| check(c) && c.expires_at_ms.is_none_or(|e| e > now) && r.account(&c.user_id).is_some())
                .map(|c| c.user_id)
        })
    };
    let found = match lookup() {
        Some(user) => Some(user),
        None if node.read(|r| r.credential(&id).is_none()) => {
            node.linearizable().await?;
            lookup()
        }
        None => None,
    };
    found.map(|user| (Caller::Account(user), Some(id))).ok_or_else(ApiError::unauthorized)
}

/// What a request's credential says of itself: an API key's secret, or a signed token's account.
enum Proof {
    Key(String),
    Token(Uuid),
}

/// The account id a request's token or API key proves.
pub async fn authenticate(node: &NodeRef, headers: &HeaderMap) -> ApiResult<Uuid> {
    match caller(node, headers).await? {
        Caller::Account(id) => Ok(id),
        Caller::Anonymous => Err(ApiError::unauthorized()),
        Caller::Operator => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this call needs an account's token (log in); the operator credential owns no sockets".into(),
        )),
    }
}

/// Refuses anyone but an operator: 401 without a valid credential, 403 for an account.
pub async fn require_operator(node: &NodeRef, headers: &HeaderMap) -> ApiResult<()> {
    match caller(node, headers).await {
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
        require_operator(node, &parts.headers).await.map(|()| Operator)
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
    Ok(Json(TokenReply { token: login_token(&node, peer.ip(), &req, "login").await? }))
}

/// Checks an email and password (rate-limited per source and per email, in constant time
/// whether the email has an account or not) and issues a login token named `how`.
pub(crate) async fn login_token(node: &NodeRef, from: std::net::IpAddr, req: &Login, how: &str) -> ApiResult<String> {
    node.limits.login(from, &req.email)?;
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
    new_token(node, acct.user_id, how).await
}

#[utoipa::path(post, path = "/login/refresh", tag = "account", responses((status = 200, body = TokenReply), (status = 401, body = ErrorBody)), security(("token" = [])))]
pub(crate) async fn refresh(State(node): State<NodeRef>, headers: HeaderMap) -> ApiResult<Json<TokenReply>> {
    let user_id = authenticate(&node, &headers).await?;
    Ok(Json(TokenReply { token: new_token(&node, user_id, "refresh").await? }))
}

/// A login token for `user_id`, recorded in the registry (so its owner can list and revoke
/// it) before it is handed out.
pub(crate) async fn new_token(node: &NodeRef, user_id: Uuid, how: &str) -> ApiResult<String> {
    let key = token_key(node)?;
    let now = now_secs();
    let id = Uuid::new_v4();
    let cred = Credential {
        id,
        user_id,
        kind: CredentialKind::Token,
        name: how.to_string(),
        created_at_ms: 0,
        expires_at_ms: Some((now + node.config.token_ttl.as_secs()) * 1000),
        secret_hash: None,
    };
    match node.write(Command::IssueCredential(cred)).await? {
        RegResponse::Credential(_) => {}
        RegResponse::Rejected(Rejection::NotFound(_)) => return Err(ApiError::unauthorized()),
        RegResponse::Rejected(r) => return Err(r.into()),
        other => {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("unexpected registry answer {other}")))
        }
    }
    Ok(auth::issue_token(&key, &user_id.to_string(), &id.to_string(), node.config.token_ttl, now))
}

#[utoipa::path(get, path = "/user/{user_id}", tag = "account", params(("user_id" = String, Path)), responses((status = 200, body = User), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("token" = [])))]
pub(crate) async fn get_user(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<User>> {
    let me = authenticate(&node, &headers).await?;
    // Another account's id answers exactly like a missing one; `me` is the caller's.
    if id != "me" && id.parse::<Uuid>().ok() != Some(me) {
        return Err(ApiError::not_found("user not found"));
    }
    node.linearizable().await?;
    node.read(|r| r.account(&me).map(user_json)).map(Json).ok_or_else(|| ApiError::not_found("user not found"))
}
