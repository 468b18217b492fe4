//! `connect`: a socket with a tunnel, served until Ctrl-C. A socket named with `--name` or
//! `--subdomain` is the account's for good: reused when it exists, kept on exit, so the URL is
//! the same every run. Otherwise (and with `--temporary`) the socket is new and deleted on exit,
//! as the original client did.

use std::path::PathBuf;

use mysocket_api::ApiClient;
use mysocket_api::Socket;
use mysocket_api::SocketCreate;
use mysocket_api::SocketUpdate;
use mysocket_api::Tunnel;

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
    temporary: bool,
    host: String,
    identity: Option<PathBuf>,
    inspect: String,
    ctx: &Context,
) -> Result<(), Failure> {
    let identity = crate::tunnel::find_identity(identity)?;
    let cluster = TunnelCluster::of(ctx, &ctx.authed()?).await?;
    let keep = !temporary && (spec.name.is_some() || spec.subdomain.is_some());
    let want: SocketCreate = spec.into();
    let (sock, t) = if keep {
        reuse_or_create(&cluster.api, &want).await?
    } else {
        let sock = cluster.api.connect(&want).await?;
        let t = sock.tunnels.first().cloned().ok_or_else(|| fail(1, "the server created no tunnel"))?;
        (sock, t)
    };
    ctx.output.print(&sock, output::socket);
    serve::print_urls(&sock);
    let inspector = serve::inspector(&inspect).await?;
    let (_keep, forwards) = tokio::sync::watch::channel(vec![serve::forward(&sock, &t, host, port)]);
    let spec = cluster.spec(&sock.user_name, &t.tunnel_server, identity, forwards, inspector);
    let outcome = serve::until_stopped(spec, &cluster.api).await.unwrap_or(Ok(()));
    if keep {
        eprintln!(
            "Socket {} ({}) kept for the next run; `mysocketctl socket delete --socket_id {}` deletes it",
            sock.socket_id, sock.dnsname, sock.socket_id
        );
    } else {
        // Ctrl-C (or a fatal error): the socket goes away with us.
        delete_socket(&cluster.api, &sock.socket_id).await;
    }
    outcome.map_err(Failure::from)
}

/// The account's socket that `want` names (by subdomain if given, else by name), with its
/// rules set to `want`'s and a tunnel nobody holds; created when there is none.
pub async fn reuse_or_create(api: &ApiClient, want: &SocketCreate) -> Result<(Socket, Tunnel), Failure> {
    let socks = api.sockets().await?;
    let found = match &want.subdomain {
        Some(label) => {
            let prefix = format!("{}.", label.trim().to_ascii_lowercase());
            socks.into_iter().find(|s| s.dnsname.starts_with(&prefix))
        }
        None => socks.into_iter().find(|s| s.name == want.name),
    };
    let Some(sock) = found else {
        let sock = api.connect(want).await?;
        let t = sock.tunnels.first().cloned().ok_or_else(|| fail(1, "the server created no tunnel"))?;
        return Ok((sock, t));
    };
    same_endpoint(&sock, want)?;
    let sock = api.update_socket(&sock.socket_id, &rules(want)).await?;
    let t = match sock.tunnels.iter().find(|t| t.session.is_none()) {
        Some(t) => t.clone(),
        None => api.create_tunnel(&sock.socket_id).await?,
    };
    Ok((sock, t))
}

/// A reused socket must be what the flags ask for: its type, name and port cannot change.
pub fn same_endpoint(sock: &Socket, want: &SocketCreate) -> Result<(), Failure> {
    let kind = want.socket_type.as_deref().unwrap_or("http");
    let mismatch = |what: String| {
        fail(
            2,
            format!(
                "your socket {:?} ({}) {what}; delete it (`mysocketctl socket delete --socket_id {}`) or choose another --name/--subdomain",
                sock.name, sock.dnsname, sock.socket_id
            ),
        )
    };
    if !sock.socket_type.eq_ignore_ascii_case(kind.trim()) {
        return Err(mismatch(format!("is a {} socket, not {kind}", sock.socket_type)));
    }
    if want.subdomain.is_some() && sock.name != want.name {
        return Err(mismatch(format!("is named {:?}, not {:?}", sock.name, want.name)));
    }
    if let Some(p) = want.port {
        if sock.socket_tcp_ports != [p] {
            return Err(mismatch(format!("has port {:?}, not {p}", sock.socket_tcp_ports)));
        }
    }
    Ok(())
}

/// The access rules of `want`, as a change that replaces every rule of the socket.
pub fn rules(want: &SocketCreate) -> SocketUpdate {
    SocketUpdate {
        protected_socket: Some(want.protected_socket),
        protected_username: want.protected_username.clone(),
        protected_password: want.protected_password.clone(),
        cloud_authentication_enabled: Some(want.cloud_authentication_enabled),
        cloud_authentication_email_allowed_addressses: Some(want.cloud_authentication_email_allowed_addressses.clone()),
        cloud_authentication_email_allowed_domains: Some(want.cloud_authentication_email_allowed_domains.clone()),
        ip_allow: Some(want.ip_allow.clone()),
        ip_deny: Some(want.ip_deny.clone()),
        rate_limit: Some(want.rate_limit),
        custom_domain: want.custom_domain.clone(),
        proxy_protocol: Some(want.proxy_protocol.clone().unwrap_or_else(|| "off".into())),
        upstream_protocol: Some(want.upstream_protocol.clone().unwrap_or_else(|| "http1".into())),
    }
}

/// Deletes the socket, and says so on stderr.
async fn delete_socket(api: &ApiClient, socket_id: &str) {
    match api.delete_socket(socket_id).await {
        Ok(()) => eprintln!("Socket {socket_id} deleted"),
        Err(e) if e.is_not_found() => eprintln!("Socket {socket_id} was deleted already"),
        Err(e) => eprintln!("could not delete socket {socket_id}: {e}"),
    }
}
