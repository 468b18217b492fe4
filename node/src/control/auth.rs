//! Passwords (argon2id), API tokens (HS256 JWTs carrying `user_id` and `exp`, signed with
//! the cluster's replicated key so any node verifies any node's tokens), the operator
//! credential (a random token of which the registry keeps only a SHA-256), and the salted,
//! keyed hashes of sockets' Basic-auth passwords.

use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::PasswordHash;
use argon2::password_hash::PasswordHasher;
use argon2::password_hash::PasswordVerifier;
use argon2::password_hash::SaltString;
use argon2::Argon2;
use hmac::Mac;
use jsonwebtoken::Algorithm;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::EncodingKey;
use jsonwebtoken::Header;
use jsonwebtoken::Validation;
use rand::RngCore;
use serde::Deserialize;
use serde::Serialize;
use sha2::Digest;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Hashes a password with argon2id and a random salt (PHC string).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hash password: {e}"))
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// Token payload. The original client decodes it unverified to find `user_id`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub user_id: String,
    pub exp: u64,
    pub iat: u64,
    /// The token's credential id in the registry: accepted while the registry holds it. A
    /// token without one (issued before tokens were revocable) is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

fn key_bytes(hex_key: &str) -> Vec<u8> {
    hex::decode(hex_key).unwrap_or_else(|_| hex_key.as_bytes().to_vec())
}

pub fn issue_token(hex_key: &str, user_id: &str, jti: &str, ttl: Duration, now_secs: u64) -> String {
    let claims = Claims {
        user_id: user_id.to_string(),
        exp: now_secs + ttl.as_secs(),
        iat: now_secs,
        jti: Some(jti.to_string()),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&key_bytes(hex_key)))
        .expect("HS256 signing cannot fail")
}

/// Verifies signature, algorithm (HS256 only: `alg: none` and others are refused) and expiry.
pub fn verify_token(hex_key: &str, token: &str) -> Option<Claims> {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = 0;
    v.set_required_spec_claims(&["exp"]);
    jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&key_bytes(hex_key)), &v).ok().map(|d| d.claims)
}

/// A fresh operator token: 32 random bytes, hex, behind a prefix that says what it is.
pub fn new_operator_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    format!("mysocket-operator-{}", hex::encode(b))
}

/// What the registry keeps of the operator token: its SHA-256, hex. The token is 256 random
/// bits, so a fast hash leaves nothing to guess.
pub fn operator_token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// Whether `given` is the operator token whose hash is `hash_hex`, compared in constant time
/// (digests of equal length, so the comparison tells nothing of the token's length). An empty
/// hash (a cluster without an operator credential) matches nothing.
pub fn is_operator_token(hash_hex: &str, given: &str) -> bool {
    let Ok(want) = hex::decode(hash_hex) else { return false };
    want.len() == 32 && bool::from(Sha256::digest(given.trim().as_bytes()).as_slice().ct_eq(&want))
}

/// What an API key starts with, so it is told from a token at a glance (and by secret scanners).
pub const API_KEY_PREFIX: &str = "mysk_";

/// A fresh API key for credential `id`: `mysk_<id, 32 hex>_<secret, 64 hex>`, and the SHA-256
/// of its secret, which is all the registry keeps. 256 random bits leave nothing to guess, so
/// a fast hash is enough (as for the operator token).
pub fn new_api_key(id: &uuid::Uuid) -> (String, String) {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    let secret = hex::encode(b);
    (format!("{API_KEY_PREFIX}{}_{secret}", id.simple()), hex::encode(Sha256::digest(secret.as_bytes())))
}

/// The credential id and secret of something shaped like an API key.
pub fn parse_api_key(key: &str) -> Option<(uuid::Uuid, &str)> {
    let (id, secret) = key.strip_prefix(API_KEY_PREFIX)?.split_once('_')?;
    let id = uuid::Uuid::try_parse(id).ok()?;
    (secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit())).then_some((id, secret))
}

/// Whether `secret` is the one whose SHA-256 is `hash_hex`, in constant time.
pub fn api_key_matches(hash_hex: &str, secret: &str) -> bool {
    let Ok(want) = hex::decode(hash_hex) else { return false };
    want.len() == 32 && bool::from(Sha256::digest(secret.as_bytes()).as_slice().ct_eq(&want))
}

type HmacSha256 = hmac::Hmac<Sha256>;

fn keyed_digest(key_hex: &str, salt: &[u8], password: &str) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(&key_bytes(key_hex)).expect("HMAC takes keys of any length");
    mac.update(salt);
    mac.update(password.as_bytes());
    mac.finalize().into_bytes().into()
}

/// The stored form of a socket's Basic-auth password: `hmac-sha256$<salt>$<digest>` (hex),
/// keyed with the cluster's token key and salted per socket. A keyed hash rather than argon2:
/// it is checked on every request to a protected socket, where tens of milliseconds of argon2
/// would be the price of each request.
pub fn basic_password_hash(key_hex: &str, password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    format!("hmac-sha256${}${}", hex::encode(salt), hex::encode(keyed_digest(key_hex, &salt, password)))
}

/// Whether `password` matches a stored [`basic_password_hash`], in constant time: the digests
/// compared are always 32 bytes, whatever the password's length.
pub fn basic_password_matches(key_hex: &str, stored: &str, password: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some("hmac-sha256"), Some(salt), Some(want), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Ok(salt), Ok(want)) = (hex::decode(salt), hex::decode(want)) else { return false };
    want.len() == 32 && bool::from(keyed_digest(key_hex, &salt, password).as_slice().ct_eq(&want))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn password_roundtrip() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn operator_tokens_and_basic_passwords() {
        let t = new_operator_token();
        let h = operator_token_hash(&t);
        assert!(is_operator_token(&h, &t));
        assert!(!is_operator_token(&h, &new_operator_token()));
        assert!(!is_operator_token("", &t), "a cluster without an operator hash has no operator");
        assert!(!h.contains(&t[18..]), "the hash is not the token");
        let key = "00112233445566778899aabbccddeeff";
        let stored = basic_password_hash(key, "open sesame");
        assert!(!stored.contains("open sesame"));
        assert_ne!(stored, basic_password_hash(key, "open sesame"), "salted");
        assert!(basic_password_matches(key, &stored, "open sesame"));
        assert!(!basic_password_matches(key, &stored, "open sesame "));
        assert!(!basic_password_matches("ffeeddccbbaa99887766554433221100", &stored, "open sesame"), "keyed");
        assert!(!basic_password_matches(key, "open sesame", "open sesame"), "a clear-text value never matches");
    }

    #[test]
    fn api_keys_parse_and_match_only_their_secret() {
        let id = uuid::Uuid::new_v4();
        let (key, hash) = new_api_key(&id);
        assert!(key.starts_with("mysk_") && !hash.contains(&key[38..]), "the hash is not the secret");
        let (parsed, secret) = parse_api_key(&key).expect("parses");
        assert_eq!(parsed, id);
        assert!(api_key_matches(&hash, secret));
        let (_, other) = new_api_key(&id);
        assert!(!api_key_matches(&other, secret), "another key's hash");
        for bad in ["mysk_", "mysk_x_y", &key[..key.len() - 1], &key.replace("mysk_", "mysk-"), "eyJhbGciOi.x.y"] {
            assert!(parse_api_key(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn tokens_refuse_forgery_expiry_and_alg_none() {
        let key = "00112233445566778899aabbccddeeff";
        let t = issue_token(key, "u1", "j1", Duration::from_secs(60), now());
        let claims = verify_token(key, &t).unwrap();
        assert_eq!((claims.user_id.as_str(), claims.jti.as_deref()), ("u1", Some("j1")));
        assert!(verify_token("ffeeddccbbaa99887766554433221100", &t).is_none(), "other key");
        let expired = issue_token(key, "u1", "j1", Duration::from_secs(0), now() - 10);
        assert!(verify_token(key, &expired).is_none(), "expired");
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"user_id":"u1","exp":{},"iat":0}}"#, now() + 100))
        );
        assert!(verify_token(key, &none).is_none(), "alg none");
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged_payload = b64.encode(format!(r#"{{"user_id":"u2","exp":{},"iat":0}}"#, now() + 100));
        parts[1] = &forged_payload;
        assert!(verify_token(key, &parts.join(".")).is_none(), "payload swapped");
    }
}
