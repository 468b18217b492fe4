//! The REST API on the API port: cluster administration and health, accounts and login.
//! Every error is `{"message": ...}`; bad input never yields a 500 and never changes state.
//! [`accounts`] (sign-up, login, tokens, who a caller is), [`credentials`] (listing and
//! revoking tokens, API keys), [`sockets`] (sockets and tunnels,
//! checked by [`validate`]), [`cluster`] (health, the cluster's view, membership), [`error`]
//! (errors and bounded bodies), [`dashboard`], [`metrics`], [`openapi`], and [`tls`] (HTTPS
//! on this port), [`console`] (the web console for accounts). It builds on [`crate::control`]
//! only.

pub mod access;
pub mod accounts;
pub mod charts;
pub mod cluster;
pub mod console;
pub mod credentials;
pub mod dashboard;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod sockets;
pub mod tls;
pub mod validate;

pub use accounts::authenticate;
pub use accounts::caller;
pub use accounts::request_id;
pub use accounts::Caller;
pub use accounts::Operator;
pub use cluster::cluster_view;
pub use error::ApiError;
pub use error::ApiResult;
pub use error::Body;

use axum::extract::DefaultBodyLimit;
use axum::extract::Request;
use axum::routing::delete;
use axum::routing::get;
use axum::routing::post;
use axum::Json;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::api::error::MAX_BODY;
use crate::control::NodeRef;

/// Largest request head accepted (431 beyond it).
const MAX_HEAD: usize = 64 * 1024;

/// Most API connections open at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 10_000;

/// Serves the REST API (HTTP/1.1, over TLS when `--api-tls` asks for it, with the acceptor
/// `tls` is filled with) until `stop`, then lets the requests in flight finish. A request head
/// (and a TLS handshake) must come whole within the header timeout and the head fit in
/// [`MAX_HEAD`], so a client that says nothing, or sends a head without end, does not keep
/// its connection.
pub async fn serve(
    node: NodeRef,
    listener: tokio::net::TcpListener,
    tls: crate::net::tls::Slot,
    stop: CancellationToken,
) {
    let https = !matches!(node.config.api_tls, crate::config::ApiTls::Off);
    let per_source = node.config.max_connections_per_source;
    let app = router(node);
    let open = TaskTracker::new();
    crate::net::accept::serve(
        listener,
        MAX_CONNECTIONS,
        per_source,
        crate::metrics::Listener::Api,
        stop.clone(),
        |stream, peer| {
            let (app, stop, open) = (app.clone(), stop.clone(), open.token());
            let acceptor = if https { tls.read().expect("tls slot").clone() } else { None };
            async move {
                match (https, acceptor) {
                    (false, _) => serve_connection(app, stream, peer, stop).await,
                    // Not bootstrapped yet (no certificate from the cluster CA): nothing to offer.
                    (true, None) => {}
                    (true, Some(a)) => {
                        if let Ok(Ok(s)) =
                            tokio::time::timeout(crate::net::accept::HEADER_TIMEOUT, a.accept(stream)).await
                        {
                            serve_connection(app, s, peer, stop).await;
                        }
                    }
                }
                drop(open);
            }
        },
    )
    .await;
    open.close();
    open.wait().await;
}

/// One API connection (HTTP/1.1, plain or after TLS) until it ends, or until `stop`, after
/// which the request in flight finishes.
async fn serve_connection<I>(app: Router, io: I, peer: std::net::SocketAddr, stop: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The caller's address, for the rate limits kept per source.
    let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(crate::net::accept::HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

pub fn router(node: NodeRef) -> Router {
    Router::new()
        .route("/", get(crate::api::dashboard::page))
        .route("/operator", get(crate::api::dashboard::operator_page))
        .route("/metrics", get(cluster::metrics))
        .route("/healthz", get(cluster::healthz))
        .route("/readyz", get(cluster::readyz))
        .route("/cluster", get(cluster::cluster))
        .route("/cluster/digest", get(cluster::digest))
        .route("/cluster/ca.pem", get(cluster::ca_pem))
        .route("/cluster/nodes", post(cluster::add_node))
        .route("/cluster/nodes/{id}", delete(cluster::remove_node))
        .route("/user", post(accounts::create_user))
        .route("/user/{user_id}", get(accounts::get_user))
        .route("/login", post(accounts::login))
        .route("/login/refresh", post(accounts::refresh))
        .route("/openapi.json", get(|| async { Json(crate::api::openapi::document()) }))
        .merge(crate::api::sockets::routes())
        .merge(crate::api::credentials::routes())
        .merge(crate::api::console::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(node)
}
