//! tcp (and, with TLS terminated here, tls) sockets: every node listens on each such socket's
//! allocated port while the socket exists, following registry changes as they are applied,
//! and splices each connection to a live tunnel of the socket (local or relayed).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mysocket_raft_store::SocketType;
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::TryRecvError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::edge::Edge;
use crate::metrics::Listener;

/// Most concurrent connections per tcp socket on one node.
const MAX_CONNECTIONS_PER_SOCKET: usize = 4096;

/// Keeps one listener per tcp/tls socket until `stop`.
pub async fn reconcile(edge: Arc<Edge>, tls: crate::net::tls::Slot, stop: CancellationToken) {
    let node = &edge.node;
    let mut events = node.state_machine.subscribe();
    let mut listeners: HashMap<u16, (Uuid, CancellationToken)> = HashMap::new();
    let ip = node.config.http_addr.ip();
    loop {
        let wanted: HashMap<u16, (Uuid, SocketType)> = node.read(|r| {
            r.port_sockets()
                .filter_map(|s| {
                    s.port.filter(|_| s.socket_type.needs_port()).map(|p| (p, (s.socket_id, s.socket_type)))
                })
                .collect()
        });
        listeners.retain(|port, (sid, tok)| {
            let keep = wanted.get(port).map(|(w, _)| w == sid).unwrap_or(false);
            if !keep {
                tracing::info!(port, socket_id = %sid, "closing tcp listener");
                tok.cancel();
            }
            keep
        });
        for (port, (sid, kind)) in &wanted {
            if listeners.contains_key(port) {
                continue;
            }
            match TcpListener::bind(SocketAddr::new(ip, *port)).await {
                Ok(l) => {
                    let tok = stop.child_token();
                    listeners.insert(*port, (*sid, tok.clone()));
                    tracing::info!(port, socket_id = %sid, kind = kind.as_str(), "tcp listener open");
                    let (edge, tls, sid, kind) = (edge.clone(), tls.clone(), *sid, *kind);
                    tokio::spawn(async move { accept_loop(edge, tls, l, sid, kind, tok).await });
                }
                // Retried on the next pass (a previous listener may still be closing).
                Err(e) => tracing::warn!(port, error = %e, "cannot listen for a tcp socket"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = events.recv() => {
                // One pass covers every change applied so far: drain the rest of the burst.
                while !matches!(events.try_recv(), Err(TryRecvError::Empty | TryRecvError::Closed)) {}
            }
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

async fn accept_loop(
    edge: Arc<Edge>,
    tls: crate::net::tls::Slot,
    listener: TcpListener,
    socket_id: Uuid,
    kind: SocketType,
    stop: CancellationToken,
) {
    let stop2 = stop.clone();
    let what = if kind == SocketType::Tls { Listener::TlsSocket } else { Listener::TcpSocket };
    crate::net::accept::serve(
        listener,
        MAX_CONNECTIONS_PER_SOCKET,
        edge.node.config.max_connections_per_source,
        what,
        stop2,
        move |mut client, peer| {
            let (edge, tls, stop) = (edge.clone(), tls.clone(), stop.clone());
            async move {
                let started = std::time::Instant::now();
                // The socket's rules, as the replica has them now: refused, the connection is
                // closed before a byte is read or a tunnel is opened.
                let admitted = edge.node.read(|r| {
                    r.socket(&socket_id)
                        .map(|s| (crate::edge::policy::admit_connection(&edge, s, peer.ip()), s.access.proxy_protocol))
                });
                let proxy_protocol = admitted.as_ref().and_then(|(_, p)| *p);
                if let Some((Err(why), _)) = admitted {
                    crate::metrics::get().visitor_refused(kind.as_str(), why.reason());
                    tracing::debug!(%peer, %socket_id, reason = why.reason(), "tcp connection refused");
                    return;
                }
                let (mut upstream, log) =
                    match crate::edge::upstream::open_upstream(&edge, &socket_id, peer, true).await {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::debug!(%peer, %socket_id, reason = ?e, "no tunnel for tcp connection");
                            return;
                        }
                    };
                let relayed = matches!(log, crate::edge::log::LogSink::Relay { .. });
                // The visitor's address, before any of its bytes, when the socket asks for it.
                if let (Some(version), Ok(dst)) = (proxy_protocol, client.local_addr()) {
                    use tokio::io::AsyncWriteExt;
                    let header = crate::edge::proxy_header::header(version, peer, dst);
                    if upstream.write_all(&header).await.is_err() {
                        return;
                    }
                }
                let piped = async {
                    if kind == SocketType::Tls {
                        let acceptor = tls.read().expect("tls lock").clone()?;
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(client)).await {
                            Ok(Ok(mut s)) => crate::edge::upstream::pipe(&mut s, &mut upstream, relayed).await.ok(),
                            _ => {
                                tracing::debug!(%peer, "tls handshake failed");
                                None
                            }
                        }
                    } else {
                        crate::edge::upstream::pipe(&mut client, &mut upstream, relayed).await.ok()
                    }
                };
                // Deleting the socket closes its connections too.
                let moved = tokio::select! {
                    m = piped => m,
                    _ = stop.cancelled() => None,
                };
                // A relayed connection is logged by the holder, which counts its bytes.
                if let crate::edge::log::LogSink::Local(h) = &log {
                    let (to_service, to_client) = moved.unwrap_or((0, 0));
                    crate::edge::log::log_line(
                        h,
                        crate::edge::log::connection_line(peer, to_service, to_client, started.elapsed()),
                    );
                }
            }
        },
    )
    .await
}
