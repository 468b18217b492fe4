//! The SSH tunnel server (russh): public-key auth against the account whose `user_name` is the
//! login, `tcpip-forward` for the account's tunnels (claimed in Raft before the reply), a
//! session channel that shows a banner and a line per proxied connection, nothing ever
//! executed. When the session ends, its claims are released.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use mysocket_api::coalesce::Coalesced;
use mysocket_raft_store::Command;
use mysocket_raft_store::Response as RegResponse;
use russh::keys::PrivateKey;
use russh::keys::PublicKey;
use russh::server::Auth;
use russh::server::Msg;
use russh::server::Session;
use russh::Channel;
use russh::ChannelId;
use russh::MethodKind;
use russh::MethodSet;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::control::NodeRef;
use crate::tunnels::Holding;
use crate::tunnels::Holdings;
use crate::tunnels::LogSlot;
use crate::tunnels::SessionLog;

/// Most concurrent SSH connections per node.
const MAX_CONNECTIONS: usize = 10_000;
/// Most tunnels one SSH session may forward.
const MAX_FORWARDS_PER_SESSION: usize = 64;
/// Most session channels one SSH session may open (each only shows the log; one is enough).
const MAX_SESSION_CHANNELS: u32 = 4;
/// How long a connection has to log in, from its accept to an accepted key (OpenSSH's
/// `LoginGraceTime`): one that says nothing, or never finishes, holds no connection longer.
const LOGIN_GRACE: Duration = Duration::from_secs(30);
/// Connections that have not logged in yet, at most, on this node (OpenSSH's `MaxStartups`):
/// past it a new connection waits, before the server says anything, for one of them to log in
/// or end, and is closed if none does within [`STARTUP_WAIT`]. A flood of connections that
/// never log in cannot keep logins of others waiting longer than that; a storm of honest
/// reconnects (a node holding a thousand tunnels dies, its clients come to this one) is served
/// as fast as the handshakes go, instead of most of it being turned away to back off and come
/// back seconds later. A connection leaves the count when it logs in or ends.
const MAX_STARTUPS: usize = 128;
/// How long a connection past [`MAX_STARTUPS`] waits for a turn.
const STARTUP_WAIT: Duration = Duration::from_secs(5);

/// A connection's turn among those that have not logged in yet, held until it logs in.
type Startup = tokio::sync::OwnedSemaphorePermit;

/// Read buffer per SSH connection: room for a few of the small packets of requests and
/// answers; a 64 KiB data packet is mostly read past it. Idle tunnels keep theirs, so it is
/// small (BENCHMARKS.md, idle tunnels: memory per tunnel).
const SSH_READ_BUFFER: usize = 1024;

/// Waits for the replicated host key, then serves SSH until `stop`.
pub async fn serve(node: NodeRef, listener: TcpListener, holdings: Arc<Holdings>, stop: CancellationToken) {
    let key = loop {
        if let Some(k) = node.read(|r| r.config().map(|c| c.ssh_host_key.clone())) {
            break k;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    };
    let key = match PrivateKey::from_openssh(&key) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, "the cluster's SSH host key is unreadable; SSH is off");
            return;
        }
    };
    let config = Arc::new(russh::server::Config {
        keys: vec![key],
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        // Keepalives detect dead peers; an idle tunnel is never dropped for idleness.
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        inactivity_timeout: None,
        nodelay: true,
        max_auth_attempts: 6,
        // Bigger packets and windows than russh's defaults: fewer packets per byte relayed.
        maximum_packet_size: crate::net::SSH_PACKET as u32,
        window_size: 8 * 1024 * 1024,
        ..Default::default()
    });
    tracing::info!(addr = ?listener.local_addr().ok(), "SSH server listening");
    let per_account: Arc<Mutex<HashMap<Uuid, u32>>> = Arc::default();
    let startups = Arc::new(tokio::sync::Semaphore::new(MAX_STARTUPS));
    crate::net::accept::serve(
        listener,
        MAX_CONNECTIONS,
        node.config.max_connections_per_source,
        crate::metrics::Listener::Ssh,
        stop,
        |stream, peer| {
            let (node, holdings, config, per_account) =
                (node.clone(), holdings.clone(), config.clone(), per_account.clone());
            let startups = startups.clone();
            async move {
                let Ok(Ok(startup)) = tokio::time::timeout(STARTUP_WAIT, startups.acquire_owned()).await else {
                    crate::metrics::get().refused(crate::metrics::Refusal::SshStartups);
                    tracing::debug!(
                        %peer,
                        "SSH connection closed: {MAX_STARTUPS} connections were logging in for {STARTUP_WAIT:?}"
                    );
                    return;
                };
                let state = Arc::new(Mutex::new(SessionState { startup: Some(startup), ..SessionState::default() }));
                let handler = SshSession {
                    node: node.clone(),
                    holdings: holdings.clone(),
                    peer,
                    state: state.clone(),
                    per_account: per_account.clone(),
                };
                // A second handle on the socket, to shut it if the login grace runs out (russh
                // runs the session in a task of its own, which takes the stream).
                let grace = std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned().ok();
                // Reads through a buffer: russh reads each packet's length, then its body, and a
                // busy tunnel's small packets would cost two system calls each. Writes coalesced.
                let stream = Coalesced::new(stream);
                let stream = tokio::io::BufReader::with_capacity(SSH_READ_BUFFER, stream);
                let session = async {
                    match russh::server::run_stream(config, stream, handler).await {
                        Ok(running) => {
                            if let Err(e) = running.await {
                                tracing::debug!(%peer, error = %e, "SSH session ended with an error");
                            }
                        }
                        Err(e) => tracing::debug!(%peer, error = %e, "SSH handshake failed"),
                    }
                };
                let mut session = std::pin::pin!(session);
                let logins = state.clone();
                let grace_over = async move {
                    tokio::time::sleep(LOGIN_GRACE).await;
                    if logins.lock().expect("ssh state").user.is_none() {
                        tracing::info!(%peer, "SSH connection closed: no login within {LOGIN_GRACE:?}");
                        if let Some(fd) = &grace {
                            let _ = socket2::SockRef::from(fd).shutdown(std::net::Shutdown::Both);
                        }
                    }
                };
                tokio::select! {
                    () = &mut session => {}
                    // The second handle is closed with the check, or with the session if it ends first.
                    () = grace_over => session.await,
                }
                // Boxed, like the claim: the session's task is sized for its largest step and lives
                // as long as the session.
                Box::pin(session_ended(node, holdings, state, per_account)).await;
            }
        },
    )
    .await
}

/// Once a session is over: its account's session count goes down (or, without a login, it
/// counts as a refused one) and its claims are released.
async fn session_ended(
    node: NodeRef,
    holdings: Arc<Holdings>,
    state: Arc<Mutex<SessionState>>,
    per_account: Arc<Mutex<HashMap<Uuid, u32>>>,
) {
    let (user, tried_login) = {
        let mut st = state.lock().expect("ssh state");
        (st.user.take(), st.tried_login)
    };
    if user.is_none() && tried_login {
        // Counted once per connection, however many keys the client offered.
        crate::metrics::get().ssh_login(false);
    }
    if let Some((user_id, _)) = user {
        let mut counts = per_account.lock().expect("ssh sessions");
        if let Some(c) = counts.get_mut(&user_id) {
            *c -= 1;
            if *c == 0 {
                counts.remove(&user_id);
            }
        }
    }
    let claims: Vec<(Uuid, u64)> = state.lock().expect("ssh state").claims.drain().collect();
    for (tunnel_id, epoch) in claims {
        holdings.remove(&tunnel_id, epoch);
        let cmd = Command::ReleaseTunnel { tunnel_id, node_id: node.id, epoch };
        match node.write(cmd).await {
            Ok(_) => tracing::info!(%tunnel_id, epoch, "tunnel released"),
            Err(e) => {
                tracing::warn!(%tunnel_id, error = %e, "tunnel release failed; the leader releases it when it notices")
            }
        }
    }
}

#[derive(Default)]
struct SessionState {
    user: Option<(Uuid, String)>,
    /// Held until the connection logs in (see [`MAX_STARTUPS`]).
    startup: Option<Startup>,
    /// The client asked to log in (a connection that ends without a login after asking counts
    /// as a refused login).
    tried_login: bool,
    /// Tunnels this session claimed: tunnel id -> epoch.
    claims: HashMap<Uuid, u64>,
    /// The session channels, the last opened of which gets the log lines (each gets its
    /// banner).
    logs: Vec<SessionLog>,
    /// Session channels opened so far.
    session_channels: u32,
}

struct SshSession {
    node: NodeRef,
    holdings: Arc<Holdings>,
    peer: SocketAddr,
    state: Arc<Mutex<SessionState>>,
    /// Authenticated sessions per account on this node (limit: `--max-ssh-sessions`).
    per_account: Arc<Mutex<HashMap<Uuid, u32>>>,
}

fn same_key(registered: &str, offered: &PublicKey) -> bool {
    PublicKey::from_openssh(registered).map(|k| k.key_data() == offered.key_data()).unwrap_or(false)
}

impl russh::server::Handler for SshSession {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Only say "go ahead and sign" for the right key; the answer does not tell an unknown
        // user from a wrong key.
        self.state.lock().expect("ssh state").tried_login = true;
        let ok = self.node.read(|r| r.account_by_user_name(user).map(|a| same_key(&a.sshkey, offer.public_key)));
        Ok(if ok == Some(true) { Auth::Accept } else { Auth::reject() })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.state.lock().expect("ssh state").tried_login = true;
        let found = self.node.read(|r| {
            r.account_by_user_name(user)
                .filter(|a| same_key(&a.sshkey, key.public_key))
                .map(|a| (a.user_id, a.user_name.clone()))
        });
        match found {
            Some(u) => {
                let max = self.node.config.max_ssh_sessions;
                {
                    let mut counts = self.per_account.lock().expect("ssh sessions");
                    let open = counts.entry(u.0).or_insert(0);
                    if *open >= max {
                        tracing::warn!(peer = %self.peer, user, open = *open, "SSH login refused: the account's session limit on this node is reached");
                        return Ok(Auth::reject());
                    }
                    *open += 1;
                }
                crate::metrics::get().ssh_login(true);
                tracing::info!(peer = %self.peer, user, "SSH login");
                let mut st = self.state.lock().expect("ssh state");
                st.user = Some(u);
                st.startup = None;
                Ok(Auth::Accept)
            }
            None => {
                tracing::info!(peer = %self.peer, user, "SSH login refused");
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let opened: Option<(SessionLog, Vec<(Uuid, u64)>)> = {
            let mut st = self.state.lock().expect("ssh state");
            if st.session_channels >= MAX_SESSION_CHANNELS {
                None
            } else {
                st.session_channels += 1;
                let log = SessionLog::open(channel);
                st.logs.push(log.clone());
                Some((log, st.claims.iter().map(|(t, e)| (*t, *e)).collect()))
            }
        };
        let Some((log, claims)) = opened else {
            tracing::info!(peer = %self.peer, "session channel refused: too many in one SSH session");
            reply.reject(russh::ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        // Forwards requested before the session channel opened log to it from now on.
        for (tunnel_id, epoch) in claims {
            self.holdings.set_log(&tunnel_id, epoch, log.clone());
        }
        reply.accept().await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col: u32,
        _row: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        Ok(())
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        self.banner(channel);
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Nothing is ever executed; the channel only carries the banner and the log.
        session.channel_success(channel)?;
        self.banner(channel);
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // Boxed: russh keeps one future per session sized for its largest handler call, and a
        // claim (a linearizable read, then a Raft write) would make every idle session pay for it.
        let claimed = Box::pin(self.forward(address, *port, session.handle())).await;
        crate::metrics::get().forward(claimed);
        Ok(claimed)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        _address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(Box::pin(self.cancel_forward(port)).await)
    }
}

impl SshSession {
    /// `tcpip-forward`: claims the tunnel behind relay port `port` in Raft, then holds it here.
    async fn forward(&mut self, address: &str, port: u32, handle: russh::server::Handle) -> bool {
        let Some((user_id, user_name)) = self.state.lock().expect("ssh state").user.clone() else {
            return false;
        };
        if self.state.lock().expect("ssh state").claims.len() >= MAX_FORWARDS_PER_SESSION {
            tracing::info!(peer = %self.peer, "too many forwards in one session");
            return false;
        }
        let Ok(relay_port) = u16::try_from(port) else { return false };
        if self.node.linearizable().await.is_err() {
            return false;
        }
        let Some(tunnel) = self.node.read(|r| r.tunnel_by_relay_port(&user_id, relay_port).cloned()) else {
            tracing::info!(peer = %self.peer, user = %user_name, relay_port, "forward refused: not a tunnel of this account");
            return false;
        };
        let cmd = Command::ClaimTunnel { user_id, tunnel_id: tunnel.tunnel_id, node_id: self.node.id };
        match self.node.write(cmd).await {
            Ok(RegResponse::Claimed { session: claim, superseded }) => {
                self.holdings.insert(Holding {
                    tunnel_id: tunnel.tunnel_id,
                    socket_id: tunnel.socket_id,
                    epoch: claim.epoch,
                    handle,
                    bind_address: address.to_string(),
                    relay_port: port,
                    log: LogSlot::new(
                        self.state.lock().expect("ssh state").logs.last().cloned(),
                        self.node.recent.start(tunnel.tunnel_id),
                    ),
                });
                self.state.lock().expect("ssh state").claims.insert(tunnel.tunnel_id, claim.epoch);
                tracing::info!(
                    tunnel_id = %tunnel.tunnel_id, epoch = claim.epoch, previous = ?superseded.map(|s| s.node_id),
                    "tunnel claimed"
                );
                true
            }
            Ok(other) => {
                tracing::info!(?other, "tunnel claim refused");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "tunnel claim failed");
                false
            }
        }
    }

    /// `cancel-tcpip-forward`: releases the tunnel this session holds behind `port`.
    async fn cancel_forward(&mut self, port: u32) -> bool {
        let Some((user_id, _)) = self.state.lock().expect("ssh state").user.clone() else { return false };
        let Ok(relay_port) = u16::try_from(port) else { return false };
        let Some(tunnel_id) = self.node.read(|r| r.tunnel_by_relay_port(&user_id, relay_port).map(|t| t.tunnel_id))
        else {
            return false;
        };
        let Some(epoch) = self.state.lock().expect("ssh state").claims.remove(&tunnel_id) else { return false };
        self.holdings.remove(&tunnel_id, epoch);
        let _ = self.node.write(Command::ReleaseTunnel { tunnel_id, node_id: self.node.id, epoch }).await;
        true
    }

    /// The banner, through the channel's log writer (which keeps within the window): the
    /// sockets this session forwards, or, before it forwards any, every socket of the account.
    fn banner(&self, channel: ChannelId) {
        let (user, log, claimed) = {
            let st = self.state.lock().expect("ssh state");
            let claimed: Vec<Uuid> = st.claims.keys().copied().collect();
            (st.user.clone(), st.logs.iter().find(|l| l.channel == channel).cloned(), claimed)
        };
        let Some(log) = log else { return };
        let text = match user {
            None => "mysocket: not logged in\r\n".to_string(),
            Some((user_id, _)) => self.node.read(|r| {
                let mut s = String::from("\r\nWelcome to mysocket.\r\n");
                let forwarded: Vec<Uuid> = claimed.iter().filter_map(|t| r.tunnel(t).map(|t| t.socket_id)).collect();
                let mut socks = r.sockets_of(&user_id);
                if !forwarded.is_empty() {
                    socks.retain(|s| forwarded.contains(&s.socket_id));
                }
                socks.sort_by_key(|s| s.created_at_ms);
                for sock in socks {
                    let urls = crate::control::public_urls(&self.node, sock);
                    s.push_str(&format!("  {} ({}): {}\r\n", sock.name, sock.socket_type.as_str(), urls.join("  ")));
                }
                s.push_str("Requests and connections are logged below.\r\n\r\n");
                s
            }),
        };
        log.line(text);
    }
}
