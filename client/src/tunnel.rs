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

/// What to forward where.
pub struct TunnelSpec {
    /// SSH login: the account's `user_name`.
    pub user: String,
    /// The tunnel's relay port (`local_port` in the API).
    pub relay_port: u16,
    /// The local service.
    pub host: String,
    pub port: u16,
    pub identity: PathBuf,
    /// SSH endpoints to try, first the tunnel's own server.
    pub servers: Vec<String>,
    /// The cluster's SSH host key (OpenSSH public-key line) from `GET /cluster`.
    pub host_key: String,
    /// The tunnel, for asking the API whether it still exists once a server has closed it.
    pub socket_id: String,
    pub tunnel_id: String,
}

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
    host: String,
    port: u16,
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
        _connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        // The local service is dialled first, and the channel accepted only once it answers:
        // refused, the node gives the visitor its 502 page at once. (Accepted and then dropped,
        // the channel would stay open at the node's end and the visitor would wait.) On a task
        // of its own: the session's other channels do not wait for the dial.
        let (host, port) = (self.host.clone(), self.port);
        let from = format!("{originator_address}:{originator_port}");
        tokio::spawn(async move {
            match tokio::net::TcpStream::connect((host.as_str(), port)).await {
                Ok(mut local) => {
                    reply.accept().await;
                    let _ = local.set_nodelay(true);
                    let mut remote = channel.into_stream();
                    // Whole SSH packets per channel message, not tokio's default 8 KiB.
                    let _ = tokio::io::copy_bidirectional_with_sizes(&mut remote, &mut local, PACKET, PACKET).await;
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

/// One SSH session: connects, logs in, forwards the tunnel and prints its log until it ends.
async fn session_once(spec: &TunnelSpec, key: &Arc<russh::keys::PrivateKey>, server: &str) -> anyhow::Result<Ended> {
    let config = Arc::new(session_config());
    let pinned = russh::keys::PublicKey::from_openssh(&spec.host_key)
        .map_err(|e| anyhow!("the cluster's SSH host key from the API does not parse: {e}"))?;
    let mismatch = Arc::new(std::sync::Mutex::new(None));
    let farewell = Arc::new(std::sync::Mutex::new(None));
    let handler = Forwarder {
        host: spec.host.clone(),
        port: spec.port,
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
    h.tcpip_forward("127.0.0.1", u32::from(spec.relay_port))
        .await
        .map_err(|e| anyhow!("the server refused to forward relay port {}: {e}", spec.relay_port))?;
    let mut ch = h.channel_open_session().await?;
    ch.request_shell(false).await?;
    say(format!("tunnel up via {server}: relay port {} -> {}:{}", spec.relay_port, spec.host, spec.port));
    while let Some(msg) = ch.wait().await {
        match msg {
            ChannelMsg::Data { data } => show(&data),
            ChannelMsg::Eof | ChannelMsg::Close => break,
            _ => {}
        }
    }
    // The session's end has been handled once its task is over (a disconnect message, if one
    // came, is in `farewell` by then).
    let _ = tokio::time::timeout(Duration::from_secs(1), h).await;
    let why = farewell.lock().expect("farewell").take();
    Ok(why.map_or(Ended::Lost, Ended::ByServer))
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

/// The first wait before reconnecting, and the longest.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A session that lasted this long was no flapping: the waits start over.
const STEADY: Duration = Duration::from_secs(30);
/// The node list is refreshed from the API during the wait, for at most this long.
const REFRESH: Duration = Duration::from_secs(2);

/// The wait before the next attempt, given the one that was due and how the last attempt went
/// (`Some`: the session was up, and how it ended; `None`: it failed). A tunnel that was up and lost its connection
/// moves to another node at once, however many failures came before (a whole-cluster restart,
/// say); failures to connect, and a server that ends the session itself (another connection
/// took the tunnel: two clients for one tunnel must not take it from each other in a tight
/// loop), wait longer each time.
fn backoff_after(due: Duration, last: Option<&Ended>, lasted: Duration) -> Duration {
    if lasted > STEADY || last == Some(&Ended::Lost) {
        FIRST_BACKOFF
    } else {
        due
    }
}

/// Keeps the tunnel up until the process is stopped: reconnects with backoff, moving to the
/// next node each time, and refreshes the node list from the API when it can.
pub async fn run(mut spec: TunnelSpec, api: ApiClient) -> anyhow::Result<()> {
    let key = russh::keys::load_secret_key(&spec.identity, None).with_context(|| {
        format!("cannot read the private key {} (passphrase-protected keys are not supported)", spec.identity.display())
    })?;
    let key = Arc::new(key);
    let mut due = FIRST_BACKOFF;
    let mut i = 0usize;
    loop {
        if spec.servers.is_empty() {
            bail!("no SSH endpoint known for this cluster");
        }
        let server = spec.servers[i % spec.servers.len()].clone();
        let started = Instant::now();
        let last = session_once(&spec, &key, &server).await;
        // Closed or refused by a server (not a lost connection, which moves on at once): the
        // tunnel may be gone, deleted through the API, and then there is nothing to come back to.
        if !matches!(last, Ok(Ended::Lost)) {
            if let Err(e) = api.tunnel(&spec.socket_id, &spec.tunnel_id).await {
                if e.is_not_found() {
                    if let Ok(Ended::ByServer(why)) = &last {
                        say(format!("tunnel via {server} closed by the server ({why})"));
                    }
                    bail!(
                        "tunnel {} of socket {} no longer exists (deleted); stopping",
                        spec.tunnel_id,
                        spec.socket_id
                    );
                }
            }
        }
        match &last {
            Ok(Ended::Lost) => say(format!("tunnel via {server} lost; reconnecting")),
            Ok(Ended::ByServer(why)) => say(format!("tunnel via {server} closed by the server ({why}); reconnecting")),
            Err(e) => say(format!("tunnel via {server}: {e:#}")),
        }
        let wait = backoff_after(due, last.as_ref().ok(), started.elapsed());
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
        due = (wait * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use russh::client::Handler;
    use russh::keys::PublicKeyOrCertificate;

    use super::*;

    fn key(seed: u8) -> russh::keys::PrivateKey {
        russh::keys::PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]))
    }

    /// A tunnel that was up and lost its connection reconnects at once, even after a run of
    /// failures; failures and a server's own goodbye wait longer each time, up to the cap; a
    /// long session starts the waits over.
    #[test]
    fn reconnect_waits_follow_how_the_last_session_ended() {
        let moment = Duration::from_secs(1);
        let superseded = Ended::ByServer("a newer connection took the tunnel".into());
        let superseded = Some(&superseded);
        // A run of failures (a whole-cluster restart): each wait doubles up to the cap.
        let mut due = FIRST_BACKOFF;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let wait = backoff_after(due, None, moment);
            waits.push(wait.as_millis());
            due = (wait * 2).min(MAX_BACKOFF);
        }
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        // Then a session that came up, and died with its node seconds later: at once.
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
            host: "127.0.0.1".into(),
            port: 1,
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
