//! Passwords (argon2id) and API tokens (HS256 JWTs carrying `user_id` and `exp`, signed with
//! the cluster's replicated key so any node verifies any node's tokens).

use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::PasswordHash;
use argon2::password_hash::PasswordHasher;
use argon2::password_hash::PasswordVerifier;
use argon2::password_hash::SaltString;
use argon2::Argon2;
use jsonwebtoken::Algorithm;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::EncodingKey;
use jsonwebtoken::Header;
use jsonwebtoken::Validation;
use serde::Deserialize;
use serde::Serialize;

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
}

fn key_bytes(hex_key: &str) -> Vec<u8> {
    hex::decode(hex_key).unwrap_or_else(|_| hex_key.as_bytes().to_vec())
}

pub fn issue_token(hex_key: &str, user_id: &str, ttl: Duration, now_secs: u64) -> String {
    let claims = Claims { user_id: user_id.to_string(), exp: now_secs + ttl.as_secs(), iat: now_secs };
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
    fn tokens_refuse_forgery_expiry_and_alg_none() {
        let key = "00112233445566778899aabbccddeeff";
        let t = issue_token(key, "u1", Duration::from_secs(60), now());
        assert_eq!(verify_token(key, &t).unwrap().user_id, "u1");
        assert!(verify_token("ffeeddccbbaa99887766554433221100", &t).is_none(), "other key");
        let expired = issue_token(key, "u1", Duration::from_secs(0), now() - 10);
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
