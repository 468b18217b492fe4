//! Relays, both sides: the caller's choice of the nodes holding a socket's tunnels and its
//! relay to one of them ([`holders`], [`open`]), and the holder's side ([`serve`]): a public
//! connection another node took, for a tunnel held here, where the credential, the epoch
//! (fencing) and the channel on the holding SSH session are checked. The wire format is
//! [`crate::net::relay`]'s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mysocket_api::internal::RelayOpen;
use prost::Message;
use tokio::io::AsyncWriteExt;
use tonic::Code;
use tonic::Status;
use uuid::Uuid;

use crate::control::NodeRef;
use crate::edge::log::LogSink;
use crate::edge::upstream::Tried;
use crate::net::relay::answer;
use crate::net::relay::frames_in;
use crate::net::relay::read_part;
use crate::net::relay::FRAME;
use crate::net::relay::HEAD;
use crate::net::relay::OPEN_TIMEOUT;
use crate::net::relay::SERVICE_DOWN;
use crate::net::Io;
use crate::tunnels::Holdings;

/// The tunnels of a socket held on other nodes — tunnel, epoch, the holder's internal address
/// — in a rotating order so several tunnels share new connections.
pub fn holders(node: &NodeRef, socket_id: &Uuid) -> Vec<(Uuid, u64, String)> {
    let membership = node.metrics().membership_config.membership().clone();
    let mut remote: Vec<(Uuid, u64, String)> = node.read(|r| {
        r.tunnels_of(socket_id)
            .iter()
            .filter_map(|t| r.session(&t.tunnel_id))
            .filter(|s| s.node_id != node.id)
            .filter_map(|s| membership.get_node(&s.node_id).map(|n| (s.tunnel_id, s.epoch, n.addr.clone())))
            .collect()
    });
    if remote.len() > 1 {
        let k = rand::random::<usize>() % remote.len();
        remote.rotate_left(k);
    }
    remote
}

/// Caller side: a relay to the first of `remote` whose holder takes it (`open` says what to
/// ask for a tunnel and epoch).
pub async fn open(
    node: &NodeRef,
    remote: &[(Uuid, u64, String)],
    open: impl Fn(&Uuid, u64) -> RelayOpen,
    tried: &mut Tried,
) -> Option<(Box<dyn Io>, LogSink)> {
    for (tunnel_id, epoch, addr) in remote {
        match crate::net::relay::connect(&node.peers, addr, open(tunnel_id, *epoch)).await {
            Ok((stream, log)) => {
                crate::metrics::get().upstream("relayed");
                return Some((stream, LogSink::Relay { log, tunnel_id: *tunnel_id, epoch: *epoch }));
            }
            Err(e) => {
                tried.tunnels += 1;
                if e.code() == SERVICE_DOWN {
                    tried.service_down += 1;
                }
                crate::metrics::get().upstream("relay_failed");
                tracing::debug!(%tunnel_id, epoch, %addr, error = %e.message(), "relay refused; trying the next")
            }
        }
    }
    None
}

/// Holder side, once `MAGIC` was read from `io`: checks the credential and the epoch, opens a
/// channel on the holding SSH session, answers, then relays both ways until both end.
pub async fn serve(mut io: Box<dyn Io>, peer: SocketAddr, holdings: Arc<Holdings>, secret: Arc<Vec<u8>>) {
    let opened = async {
        let given = read_part(&mut io).await?;
        if !crate::net::credential::is_credential(&secret, &given) {
            tracing::warn!(%peer, "refused a relay without the cluster credential");
            return Err(Status::unauthenticated("missing or wrong cluster credential"));
        }
        let open = RelayOpen::decode(&read_part(&mut io).await?[..])
            .map_err(|e| Status::invalid_argument(format!("undecodable relay open: {e}")))?;
        let tunnel_id: Uuid = open.tunnel_id.parse().map_err(|_| Status::invalid_argument("bad tunnel id"))?;
        let socket_id: Uuid = open.socket_id.parse().map_err(|_| Status::invalid_argument("bad socket id"))?;
        let holding = match holdings.get(&tunnel_id).filter(|h| h.socket_id == socket_id) {
            Some(h) if h.epoch == open.epoch || crate::planted::on(crate::planted::Bug::StaleHolder) => h,
            Some(h) => {
                crate::metrics::get().relay_served("stale_epoch");
                return Err(Status::failed_precondition(format!(
                    "stale epoch {}: this node holds the tunnel under epoch {}",
                    open.epoch, h.epoch
                )));
            }
            None => {
                crate::metrics::get().relay_served("not_held");
                return Err(Status::failed_precondition("this node does not hold that tunnel"));
            }
        };
        let client: SocketAddr = open.client_addr.parse().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let channel = crate::edge::upstream::open_channel(&holding, client).await.map_err(|e| match e {
            russh::Error::ChannelOpenFailure(_) => {
                Status::new(SERVICE_DOWN, format!("the tunnel's client could not reach its service: {e}"))
            }
            e => Status::unavailable(format!("the tunnel did not accept the connection: {e}")),
        })?;
        Ok((holding, client, open.log_connection, channel))
    };
    let opened = match tokio::time::timeout(OPEN_TIMEOUT, opened).await {
        Ok(r) => r,
        Err(_) => Err(Status::deadline_exceeded("no relay hello in time")),
    };
    let (holding, client, log_connection, mut channel) = match opened {
        Ok(x) => x,
        Err(status) => {
            if status.code() != Code::FailedPrecondition {
                crate::metrics::get().relay_served("refused");
            }
            tracing::debug!(%peer, code = ?status.code(), message = status.message(), "relay refused");
            let _ = answer(&mut io, status.code(), status.message()).await;
            return;
        }
    };
    if answer(&mut io, Code::Ok, "").await.is_err() {
        return;
    }
    crate::metrics::get().relay_served("served");
    let started = Instant::now();
    if log_connection {
        let (to_service, to_client) = crate::edge::upstream::pipe(&mut io, &mut channel, false).await.unwrap_or((0, 0));
        crate::edge::log::log_line(
            &holding,
            crate::edge::log::connection_line(client, to_service, to_client, started.elapsed()),
        );
        return;
    }
    let (r, mut w) = tokio::io::split(io);
    let (from_service, to_service) = tokio::io::split(channel);
    let log_to = holding.clone();
    let inbound = frames_in(tokio::io::BufReader::with_capacity(FRAME + HEAD, r), to_service, move |line| {
        crate::edge::log::log_line(&log_to, line)
    });
    let outbound = async {
        let mut from_service = tokio::io::BufReader::with_capacity(FRAME, from_service);
        let n = tokio::io::copy_buf(&mut from_service, &mut w).await.unwrap_or(0);
        let _ = w.shutdown().await;
        n
    };
    tokio::join!(inbound, outbound);
}
