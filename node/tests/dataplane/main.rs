//! The data plane with real processes and the real OpenSSH client: `ssh -R` to a node's SSH
//! server, a public HTTP request routed by Host to the service behind the tunnel, protected
//! sockets, refused strangers and foreign ports, newest connection wins.
//!
//! # Layout
//! - `access`: address lists, rate limits and cloud authentication (a real OpenID provider).
//! - `dns`: the cluster's authoritative DNS, asked with `dig` on every node.
//! - `acme`: certificates from Pebble over DNS-01, renewed, and renewed again after a kill.
//! - `tunnel`: `ssh -R` claims a socket's tunnel; who may, where, how many, and which wins.
//! - `failover`: a holder killed, paused, restarted or cut off from the majority.
//! - `relay`: nodes relaying to the holder, bodies and upgrades across, upstream reuse.
//! - `tcp_tls`: https, tcp and tls sockets, with the cluster's or the operator's certificate.
//! - `http`: HTTP/1 framing, the fields forwarded on both HTTP paths, services that never answer.
//! - `session_log`: what the client's SSH session shows, and a client that stops reading it.
//! - `garbage`: garbage and silence on every port.
//! - `metrics`: metrics and the dashboard.
//! - `upstream`: the PROXY protocol header (read by HAProxy) and gRPC over h2c (grpcio).
//! - `support`: tunnels, requests and metrics the tests share.

mod access;
mod acme;
mod dns;
mod failover;
mod garbage;
mod http;
mod metrics;
mod relay;
mod session_log;
mod support;
mod tcp_tls;
mod tunnel;
mod upstream;
