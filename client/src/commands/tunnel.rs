//! `tunnel ls|create|show|delete|connect`.

use std::path::PathBuf;

use super::serve;
use super::serve::TunnelCluster;
use crate::cli::TunnelCmd;
use crate::context::Context;
use crate::failure::fail;
use crate::failure::Failure;
use crate::output;

pub async fn run(cmd: TunnelCmd, ctx: &Context) -> Result<(), Failure> {
    let api = ctx.authed()?;
    match cmd {
        TunnelCmd::Ls { socket_id } => ctx.output.print(api.tunnels(&socket_id).await?.as_slice(), output::tunnels),
        TunnelCmd::Create { socket_id } => ctx.output.print(&api.create_tunnel(&socket_id).await?, output::tunnel),
        TunnelCmd::Show { socket_id, tunnel_id } => {
            ctx.output.print(&api.tunnel(&socket_id, &tunnel_id).await?, output::tunnel)
        }
        TunnelCmd::Connect { socket_id, tunnel_id, port, host, identity } => {
            let cluster = TunnelCluster::of(ctx, &api).await?;
            connect(&cluster, socket_id, tunnel_id, host, port, identity).await?;
        }
        TunnelCmd::Delete { socket_id, tunnel_id } => {
            api.delete_tunnel(&socket_id, &tunnel_id).await?;
            let text = format!("Tunnel {tunnel_id} deleted");
            ctx.output.done("deleted", tunnel_id, text);
        }
    }
    Ok(())
}

/// Serves the local `host:port` through an existing tunnel until stopped.
async fn connect(
    cluster: &TunnelCluster,
    socket_id: String,
    tunnel_id: String,
    host: String,
    port: u16,
    identity: Option<PathBuf>,
) -> Result<(), Failure> {
    let sock = cluster.api.socket(&socket_id).await?;
    let t = sock
        .tunnels
        .iter()
        .find(|t| t.tunnel_id == tunnel_id)
        .ok_or_else(|| fail(4, format!("socket {socket_id} has no tunnel {tunnel_id}")))?;
    let identity = crate::tunnel::find_identity(identity)?;
    // The socket as the user named it, as it was asked for.
    let forward = crate::tunnel::Forward { socket_id, ..serve::forward(&sock, t, host, port) };
    let (_keep, forwards) = tokio::sync::watch::channel(vec![forward]);
    let spec = cluster.spec(&sock.user_name, &t.tunnel_server, identity, forwards, None);
    serve::print_urls(&sock);
    match serve::until_stopped(spec, &cluster.api).await {
        Some(r) => r?,
        None => eprintln!("stopped"),
    }
    Ok(())
}
