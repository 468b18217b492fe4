//! `mysocketctl`: the command-line client of a mysocket cluster, with the original
//! mysocket.io client's commands and flags (underscore spellings such as `--socket_id` too).
//!
//! Exit codes scripts can trust: 0 success, 1 failure (server error or unreachable cluster),
//! 2 usage error, 3 not logged in or token refused, 4 not found, 5 conflict or limit.

mod cli;
mod context;
mod failure;
mod output;
mod store;
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
use context::Context;
use failure::fail;
use failure::Failure;
use mysocket_api::ApiClient;
use mysocket_api::UserCreate;

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

/// The cluster as a tunnel sees it (`GET /cluster`): the SSH host key every node presents, every
/// node's SSH endpoint, and an API client that falls back on every node's API — so refreshing
/// the node list, and deleting the socket at the end, work while the nodes named by
/// `--api-url` are down.
struct TunnelCluster {
    api: ApiClient,
    host_key: String,
    ssh: Vec<String>,
}

async fn tunnel_cluster(ctx: &Context, api: &ApiClient) -> Result<TunnelCluster, Failure> {
    let view = api.cluster().await?;
    ctx.remember_nodes(&view);
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
    let ctx = Context::new(&cli)?;
    let out = ctx.output;
    match cli.cmd {
        Cmd::Account { cmd: AccountCmd::Create { name, email, password, sshkey } } => {
            let password = match password {
                Some(p) => p,
                None => prompt("Password", true)?,
            };
            let sshkey = read_sshkey(sshkey)?;
            let u = ctx.maybe_operator().create_user(&UserCreate { name, email, password, sshkey }).await?;
            out.print(&u, output::account_created);
        }
        Cmd::Account { cmd: AccountCmd::Show } => {
            let token = store::read_token()?;
            let id = mysocket_api::token_user_id(&token)
                .ok_or_else(|| fail(3, "the stored token is unreadable; log in again"))?;
            let u = ctx.anon().clone().with_token(token).get_user(&id).await?;
            out.print(&u, output::account);
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
            let t = ctx.anon().login(&email, &password).await?;
            let path = store::write_token(&t.token)?;
            if let Ok(view) = ctx.anon().cluster().await {
                ctx.remember_nodes(&view);
            }
            let text = format!("Logged in; token saved in {}", path.display());
            out.done("token_file", path, text);
        }
        Cmd::Socket { cmd } => {
            let api = ctx.authed()?;
            match cmd {
                SocketCmd::Ls => out.print(api.sockets().await?.as_slice(), output::sockets),
                SocketCmd::Create(spec) => out.print(&api.create_socket(&spec.into()).await?, output::socket),
                SocketCmd::Show { socket_id } => out.print(&api.socket(&socket_id).await?, output::socket_and_tunnels),
                SocketCmd::Delete { socket_id } => {
                    api.delete_socket(&socket_id).await?;
                    let text = format!("Socket {socket_id} deleted");
                    out.done("deleted", socket_id, text);
                }
            }
        }
        Cmd::Tunnel { cmd } => {
            let api = ctx.authed()?;
            match cmd {
                TunnelCmd::Ls { socket_id } => out.print(api.tunnels(&socket_id).await?.as_slice(), output::tunnels),
                TunnelCmd::Create { socket_id } => out.print(&api.create_tunnel(&socket_id).await?, output::tunnel),
                TunnelCmd::Show { socket_id, tunnel_id } => {
                    out.print(&api.tunnel(&socket_id, &tunnel_id).await?, output::tunnel)
                }
                TunnelCmd::Connect { socket_id, tunnel_id, port, host, identity } => {
                    let cluster = tunnel_cluster(&ctx, &api).await?;
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
                    let text = format!("Tunnel {tunnel_id} deleted");
                    out.done("deleted", tunnel_id, text);
                }
            }
        }
        Cmd::Connect { port, spec, host, identity } => {
            let identity = tunnel::find_identity(identity)?;
            let cluster = tunnel_cluster(&ctx, &ctx.authed()?).await?;
            let api = cluster.api.clone();
            let sock = api.connect(&spec.into()).await?;
            let t = sock.tunnels.first().ok_or_else(|| fail(1, "the server created no tunnel"))?.clone();
            out.print(&sock, output::socket);
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
            ClusterCmd::Status => out.print(&ctx.maybe_operator().cluster().await?, output::cluster),
            ClusterCmd::Add { id, raft_addr } => {
                out.print(&ctx.operator()?.add_node(id, &raft_addr).await?, output::cluster)
            }
            ClusterCmd::Remove { id } => {
                ctx.operator()?.remove_node(id).await?;
                out.done("removed", id, format!("Node {id} removed"));
            }
        },
    }
    Ok(())
}
