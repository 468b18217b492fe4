//! The config file `mysocketctl start` runs: several tunnels, each a socket of the account
//! (made when missing, its rules set to the file's) and the local service it serves. TOML,
//! every key checked: an unknown key, a wrong type or a bad value is refused with its line.
//!
//! ```toml
//! identity = "~/.ssh/id_ed25519"   # optional; default ~/.ssh/id_ed25519, id_ecdsa or id_rsa
//! inspect = "127.0.0.1:4040"       # optional; false for no inspector
//!
//! [[tunnel]]
//! name = "web"                     # the socket's name, unique in the file
//! type = "http"                    # http (default), https, tcp or tls
//! local = "127.0.0.1:3000"         # the local service (a port alone means 127.0.0.1)
//! subdomain = "web"                # optional: web.<domain>
//! ```
//!
//! Every option of `POST /socket` has its key: `subdomain`, `public_port`, `domain`,
//! `protected_username` and `protected_password` (both, for Basic auth), `cloudauth`,
//! `allowed_email_addresses`, `allowed_email_domains`, `ip_allow`, `ip_deny`, `rate_limit`,
//! `proxy_protocol`, `upstream_protocol`.

use std::path::Path;
use std::path::PathBuf;

use mysocket_api::SocketCreate;
use serde::Deserialize;

/// `$XDG_CONFIG_HOME/mysocket/mysocket.toml`, else `~/.config/mysocket/mysocket.toml`.
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".config")
    });
    base.join("mysocket").join("mysocket.toml")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    identity: Option<String>,
    inspect: Option<Inspect>,
    #[serde(default)]
    tunnel: Vec<toml::Spanned<TunnelEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Inspect {
    Off(bool),
    At(String),
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct TunnelEntry {
    name: String,
    #[serde(rename = "type", default)]
    socket_type: Option<String>,
    local: LocalService,
    subdomain: Option<String>,
    public_port: Option<u16>,
    domain: Option<String>,
    protected_username: Option<String>,
    protected_password: Option<String>,
    #[serde(default)]
    cloudauth: bool,
    #[serde(default)]
    allowed_email_addresses: Vec<String>,
    #[serde(default)]
    allowed_email_domains: Vec<String>,
    #[serde(default)]
    ip_allow: Vec<String>,
    #[serde(default)]
    ip_deny: Vec<String>,
    rate_limit: Option<u32>,
    proxy_protocol: Option<String>,
    upstream_protocol: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
enum LocalService {
    Port(u16),
    Addr(String),
}

/// One tunnel of the file: the socket it wants, and the local service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConf {
    pub want: SocketCreate,
    pub host: String,
    pub port: u16,
}

/// The file, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub identity: Option<PathBuf>,
    /// The inspector's address, or "false".
    pub inspect: Option<String>,
    pub tunnels: Vec<TunnelConf>,
}

/// The line (from 1) of byte `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Reads and checks the file: every error names the file and its line.
pub fn load(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Config, String> {
    let at = |span: Option<std::ops::Range<usize>>| match span {
        Some(s) => format!("{}:{}", path.display(), line_of(text, s.start)),
        None => path.display().to_string(),
    };
    let file: File = toml::from_str(text).map_err(|e| format!("{}: {}", at(e.span()), e.message()))?;
    let mut tunnels: Vec<TunnelConf> = Vec::new();
    for entry in &file.tunnel {
        let here = at(Some(entry.span()));
        let t = entry.get_ref();
        let name = t.name.trim();
        if name.is_empty() {
            return Err(format!("{here}: the tunnel's name is empty"));
        }
        if tunnels.iter().any(|o| o.want.name == name) {
            return Err(format!("{here}: a tunnel named {name:?} comes twice; names are unique in the file"));
        }
        let (host, port) = match &t.local {
            LocalService::Port(p) => ("127.0.0.1".to_string(), *p),
            LocalService::Addr(a) => {
                let (h, p) = a.rsplit_once(':').ok_or_else(|| {
                    format!("{here}: local = {a:?}: host:port (or a port alone) of the local service")
                })?;
                let p = p.parse::<u16>().map_err(|_| format!("{here}: local = {a:?}: the port is not a number"))?;
                (h.trim_start_matches('[').trim_end_matches(']').to_string(), p)
            }
        };
        if port == 0 || host.is_empty() {
            return Err(format!("{here}: local: a host and a port from 1 to 65535"));
        }
        let kind = t.socket_type.clone().unwrap_or_else(|| "http".into()).to_ascii_lowercase();
        if !["http", "https", "tcp", "tls"].contains(&kind.as_str()) {
            return Err(format!("{here}: type = {kind:?}: http, https, tcp or tls"));
        }
        let protected = match (&t.protected_username, &t.protected_password) {
            (Some(_), Some(_)) => true,
            (None, None) => false,
            _ => return Err(format!("{here}: protected_username and protected_password come together")),
        };
        tunnels.push(TunnelConf {
            want: SocketCreate {
                name: name.to_string(),
                socket_type: Some(kind),
                protected_socket: protected,
                protected_username: t.protected_username.clone(),
                protected_password: t.protected_password.clone(),
                cloud_authentication_enabled: t.cloudauth,
                cloud_authentication_email_allowed_addressses: t.allowed_email_addresses.clone(),
                cloud_authentication_email_allowed_domains: t.allowed_email_domains.clone(),
                ip_allow: t.ip_allow.clone(),
                ip_deny: t.ip_deny.clone(),
                rate_limit: t.rate_limit.unwrap_or(0),
                subdomain: t.subdomain.clone(),
                port: t.public_port,
                custom_domain: t.domain.clone(),
                proxy_protocol: t.proxy_protocol.clone(),
                upstream_protocol: t.upstream_protocol.clone(),
            },
            host,
            port,
        });
    }
    if tunnels.is_empty() {
        return Err(format!("{}: no [[tunnel]]: nothing to run", path.display()));
    }
    let identity = file.identity.map(|i| match i.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(rest),
        None => PathBuf::from(i),
    });
    let inspect = file.inspect.map(|i| match i {
        Inspect::Off(false) => "false".to_string(),
        Inspect::Off(true) => crate::inspect::web::DEFAULT.to_string(),
        Inspect::At(a) => a,
    });
    Ok(Config { identity, inspect, tunnels })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, String> {
        parse(Path::new("m.toml"), text)
    }

    #[test]
    fn a_good_file_gives_every_tunnel_and_option() {
        let c = check(
            "inspect = false\n[[tunnel]]\nname = \"web\"\nlocal = 3000\nsubdomain = \"web\"\nip_allow = [\"10.0.0.0/8\"]\n\
             [[tunnel]]\nname = \"ssh\"\ntype = \"tcp\"\nlocal = \"192.168.1.5:22\"\nproxy_protocol = \"v2\"\n",
        )
        .unwrap();
        assert_eq!(c.inspect.as_deref(), Some("false"));
        assert_eq!(c.tunnels.len(), 2);
        assert_eq!((c.tunnels[0].host.as_str(), c.tunnels[0].port), ("127.0.0.1", 3000));
        assert_eq!(c.tunnels[0].want.subdomain.as_deref(), Some("web"));
        assert_eq!(c.tunnels[0].want.ip_allow, ["10.0.0.0/8"]);
        assert_eq!((c.tunnels[1].host.as_str(), c.tunnels[1].port), ("192.168.1.5", 22));
        assert_eq!(c.tunnels[1].want.proxy_protocol.as_deref(), Some("v2"));
    }

    #[test]
    fn mistakes_are_refused_with_their_line() {
        let cases = [
            ("[[tunnel]]\nname = \"a\"\nlocal = 1\nsubdomian = \"x\"\n", "m.toml:4", "unknown field `subdomian`"),
            ("[[tunnel]]\nname = \"a\"\nlocal = 1\nrate_limit = \"fast\"\n", "m.toml:4", "invalid type"),
            ("[[tunnel]]\nname = \"a\"\n", "m.toml:1", "missing field `local`"),
            (
                "\n\n[[tunnel]]\nname = \"a\"\nlocal = 1\n[[tunnel]]\nname = \"a\"\nlocal = 2\n",
                "m.toml:6",
                "comes twice",
            ),
            ("[[tunnel]]\nname = \"a\"\nlocal = \"nowhere\"\n", "m.toml:1", "host:port"),
            ("[[tunnel]]\nname = \"a\"\nlocal = 1\ntype = \"udp\"\n", "m.toml:1", "http, https, tcp or tls"),
            ("[[tunnel]]\nname = \"a\"\nlocal = 1\nprotected_username = \"u\"\n", "m.toml:1", "come together"),
            ("name = \"a\"\n", "m.toml:1", "unknown field `name`"),
            ("", "m.toml", "nothing to run"),
            ("[[tunnel]\n", "m.toml:1", ""),
        ];
        for (text, at, why) in cases {
            let e = check(text).unwrap_err();
            assert!(e.starts_with(at) && e.contains(why), "{text:?}: {e}");
        }
    }
}
