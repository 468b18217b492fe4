//! The tunnel client: an SSH session (russh, no system `ssh` needed) that asks a node to
//! forward the tunnel's relay port and connects every forwarded channel to the local service.
//! On disconnect it reconnects with backoff, moving to the next node of the cluster.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::anyhow;
use anyhow::bail;
use anyhow::Context;
use mysocket_api::coalesce::Coalesced;
use mysocket_api::reconnect::doubled;
use mysocket_api::reconnect::jittered;
use mysocket_api::reconnect::FIRST_BACKOFF;
use mysocket_api::ApiClient;
use russh::client;
use russh::keys::PrivateKeyWithHashAlg;
use russh::ChannelMsg;

/// Ciphers in order of preference: AES-GCM runs on the CPU's AES instructions.
const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
];

/// Largest SSH packet either side sends; bytes between the service and the tunnel move in
/// pieces of this size (one channel message, one packet each).
const PACKET: usize = 64 * 1024;

/// One tunnel a session forwards: the relay port the node knows it by, and where its
/// connections go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    /// The socket's name, for messages.
    pub name: String,
    /// The tunnel's relay port (`local_port` in the API).
    pub relay_port: u16,
    /// The local service.
    pub host: String,
    pub port: u16,
    /// The tunnel, for asking the API whether it still exists once a server has closed it.
    pub socket_id: String,
    pub tunnel_id: String,
    /// An http or https socket: its requests pass the inspector, when one runs.
    pub http: bool,
}

/// What to forward, and where to log in.
pub struct TunnelSpec {
    /// SSH login: the account's `user_name`.
    pub user: String,
    pub identity: PathBuf,
    /// SSH endpoints to try, first the tunnels' own server.
    pub servers: Vec<String>,
    /// The cluster's SSH host key (OpenSSH public-key line) from `GET /cluster`.
    pub host_key: String,
    /// The tunnels to forward, all in one SSH session; a change (a reload) is applied to the
    /// live session, so the tunnels that stay are not dropped.
    pub forwards: tokio::sync::watch::Receiver<Vec<Forward>>,
    /// Where HTTP requests are recorded for the inspector, if it runs.
    pub inspector: Option<Arc<crate::inspect::Inspector>>,
}

/// Where a forwarded connection goes, by relay port: what the session forwards now.
type Routes = Arc<std::sync::RwLock<std::collections::HashMap<u32, Forward>>>;

/// The private key to use: `--identity`, else ~/.ssh/id_ed25519, id_ecdsa, id_rsa.
pub fn find_identity(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    for f in ["id_ed25519", "id_ecdsa", "id_rsa"] {
        let p = home.join(".ssh").join(f);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("no --identity given and no ~/.ssh/id_ed25519, id_ecdsa or id_rsa; create one with ssh-keygen -t ed25519")
}

struct Forwarder {
    routes: Routes,
    inspector: Option<Arc<crate::inspect::Inspector>>,
    /// The cluster's SSH host key, from the API: every node must present exactly this one.
    pinned: russh::keys::PublicKey,
    /// Set when a node presented another key, to say so instead of a bare handshake error.
    mismatch: Arc<std::sync::Mutex<Option<String>>>,
    /// Why the server ended the session, when it did so itself (an SSH disconnect message:
    /// a newer connection took the tunnel, the socket was deleted), not by going away.
    farewell: Arc<std::sync::Mutex<Option<String>>>,
}

impl client::Handler for Forwarder {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        // Every node presents the cluster's one host key, which the API publishes: a node that
        // shows another one is not part of this cluster (or someone sits in between).
        let offered = match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => key,
            russh::keys::PublicKeyOrCertificate::Certificate(_) => {
                *self.mismatch.lock().expect("mismatch") =
                    Some("the server offered a certificate, not the cluster's host key".into());
                return Ok(false);
            }
        };
        if offered.key_data() == self.pinned.key_data() {
            return Ok(true);
        }
        *self.mismatch.lock().expect("mismatch") = Some(format!(
            "the server's SSH host key {} is not the cluster's {}: refusing to connect (is this really a node of the cluster?)",
            offered.fingerprint(Default::default()),
            self.pinned.fingerprint(Default::default()),
        ));
        Ok(false)
    }

    async fn disconnected(&mut self, reason: client::DisconnectReason<Self::Error>) -> Result<(), Self::Error> {
        match reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                *self.farewell.lock().expect("farewell") = Some(info.message);
                Ok(())
            }
            client::DisconnectReason::Error(e) => Err(e),
        }
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        _connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        // The local service is dialled first, and the channel accepted only once it answers:
        // refused, the node gives the visitor its 502 page at once. (Accepted and then dropped,
        // the channel would stay open at the node's end and the visitor would wait.) On a task
        // of its own: the session's other channels do not wait for the dial.
        let Some(fwd) = self.routes.read().expect("routes").get(&connected_port).cloned() else {
            reply.reject(russh::ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        };
        let (host, port) = (fwd.host.clone(), fwd.port);
        let from = format!("{originator_address}:{originator_port}");
        let inspector = self.inspector.clone().filter(|_| fwd.http);
        tokio::spawn(async move {
            match tokio::net::TcpStream::connect((host.as_str(), port)).await {
                Ok(mut local) => {
                    reply.accept().await;
                    let _ = local.set_nodelay(true);
                    let mut remote = channel.into_stream();
                    match inspector {
                        // HTTP, watched on its way: requests and answers recorded as they pass.
                        Some(i) => i.pipe(&fwd.name, &format!("{host}:{port}"), &mut remote, &mut local).await,
                        // Whole SSH packets per channel message, not tokio's default 8 KiB.
                        None => {
                            let _ =
                                tokio::io::copy_bidirectional_with_sizes(&mut remote, &mut local, PACKET, PACKET).await;
                        }
                    }
                }
                Err(e) => {
                    reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                    say(format!("connection from {from}: the local service at {host}:{port} is down ({e}); the visitor gets 502"));
                }
            }
        });
        Ok(())
    }
}

/// How a session that was up ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    /// The connection went away (the node died or restarted, the network failed): another node
    /// takes the tunnel at once.
    Lost,
    /// The server ended it, and said why.
    ByServer(String),
}

/// The SSH client's settings. Throughput: AES-GCM (hardware-accelerated) first, bigger packets
/// and windows than russh's defaults (fewer packets, MACs and wake-ups per byte).
fn session_config() -> client::Config {
    client::Config {
        keepalive_interval: Some(Duration::from_secs(5)),
        keepalive_max: 3,
        inactivity_timeout: None,
        nodelay: true,
        preferred: russh::Preferred { cipher: std::borrow::Cow::Borrowed(CIPHERS), ..Default::default() },
        maximum_packet_size: PACKET as u32,
        window_size: 8 * 1024 * 1024,
        ..Default::default()
    }
}

/// One SSH session: connects, logs in, forwards the tunnels (following changes to them) and
/// prints its log until it ends.
async fn session_once(
    spec: &mut TunnelSpec,
    key: &Arc<russh::keys::PrivateKey>,
    server: &str,
    gone: &std::collections::HashSet<String>,
) -> anyhow::Result<Ended> {
    let config = Arc::new(session_config());
    let pinned = russh::keys::PublicKey::from_openssh(&spec.host_key)
        .map_err(|e| anyhow!("the cluster's SSH host key from the API does not parse: {e}"))?;
    let mismatch = Arc::new(std::sync::Mutex::new(None));
    let farewell = Arc::new(std::sync::Mutex::new(None));
    let routes: Routes = Arc::default();
    let handler = Forwarder {
        routes: routes.clone(),
        inspector: spec.inspector.clone(),
        pinned,
        mismatch: mismatch.clone(),
        farewell: farewell.clone(),
    };
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(server).await?;
        tcp.set_nodelay(true)?;
        // Reads through a buffer: russh reads each packet's length, then its body, and small
        // packets (a request, an answer) would cost two system calls each. Writes coalesced.
        client::connect_stream(config, tokio::io::BufReader::with_capacity(8 * 1024, Coalesced::new(tcp)), handler)
            .await
    };
    let connected =
        tokio::time::timeout(Duration::from_secs(10), connect).await.map_err(|_| anyhow!("timed out connecting"))?;
    if let Some(why) = mismatch.lock().expect("mismatch").take() {
        bail!("{why}");
    }
    let mut h = connected?;
    let hash = h.best_supported_rsa_hash().await?.flatten();
    match h.authenticate_publickey(&spec.user, PrivateKeyWithHashAlg::new(key.clone(), hash)).await? {
        russh::client::AuthResult::Success => {}
        _ => bail!("the server refused the key {} for {}", spec.identity.display(), spec.user),
    }
    let wanted = live(&spec.forwards.borrow_and_update(), gone);
    let up = follow(&mut h, &routes, &wanted, server).await;
    if up == 0 && !wanted.is_empty() {
        bail!("the server refused every forward");
    }
    let mut ch = h.channel_open_session().await?;
    ch.request_shell(false).await?;
    let mut watching = true;
    loop {
        tokio::select! {
            msg = ch.wait() => match msg {
                Some(ChannelMsg::Data { data }) => show(&data),
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
            changed = spec.forwards.changed(), if watching => match changed {
                Ok(()) => {
                    let wanted = live(&spec.forwards.borrow_and_update(), gone);
                    follow(&mut h, &routes, &wanted, server).await;
                }
                // Nobody changes them any more: the forwards stay as they are.
                Err(_) => watching = false,
            },
        }
    }
    // The session's end has been handled once its task is over (a disconnect message, if one
    // came, is in `farewell` by then).
    let _ = tokio::time::timeout(Duration::from_secs(1), h).await;
    let why = farewell.lock().expect("farewell").take();
    Ok(why.map_or(Ended::Lost, Ended::ByServer))
}

/// The forwards of `all` whose tunnels have not been deleted.
fn live(all: &[Forward], gone: &std::collections::HashSet<String>) -> Vec<Forward> {
    all.iter().filter(|f| !gone.contains(&f.tunnel_id)).cloned().collect()
}

/// Makes the session forward exactly `wanted`: asks for the new relay ports, cancels the ones
/// no longer wanted, and points the others where they now go. How many forwards are up.
async fn follow(h: &mut client::Handle<Forwarder>, routes: &Routes, wanted: &[Forward], server: &str) -> usize {
    let now: Vec<Forward> = routes.read().expect("routes").values().cloned().collect();
    for old in now.iter().filter(|o| !wanted.iter().any(|w| w.relay_port == o.relay_port)) {
        routes.write().expect("routes").remove(&u32::from(old.relay_port));
        let _ = h.cancel_tcpip_forward("127.0.0.1", u32::from(old.relay_port)).await;
        say(format!("{}: no longer forwarded", old.name));
    }
    for w in wanted {
        let port = u32::from(w.relay_port);
        let had = routes.read().expect("routes").get(&port).cloned();
        match had {
            Some(h) if h == *w => {}
            Some(_) => {
                routes.write().expect("routes").insert(port, w.clone());
                say(format!("{}: relay port {} -> {}:{} now", w.name, w.relay_port, w.host, w.port));
            }
            None => match h.tcpip_forward("127.0.0.1", port).await {
                Ok(_) => {
                    routes.write().expect("routes").insert(port, w.clone());
                    say(format!(
                        "tunnel up via {server}: relay port {} -> {}:{} ({})",
                        w.relay_port, w.host, w.port, w.name
                    ));
                }
                Err(e) => say(format!("{}: the server refused to forward relay port {}: {e}", w.name, w.relay_port)),
            },
        }
    }
    routes.read().expect("routes").len()
}

/// Messages waiting for the terminal at most, per stream (the node sends its session log as a
/// message per few milliseconds, lines of a busy tunnel together).
const SHOWN_QUEUE: usize = 256;

/// Output that must never hold up a tunnel: a thread of its own writes it. When the terminal
/// does not keep up (paused with Ctrl-S, a pipe nobody reads), lines are dropped and counted,
/// and a line says so once it takes them again. (Written on the tunnel's thread, a full pipe
/// would stop the tunnel.)
struct Printer {
    queue: std::sync::mpsc::SyncSender<String>,
    dropped: std::sync::atomic::AtomicU64,
    /// What its lines are, for the line that says some were dropped.
    what: &'static str,
}

impl Printer {
    fn start(what: &'static str, mut to: impl std::io::Write + Send + 'static) -> Printer {
        let (queue, texts) = std::sync::mpsc::sync_channel::<String>(SHOWN_QUEUE);
        std::thread::spawn(move || {
            for text in texts {
                if to.write_all(text.as_bytes()).and_then(|()| to.flush()).is_err() {
                    return;
                }
            }
        });
        Printer { queue, dropped: Default::default(), what }
    }

    fn print(&self, mut text: String) {
        use std::sync::atomic::Ordering;
        let lines = text.matches('\n').count() as u64;
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            text = format!("({dropped} {} dropped: the terminal did not keep up)\n{text}", self.what);
        }
        if self.queue.try_send(text).is_err() {
            self.dropped.fetch_add(dropped + lines, Ordering::Relaxed);
        }
    }
}

/// Prints what the node sends on the session: the banner and the log lines.
fn show(data: &[u8]) {
    static OUT: std::sync::OnceLock<Printer> = std::sync::OnceLock::new();
    let out = OUT.get_or_init(|| Printer::start("log lines", std::io::stdout()));
    out.print(String::from_utf8_lossy(data).replace("\r\n", "\n"));
}

/// Prints a line about the tunnel itself (to stderr).
fn say(line: String) {
    static ERR: std::sync::OnceLock<Printer> = std::sync::OnceLock::new();
    let err = ERR.get_or_init(|| Printer::start("messages", std::io::stderr()));
    err.print(line + "\n");
}

/// A session that lasted this long was no flapping: the waits start over.
const STEADY: Duration = Duration::from_secs(30);
/// The node list is refreshed from the API during the wait, for at most this long.
const REFRESH: Duration = Duration::from_secs(2);

/// The wait before the next attempt, given the one that was due and how the last attempt went
/// (`Some`: the session was up, and how it ended; `None`: it failed). A tunnel that was up and lost its connection
/// moves to another node after the first wait, however many failures came before (a
/// whole-cluster restart, say); failures to connect, and a server that ends the session itself (another connection
/// took the tunnel: two clients for one tunnel must not take it from each other in a tight
/// loop), wait longer each time.
fn backoff_after(due: Duration, last: Option<&Ended>, lasted: Duration) -> Duration {
    if lasted > STEADY || last == Some(&Ended::Lost) {
        FIRST_BACKOFF
    } else {
        due
    }
}

/// Keeps the tunnels up until the process is stopped: reconnects with backoff, moving to the
/// next node each time, and refreshes the node list from the API when it can. Ends with an
/// error once every tunnel it forwards has been deleted.
pub async fn run(mut spec: TunnelSpec, api: ApiClient) -> anyhow::Result<()> {
    let key = russh::keys::load_secret_key(&spec.identity, None).with_context(|| {
        format!("cannot read the private key {} (passphrase-protected keys are not supported)", spec.identity.display())
    })?;
    let key = Arc::new(key);
    let mut due = FIRST_BACKOFF;
    let mut i = 0usize;
    // Tunnels deleted through the API while this ran: nothing to come back to.
    let mut gone = std::collections::HashSet::new();
    loop {
        if spec.servers.is_empty() {
            bail!("no SSH endpoint known for this cluster");
        }
        let server = spec.servers[i % spec.servers.len()].clone();
        let started = Instant::now();
        let last = session_once(&mut spec, &key, &server, &gone).await;
        // Closed or refused by a server (not a lost connection, which just moves on): a
        // tunnel may be gone, deleted through the API.
        if !matches!(last, Ok(Ended::Lost)) {
            let forwards = live(&spec.forwards.borrow(), &gone);
            for f in &forwards {
                if let Err(e) = api.tunnel(&f.socket_id, &f.tunnel_id).await {
                    if e.is_not_found() {
                        say(format!(
                            "{}: tunnel {} of socket {} no longer exists (deleted)",
                            f.name, f.tunnel_id, f.socket_id
                        ));
                        gone.insert(f.tunnel_id.clone());
                    }
                }
            }
            if !forwards.is_empty() && forwards.iter().all(|f| gone.contains(&f.tunnel_id)) {
                if let Ok(Ended::ByServer(why)) = &last {
                    say(format!("tunnel via {server} closed by the server ({why})"));
                }
                match forwards.as_slice() {
                    [f] => {
                        bail!("tunnel {} of socket {} no longer exists (deleted); stopping", f.tunnel_id, f.socket_id)
                    }
                    _ => bail!("every tunnel no longer exists (deleted); stopping"),
                }
            }
        }
        match &last {
            Ok(Ended::Lost) => say(format!("tunnel via {server} lost; reconnecting")),
            Ok(Ended::ByServer(why)) => say(format!("tunnel via {server} closed by the server ({why}); reconnecting")),
            Err(e) => say(format!("tunnel via {server}: {e:#}")),
        }
        let due_now = backoff_after(due, last.as_ref().ok(), started.elapsed());
        // The clients of a node that dies all lose their sessions at once: each comes back
        // after a random part of the wait, not all in step.
        let wait = jittered(due_now, &mut rand::thread_rng());
        // The node list is refreshed while waiting, not before: an API node that went down
        // with the tunnel's node must not hold the reconnect up.
        let refresh = tokio::time::timeout(REFRESH.max(wait), api.cluster());
        let (view, ()) = tokio::join!(refresh, tokio::time::sleep(wait));
        if let Ok(Ok(view)) = view {
            let mut fresh = view.ssh_addrs();
            if !fresh.is_empty() {
                fresh.sort();
                spec.servers = fresh;
            }
        }
        i += 1;
        due = doubled(due_now);
    }
}

#[cfg(test)]
mod tests {
    use mysocket_api::reconnect::MAX_BACKOFF;
    use russh::client::Handler;
    use russh::keys::PublicKeyOrCertificate;

    use super::*;

    fn key(seed: u8) -> russh::keys::PrivateKey {
        russh::keys::PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]))
    }

    /// A tunnel that was up and lost its connection reconnects after the first wait, even after
    /// a run of failures; failures and a server's own goodbye wait longer each time, up to the cap; a
    /// long session starts the waits over.
    #[test]
    fn reconnect_waits_follow_how_the_last_session_ended() {
        let moment = Duration::from_secs(1);
        let superseded = Ended::ByServer("a newer connection took the tunnel".into());
        let superseded = Some(&superseded);
        // A run of failures (a whole-cluster restart): each wait doubles up to the cap.
        let mut due = FIRST_BACKOFF;
        let mut waits = Vec::new();
        for _ in 0..5 {
            let wait = backoff_after(due, None, moment);
            waits.push(wait.as_millis());
            due = doubled(wait);
        }
        assert_eq!(waits, [1000, 2000, 4000, 5000, 5000]);
        // Then a session that came up, and died with its node seconds later: the first wait.
        assert_eq!(backoff_after(due, Some(&Ended::Lost), moment), FIRST_BACKOFF);
        // Taken away by another client: no quicker than the failures before.
        assert_eq!(backoff_after(due, superseded, moment), MAX_BACKOFF);
        assert_eq!(backoff_after(Duration::from_secs(2), superseded, moment), Duration::from_secs(2));
        // Any end of a long session starts over.
        assert_eq!(backoff_after(MAX_BACKOFF, superseded, STEADY * 2), FIRST_BACKOFF);
        assert_eq!(backoff_after(MAX_BACKOFF, None, STEADY * 2), FIRST_BACKOFF);
    }

    #[tokio::test]
    async fn only_the_clusters_host_key_is_accepted() {
        let (cluster, stranger) = (key(1), key(2));
        let mismatch = Arc::new(std::sync::Mutex::new(None));
        let mut f = Forwarder {
            routes: Routes::default(),
            inspector: None,
            pinned: cluster.public_key().clone(),
            mismatch: mismatch.clone(),
            farewell: Arc::default(),
        };
        let offer = |k: &russh::keys::PrivateKey| PublicKeyOrCertificate::PublicKey {
            key: k.public_key().clone(),
            hash_alg: None,
        };
        assert!(f.check_server_key(&offer(&cluster)).await.unwrap());
        assert!(mismatch.lock().unwrap().is_none());
        assert!(!f.check_server_key(&offer(&stranger)).await.unwrap());
        let why = mismatch.lock().unwrap().take().expect("the refusal is explained");
        assert!(why.contains("is not the cluster's"), "{why}");
        assert!(why.contains(&cluster.public_key().fingerprint(Default::default()).to_string()), "{why}");
    }
}
