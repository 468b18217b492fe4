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
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn cookie(node: &NodeRef, value: &str, max_age: u64) -> HeaderValue {
    let secure = if matches!(node.config.api_tls, crate::config::ApiTls::Off) { "" } else { "; Secure" };
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
