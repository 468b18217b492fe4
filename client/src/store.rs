//! What the CLI keeps between runs: the token `login` got, and the cluster's nodes (with the CA
//! for an HTTPS API) so that later commands still find the cluster when a node is down.

use std::path::PathBuf;

use crate::failure::fail;
use crate::failure::Failure;

fn token_file() -> PathBuf {
    if let Some(p) = std::env::var_os("MYSOCKET_TOKEN_FILE") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".mysocketio_token")
}

/// The credential commands run with: MYSOCKET_API_KEY if set, else the token `login` kept.
pub fn read_token() -> Result<String, Failure> {
    if let Some(k) = std::env::var("MYSOCKET_API_KEY").ok().filter(|k| !k.trim().is_empty()) {
        return Ok(k.trim().to_string());
    }
    let p = token_file();
    let t = std::fs::read_to_string(&p)
        .map_err(|_| fail(3, format!("not logged in (no token in {}); run: mysocketctl login", p.display())))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(fail(3, "not logged in; run: mysocketctl login"));
    }
    Ok(t)
}

pub fn write_token(token: &str) -> Result<PathBuf, Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::PermissionsExt;
    let p = token_file();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&p)
        .map_err(|e| fail(1, format!("cannot write {}: {e}", p.display())))?;
    // An existing file keeps its mode on open: make sure nobody else can read the token.
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail(1, format!("cannot protect {}: {e}", p.display())))?;
    f.write_all(token.as_bytes()).map_err(|e| fail(1, format!("cannot write {}: {e}", p.display())))?;
    Ok(p)
}

/// Where the CLI keeps the API addresses of the cluster behind the token (`<token file>.nodes`),
/// so that every command still finds the cluster when the node its API URL names is down.
fn nodes_file() -> PathBuf {
    let mut p = token_file().into_os_string();
    p.push(".nodes");
    PathBuf::from(p)
}

/// The cluster's nodes as last seen through the API URL(s) `given`.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct KnownNodes {
    given: Vec<String>,
    pub nodes: Vec<String>,
    /// The CA (PEM) `login` was given for these URLs, trusted by every later command to them.
    #[serde(default)]
    pub ca_pem: Option<String>,
}

/// Keeps the nodes' API addresses from `GET /cluster` (and the CA this run trusts), at login
/// and whenever a tunnel starts. Best effort: a file that cannot be written only costs the
/// fall-back.
pub fn remember_nodes(given: &[String], ca_pem: Option<String>, view: &mysocket_api::ClusterView) {
    let nodes = view.nodes.iter().filter(|n| !n.api_addr.is_empty()).map(|n| n.api_addr.clone()).collect();
    let known = KnownNodes { given: given.to_vec(), nodes, ca_pem };
    if let Ok(text) = serde_json::to_string(&known) {
        let _ = std::fs::write(nodes_file(), text);
    }
}

/// The remembered nodes, if they were seen through the same API URL(s) as now: another
/// `--api-url` means another cluster, or a choice the user made, and gets no fall-back.
pub fn known_nodes(given: &[String]) -> Option<KnownNodes> {
    std::fs::read(nodes_file())
        .ok()
        .and_then(|b| serde_json::from_slice::<KnownNodes>(&b).ok())
        .filter(|k| k.given == given)
}
