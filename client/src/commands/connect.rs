//! `connect`: a new socket with a tunnel, served until Ctrl-C, then deleted again.

use std::path::PathBuf;

use mysocket_api::ApiClient;

use super::serve;
use super::serve::TunnelCluster;
use crate::cli::SocketSpec;
use crate::context::Context;
use crate::failure::fail;
use crate::failure::Failure;
use crate::output;

pub async fn run(
    port: u16,
    spec: SocketSpec,
    host: String,
    identity: Option<PathBuf>,
    ctx: &Context,
) -> Result<(), Failure> {
    let identity = crate::tunnel::find_identity(identity)?;
    let cluster = TunnelCluster::of(ctx, &ctx.authed()?).await?;
    let sock = cluster.api.connect(&spec.into()).await?;
    let t = sock.tunnels.first().ok_or_else(|| fail(1, "the server created no tunnel"))?;
    ctx.output.print(&sock, output::socket);
    serve::print_urls(&sock);
    let spec = cluster.spec(&sock, t, host, port, identity);
    let outcome = serve::until_stopped(spec, &cluster.api).await.unwrap_or(Ok(()));
    // Ctrl-C (or a fatal error): the socket goes away with us.
    delete_socket(&cluster.api, &sock.socket_id).await;
    outcome.map_err(Failure::from)
}

/// Deletes the socket, and says so on stderr.
async fn delete_socket(api: &ApiClient, socket_id: &str) {
    match api.delete_socket(socket_id).await {
        Ok(()) => eprintln!("Socket {socket_id} deleted"),
        Err(e) if e.is_not_found() => eprintln!("Socket {socket_id} was deleted already"),
        Err(e) => eprintln!("could not delete socket {socket_id}: {e}"),
    }
}
