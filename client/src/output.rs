//! The one way a command's result reaches stdout: pretty JSON for scripts (`--output json`), or
//! text for people, most of it plain ASCII tables like the original client's. The text views
//! here only build strings; [`Output::print`] picks one and prints it.

use mysocket_api::ApiKeyCreated;
use mysocket_api::ClusterView;
use mysocket_api::CredentialView;
use mysocket_api::Socket;
use mysocket_api::Tunnel;
use mysocket_api::User;

use crate::table::Table;

#[derive(Clone, Copy, Debug)]
pub enum Output {
    Table,
    Json,
}

impl Output {
    /// From `--output`, which clap has limited to `table` and `json`.
    pub fn from_flag(flag: &str) -> Output {
        match flag {
            "json" => Output::Json,
            _ => Output::Table,
        }
    }

    /// Prints `value` as JSON, or the text `view` makes of it.
    pub fn print<T: serde::Serialize + ?Sized>(self, value: &T, view: impl FnOnce(&T) -> String) {
        match self {
            Output::Json => println!("{}", serde_json::to_string_pretty(value).expect("json")),
            Output::Table => print!("{}", view(value)),
        }
    }

    /// What a command that changed something prints: `{"<key>": <id>}` as JSON, the line
    /// `text` for people.
    pub fn done(self, key: &str, id: impl serde::Serialize, text: String) {
        self.print(&serde_json::json!({ key: id }), |_| text + "\n");
    }
}

pub fn sockets(socks: &[Socket]) -> String {
    let mut t = Table::new(["SOCKET ID", "DNS NAME", "PORT(S)", "TYPE", "PROTECTED", "TUNNELS", "NAME"]);
    for s in socks {
        let ports: Vec<String> = s.socket_tcp_ports.iter().map(u16::to_string).collect();
        t.row([
            s.socket_id.clone(),
            s.dnsname.clone(),
            ports.join(", "),
            s.socket_type.clone(),
            s.protected_socket.to_string(),
            s.tunnels.len().to_string(),
            s.name.clone(),
        ]);
    }
    t.render()
}

/// A socket, and what to do about its custom domain if it has one not verified yet.
pub fn socket(s: &Socket) -> String {
    sockets(std::slice::from_ref(s)) + &domain(s)
}

/// A socket, its access rules, then its tunnels.
pub fn socket_and_tunnels(s: &Socket) -> String {
    format!("{}\n{}\n{}", socket(s), access(s), tunnels(&s.tunnels))
}

/// The custom domain's state, with the DNS record that proves control of it while unverified.
pub fn domain(s: &Socket) -> String {
    match &s.custom_domain {
        None => String::new(),
        Some(d) if d.verified => format!("\nCUSTOM DOMAIN  {} (verified)\n", d.name),
        Some(d) => format!(
            "\nCUSTOM DOMAIN  {} (not verified yet). At your DNS provider, set either\n  {}  TXT    \"{}\"\n  {}  CNAME  {}\nThe cluster checks every few seconds; `mysocketctl socket show` tells when it is verified.\n",
            d.name, d.txt_name, d.txt_value, d.name, d.cname_target
        ),
    }
}

/// Who may reach a socket, one rule a line, in the order the edge applies them.
pub fn access(s: &Socket) -> String {
    let list = |l: &[String]| if l.is_empty() { "-".to_string() } else { l.join(", ") };
    let mut out = String::from("ACCESS\n");
    out +=
        &format!("  ip allow:    {}\n", if s.ip_allow.is_empty() { "any".to_string() } else { s.ip_allow.join(", ") });
    out += &format!("  ip deny:     {}\n", list(&s.ip_deny));
    let rate = if s.rate_limit == 0 { "none".to_string() } else { format!("{} per second per visitor", s.rate_limit) };
    out += &format!("  rate limit:  {rate}\n");
    let basic = if s.protected_socket { format!("user {}", s.protected_username) } else { "off".to_string() };
    out += &format!("  basic auth:  {basic}\n");
    if s.cloud_authentication_enabled {
        out += &format!(
            "  cloud auth:  emails {}; domains {}\n",
            list(&s.cloud_authentication_email_allowed_addressses),
            list(&s.cloud_authentication_email_allowed_domains)
        );
    } else {
        out += "  cloud auth:  off\n";
    }
    out
}

pub fn tunnels(tunnels: &[Tunnel]) -> String {
    let mut t = Table::new(["TUNNEL ID", "RELAY PORT", "TUNNEL SERVER"]);
    for x in tunnels {
        t.row([x.tunnel_id.clone(), x.local_port.to_string(), x.tunnel_server.clone()]);
    }
    t.render()
}

pub fn tunnel(t: &Tunnel) -> String {
    tunnels(std::slice::from_ref(t))
}

/// The cluster as `GET /cluster` shows it: each node's internal address, role, applied index
/// and tunnels only for an operator (the columns are left out otherwise).
pub fn cluster(v: &ClusterView) -> String {
    let leader = v.leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into());
    let head = format!("leader: {leader}   term: {}\n", v.term);
    if v.nodes.iter().all(|n| n.raft_addr.is_none()) {
        let mut t = Table::new(["ID", "API", "SSH"]);
        for n in &v.nodes {
            t.row([n.id.to_string(), n.api_addr.clone(), n.ssh_addr.clone()]);
        }
        return head + &t.render();
    }
    let mut t = Table::new(["ID", "API", "SSH", "RAFT", "VOTER", "LAST APPLIED", "TUNNELS"]);
    for n in &v.nodes {
        let applied = n.last_applied.map(|a| a.to_string()).unwrap_or_else(|| "down".into());
        t.row([
            n.id.to_string(),
            n.api_addr.clone(),
            n.ssh_addr.clone(),
            n.raft_addr.clone().unwrap_or_default(),
            n.voter.unwrap_or(false).to_string(),
            applied,
            n.tunnels.unwrap_or(0).to_string(),
        ]);
    }
    head + &t.render()
}

pub fn account(u: &User) -> String {
    let mut t = Table::new(["NAME", "EMAIL", "USER ID", "SSH USER"]);
    t.row([u.name.clone(), u.email.clone(), u.user_id.clone(), u.user_name.clone()]);
    format!("{}ssh key: {}\n", t.render(), u.sshkey)
}

pub fn account_created(u: &User) -> String {
    format!(
        "Account created: {} <{}>\nuser id:  {}\nssh user: {}\nNext: mysocketctl login --email {}\n\
         (If this email already had an account, nothing changed: log in with its password.)\n",
        u.name, u.email, u.user_id, u.user_name, u.email
    )
}

pub fn credentials(list: &[CredentialView]) -> String {
    let mut t = Table::new(["ID", "NAME", "CREATED", "EXPIRES", ""]);
    for c in list {
        t.row([
            c.id.clone(),
            c.name.clone(),
            c.created_at.clone(),
            c.expires_at.clone().unwrap_or_else(|| "never".into()),
            if c.current { "(this one)".into() } else { String::new() },
        ]);
    }
    t.render()
}

pub fn api_key_created(k: &ApiKeyCreated) -> String {
    format!(
        "API key {:?} created (id {}), expires {}:\n\n  {}\n\nIt is shown this once. Use it as MYSOCKET_API_KEY, or as the x-access-token header.\n",
        k.credential.name,
        k.credential.id,
        k.credential.expires_at.as_deref().unwrap_or("never"),
        k.key
    )
}
