//! The inspector's page and JSON API (default `127.0.0.1:4040`):
//!
//! - `GET /`: the page (plain HTML, CSS and a little JavaScript, shipped in the binary);
//! - `GET /api/requests`: every recorded request, newest first, without bodies;
//!   `GET /api/requests/{id}`: one, with its bodies;
//! - `POST /api/requests/{id}/replay` (JSON, optional `method`, `path`, `headers`, `body`):
//!   sends it again to the local service and answers the new entry;
//! - `DELETE /api/requests`: forgets them all.
//!
//! Bound to loopback, it also refuses requests whose Host is not a loopback name (a web page
//! that rebinds its own name to 127.0.0.1 gets nothing), changes come only as JSON (which a
//! foreign page cannot send without a preflight this server never allows), and the page's
//! Content-Security-Policy lets it load nothing from elsewhere.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Path;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::routing::post;
use axum::Json;
use axum::Router;

use super::Edit;
use super::Inspector;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The default address, and how many ports after it are tried when it is taken (another
/// mysocketctl running).
pub const DEFAULT: &str = "127.0.0.1:4040";
const TRIES: u16 = 10;

/// Listens on `addr` (with `default`, on the next free port of the ten from it) and serves
/// until the process ends; the address it listens on.
pub async fn serve(inspector: Arc<Inspector>, addr: SocketAddr, default: bool) -> std::io::Result<SocketAddr> {
    let mut tried = 0;
    let listener = loop {
        let at = SocketAddr::new(addr.ip(), addr.port() + tried);
        match tokio::net::TcpListener::bind(at).await {
            Ok(l) => break l,
            Err(e) if default && tried + 1 < TRIES && e.kind() == std::io::ErrorKind::AddrInUse => tried += 1,
            Err(e) => return Err(e),
        }
    };
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/", get(page))
        .route("/page.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/page.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/api/requests", get(list).delete(clear))
        .route("/api/requests/{id}", get(one))
        .route("/api/requests/{id}/replay", post(replay))
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .layer(axum::middleware::from_fn(move |req, next| guard(bound, req, next)))
        .with_state(inspector);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(bound)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "message": message.into() }))).into_response()
}

/// Refuses a Host that is not a loopback name while bound to loopback, and a change that is
/// not JSON or comes from another origin.
async fn guard(bound: SocketAddr, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let name = host.rsplit_once(':').map_or(host, |(n, _)| n);
    let loopback_name = matches!(name, "localhost" | "127.0.0.1" | "[::1]") || name.starts_with("127.");
    if bound.ip().is_loopback() && !loopback_name {
        return error(StatusCode::FORBIDDEN, "the inspector answers to localhost only");
    }
    if req.method() != axum::http::Method::GET {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let same_origin = origin.is_none_or(|o| o.strip_prefix("http://") == Some(host));
        if !json || !same_origin {
            return error(StatusCode::FORBIDDEN, "changes come as JSON from the inspector's own page");
        }
    }
    next.run(req).await
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-store")], body).into_response()
}

async fn page() -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (headers, PAGE).into_response()
}

async fn list(State(i): State<Arc<Inspector>>) -> Response {
    Json(i.list()).into_response()
}

async fn one(State(i): State<Arc<Inspector>>, Path(id): Path<String>) -> Response {
    match id.parse().ok().and_then(|id| i.get(id)) {
        Some(e) => Json(e.view(true)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no request {id}")),
    }
}

async fn clear(State(i): State<Arc<Inspector>>) -> Response {
    i.clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn replay(
    State(i): State<Arc<Inspector>>,
    Path(id): Path<String>,
    _h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Ok(id) = id.parse::<u64>() else { return error(StatusCode::NOT_FOUND, format!("no request {id}")) };
    let edit: Edit = if body.iter().all(u8::is_ascii_whitespace) {
        Edit::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(e) => e,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("the edit is not valid JSON: {e}")),
        }
    };
    match i.replay(id, edit).await {
        Ok(e) => Json(e.view(true)).into_response(),
        Err(why) if why.starts_with("no request") => error(StatusCode::NOT_FOUND, why),
        Err(why) => error(StatusCode::BAD_REQUEST, why),
    }
}
