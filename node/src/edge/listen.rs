//! The public HTTP and HTTPS listeners: accept, terminate TLS, and hand each connection to
//! the hand-written HTTP/1 path or to hyper.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::edge::Edge;
use crate::net::accept::HEADER_TIMEOUT;

/// Most concurrent public connections per listener.
const MAX_CONNECTIONS: usize = 20_000;

/// Serves public HTTP until `stop`.
pub async fn serve_http(edge: Arc<Edge>, listener: TcpListener, stop: CancellationToken) {
    // One sweeper for the upstream pool that HTTP and HTTPS share.
    {
        let (edge, stop) = (edge.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {
                        edge.upstreams.sweep();
                        edge.streams.sweep();
                    }
                }
            }
        });
    }
    crate::net::accept::serve(
        listener,
        MAX_CONNECTIONS,
        edge.node.config.max_connections_per_source,
        crate::metrics::Listener::Http,
        stop,
        |stream, peer| {
            let edge = edge.clone();
            async move { crate::edge::http::h1::serve(edge, stream, peer, "http").await }
        },
    )
    .await
}

/// Serves public HTTPS until `stop`: TLS terminated with the cluster's certificates, then the
/// same routing as HTTP.
pub async fn serve_https(edge: Arc<Edge>, tls: crate::net::tls::Slot, listener: TcpListener, stop: CancellationToken) {
    crate::net::accept::serve(
        listener,
        MAX_CONNECTIONS,
        edge.node.config.max_connections_per_source,
        crate::metrics::Listener::Https,
        stop,
        |stream, peer| {
            let edge = edge.clone();
            // None until the cluster is bootstrapped: the connection is closed, nothing to present.
            let acceptor = tls.read().expect("tls slot").clone();
            async move {
                let Some(acceptor) = acceptor else { return };
                match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                            crate::edge::http::hyper::serve_connection(edge, TokioIo::new(tls), peer, "https", true)
                                .await
                        } else {
                            crate::edge::http::h1::serve(edge, tls, peer, "https").await
                        }
                    }
                    _ => tracing::debug!(%peer, "TLS handshake failed"),
                }
            }
        },
    )
    .await
}
