//! Requests to a socket whose service speaks HTTP/2 without TLS (`upstream_protocol: h2c`,
//! for gRPC): sent as HTTP/2 on one connection through a tunnel that the public connection's
//! requests share (HTTP/2 multiplexes them), so streaming calls stay full duplex and
//! trailers (gRPC's status) pass through as frames of their own.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header;
use hyper::Request;
use hyper::Response;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::edge::http::pages::page;
use crate::edge::http::Body;
use crate::edge::log::LogSink;
use crate::edge::upstream::open_upstream;
use crate::edge::upstream::NoUpstream;
use crate::edge::Edge;

type Sender = hyper::client::conn::http2::SendRequest<Body>;

/// A public connection's HTTP/2 connection through a tunnel, while its requests go to one socket.
pub type Slot = Arc<Mutex<Option<(Uuid, Sender, LogSink)>>>;

/// Fields HTTP/2 forbids (RFC 9113, 8.2.2): they describe one HTTP/1 connection.
const CONNECTION_FIELDS: [&str; 5] = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"];

/// Sends `req` (in the service's form, its edge fields set) to the socket's service over
/// HTTP/2: the response, with the log of the tunnel it went through, or the page that says
/// why not.
pub async fn send(
    edge: &Edge,
    slot: &Slot,
    socket_id: Uuid,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<(Response<Incoming>, LogSink), Response<Body>> {
    // HTTP/2 names the host in :authority, with :scheme: both come from the Host the request
    // was routed by.
    let host = req.headers_mut().remove(header::HOST);
    let host = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("localhost").to_string();
    let target = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    *req.uri_mut() = format!("http://{host}{target}")
        .parse()
        .map_err(|_| page(StatusCode::BAD_REQUEST, "Bad Request", "The request's host is not a valid name."))?;
    *req.version_mut() = hyper::Version::HTTP_2;
    for f in CONNECTION_FIELDS {
        req.headers_mut().remove(f);
    }
    if req.headers().get(header::TE).is_some_and(|v| v != "trailers") {
        req.headers_mut().remove(header::TE);
    }
    let (mut sender, log) = {
        let mut guard = slot.lock().await;
        let reuse = matches!(&*guard, Some((sid, s, log))
            if *sid == socket_id && !s.is_closed() && log.current(&edge.node));
        if !reuse {
            let (sender, log) = connect(edge, &socket_id, peer).await?;
            *guard = Some((socket_id, sender, log));
        }
        let (_, sender, log) = guard.as_ref().expect("set above");
        (sender.clone(), log.clone())
    };
    let stall = edge.node.config.stall_timeout;
    let sent = async {
        sender.ready().await?;
        sender.send_request(req.map(BodyExt::boxed)).await
    };
    match tokio::time::timeout(stall, sent).await {
        Ok(Ok(resp)) => Ok((resp, log)),
        Ok(Err(e)) => {
            *slot.lock().await = None;
            tracing::debug!(%peer, error = %e, "h2c request failed");
            Err(page(
                StatusCode::BAD_GATEWAY,
                "Bad Gateway",
                "The service behind the tunnel did not take the request over HTTP/2 (does it speak h2c?).",
            ))
        }
        Err(_) => Err(page(
            StatusCode::GATEWAY_TIMEOUT,
            "Gateway Timeout",
            "The service behind the tunnel took the request and did not answer in time.",
        )),
    }
}

/// A new HTTP/2 connection through a tunnel of the socket.
async fn connect(edge: &Edge, socket_id: &Uuid, peer: SocketAddr) -> Result<(Sender, LogSink), Response<Body>> {
    let (stream, log) = open_upstream(edge, socket_id, peer, false).await.map_err(NoUpstream::page)?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| page(StatusCode::BAD_GATEWAY, "Bad Gateway", &format!("The tunnel failed: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, log))
}
