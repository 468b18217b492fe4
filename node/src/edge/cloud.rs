//! Cloud authentication: visitors of a socket log in with the cluster's OpenID Connect
//! provider (authorization code flow with PKCE, `state` and `nonce`) before the edge lets them
//! through, and the service gets their verified email.
//!
//! The callback is a reserved path on each socket's own host, `/.mysocket/callback` (and
//! `/.mysocket/signout` clears the session): the session cookie is then set by the host it is
//! for, with no hand-over of a token between hosts, and the login's state, nonce and PKCE
//! verifier wait in a short-lived cookie on that same host, so nothing about a login in
//! progress is stored on any node. Operators register `https://*.<domain>/.mysocket/callback`
//! (and the http form) with the provider.
//!
//! Both cookies are signed (HMAC-SHA256) with a key derived from the cluster's token key,
//! which Raft replicates: a session made through one node is accepted by every node, and a
//! restart keeps it. A session names its socket, so it opens no other socket, and expires
//! after the operator's `--oidc-session-secs` (8 hours by default).

use std::time::Duration;

use hyper::header;
use hyper::header::HeaderValue;
use hyper::Response;
use hyper::StatusCode;
use serde::Deserialize;
use serde::Serialize;
use uuid::Uuid;

use crate::edge::http::pages::page;
use crate::edge::http::Body;
use crate::net::oidc::authorize_url;
use crate::net::oidc::constant_eq;
use crate::net::oidc::now_secs;
use crate::net::oidc::open;
use crate::net::oidc::random_token;
use crate::net::oidc::seal;
pub use crate::net::oidc::Provider;

/// The reserved paths on every cloud-auth socket's host.
pub const CALLBACK: &str = "/.mysocket/callback";
pub const SIGN_OUT: &str = "/.mysocket/signout";
/// How long a login may take at the provider.
const LOGIN_LIFETIME: Duration = Duration::from_secs(600);
const SESSION_COOKIE: &str = "mysocket_session";
const LOGIN_COOKIE: &str = "mysocket_login";

/// The values of the cookies named `name` in a request's Cookie fields.
fn cookies_named<'a>(fields: &'a [&'a [u8]], name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    fields
        .iter()
        .filter_map(|f| std::str::from_utf8(f).ok())
        .flat_map(|f| f.split(';'))
        .filter_map(move |c| c.trim().strip_prefix(name).and_then(|r| r.strip_prefix('=')))
}

#[derive(Serialize, Deserialize)]
struct Session {
    /// The socket it opens.
    s: Uuid,
    /// The verified email, lowercase.
    e: String,
    /// Expiry, Unix seconds.
    x: u64,
}

#[derive(Serialize, Deserialize)]
struct Login {
    s: Uuid,
    state: String,
    nonce: String,
    verifier: String,
    /// Where the visitor goes once signed in: a path on the socket's host.
    back: String,
    x: u64,
}

/// The verified email of a valid, unexpired session for `socket` among the request's cookies.
pub fn session_email(token_key: &str, cookie_fields: &[&[u8]], socket: &Uuid) -> Option<String> {
    cookies_named(cookie_fields, SESSION_COOKIE).find_map(|v| {
        let s: Session = open(token_key, v)?;
        (s.s == *socket && s.x > now_secs()).then_some(s.e)
    })
}

/// A cookie for the request's host only (no Domain), Secure on https.
fn cookie(name: &str, value: &str, max_age: u64, scheme: &str) -> HeaderValue {
    let secure = if scheme == "https" { "; Secure" } else { "" };
    let c = format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}");
    HeaderValue::from_str(&c).expect("base64url and fixed text")
}

fn redirect(to: &str) -> Response<Body> {
    let mut r = page(StatusCode::FOUND, "Found", "Signing in…");
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn unavailable(why: &str) -> Response<Body> {
    tracing::warn!(reason = why, "cloud authentication: the identity provider failed");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        "The identity provider of this cluster cannot be reached; try again in a moment.",
    )
}

/// The request's public base URL: scheme and Host.
fn base(scheme: &str, host: &str) -> String {
    format!("{scheme}://{host}")
}

/// A visitor without a session: sent to the provider, with the login's state, nonce and PKCE
/// verifier in a cookie on this host. `back` is where they return to (for GET and HEAD the
/// page they asked for, else the socket's root).
pub async fn sign_in(
    p: &Provider,
    token_key: &str,
    socket: &Uuid,
    scheme: &str,
    host: &str,
    back: &str,
) -> Response<Body> {
    let m = match p.metadata().await {
        Ok(m) => m,
        Err(e) => return unavailable(&e),
    };
    let login = Login {
        s: *socket,
        state: random_token(),
        nonce: random_token(),
        verifier: random_token(),
        back: if back.starts_with('/') && !back.starts_with("//") { back.to_string() } else { "/".into() },
        x: now_secs() + LOGIN_LIFETIME.as_secs(),
    };
    let redirect_uri = format!("{}{CALLBACK}", base(scheme, host));
    let Some(url) = authorize_url(p, &m, &redirect_uri, &login.state, &login.nonce, &login.verifier) else {
        return unavailable("the provider's authorization endpoint is not a URL");
    };
    let mut r = redirect(&url);
    let value = seal(token_key, &login);
    let name = login_cookie(&login.state);
    r.headers_mut().append(header::SET_COOKIE, cookie(&name, &value, LOGIN_LIFETIME.as_secs(), scheme));
    r
}

/// The login cookie of the sign-in with this state: one per sign-in in progress, so that
/// several at once (two tabs, or a page's images sent off to sign in too) do not overwrite
/// each other's.
fn login_cookie(state: &str) -> String {
    let tag: String = state.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(12).collect();
    format!("{LOGIN_COOKIE}_{tag}")
}

/// The provider sent the visitor back with a code: checked against the login cookie (state,
/// socket, expiry), exchanged with the PKCE verifier, the ID token verified; a session cookie
/// for this socket, and back to the page the visitor asked for. A replayed or forged callback
/// gets a 403 page and no session.
pub async fn callback(
    p: &Provider,
    token_key: &str,
    socket: &Uuid,
    scheme: &str,
    host: &str,
    query: &str,
    cookie_fields: &[&[u8]],
) -> Response<Body> {
    let url = reqwest::Url::parse(&format!("http://x/?{query}")).ok();
    let param =
        |name: &str| url.as_ref().and_then(|u| u.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned()));
    let state = param("state").unwrap_or_default();
    let name = login_cookie(&state);
    let refused = |why: &str| refused(why, &name, scheme);
    let login: Option<Login> = cookies_named(cookie_fields, &name).find_map(|v| open(token_key, v));
    let Some(login) = login.filter(|l| l.s == *socket && l.x > now_secs()) else {
        return refused("This sign-in did not start here, or took too long. Start again.");
    };
    if !constant_eq(state.as_bytes(), login.state.as_bytes()) {
        return refused("The sign-in's state does not match. Start again.");
    }
    if let Some(err) = param("error") {
        return refused(&format!("The identity provider did not sign you in ({}).", html_escape(&err)));
    }
    let Some(code) = param("code") else { return refused("The identity provider sent no code.") };
    let m = match p.metadata().await {
        Ok(m) => m,
        Err(e) => return unavailable(&e),
    };
    let redirect_uri = format!("{}{CALLBACK}", base(scheme, host));
    let email = match p.exchange(&m, &code, &redirect_uri, &login.verifier).await {
        Ok(id_token) => p.verify(&m, &id_token, &login.nonce).await,
        Err(e) => Err(e),
    };
    let email = match email {
        Ok(e) => e,
        Err(why) => {
            tracing::info!(socket_id = %socket, reason = %why, "cloud authentication: sign-in refused");
            return refused(&format!("Sign-in failed: {}.", html_escape(&why)));
        }
    };
    tracing::info!(socket_id = %socket, "cloud authentication: signed in");
    let lifetime = p.cfg.session.as_secs();
    let session = Session { s: *socket, e: email, x: now_secs() + lifetime };
    let mut r = redirect(&login.back);
    let h = r.headers_mut();
    h.append(header::SET_COOKIE, cookie(SESSION_COOKIE, &seal(token_key, &session), lifetime, scheme));
    h.append(header::SET_COOKIE, cookie(&name, "", 0, scheme));
    r
}

/// A failed sign-in: 403, its login cookie (`name`) cleared, a link to start again.
fn refused(why: &str, name: &str, scheme: &str) -> Response<Body> {
    let mut r = page(StatusCode::FORBIDDEN, "Forbidden", &format!("{why} <a href=\"/\">Sign in again</a>."));
    r.headers_mut().append(header::SET_COOKIE, cookie(name, "", 0, scheme));
    r
}

/// A request without a session that is not a page the visitor navigates to (an image, a
/// script, a fetch: `Sec-Fetch-Dest` other than `document`): 401, no sign-in started.
pub fn needs_session() -> Response<Body> {
    page(StatusCode::UNAUTHORIZED, "Unauthorized", "Sign in to this site first.")
}

/// Clears the session.
pub fn sign_out(scheme: &str) -> Response<Body> {
    let mut r = page(StatusCode::OK, "Signed out", "You are signed out of this site. <a href=\"/\">Sign in again</a>.");
    r.headers_mut().append(header::SET_COOKIE, cookie(SESSION_COOKIE, "", 0, scheme));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Signed in, but not with an email the socket allows.
pub fn not_allowed(email: &str) -> Response<Body> {
    page(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &format!(
            "You are signed in as <b>{}</b>, which may not use this site. <a href=\"{SIGN_OUT}\">Sign out</a> to use another account.",
            html_escape(email)
        ),
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;

    use super::*;

    #[test]
    fn a_cookie_opens_only_with_its_key_and_unchanged() {
        let socket = Uuid::new_v4();
        let s = Session { s: socket, e: "ada@example.org".into(), x: now_secs() + 60 };
        let v = seal("key-1", &s);
        let field = format!("a=b; {SESSION_COOKIE}={v}; c=d");
        assert_eq!(session_email("key-1", &[field.as_bytes()], &socket).as_deref(), Some("ada@example.org"));
        assert_eq!(session_email("key-2", &[field.as_bytes()], &socket), None, "another cluster's key");
        assert_eq!(session_email("key-1", &[field.as_bytes()], &Uuid::new_v4()), None, "another socket");
        // The payload changed (another email), the MAC kept.
        let (_, tag) = v.split_once('.').unwrap();
        let forged = Session { s: socket, e: "eve@example.org".into(), x: now_secs() + 60 };
        let body = B64.encode(serde_json::to_vec(&forged).unwrap());
        let field = format!("{SESSION_COOKIE}={body}.{tag}");
        assert_eq!(session_email("key-1", &[field.as_bytes()], &socket), None);
        let expired = seal("key-1", &Session { s: socket, e: "ada@example.org".into(), x: now_secs() - 1 });
        let field = format!("{SESSION_COOKIE}={expired}");
        assert_eq!(session_email("key-1", &[field.as_bytes()], &socket), None, "expired");
    }

    #[test]
    fn the_refusal_page_escapes_the_email() {
        let r = not_allowed("<script>@x.org");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(html_escape("<b>\"'&"), "&lt;b&gt;&quot;&#39;&amp;");
    }
}
