//! `/console`: the web console for accounts, served by every node on the API port. A page of
//! plain HTML, CSS and JavaScript shipped in the binary (`console/`), which signs in with the
//! account's email and password and then uses the public REST API only — sockets, tunnels,
//! `GET /user/me`, `GET /cluster`, `GET /socket/{id}/log` — as any client would.
//!
//! The session is a login token (a registry credential like any other: listed, revocable) kept
//! in an HttpOnly, `SameSite=Strict` cookie that scripts cannot read. The cookie is taken as a
//! credential only on the console's own requests: they carry `X-Mysocket-Console: 1`, which a
//! page of another origin cannot add without a CORS preflight this API never grants, and a
//! browser's `Origin` and `Sec-Fetch-Site`, when sent, must say the same origin. A form or a
//! script elsewhere that makes the browser send the cookie gets an anonymous request. The
//! page's Content-Security-Policy allows only its own script and style, and the script puts
//! everything it shows into the page as text.
//!
//! With an identity provider (`--oidc-issuer`), an account may also sign in with it: the
//! authorization code flow with PKCE, `state` and `nonce` (`/console/oidc`, back at
//! `/console/oidc/callback` on the same origin, which operators register with the provider),
//! the login in progress in a signed cookie of that origin; the provider's verified email
//! names the account.

use axum::extract::ConnectInfo;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::routing::post;
use axum::Router;
use mysocket_api::types::Login;
use mysocket_raft_store::Command;

use crate::api::accounts::caller_and_credential;
use crate::api::accounts::login_token;
use crate::api::ApiError;
use crate::api::ApiResult;
use crate::api::Body;
use crate::api::Caller;
use crate::control::NodeRef;

/// The session cookie.
const COOKIE: &str = "mysocket_session";
/// The header the console's own requests carry.
const MARK: &str = "x-mysocket-console";

/// What the pages may load: their own script and style, calls to this origin; no frames, no
/// forms elsewhere, no plugins, no inline code.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const PAGE: &str = include_str!("console/page.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

pub fn routes() -> Router<NodeRef> {
    Router::new()
        .route("/console", get(page))
        .route("/console/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/console/app.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/console/session", post(sign_in).delete(sign_out))
        .route("/console/oidc", get(provider_sign_in))
        .route("/console/oidc/callback", get(provider_callback))
}

/// The headers every console answer carries.
fn hardened(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    hardened(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

#[utoipa::path(get, path = "/console", tag = "console", responses((status = 200, description = "The web console: sign in, then sockets, tunnels, URLs, commands and recent requests", content_type = "text/html")))]
pub(crate) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// Whether a request comes from the console's own page on this origin: it carries the
/// console's header, and what the browser says of where it comes from (`Origin`,
/// `Sec-Fetch-Site`), when it says it, is this origin.
fn own_request(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    if text(MARK) != Some("1") {
        return false;
    }
    if text("sec-fetch-site").is_some_and(|s| s != "same-origin") {
        return false;
    }
    match text("origin") {
        None => true,
        Some(origin) => {
            let authority = origin.split_once("://").map(|(_, a)| a);
            authority.is_some() && authority == text("host")
        }
    }
}

/// The session cookie's token, for a request of the console's own (see the module's notes);
/// `None` for any other request, whatever cookie it carries.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    if !own_request(headers) {
        return None;
    }
    cookies(headers, COOKIE).next().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// The values of the request's cookies named `name`.
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// Whether the API port serves HTTPS (the console's cookies are then `Secure`).
fn https(node: &NodeRef) -> bool {
    !matches!(node.config.api_tls, crate::config::ApiTls::Off)
}

fn cookie(node: &NodeRef, value: &str, max_age: u64) -> HeaderValue {
    let secure = if https(node) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"))
        .unwrap_or_else(|_| HeaderValue::from_static("mysocket_session=; Path=/; Max-Age=0"))
}

fn refused() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "this call is the console's own: it must come from its page on this origin".into(),
    )
}

#[utoipa::path(post, path = "/console/session", tag = "console", request_body = Login, responses((status = 204, description = "Signed in: the session is in an HttpOnly cookie"), (status = 401, body = mysocket_api::types::ErrorBody), (status = 403, body = mysocket_api::types::ErrorBody), (status = 429, body = mysocket_api::types::ErrorBody)))]
pub(crate) async fn sign_in(
    State(node): State<NodeRef>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Body(req): Body<Login>,
) -> ApiResult<Response> {
    if !own_request(&headers) {
        return Err(refused());
    }
    let token = login_token(&node, peer.ip(), &req, "console").await?;
    let set = cookie(&node, &token, node.config.token_ttl.as_secs());
    Ok(hardened((StatusCode::NO_CONTENT, [(header::SET_COOKIE, set)]).into_response()))
}

#[utoipa::path(delete, path = "/console/session", tag = "console", responses((status = 204, description = "Signed out: the session's token is revoked on every node and the cookie cleared"), (status = 403, body = mysocket_api::types::ErrorBody)))]
pub(crate) async fn sign_out(State(node): State<NodeRef>, headers: HeaderMap) -> ApiResult<Response> {
    if !own_request(&headers) {
        return Err(refused());
    }
    if session_cookie(&headers).is_some() {
        if let Ok((Caller::Account(user_id), Some(id))) = caller_and_credential(&node, &headers).await {
            node.write(Command::RevokeCredential { user_id, id }).await?;
        }
    }
    Ok(hardened((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie(&node, "", 0))]).into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_cookie_counts_only_on_the_consoles_own_requests() {
        let own = [("host", "127.0.0.1:7070"), (MARK, "1"), ("cookie", "a=b; mysocket_session=tok")];
        assert_eq!(session_cookie(&headers(&own)).as_deref(), Some("tok"));
        let same = [&own[..], &[("origin", "http://127.0.0.1:7070"), ("sec-fetch-site", "same-origin")]].concat();
        assert_eq!(session_cookie(&headers(&same)).as_deref(), Some("tok"));
        // A form elsewhere cannot add the header.
        assert_eq!(session_cookie(&headers(&[own[0], own[2]])), None);
        // Another origin, said either way.
        let foreign = [&own[..], &[("origin", "http://evil.test")]].concat();
        assert_eq!(session_cookie(&headers(&foreign)), None);
        let cross = [&own[..], &[("sec-fetch-site", "cross-site")]].concat();
        assert_eq!(session_cookie(&headers(&cross)), None);
        let odd = [&own[..], &[("origin", "null")]].concat();
        assert_eq!(session_cookie(&headers(&odd)), None);
        assert_eq!(session_cookie(&headers(&[own[0], own[1], ("cookie", "mysocket_session=")])), None);
    }
}

/// The console's login at the identity provider, in progress: in a signed cookie of the
/// console's origin while the browser is at the provider.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Pending {
    console: bool,
    state: String,
    nonce: String,
    verifier: String,
    /// Expiry, Unix seconds.
    x: u64,
}

const PENDING: &str = "mysocket_console_login";
/// How long a login may take at the provider.
const PENDING_SECS: u64 = 600;

/// A short page for the steps of a sign-in with the provider; `text` is escaped.
fn notice(status: StatusCode, text: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>mysocket console</title>\
         <link rel=stylesheet href=/console/app.css></head><body><main><p id=notice class=card>{}</p>\
         <p><a href=/console>Back to the console</a></p></main></body></html>",
        crate::api::dashboard::esc(text)
    );
    hardened((status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response())
}

/// This origin as the browser reached it: the API's scheme and the request's Host.
fn origin(node: &NodeRef, headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let scheme = if https(node) { "https" } else { "http" };
    Some(format!("{scheme}://{host}"))
}

fn pending_cookie(node: &NodeRef, value: &str, max_age: u64) -> HeaderValue {
    let secure = if https(node) { "; Secure" } else { "" };
    // Lax: the browser comes back from the provider with a top-level navigation.
    HeaderValue::from_str(&format!(
        "{PENDING}={value}; Path=/console/oidc; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("mysocket_console_login=; Max-Age=0"))
}

fn found(to: &str) -> Response {
    let mut r = hardened(StatusCode::FOUND.into_response());
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[utoipa::path(get, path = "/console/oidc", tag = "console", responses((status = 302, description = "To the cluster's identity provider, to sign in to the console"), (status = 404, description = "The cluster has no identity provider", content_type = "text/html"), (status = 503, description = "The provider cannot be reached", content_type = "text/html")))]
pub(crate) async fn provider_sign_in(State(node): State<NodeRef>, headers: HeaderMap) -> Response {
    let Some(p) = &node.oidc else {
        return notice(
            StatusCode::NOT_FOUND,
            "This cluster has no identity provider: sign in with your email and password.",
        );
    };
    let (Some(origin), Ok(key)) = (origin(&node, &headers), crate::api::accounts::token_key(&node)) else {
        return notice(StatusCode::BAD_REQUEST, "The request names no host.");
    };
    let m = match p.metadata().await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(reason = %e, "console: the identity provider failed");
            return notice(
                StatusCode::SERVICE_UNAVAILABLE,
                "The identity provider cannot be reached; try again in a moment.",
            );
        }
    };
    use crate::net::oidc::random_token;
    let pending = Pending {
        console: true,
        state: random_token(),
        nonce: random_token(),
        verifier: random_token(),
        x: crate::net::oidc::now_secs() + PENDING_SECS,
    };
    let back = format!("{origin}/console/oidc/callback");
    let Some(url) = crate::net::oidc::authorize_url(p, &m, &back, &pending.state, &pending.nonce, &pending.verifier)
    else {
        return notice(StatusCode::SERVICE_UNAVAILABLE, "The identity provider's authorization endpoint is not a URL.");
    };
    let mut r = found(&url);
    let sealed = crate::net::oidc::seal(&key, &pending);
    r.headers_mut().append(header::SET_COOKIE, pending_cookie(&node, &sealed, PENDING_SECS));
    r
}

#[utoipa::path(get, path = "/console/oidc/callback", tag = "console", params(("state" = Option<String>, Query), ("code" = Option<String>, Query)), responses((status = 302, description = "Signed in: to the console, the session in an HttpOnly cookie"), (status = 403, description = "The sign-in was refused: why", content_type = "text/html")))]
pub(crate) async fn provider_callback(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let refused = |why: &str| {
        let mut r = notice(StatusCode::FORBIDDEN, why);
        r.headers_mut().append(header::SET_COOKIE, pending_cookie(&node, "", 0));
        r
    };
    let (Some(p), Some(origin), Ok(key)) =
        (&node.oidc, origin(&node, &headers), crate::api::accounts::token_key(&node))
    else {
        return refused("This cluster has no identity provider.");
    };
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
    let param = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let pending: Option<Pending> = cookies(&headers, PENDING).find_map(|v| crate::net::oidc::open(&key, v));
    let state = param("state").unwrap_or_default();
    let Some(pending) = pending.filter(|l| l.console && l.x > crate::net::oidc::now_secs()) else {
        return refused("This sign-in did not start here, or took too long. Start again.");
    };
    if !crate::net::oidc::constant_eq(state.as_bytes(), pending.state.as_bytes()) {
        return refused("The sign-in's state does not match. Start again.");
    }
    if let Some(err) = param("error") {
        return refused(&format!("The identity provider did not sign you in ({err})."));
    }
    let Some(code) = param("code") else { return refused("The identity provider sent no code.") };
    let email = match p.metadata().await {
        Ok(m) => match p.exchange(&m, &code, &format!("{origin}/console/oidc/callback"), &pending.verifier).await {
            Ok(id_token) => p.verify(&m, &id_token, &pending.nonce).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let email = match email {
        Ok(e) => e,
        Err(why) => {
            tracing::info!(reason = %why, "console: sign-in with the identity provider refused");
            return refused(&format!("Sign-in failed: {why}."));
        }
    };
    if node.linearizable().await.is_err() {
        return notice(
            StatusCode::SERVICE_UNAVAILABLE,
            "The cluster cannot confirm your account right now; try again.",
        );
    }
    let Some(user_id) = node.read(|r| r.account_by_email(&email).map(|a| a.user_id)) else {
        return refused(&format!(
            "No account has the email {email}: create one on the console (with your SSH key), then sign in with the \
             identity provider."
        ));
    };
    let token = match crate::api::accounts::new_token(&node, user_id, "console-oidc").await {
        Ok(t) => t,
        Err(_) => {
            return notice(StatusCode::SERVICE_UNAVAILABLE, "The cluster cannot sign you in right now; try again.")
        }
    };
    tracing::info!(%user_id, "console: signed in with the identity provider");
    let mut r = found("/console");
    let h = r.headers_mut();
    h.append(header::SET_COOKIE, cookie(&node, &token, node.config.token_ttl.as_secs()));
    h.append(header::SET_COOKIE, pending_cookie(&node, "", 0));
    r
}
