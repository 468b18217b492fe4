//! Public HTTP: one header policy ([`headers`]), the edge's own pages ([`pages`]), and two
//! paths that apply them — [`h1`], hand-written, for plain HTTP/1.x requests, and [`hyper`]
//! for HTTP/2 and whatever [`h1`] hands over, with [`h2c`] for services that speak HTTP/2.

pub mod h1;
pub mod h2c;
pub mod headers;
pub mod hyper;
pub mod pages;

/// The body type of the hyper path's requests and responses.
pub type Body = http_body_util::combinators::BoxBody<bytes::Bytes, ::hyper::Error>;
