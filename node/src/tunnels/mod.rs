//! The tunnels this node holds: which SSH session forwards each claimed tunnel, under which
//! epoch. A newer claim elsewhere (newest connection wins) or a release by the leader closes
//! the older session here ([`watch`]), a node cut off from the cluster closes them all
//! ([`fence`]), and the edge never uses a holding whose epoch was superseded. [`ssh`] is the SSH
//! server that claims them; [`orphans`] releases the claims of this node's previous process.
//! It knows nothing of the public edge or the API.

pub mod orphans;
pub mod ssh;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use mysocket_raft_store::Response;
use mysocket_raft_store::TunnelSession;
use russh::server::Handle;
use russh::server::Msg;
use russh::Channel;
use russh::ChannelId;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::control::NodeRef;

/// One tunnel held by an SSH session on this node.
#[derive(Clone)]
pub struct Holding {
    pub tunnel_id: Uuid,
    pub socket_id: Uuid,
    pub epoch: u64,
    pub handle: Handle,
    /// The address and port the client asked to forward; echoed in `forwarded-tcpip` opens.
    pub bind_address: String,
    pub relay_port: u32,
    /// The session channel that gets log lines, once the client opened one.
    pub log: LogSlot,
}

/// Where a holding's log lines go: the session channel of its SSH session, once the client
/// opened one. Every copy of a holding shares it — connections through the tunnel keep copies,
/// pooled ones for long — so a channel opened after the forward also gets the lines of the
/// connections made before it.
#[derive(Clone, Default)]
pub struct LogSlot {
    log: Arc<Mutex<Option<SessionLog>>>,
    /// The last lines, for `GET /socket/{id}/log` (see [`crate::control::recent`]).
    recent: Arc<crate::control::recent::Ring>,
}

impl LogSlot {
    pub fn new(log: Option<SessionLog>, recent: Arc<crate::control::recent::Ring>) -> LogSlot {
        LogSlot { log: Arc::new(Mutex::new(log)), recent }
    }

    fn set(&self, log: SessionLog) {
        *self.log.lock().expect("log slot") = Some(log);
    }

    /// Keeps a line (ending in CRLF) among the last ones and queues it on the session channel,
    /// if there is one (without waiting: a full queue drops the line); whether there was.
    pub fn line(&self, line: String) -> bool {
        self.recent.push(&line);
        match &*self.log.lock().expect("log slot") {
            Some(log) => {
                log.line(line);
                true
            }
            None => false,
        }
    }
}

/// Lines wait this long for company before they go out in one SSH message.
const LOG_BATCH: std::time::Duration = std::time::Duration::from_millis(10);
/// Lines waiting at most: a client that does not read its session channel loses lines, and the
/// node no memory.
const LOG_QUEUE: usize = 4096;
/// Bytes of log text per SSH message at most.
const LOG_MESSAGE: usize = 32 * 1024;

/// The session channel of an SSH session, which gets the banner and the log lines of its
/// tunnels. The lines of a busy tunnel go out together, a message per few milliseconds instead
/// of a packet per request (each of which the client also prints with a write of its own).
///
/// They go out within the channel's window, through the channel's own writer, which waits for
/// the client to take them: a client that stops reading its session (a terminal paused with
/// Ctrl-S, a pipe nobody drains) loses log lines, counted and reported once it reads again,
/// and its tunnels go on serving. (Written past the window, the lines would wait inside the SSH
/// session, and while any channel's data waits there, the session sends nothing on any
/// channel: the tunnels would stop.)
#[derive(Clone)]
pub struct SessionLog {
    pub channel: ChannelId,
    lines: tokio::sync::mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

impl SessionLog {
    /// Starts the writer; it ends with the session, or once the last holder of the log is gone.
    /// What the client sends on the channel is not read (nothing is ever executed).
    pub fn open(channel: Channel<Msg>) -> SessionLog {
        let id = channel.id();
        let (_, writer) = channel.split();
        let (lines, mut rx) = tokio::sync::mpsc::channel::<String>(LOG_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        tokio::spawn(async move {
            while let Some(mut text) = rx.recv().await {
                tokio::time::sleep(LOG_BATCH).await;
                while text.len() < LOG_MESSAGE {
                    match rx.try_recv() {
                        Ok(more) => text.push_str(&more),
                        Err(_) => break,
                    }
                }
                let n = lost.swap(0, Ordering::Relaxed);
                if n > 0 {
                    text = format!("({n} log lines dropped: the client did not read them in time)\r\n{text}");
                }
                if writer.data_bytes(text.into_bytes()).await.is_err() {
                    break;
                }
            }
        });
        SessionLog { channel: id, lines, dropped }
    }

    /// Queues a line (ending in CRLF); dropped, and counted, if the client is that far behind.
    pub fn line(&self, line: String) {
        if self.lines.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
pub struct Holdings {
    map: Mutex<HashMap<Uuid, Holding>>,
}

impl Holdings {
    pub fn insert(&self, h: Holding) {
        let old = self.map.lock().expect("holdings").insert(h.tunnel_id, h);
        if let Some(old) = old {
            // Another session on this node re-claimed the tunnel: the older one goes.
            close(old, "superseded", "a newer connection took over this tunnel");
        }
    }

    /// Sends the log lines of a holding (if it still has `epoch`) to the session channel `log`.
    pub fn set_log(&self, tunnel_id: &Uuid, epoch: u64, log: SessionLog) {
        if let Some(h) = self.map.lock().expect("holdings").get_mut(tunnel_id).filter(|h| h.epoch == epoch) {
            h.log.set(log);
        }
    }

    /// Forgets a holding if it still has `epoch`.
    pub fn remove(&self, tunnel_id: &Uuid, epoch: u64) -> Option<Holding> {
        let mut map = self.map.lock().expect("holdings");
        match map.get(tunnel_id) {
            Some(h) if h.epoch == epoch => map.remove(tunnel_id),
            _ => None,
        }
    }

    pub fn get(&self, tunnel_id: &Uuid) -> Option<Holding> {
        self.map.lock().expect("holdings").get(tunnel_id).cloned()
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("holdings").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The client is told why on its session (through the log, so within the window), and the
/// session ends this long after whether or not it has read that.
const FAREWELL: Duration = Duration::from_millis(100);

/// Closes the SSH session of a holding, telling the client `why`; counted under `reason`
/// (superseded, released, deleted or cut_off).
fn close(h: Holding, reason: &'static str, why: &'static str) {
    crate::metrics::get().tunnel_closed(reason);
    tokio::spawn(async move {
        if h.log.line(format!("mysocket: {why}; closing.\r\n")) {
            tokio::time::sleep(FAREWELL).await;
        }
        let _ = h.handle.disconnect(russh::Disconnect::ByApplication, why.to_string(), String::new()).await;
    });
}

/// How long a node holding tunnels goes without a leader confirming that it leads a quorum
/// before it closes them. Longer than an election, so a change of leader never does it.
pub const CUT_OFF: Duration = Duration::from_secs(5);

/// Closes the tunnels held here once this node has lost touch with the cluster (cut off from
/// the majority, or left in a minority with a leader that no longer leads). The leader has
/// released them after its liveness timeout, but a node cut off cannot learn that, and its
/// clients, which still reach it, would stay on it while every other node answers that the
/// socket has no live tunnel. Closed, they reconnect to a node that can claim the tunnel.
pub async fn fence(node: NodeRef, holdings: Arc<Holdings>, stop: CancellationToken) {
    let mut contact = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if holdings.is_empty() || node.leader_confirms(Duration::from_secs(2)).await {
            contact = Instant::now();
            continue;
        }
        if contact.elapsed() > CUT_OFF {
            let held: Vec<Holding> = holdings.map.lock().expect("holdings").drain().map(|(_, h)| h).collect();
            tracing::warn!(
                tunnels = held.len(),
                "no leader has confirmed this node's contact with the cluster for {CUT_OFF:?}; closing the tunnels held here"
            );
            for h in held {
                close(h, "cut_off", "this node lost contact with the cluster");
            }
        }
    }
}

/// Follows applied registry changes: closes holdings that a newer claim superseded, that the
/// cluster released, or whose tunnel (or socket) was deleted.
pub async fn watch(node: NodeRef, holdings: Arc<Holdings>, stop: CancellationToken) {
    let mut events = node.state_machine.subscribe();
    // This node's sessions among `ended`, each with the reason it is closed for.
    let mine = |ended: &[TunnelSession], reason, why| -> Vec<(Uuid, u64, &'static str, &'static str)> {
        ended.iter().filter(|s| s.node_id == node.id).map(|s| (s.tunnel_id, s.epoch, reason, why)).collect()
    };
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = events.recv() => ev,
        };
        match ev {
            Ok(applied) => {
                let gone = match &applied.response {
                    Response::Claimed { session, superseded: Some(old) }
                        if old.node_id == node.id && session.node_id != node.id =>
                    {
                        vec![(
                            old.tunnel_id,
                            old.epoch,
                            "superseded",
                            "a newer connection to another node took over this tunnel",
                        )]
                    }
                    Response::Released(list) => mine(list, "released", "the cluster released this tunnel"),
                    Response::Deleted(list) => mine(list, "deleted", "this tunnel was deleted"),
                    _ => Vec::new(),
                };
                let gone = if crate::planted::on(crate::planted::Bug::StaleHolder) { Vec::new() } else { gone };
                for (tunnel_id, epoch, reason, why) in gone {
                    if let Some(h) = holdings.remove(&tunnel_id, epoch) {
                        tracing::info!(%tunnel_id, epoch, why, "closing a tunnel session");
                        close(h, reason, why);
                    }
                }
            }
            Err(RecvError::Lagged(n)) => {
                // Missed events: check every holding against the registry instead.
                tracing::warn!(missed = n, "tunnel watcher lagged; resynchronising");
                let held: Vec<Holding> = holdings.map.lock().expect("holdings").values().cloned().collect();
                for h in held {
                    let current = node.read(|r| r.session(&h.tunnel_id).map(|s| (s.node_id, s.epoch)));
                    if current != Some((node.id, h.epoch)) {
                        if let Some(h) = holdings.remove(&h.tunnel_id, h.epoch) {
                            close(h, "superseded", "this tunnel was taken over");
                        }
                    }
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}
