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
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::Mac;
use hyper::header;
use hyper::header::HeaderValue;
use hyper::Response;
use hyper::StatusCode;
use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;
use serde::Serialize;
use sha2::Digest;
use uuid::Uuid;

use crate::config::Oidc;
use crate::edge::http::pages::page;
use crate::edge::http::Body;

/// The reserved paths on every cloud-auth socket's host.
pub const CALLBACK: &str = "/.mysocket/callback";
pub const SIGN_OUT: &str = "/.mysocket/signout";
/// How long a login may take at the provider.
const LOGIN_LIFETIME: Duration = Duration::from_secs(600);
const SESSION_COOKIE: &str = "mysocket_session";
const LOGIN_COOKIE: &str = "mysocket_login";
/// The provider's keys are fetched again when a token names one not seen, at most this often.
const KEYS_REFETCH: Duration = Duration::from_secs(10);
/// And at least this often.
const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);

/// What the provider's discovery document says that the edge uses.
#[derive(Clone, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

/// The cluster's identity provider: its configuration, its discovery document and its keys,
/// fetched when first needed and cached.
pub struct Provider {
    cfg: Oidc,
    http: reqwest::Client,
    metadata: tokio::sync::RwLock<Option<(Metadata, Instant)>>,
    keys: tokio::sync::Mutex<Option<(JwkSet, Instant)>>,
}

impl Provider {
    pub fn new(cfg: Oidc) -> Provider {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client");
        Provider { cfg, http, metadata: Default::default(), keys: Default::default() }
    }

    /// The discovery document, fetched once an hour (or again after a failure).
    async fn metadata(&self) -> Result<Metadata, String> {
        if let Some((m, at)) = self.metadata.read().await.as_ref() {
            if at.elapsed() < KEYS_MAX_AGE {
                return Ok(m.clone());
            }
        }
        let url = format!("{}/.well-known/openid-configuration", self.cfg.issuer);
        let m: Metadata = self.get_json(&url).await?;
        // OpenID Connect Discovery §4.3: the document's issuer is the one configured.
        if m.issuer.trim_end_matches('/') != self.cfg.issuer {
            return Err(format!("the provider at {url} names another issuer, {:?}", m.issuer));
        }
        *self.metadata.write().await = Some((m.clone(), Instant::now()));
        Ok(m)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let resp = self.http.get(url).send().await.map_err(|e| format!("cannot reach {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status()));
        }
        resp.json().await.map_err(|e| format!("{url} sent an unreadable answer: {e}"))
    }

    /// The provider's key named `kid` (or its only key when the token names none), from the
    /// cache, or fetched again when the cache lacks it (keys rotate) and was not fetched in the
    /// last [`KEYS_REFETCH`].
    async fn key(&self, m: &Metadata, kid: Option<&str>) -> Result<jsonwebtoken::jwk::Jwk, String> {
        let mut cache = self.keys.lock().await;
        let find = |set: &JwkSet| match kid {
            Some(k) => set.find(k).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        if let Some((set, at)) = cache.as_ref() {
            if at.elapsed() < KEYS_MAX_AGE {
                if let Some(k) = find(set) {
                    return Ok(k);
                }
                if at.elapsed() < KEYS_REFETCH {
                    return Err("the token is signed with a key the provider does not publish".into());
                }
            }
        }
        let set: JwkSet = self.get_json(&m.jwks_uri).await?;
        let found = find(&set);
        *cache = Some((set, Instant::now()));
        found.ok_or_else(|| "the token is signed with a key the provider does not publish".into())
    }

    /// Checks an ID token: signed by one of the provider's published keys with an asymmetric
    /// algorithm, from the issuer, for this client, not expired, carrying the login's nonce
    /// and a verified email. The email, lowercase.
    async fn verify(&self, m: &Metadata, id_token: &str, nonce: &str) -> Result<String, String> {
        use jsonwebtoken::Algorithm::*;
        let header = jsonwebtoken::decode_header(id_token).map_err(|e| format!("the ID token is malformed: {e}"))?;
        if !matches!(header.alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512 | ES256 | ES384 | EdDSA) {
            return Err(format!("the ID token is signed with {:?}, which the edge does not accept", header.alg));
        }
        let jwk = self.key(m, header.kid.as_deref()).await?;
        let key =
            jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|e| format!("the provider's key is unusable: {e}"))?;
        let mut v = jsonwebtoken::Validation::new(header.alg);
        v.set_issuer(&[&m.issuer]);
        v.set_audience(&[&self.cfg.client_id]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.leeway = 60;
        #[derive(Deserialize)]
        struct Claims {
            email: Option<String>,
            #[serde(default)]
            email_verified: serde_json::Value,
            nonce: Option<String>,
        }
        let claims = jsonwebtoken::decode::<Claims>(id_token, &key, &v)
            .map_err(|e| format!("the ID token was refused: {e}"))?
            .claims;
        if claims.nonce.as_deref().is_none_or(|n| !constant_eq(n.as_bytes(), nonce.as_bytes())) {
            return Err("the ID token does not carry this login's nonce".into());
        }
        // Some providers send the flag as a string.
        let verified = matches!(&claims.email_verified, serde_json::Value::Bool(true))
            || matches!(&claims.email_verified, serde_json::Value::String(s) if s == "true");
        let email = claims.email.filter(|e| e.contains('@')).ok_or("the provider gave no email address")?;
        if !verified {
            return Err(format!("the provider has not verified the email address {email}"));
        }
        Ok(email.to_ascii_lowercase())
    }

    /// Exchanges the authorization code (with the PKCE verifier) for the ID token.
    async fn exchange(&self, m: &Metadata, code: &str, redirect_uri: &str, verifier: &str) -> Result<String, String> {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
            ("client_id", &self.cfg.client_id),
        ];
        let req = self.http.post(&m.token_endpoint).form(&form);
        // client_secret_basic, the method every provider supports (RFC 6749 §2.3.1).
        let req = req.basic_auth(&self.cfg.client_id, Some(&self.cfg.client_secret.0));
        let resp = req.send().await.map_err(|e| format!("cannot reach the provider's token endpoint: {e}"))?;
        let status = resp.status();
        #[derive(Deserialize)]
        struct Tokens {
            id_token: Option<String>,
            error: Option<String>,
        }
        let t: Tokens = resp.json().await.map_err(|e| format!("the token endpoint sent an unreadable answer: {e}"))?;
        match (status.is_success(), t.id_token, t.error) {
            (true, Some(id), _) => Ok(id),
            (_, _, Some(err)) => Err(format!("the provider refused the code: {err}")),
            _ => Err(format!("the provider answered {status} without an ID token")),
        }
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The key the cookies are signed with, derived from the cluster's token key.
fn cookie_mac(token_key: &str) -> hmac::Hmac<sha2::Sha256> {
    let mut derive = hmac::Hmac::<sha2::Sha256>::new_from_slice(token_key.as_bytes()).expect("any key length");
    derive.update(b"mysocket edge cookies v1");
    let key = derive.finalize().into_bytes();
    hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length")
}

/// `payload` as JSON, in base64url, a dot, and its MAC.
fn seal<T: Serialize>(token_key: &str, payload: &T) -> String {
    let body = B64.encode(serde_json::to_vec(payload).expect("serializable"));
    let mut mac = cookie_mac(token_key);
    mac.update(body.as_bytes());
    format!("{body}.{}", B64.encode(mac.finalize().into_bytes()))
}

/// The payload of a value [`seal`] made with the same key, if its MAC is right.
fn open<T: serde::de::DeserializeOwned>(token_key: &str, value: &str) -> Option<T> {
    let (body, tag) = value.split_once('.')?;
    let tag = B64.decode(tag).ok()?;
    let mut mac = cookie_mac(token_key);
    mac.update(body.as_bytes());
    if !crate::planted::on(crate::planted::Bug::ForgedSession) {
        mac.verify_slice(&tag).ok()?;
    }
    serde_json::from_slice(&B64.decode(body).ok()?).ok()
}

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

fn random_token() -> String {
    B64.encode(rand::random::<[u8; 32]>())
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
    let challenge = B64.encode(sha2::Sha256::digest(login.verifier.as_bytes()));
    let redirect_uri = format!("{}{CALLBACK}", base(scheme, host));
    let params = [
        ("response_type", "code"),
        ("client_id", p.cfg.client_id.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("scope", "openid email"),
        ("state", login.state.as_str()),
        ("nonce", login.nonce.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let Ok(url) = reqwest::Url::parse_with_params(&m.authorization_endpoint, &params) else {
        return unavailable("the provider's authorization endpoint is not a URL");
    };
    let mut r = redirect(url.as_str());
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

    /// An EC key: its PKCS#8 DER (to sign with) and its JWK (as a provider publishes it).
    fn ec_key(kid: &str) -> (Vec<u8>, jsonwebtoken::jwk::Jwk) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw();
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..65]),
        });
        (kp.serialize_der(), serde_json::from_value(jwk).unwrap())
    }

    fn token(der: &[u8], kid: &str, nonce: &str, verified: bool) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some(kid.into());
        let claims = serde_json::json!({
            "iss": "http://idp.test", "aud": "edge", "exp": now_secs() + 60, "sub": "a",
            "email": "Ada@Example.org", "email_verified": verified, "nonce": nonce,
        });
        jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_ec_der(der)).unwrap()
    }

    #[tokio::test]
    async fn an_id_token_passes_only_signed_by_a_published_key_with_the_nonce_and_a_verified_email() {
        let p = Provider::new(Oidc {
            issuer: "http://idp.test".into(),
            client_id: "edge".into(),
            client_secret: crate::config::Secret("s".into()),
            session: Duration::from_secs(60),
        });
        let (published, jwk) = ec_key("k1");
        let (unpublished, _) = ec_key("k1");
        // The provider's keys as fetched a moment ago (so an unknown key is not fetched again).
        *p.keys.lock().await = Some((JwkSet { keys: vec![jwk] }, Instant::now()));
        let m = Metadata {
            issuer: "http://idp.test".into(),
            authorization_endpoint: "http://idp.test/auth".into(),
            token_endpoint: "http://idp.test/token".into(),
            jwks_uri: "http://idp.test/jwks".into(),
        };
        assert_eq!(p.verify(&m, &token(&published, "k1", "n1", true), "n1").await, Ok("ada@example.org".into()));
        let refused = [
            (token(&unpublished, "k1", "n1", true), "signed by another key under the published key's id"),
            (token(&unpublished, "k2", "n1", true), "signed by a key the provider does not publish"),
            (token(&published, "k1", "n2", true), "another login's nonce"),
            (token(&published, "k1", "n1", false), "an unverified email"),
        ];
        for (t, what) in refused {
            assert!(p.verify(&m, &t, "n1").await.is_err(), "{what}");
        }
        let other_issuer = Metadata { issuer: "http://evil.test".into(), ..m.clone() };
        assert!(p.verify(&other_issuer, &token(&published, "k1", "n1", true), "n1").await.is_err(), "another issuer");
    }

    #[test]
    fn the_refusal_page_escapes_the_email() {
        let r = not_allowed("<script>@x.org");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(html_escape("<b>\"'&"), "&lt;b&gt;&quot;&#39;&amp;");
    }
}
