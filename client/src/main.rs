//! `mysocketctl`: the command-line client of a mysocket cluster, with the original
//! mysocket.io client's commands and flags (underscore spellings such as `--socket_id` too).
//!
//! Exit codes scripts can trust: 0 success, 1 failure (server error or unreachable cluster),
//! 2 usage error, 3 not logged in or token refused, 4 not found, 5 conflict or limit.

mod cli;
mod failure;
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
use cli::AccountCmd;
use cli::Cli;
use cli::ClusterCmd;
use cli::Cmd;
use cli::SocketCmd;
use cli::TunnelCmd;
use failure::fail;
use failure::Failure;
use mysocket_api::ApiClient;
use mysocket_api::UserCreate;
use table::Table;

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
