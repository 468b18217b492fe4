//! The cluster's OpenID Connect provider, as a client of it: discovery, keys, the
//! authorization code flow with PKCE, and ID token checks. Cloud authentication
//! ([`crate::edge::cloud`]) signs visitors in with it, and the console
//! ([`crate::api::console`]) signs accounts in. And the signed cookies both keep a login in
//! progress in.

use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::Mac;
use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;
use serde::Serialize;
use sha2::Digest;

use crate::config::Oidc;

/// The provider's keys are fetched again when a token names one not seen, at most this often.
const KEYS_REFETCH: Duration = Duration::from_secs(10);
/// And at least this often.
const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);

/// What the provider's discovery document says that the node uses.
#[derive(Clone, Deserialize)]
pub struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
}

/// The cluster's identity provider: its configuration, its discovery document and its keys,
/// fetched when first needed and cached.
pub struct Provider {
    pub cfg: Oidc,
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
    pub async fn metadata(&self) -> Result<Metadata, String> {
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
    pub async fn verify(&self, m: &Metadata, id_token: &str, nonce: &str) -> Result<String, String> {
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
    pub async fn exchange(
        &self,
        m: &Metadata,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<String, String> {
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

pub fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

pub fn now_secs() -> u64 {
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
pub fn seal<T: Serialize>(token_key: &str, payload: &T) -> String {
    let body = B64.encode(serde_json::to_vec(payload).expect("serializable"));
    let mut mac = cookie_mac(token_key);
    mac.update(body.as_bytes());
    format!("{body}.{}", B64.encode(mac.finalize().into_bytes()))
}

/// The payload of a value [`seal`] made with the same key, if its MAC is right.
pub fn open<T: serde::de::DeserializeOwned>(token_key: &str, value: &str) -> Option<T> {
    let (body, tag) = value.split_once('.')?;
    let tag = B64.decode(tag).ok()?;
    let mut mac = cookie_mac(token_key);
    mac.update(body.as_bytes());
    if !crate::planted::on(crate::planted::Bug::ForgedSession) {
        mac.verify_slice(&tag).ok()?;
    }
    serde_json::from_slice(&B64.decode(body).ok()?).ok()
}

/// The authorization request's URL (code flow, `openid email`, PKCE with S256) for a login
/// with these `state`, `nonce` and PKCE `verifier`, coming back to `redirect_uri`.
pub fn authorize_url(
    p: &Provider,
    m: &Metadata,
    redirect_uri: &str,
    state: &str,
    nonce: &str,
    verifier: &str,
) -> Option<String> {
    let challenge = B64.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let params = [
        ("response_type", "code"),
        ("client_id", p.cfg.client_id.as_str()),
        ("redirect_uri", redirect_uri),
        ("scope", "openid email"),
        ("state", state),
        ("nonce", nonce),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    reqwest::Url::parse_with_params(&m.authorization_endpoint, &params).ok().map(String::from)
}

pub fn random_token() -> String {
    B64.encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
