//! The edge's own answers: small HTML pages that say what went wrong and what to do.

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::header;
use hyper::header::HeaderValue;
use hyper::Response;
use hyper::StatusCode;

use crate::edge::http::Body;

pub fn page_html(status: StatusCode, title: &str, detail: &str) -> String {
    format!(
        "<!doctype html><html><head><title>{code} {title}</title></head><body><h1>{code} {title}</h1><p>{detail}</p><hr><p>mysocket</p></body></html>\n",
        code = status.as_u16()
    )
}

pub fn page(status: StatusCode, title: &str, detail: &str) -> Response<Body> {
    let html = page_html(status, title, detail);
    let mut r = Response::new(Full::new(Bytes::from(html)).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r
}

/// [`page`] as the bytes of a whole HTTP/1.1 response, which closes the connection or not; to
/// a HEAD request, the head alone.
pub fn page_bytes(status: StatusCode, title: &str, detail: &str, close: bool, head_request: bool) -> Vec<u8> {
    let html = page_html(status, title, detail);
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n{}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        html.len(),
        if close { "connection: close\r\n" } else { "" },
        if head_request { "" } else { &html },
    )
    .into_bytes()
}
