//! `mysocketctl`: the command-line client of a mysocket cluster, with the original
//! mysocket.io client's commands and flags (underscore spellings such as `--socket_id` too).
//!
//! Exit codes scripts can trust: 0 success, 1 failure (server error or unreachable cluster),
//! 2 usage error, 3 not logged in or token refused, 4 not found, 5 conflict or limit.

mod table;
mod tunnel;

/// mimalloc instead of glibc's malloc: russh allocates a fresh buffer for every 64 KiB packet it
/// receives, and glibc handed those back to the kernel and faulted them in again (page faults
/// and page clearing were a tenth of the tunnel's CPU time in `perf`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Parser;
use clap::Subcommand;
use mysocket_api::ApiClient;
use mysocket_api::ClientError;
use mysocket_api::SocketCreate;
use mysocket_api::UserCreate;
use table::Table;

#[derive(Parser, Debug)]
#[command(name = "mysocketctl", version, about = "Client for a mysocket cluster: accounts, sockets and tunnels")]
struct Cli {
    /// API URL(s) of the cluster, comma separated; the next is tried when one is down, then
    /// the other nodes seen at login or when a tunnel last started.
    #[arg(
        long = "api-url",
        alias = "api_url",
        env = "MYSOCKET_API",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    api_url: Vec<String>,
    /// PEM file of the CA that signed the API's certificate (for `https://` API URLs), e.g. the
    /// cluster CA from a node's DATA_DIR/ca.pem; `login` keeps it for later commands to the
    /// same URLs. Without it, the system's roots.
    #[arg(long, env = "MYSOCKET_CACERT", global = true)]
    cacert: Option<PathBuf>,
    /// File holding the cluster's operator token, for `cluster add|remove`, the detail of
    /// `cluster status`, and `account create` on a cluster whose sign-up is closed. The token
    /// itself may come from MYSOCKET_OPERATOR_TOKEN instead.
    #[arg(long = "operator-token-file", env = "MYSOCKET_OPERATOR_TOKEN_FILE", global = true)]
    operator_token_file: Option<PathBuf>,
    /// `table` (default) or `json` for scripts.
    #[arg(long, short = 'o', value_parser = ["table", "json"], default_value = "table", global = true)]
    output: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create or show your account.
    Account {
        #[command(subcommand)]
        cmd: AccountCmd,
    },
    /// Log in and store the token in ~/.mysocketio_token (the cluster's nodes beside it, in
    /// ~/.mysocketio_token.nodes).
    Login {
        #[arg(long, short = 'e')]
        email: Option<String>,
        #[arg(long, short = 'p')]
        password: Option<String>,
    },
    /// Manage sockets (public endpoints).
    Socket {
        #[command(subcommand)]
        cmd: SocketCmd,
    },
    /// Manage a socket's tunnels.
    Tunnel {
        #[command(subcommand)]
        cmd: TunnelCmd,
    },
    /// Create a socket with a tunnel and serve a local port through it until Ctrl-C (which
    /// deletes the socket again).
    Connect {
        /// The local port to publish.
        #[arg(long)]
        port: u16,
        #[command(flatten)]
        spec: SocketSpec,
        /// Where the local service listens.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// SSH private key; default ~/.ssh/id_ed25519, id_ecdsa or id_rsa.
        #[arg(long, short = 'i')]
        identity: Option<PathBuf>,
    },
    /// Inspect and change the cluster's membership (operators).
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
}

#[derive(Subcommand, Debug)]
enum AccountCmd {
    /// Create an account.
    Create {
        #[arg(long, short = 'n')]
        name: String,
        #[arg(long, short = 'e')]
        email: String,
        #[arg(long, short = 'p')]
        password: Option<String>,
        /// OpenSSH public key, as text or a path; default ~/.ssh/id_ed25519.pub, id_ecdsa.pub or id_rsa.pub.
        #[arg(long, short = 's')]
        sshkey: Option<String>,
    },
    /// Show the logged-in account.
    Show,
}

#[derive(clap::Args, Debug)]
struct SocketSpec {
    /// The socket's name, shown by `socket ls` and in the tunnel's banner.
    #[arg(long, short = 'n', default_value = "mysocketctl")]
    name: String,
    /// http, https, tcp or tls.
    #[arg(long = "type", short = 't', default_value = "http")]
    socket_type: String,
    /// Require HTTP basic auth (username and password).
    #[arg(long, short = 'P', requires_all = ["username", "password"])]
    protected: bool,
    /// The username visitors give (with --protected).
    #[arg(long, short = 'u', requires = "protected")]
    username: Option<String>,
    /// The password visitors give (with --protected).
    #[arg(long, short = 'p', requires = "protected")]
    password: Option<String>,
    /// Visitors log in with an identity provider first (the original client's option); sent
    /// as asked, so a cluster that cannot enforce it refuses the socket.
    #[arg(long)]
    cloudauth: bool,
    /// Emails allowed through cloud authentication, comma separated.
    #[arg(long = "allowed_email_addresses", alias = "allowed-email-addresses", value_delimiter = ',')]
    allowed_email_addresses: Vec<String>,
    /// Email domains allowed through cloud authentication, comma separated.
    #[arg(long = "allowed_email_domains", alias = "allowed-email-domains", value_delimiter = ',')]
    allowed_email_domains: Vec<String>,
}

impl From<SocketSpec> for SocketCreate {
    fn from(s: SocketSpec) -> SocketCreate {
        SocketCreate {
            name: s.name,
            socket_type: Some(s.socket_type),
            protected_socket: s.protected,
            protected_username: s.username,
            protected_password: s.password,
            cloud_authentication_enabled: s.cloudauth,
            cloud_authentication_email_allowed_addressses: s.allowed_email_addresses,
            cloud_authentication_email_allowed_domains: s.allowed_email_domains,
        }
    }
}

#[derive(Subcommand, Debug)]
enum SocketCmd {
    /// List your sockets.
    Ls,
    /// Create a socket.
    Create(SocketSpec),
    /// Show one socket with its tunnels.
    Show {
        #[arg(long = "socket_id", alias = "socket-id", short = 's')]
        socket_id: String,
    },
    /// Delete a socket and its tunnels.
    Delete {
        #[arg(long = "socket_id", alias = "socket-id", short = 's')]
        socket_id: String,
    },
}

#[derive(Subcommand, Debug)]
enum TunnelCmd {
    /// List a socket's tunnels.
    Ls {
        #[arg(long = "socket_id", alias = "socket-id", short = 's')]
        socket_id: String,
    },
    /// Add a tunnel to a socket.
    Create {
        #[arg(long = "socket_id", alias = "socket-id", short = 's')]
        socket_id: String,
    },
    /// Show one tunnel.
    Show {
        #[arg(long = "socket_id", alias = "socket-id", short = 's')]
        socket_id: String,
        #[arg(long = "tunnel_id", alias = "tunnel-id", short = 't')]
        tunnel_id: String,
    },
    /// Delete a tunnel.
    Delete {
        #[arg(long = "socket_id", alias = "socket-id", short = 's')]
        socket_id: String,
        #[arg(long = "tunnel_id", alias = "tunnel-id", short = 't')]
        tunnel_id: String,
    },
    /// Serve a local port through an existing tunnel until stopped.
    Connect {
        #[arg(long = "socket_id", alias = "socket-id", short = 's')]
        socket_id: String,
        #[arg(long = "tunnel_id", alias = "tunnel-id", short = 't')]
        tunnel_id: String,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, short = 'i')]
        identity: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Leader, term and nodes.
    Status,
    /// Add a node (running with --join, or reachable at its raft address).
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long = "raft-addr", alias = "raft_addr")]
        raft_addr: String,
    },
    /// Remove a node; its id is never reused.
    Remove {
        #[arg(long)]
        id: u64,
    },
}

/// A failure with the exit code it maps to.
struct Failure {
    code: i32,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        let code = match e.status().map(|s| s.as_u16()) {
            Some(401) | Some(403) if matches!(&e, ClientError::Api { message, .. } if message.contains("token")) => 3,
            Some(401) => 3,
            Some(404) => 4,
            Some(409) | Some(403) | Some(429) => 5,
            Some(400) | Some(413) | Some(422) => 2,
            _ => 1,
        };
        Failure { code, message: e.to_string() }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure { code: 1, message: format!("{e:#}") }
    }
}

fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure { code, message: message.into() }
}

fn token_file() -> PathBuf {
    if let Some(p) = std::env::var_os("MYSOCKET_TOKEN_FILE") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".mysocketio_token")
}

fn read_token() -> Result<String, Failure> {
    let p = token_file();
    let t = std::fs::read_to_string(&p)
        .map_err(|_| fail(3, format!("not logged in (no token in {}); run: mysocketctl login", p.display())))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(fail(3, "not logged in; run: mysocketctl login"));
    }
    Ok(t)
}

fn write_token(token: &str) -> Result<PathBuf, Failure> {
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
struct KnownNodes {
    given: Vec<String>,
    nodes: Vec<String>,
    /// The CA (PEM) `login` was given for these URLs, trusted by every later command to them.
    #[serde(default)]
    ca_pem: Option<String>,
}

/// The nodes' API addresses from `GET /cluster`, saved at login and whenever a tunnel starts.
/// Best effort: a file that cannot be written only costs the fall-back.
/// The CA this run trusts for an HTTPS API (`--cacert`, or the one login kept), kept again
/// with the nodes.
static CA_PEM: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

fn remember_nodes(given: &[String], view: &mysocket_api::ClusterView) {
    let ca_pem = CA_PEM.get().cloned().flatten();
    let nodes = view.nodes.iter().filter(|n| !n.api_addr.is_empty()).map(|n| n.api_addr.clone()).collect();
    let known = KnownNodes { given: given.to_vec(), nodes, ca_pem };
    if let Ok(text) = serde_json::to_string(&known) {
        let _ = std::fs::write(nodes_file(), text);
    }
}

/// The remembered nodes, if they were seen through the same API URL(s) as now: another
/// `--api-url` means another cluster, or a choice the user made, and gets no fall-back.
fn known_nodes(given: &[String]) -> Option<KnownNodes> {
    std::fs::read(nodes_file())
        .ok()
        .and_then(|b| serde_json::from_slice::<KnownNodes>(&b).ok())
        .filter(|k| k.given == given)
}

fn prompt(label: &str, secret: bool) -> Result<String, Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(fail(2, format!("--{} is required when not on a terminal", label.to_lowercase())));
    }
    let v = if secret {
        rpassword::prompt_password(format!("{label}: ")).map_err(|e| fail(1, e.to_string()))?
    } else {
        eprint!("{label}: ");
        let mut s = String::new();
        std::io::stdin().read_line(&mut s).map_err(|e| fail(1, e.to_string()))?;
        s
    };
    Ok(v.trim_end_matches(['\r', '\n']).to_string())
}

/// The public key to register: the given text, a file, or the user's default key.
fn read_sshkey(arg: Option<String>) -> Result<String, Failure> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let candidates: Vec<PathBuf> = match &arg {
        Some(a) if a.trim_start().starts_with("ssh-") || a.trim_start().starts_with("ecdsa-") => {
            return Ok(a.trim().to_string())
        }
        Some(a) => vec![PathBuf::from(a)],
        None => ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"].iter().map(|f| home.join(".ssh").join(f)).collect(),
    };
    for p in &candidates {
        if let Ok(k) = std::fs::read_to_string(p) {
            return Ok(k.trim().to_string());
        }
    }
    Err(fail(
        2,
        match arg {
            Some(a) => format!("--sshkey {a:?} is neither a public key nor a readable file"),
            None => "no --sshkey given and no ~/.ssh/id_ed25519.pub, id_ecdsa.pub or id_rsa.pub; create one with ssh-keygen -t ed25519".into(),
        },
    ))
}

fn json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("json"));
}

fn socket_table(socks: &[mysocket_api::Socket]) {
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
    t.print();
}

fn tunnel_table(tunnels: &[mysocket_api::Tunnel]) {
    let mut t = Table::new(["TUNNEL ID", "RELAY PORT", "TUNNEL SERVER"]);
    for x in tunnels {
        t.row([x.tunnel_id.clone(), x.local_port.to_string(), x.tunnel_server.clone()]);
    }
    t.print();
}

/// The cluster as `GET /cluster` shows it: each node's internal address, role, applied index
/// and tunnels only for an operator (the columns are left out otherwise).
fn cluster_table(v: &mysocket_api::ClusterView) {
    println!("leader: {}   term: {}", v.leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into()), v.term);
    if v.nodes.iter().all(|n| n.raft_addr.is_none()) {
        let mut t = Table::new(["ID", "API", "SSH"]);
        for n in &v.nodes {
            t.row([n.id.to_string(), n.api_addr.clone(), n.ssh_addr.clone()]);
        }
        t.print();
        return;
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
    t.print();
}

/// The operator token: MYSOCKET_OPERATOR_TOKEN, else the file `--operator-token-file` names.
fn operator_token(file: Option<&PathBuf>) -> Result<Option<String>, Failure> {
    if let Some(t) = std::env::var("MYSOCKET_OPERATOR_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
        return Ok(Some(t.trim().to_string()));
    }
    match file {
        None => Ok(None),
        Some(p) => std::fs::read_to_string(p)
            .map(|t| Some(t.trim().to_string()))
            .map_err(|e| fail(2, format!("cannot read the operator token file {}: {e}", p.display()))),
    }
}

/// The cluster as a tunnel sees it (`GET /cluster`): the SSH host key every node presents, every
/// node's SSH endpoint, and an API client that falls back on every node's API — so refreshing
/// the node list, and deleting the socket at the end, work while the nodes named by
/// `--api-url` are down.
struct TunnelCluster {
    api: ApiClient,
    host_key: String,
    ssh: Vec<String>,
}

async fn tunnel_cluster(api: &ApiClient, given: &[String]) -> Result<TunnelCluster, Failure> {
    let view = api.cluster().await?;
    remember_nodes(given, &view);
    let host_key = view.ssh_host_key.clone().ok_or_else(|| {
        fail(1, "the cluster has not published its SSH host key yet (is it bootstrapped?); try again")
    })?;
    let ssh = view.ssh_addrs();
    let api = api.clone().with_fallbacks(view.nodes.iter().map(|n| n.api_addr.clone()));
    Ok(TunnelCluster { api, host_key, ssh })
}

impl TunnelCluster {
    /// SSH endpoints to try: the tunnel's own server first, then every node's.
    fn servers(&self, first: &str) -> Vec<String> {
        let mut v = vec![first.to_string()];
        for s in &self.ssh {
            if !v.contains(s) {
                v.push(s.clone());
            }
        }
        v
    }
}

fn print_urls(s: &mysocket_api::Socket) {
    match s.socket_type.as_str() {
        "tcp" | "tls" => {
            eprintln!("{}://{}:{}", s.socket_type, s.dnsname, s.socket_tcp_ports.first().copied().unwrap_or(0))
        }
        _ => eprintln!("http://{} (HTTP port 8080 on the local cluster), https://{} (8443)", s.dnsname, s.dnsname),
    }
}

async fn stop_signal() {
    use tokio::signal::unix::signal;
    use tokio::signal::unix::SignalKind;
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(f) = run(cli).await {
        eprintln!("error: {}", f.message);
        std::process::exit(f.code);
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let anon = ApiClient::new(cli.api_url.clone());
    let given = anon.urls().to_vec();
    let known = known_nodes(&given);
    // The CA to trust for an HTTPS API: the one given now, else the one login was given.
    let ca_pem = match &cli.cacert {
        Some(p) => Some(
            std::fs::read_to_string(p).map_err(|e| fail(2, format!("cannot read --cacert {}: {e}", p.display())))?,
        ),
        None => known.as_ref().and_then(|k| k.ca_pem.clone()),
    };
    let anon = match &ca_pem {
        Some(pem) => anon.with_ca_pem(pem.as_bytes()).map_err(|e| fail(2, format!("--cacert: {e}")))?,
        None => anon,
    };
    let _ = CA_PEM.set(ca_pem);
    let anon = anon.with_fallbacks(known.map(|k| k.nodes).unwrap_or_default());
    let authed = || -> Result<ApiClient, Failure> { Ok(anon.clone().with_token(read_token()?)) };
    let operator_token = operator_token(cli.operator_token_file.as_ref())?;
    // Calls that an operator may make: with the operator token if there is one.
    let maybe_operator = match &operator_token {
        Some(t) => anon.clone().with_token(t.clone()),
        None => anon.clone(),
    };
    let operator = || -> Result<ApiClient, Failure> {
        Ok(maybe_operator.clone().with_token(operator_token.clone().ok_or_else(|| {
            fail(3, "this command needs the operator token: --operator-token-file FILE or MYSOCKET_OPERATOR_TOKEN")
        })?))
    };
    let as_json = cli.output == "json";
    match cli.cmd {
        Cmd::Account { cmd: AccountCmd::Create { name, email, password, sshkey } } => {
            let password = match password {
                Some(p) => p,
                None => prompt("Password", true)?,
            };
            let sshkey = read_sshkey(sshkey)?;
            let u = maybe_operator.create_user(&UserCreate { name, email, password, sshkey }).await?;
            if as_json {
                json(&u);
            } else {
                println!(
                    "Account created: {} <{}>\nuser id:  {}\nssh user: {}\nNext: mysocketctl login --email {}\n\
                     (If this email already had an account, nothing changed: log in with its password.)",
                    u.name, u.email, u.user_id, u.user_name, u.email
                );
            }
        }
        Cmd::Account { cmd: AccountCmd::Show } => {
            let token = read_token()?;
            let id = mysocket_api::token_user_id(&token)
                .ok_or_else(|| fail(3, "the stored token is unreadable; log in again"))?;
            let u = anon.clone().with_token(token).get_user(&id).await?;
            if as_json {
                json(&u);
            } else {
                let mut t = Table::new(["NAME", "EMAIL", "USER ID", "SSH USER"]);
                t.row([u.name.clone(), u.email.clone(), u.user_id.clone(), u.user_name.clone()]);
                t.print();
                println!("ssh key: {}", u.sshkey);
            }
        }
        Cmd::Login { email, password } => {
            let email = match email {
                Some(e) => e,
                None => prompt("Email", false)?,
            };
            let password = match password {
                Some(p) => p,
                None => prompt("Password", true)?,
            };
            let t = anon.login(&email, &password).await?;
            let path = write_token(&t.token)?;
            if let Ok(view) = anon.cluster().await {
                remember_nodes(&given, &view);
            }
            if as_json {
                json(&serde_json::json!({"token_file": path}));
            } else {
                println!("Logged in; token saved in {}", path.display());
            }
        }
        Cmd::Socket { cmd } => {
            let api = authed()?;
            match cmd {
                SocketCmd::Ls => {
                    let s = api.sockets().await?;
                    if as_json {
                        json(&s)
                    } else {
                        socket_table(&s)
                    }
                }
                SocketCmd::Create(spec) => {
                    let s = api.create_socket(&spec.into()).await?;
                    if as_json {
                        json(&s)
                    } else {
                        socket_table(std::slice::from_ref(&s))
                    }
                }
                SocketCmd::Show { socket_id } => {
                    let s = api.socket(&socket_id).await?;
                    if as_json {
                        json(&s)
                    } else {
                        socket_table(std::slice::from_ref(&s));
                        println!();
                        tunnel_table(&s.tunnels);
                    }
                }
                SocketCmd::Delete { socket_id } => {
                    api.delete_socket(&socket_id).await?;
                    if as_json {
                        json(&serde_json::json!({"deleted": socket_id}))
                    } else {
                        println!("Socket {socket_id} deleted")
                    }
                }
            }
        }
        Cmd::Tunnel { cmd } => {
            let api = authed()?;
            match cmd {
                TunnelCmd::Ls { socket_id } => {
                    let t = api.tunnels(&socket_id).await?;
                    if as_json {
                        json(&t)
                    } else {
                        tunnel_table(&t)
                    }
                }
                TunnelCmd::Create { socket_id } => {
                    let t = api.create_tunnel(&socket_id).await?;
                    if as_json {
                        json(&t)
                    } else {
                        tunnel_table(std::slice::from_ref(&t))
                    }
                }
                TunnelCmd::Show { socket_id, tunnel_id } => {
                    let t = api.tunnel(&socket_id, &tunnel_id).await?;
                    if as_json {
                        json(&t)
                    } else {
                        tunnel_table(std::slice::from_ref(&t))
                    }
                }
                TunnelCmd::Connect { socket_id, tunnel_id, port, host, identity } => {
                    let cluster = tunnel_cluster(&api, &given).await?;
                    let api = cluster.api.clone();
                    let sock = api.socket(&socket_id).await?;
                    let t = sock
                        .tunnels
                        .iter()
                        .find(|t| t.tunnel_id == tunnel_id)
                        .ok_or_else(|| fail(4, format!("socket {socket_id} has no tunnel {tunnel_id}")))?;
                    let spec = tunnel::TunnelSpec {
                        user: sock.user_name.clone(),
                        relay_port: t.local_port,
                        host,
                        port,
                        identity: tunnel::find_identity(identity)?,
                        servers: cluster.servers(&t.tunnel_server),
                        host_key: cluster.host_key,
                        socket_id: socket_id.clone(),
                        tunnel_id: tunnel_id.clone(),
                    };
                    print_urls(&sock);
                    tokio::select! {
                        r = tunnel::run(spec, api.clone()) => r?,
                        _ = stop_signal() => eprintln!("stopped"),
                    }
                }
                TunnelCmd::Delete { socket_id, tunnel_id } => {
                    api.delete_tunnel(&socket_id, &tunnel_id).await?;
                    if as_json {
                        json(&serde_json::json!({"deleted": tunnel_id}))
                    } else {
                        println!("Tunnel {tunnel_id} deleted")
                    }
                }
            }
        }
        Cmd::Connect { port, spec, host, identity } => {
            let identity = tunnel::find_identity(identity)?;
            let cluster = tunnel_cluster(&authed()?, &given).await?;
            let api = cluster.api.clone();
            let sock = api.connect(&spec.into()).await?;
            let t = sock.tunnels.first().ok_or_else(|| fail(1, "the server created no tunnel"))?.clone();
            if as_json {
                json(&sock);
            } else {
                socket_table(std::slice::from_ref(&sock));
            }
            print_urls(&sock);
            let spec = tunnel::TunnelSpec {
                user: sock.user_name.clone(),
                relay_port: t.local_port,
                host,
                port,
                identity,
                servers: cluster.servers(&t.tunnel_server),
                host_key: cluster.host_key,
                socket_id: sock.socket_id.clone(),
                tunnel_id: t.tunnel_id.clone(),
            };
            let outcome = tokio::select! {
                r = tunnel::run(spec, api.clone()) => r.map_err(Failure::from),
                _ = stop_signal() => Ok(()),
            };
            // Ctrl-C (or a fatal error): the socket goes away with us.
            match api.delete_socket(&sock.socket_id).await {
                Ok(()) => eprintln!("Socket {} deleted", sock.socket_id),
                Err(e) if e.is_not_found() => {
                    eprintln!("Socket {} was deleted already", sock.socket_id)
                }
                Err(e) => eprintln!("could not delete socket {}: {e}", sock.socket_id),
            }
            outcome?;
        }
        Cmd::Cluster { cmd } => match cmd {
            ClusterCmd::Status => {
                let v = maybe_operator.cluster().await?;
                if as_json {
                    json(&v)
                } else {
                    cluster_table(&v)
                }
            }
            ClusterCmd::Add { id, raft_addr } => {
                let v = operator()?.add_node(id, &raft_addr).await?;
                if as_json {
                    json(&v)
                } else {
                    cluster_table(&v)
                }
            }
            ClusterCmd::Remove { id } => {
                operator()?.remove_node(id).await?;
                if as_json {
                    json(&serde_json::json!({"removed": id}))
                } else {
                    println!("Node {id} removed")
                }
            }
        },
    }
    Ok(())
}
