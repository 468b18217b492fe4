//! # mysocket-node
//!
//! `mysocketd`: one edge node. It wires the replicated registry (openraft on RocksDB, from
//! `mysocket-raft-store`) to its transport (tonic gRPC on the internal port), holds SSH
//! tunnels, serves the public endpoints and the REST API.
//!
//! # Layout
//! Dependencies point one way: [`config`], [`metrics`], [`planted`] and [`net`] know nothing
//! above them; [`control`] builds on them; [`tunnels`] on `control`; [`edge`] on `tunnels`;
//! [`api`] on `control`; [`app`] wires them all.
//! - [`config`]: one settings struct for flags, environment and TOML, validated per section
//!   before anything binds.
//! - [`metrics`]: what the node counts, for Prometheus.
//! - [`planted`]: the bugs a fault-injection build can plant, each switch asked in one place.
//! - [`net`]: node-to-node transport — the accept loop every port uses, peers' connections,
//!   the Raft network, the internal port's protocol detection and credential, the relay's wire
//!   format. Knows nothing of the registry, tunnels or HTTP.
//! - [`control`]: the registry handle (writes batched and forwarded to the leader,
//!   linearizable reads, membership), the cluster's secrets, the internal gRPC service, the
//!   members' background duties, the API's rate limits and credentials. Knows nothing of SSH,
//!   HTTP or relays' payloads.
//! - [`tunnels`]: the SSH server, the tunnels this node holds, their session logs, the watcher
//!   that closes superseded sessions and the fence that closes them all when the node is cut
//!   off. Knows nothing of the public edge or the API.
//! - [`edge`]: the public data plane — listeners, route, access policy, upstream choice and
//!   pools, the access log, certificates, tcp/tls sockets, HTTP (headers, pages, the
//!   hand-written HTTP/1 path and hyper's) and the holder's side of relays.
//! - [`api`]: the REST API, its errors and limits, the dashboard, the OpenAPI document and the
//!   metrics page.
//! - [`app`]: start-up, wiring and graceful shutdown.

// `config` and `run` are what `main.rs` uses; `net` is what tests of the internal port use.
pub(crate) mod api;
pub(crate) mod app;
pub mod config;
pub(crate) mod control;
pub(crate) mod edge;
pub(crate) mod metrics;
pub mod net;
pub(crate) mod planted;
pub(crate) mod tunnels;

pub use app::run;
