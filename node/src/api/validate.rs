//! Input validation for the REST API, with messages that say what to fix.

use russh::keys::ssh_key::public::KeyData;
use russh::keys::PublicKey;

use crate::api::ApiError;

pub const MAX_NAME: usize = 100;
pub const MAX_EMAIL: usize = 254;
pub const MIN_PASSWORD: usize = 6;
pub const MAX_PASSWORD: usize = 256;
pub const MAX_SSHKEY: usize = 16 * 1024;

pub fn name(s: &str) -> Result<String, ApiError> {
    let s = s.trim();
    if s.is_empty() || s.chars().count() > MAX_NAME || s.chars().any(char::is_control) {
        return Err(ApiError::bad(format!("name must be 1 to {MAX_NAME} printable characters")));
    }
    Ok(s.to_string())
}

/// Labels a user may not choose: the cluster's own names (its name servers among them) and
/// names people take for the operator's.
const RESERVED_LABELS: &[&str] = &[
    "www",
    "api",
    "admin",
    "console",
    "dashboard",
    "mail",
    "smtp",
    "imap",
    "pop",
    "autoconfig",
    "autodiscover",
    "localhost",
    "mysocket",
    "status",
    "cluster",
    "edge",
    "acme",
    "wildcard",
];

/// A chosen subdomain: one DNS label in lower case, not reserved. Names of the cluster's name
/// servers (`ns`, `ns1`, `ns2`, ...) are reserved too.
pub fn subdomain(s: &str) -> Result<String, ApiError> {
    let label = s.trim().to_ascii_lowercase();
    let shape = !label.is_empty()
        && label.len() <= 63
        && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if !shape {
        return Err(ApiError::bad(format!(
            "subdomain {s:?} must be one DNS label: 1 to 63 letters, digits and hyphens, not starting or ending with a hyphen"
        )));
    }
    let name_server = label.strip_prefix("ns").is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
    if name_server || RESERVED_LABELS.contains(&label.as_str()) {
        return Err(ApiError::bad(format!("subdomain {label:?} is reserved; choose another")));
    }
    Ok(label)
}

/// A custom domain: a DNS name of at least two labels, lower case, without the final dot.
pub fn custom_domain(s: &str) -> Result<String, ApiError> {
    let name = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let labels: Vec<&str> = name.split('.').collect();
    let tld_ok = labels.last().is_some_and(|t| t.bytes().any(|b| b.is_ascii_lowercase()));
    if name.len() > 253 || labels.len() < 2 || !labels.iter().all(|l| label_ok(l)) || !tld_ok {
        return Err(ApiError::bad(format!("custom_domain {s:?} is not a DNS name such as app.example.com")));
    }
    Ok(name)
}

pub fn email(s: &str) -> Result<String, ApiError> {
    let s = s.trim();
    let err = || ApiError::bad(format!("{s:?} is not a valid email address"));
    if s.len() > MAX_EMAIL || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err());
    }
    let (local, domain) = s.rsplit_once('@').ok_or_else(err)?;
    if local.is_empty() || local.contains('@') || domain.len() < 3 || !domain.contains('.') {
        return Err(err());
    }
    if domain.starts_with('.') || domain.ends_with('.') || domain.contains("..") {
        return Err(err());
    }
    if !domain.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '.') {
        return Err(err());
    }
    Ok(s.to_string())
}

pub fn password(s: &str) -> Result<(), ApiError> {
    let n = s.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        return Err(ApiError::bad(format!("password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")));
    }
    Ok(())
}

/// Parses an OpenSSH public key line: ed25519, ecdsa, or rsa of at least 2048 bits. Returns
/// the normalised line (algorithm, key, comment).
pub fn ssh_public_key(s: &str) -> Result<String, ApiError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(ApiError::bad(
            "sshkey is required: an OpenSSH public key such as the contents of ~/.ssh/id_ed25519.pub",
        ));
    }
    if s.len() > MAX_SSHKEY || s.contains('\n') {
        return Err(ApiError::bad("sshkey must be one OpenSSH public key line"));
    }
    let key =
        PublicKey::from_openssh(s).map_err(|e| ApiError::bad(format!("sshkey is not an OpenSSH public key: {e}")))?;
    match key.key_data() {
        KeyData::Ed25519(_) | KeyData::Ecdsa(_) => {}
        KeyData::Rsa(rsa) => {
            let bytes = rsa.n().as_positive_bytes().map(|b| b.len()).unwrap_or(0);
            if bytes * 8 < 2048 {
                return Err(ApiError::bad("rsa keys must have at least 2048 bits; ed25519 is recommended"));
            }
        }
        _ => return Err(ApiError::bad("sshkey must be ed25519, ecdsa or rsa")),
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(email("a@b.co").is_ok());
        for bad in ["", "a", "a@", "@b.co", "a@b", "a b@c.de", "a@.b.c", "a@b..c", "a@b.c.", "a@@b.co"] {
            assert!(email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ssh_keys() {
        let ed = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEKB/+HUsFGo5IjxjdpUNkfai/lOgRCdHyy1c7BmPvcN test@mysocket";
        assert!(ssh_public_key(ed).is_ok());
        assert!(ssh_public_key("ssh-ed25519 AAAA").is_err());
        assert!(ssh_public_key("").is_err());
        assert!(ssh_public_key("hello").is_err());
    }
}
