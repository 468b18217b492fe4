//! Serving a local port through a tunnel until stopped, for `connect` and `tunnel connect`.

use std::path::PathBuf;
use std::sync::Arc;

use mysocket_api::ApiClient;
use mysocket_api::Socket;
use mysocket_api::Tunnel;

use crate::context::Context;
use crate::failure::fail;
use crate::failure::Failure;
use crate::inspect::Inspector;
use crate::tunnel::Forward;
use crate::tunnel::TunnelSpec;

/// The cluster as a tunnel sees it (`GET /cluster`): the SSH host key every node presents, every
/// node's SSH endpoint, and an API client that falls back on every node's API — so refreshing
/// the node list, and deleting the socket at the end, work while the nodes named by
/// `--api-url` are down.
pub struct TunnelCluster {
    pub api: ApiClient,
    host_key: String,
    ssh: Vec<String>,
}

impl TunnelCluster {
    /// Asks `api` for the cluster, and remembers its nodes for later commands.
    pub async fn of(ctx: &Context, api: &ApiClient) -> Result<TunnelCluster, Failure> {
        let view = api.cluster().await?;
        ctx.remember_nodes(&view);
        let host_key = view.ssh_host_key.clone().ok_or_else(|| {
            fail(1, "the cluster has not published its SSH host key yet (is it bootstrapped?); try again")
        })?;
        let ssh = view.ssh_addrs();
        let api = api.clone().with_fallbacks(view.nodes.iter().map(|n| n.api_addr.clone()));
        Ok(TunnelCluster { api, host_key, ssh })
    }

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

    /// An SSH session, logged in as `user` with `identity`, that forwards what `forwards`
    /// says (and follows its changes), first through `server`.
    pub fn spec(
        &self,
        user: &str,
        server: &str,
        identity: PathBuf,
        forwards: tokio::sync::watch::Receiver<Vec<Forward>>,
        inspector: Option<Arc<Inspector>>,
    ) -> TunnelSpec {
        TunnelSpec {
            user: user.to_string(),
            identity,
            servers: self.servers(server),
            host_key: self.host_key.clone(),
            forwards,
            inspector,
        }
    }
}

/// Tunnel `t` of `sock` to the local service at `host:port`.
pub fn forward(sock: &Socket, t: &Tunnel, host: String, port: u16) -> Forward {
    Forward {
        name: sock.name.clone(),
        relay_port: t.local_port,
        host,
        port,
        socket_id: sock.socket_id.clone(),
        tunnel_id: t.tunnel_id.clone(),
        http: matches!(sock.socket_type.as_str(), "http" | "https"),
    }
}

/// Starts the inspector when `inspect` asks for it (`false` turns it off): its address is
/// printed on stderr. One that cannot listen is reported and left out; the tunnels run anyway.
pub async fn inspector(inspect: &str) -> Result<Option<Arc<Inspector>>, Failure> {
    if matches!(inspect.trim(), "false" | "off" | "no" | "") {
        return Ok(None);
    }
    let default = inspect == crate::inspect::web::DEFAULT;
    let addr: std::net::SocketAddr = inspect
        .parse()
        .map_err(|_| fail(2, format!("--inspect {inspect:?}: an address such as 127.0.0.1:4040, or false")))?;
    let i = Inspector::new();
    match crate::inspect::web::serve(i.clone(), addr, default).await {
        Ok(at) => {
            eprintln!("Inspector: http://{at} (requests through your http tunnels; replay them from there)");
            Ok(Some(i))
        }
        Err(e) => {
            eprintln!("the inspector cannot listen on {addr}: {e}; running without it");
            Ok(None)
        }
    }
}

/// The socket's public URL(s), on stderr (stdout being the tunnel's log).
pub fn print_urls(s: &Socket) {
    match s.socket_type.as_str() {
        "tcp" | "tls" => {
            eprintln!("{}://{}:{}", s.socket_type, s.dnsname, s.socket_tcp_ports.first().copied().unwrap_or(0))
        }
        _ => eprintln!("http://{} (HTTP port 8080 on the local cluster), https://{} (8443)", s.dnsname, s.dnsname),
    }
}

/// Keeps the tunnel up until it fails for good (`Some`), or SIGTERM or Ctrl-C stops it (`None`).
pub async fn until_stopped(spec: TunnelSpec, api: &ApiClient) -> Option<anyhow::Result<()>> {
    tokio::select! {
        r = crate::tunnel::run(spec, api.clone()) => Some(r),
        _ = stop_signal() => None,
    }
}

pub async fn stop_signal() {
    use tokio::signal::unix::signal;
    use tokio::signal::unix::SignalKind;
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
