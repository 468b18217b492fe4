//! # mysocket-node
//!
//! `mysocketd`: one edge node. It wires the replicated registry (openraft on RocksDB, from
//! `mysocket-raft-store`) to its transport (tonic gRPC on the internal port) and serves the
//! REST API on the API port.
//!
//! # Layout
//! - [`config`]: flags, environment and TOML, validated before anything binds.
//! - [`peers`], [`raft_net`], [`internal`]: node-to-node gRPC, client and server.
//! - [`cluster`], [`batch`]: writes batched (group commit) and forwarded to the leader,
//!   linearizable reads, membership changes.
//! - [`bootstrap`]: cluster secrets generated once by the first leader.
//! - [`http`], [`auth`], [`validate`], [`limits`]: the REST API and what it lets a caller cost; [`metrics`], [`dashboard`]: what the
//!   node did and sees, for Prometheus and for people.
//! - [`ssh`], [`tunnels`]: the SSH tunnel server and the tunnels this node holds.
//! - [`h1`], [`proxy`], [`relay`]: public HTTP endpoints routed by Host (plain HTTP/1.1
//!   requests on a path of their own, the rest through hyper); relaying a connection to the
//!   node that holds the tunnel; [`forwarding`], the one policy both HTTP paths apply to a
//!   request's fields.
//! - [`tcp`], [`tls`]: listeners for tcp/tls sockets; TLS with the cluster certificate.
//! - [`server`]: start-up, background duties and graceful shutdown.
//! - [`planted`]: the bugs a fault-injection build can plant, each switch asked in one place.

pub mod accept;
pub mod auth;
pub mod batch;
pub mod bootstrap;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod forwarding;
pub mod h1;
pub mod http;
pub mod internal;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod peers;
pub mod planted;
pub mod prefixed;
pub mod proxy;
pub mod raft_net;
pub mod relay;
pub mod server;
pub mod sockets;
pub mod ssh;
pub mod tcp;
pub mod tls;
pub mod tunnels;
pub mod validate;

pub use server::run;
