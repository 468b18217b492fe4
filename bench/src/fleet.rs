//! `mysocket-fleet`: many tunnel clients in one process, for `bench/failover.sh`'s tunnel
//! failover. Each tunnel gets an SSH session of its own (russh, the client library
//! `mysocketctl` uses), claims its tunnel through the first node, and when its session is lost
//! claims it again through the other nodes in turn after `mysocketctl`'s waits
//! (`mysocket_api::reconnect`: a random part of a second after a loss, of a wait doubling to
//! 5 s after failures). Every forwarded connection is
//! answered `200 ok`. Prints `up N` once every tunnel is held, then `claimed I` each time tunnel
//! I (its line's number, from 0) is claimed again, and runs until killed.
//!
//! ```text
//! mysocket-fleet --key KEY --tunnels FILE --first 127.0.0.1:2222 --then 127.0.0.2:2222,127.0.0.3:2222
//! ```
//! FILE holds a line `USER RELAY_PORT` per tunnel.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mysocket_api::reconnect::doubled;
use mysocket_api::reconnect::jittered;
use mysocket_api::reconnect::FIRST_BACKOFF;
use russh::client;
use russh::keys::PrivateKey;
use russh::keys::PrivateKeyWithHashAlg;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

#[derive(Parser)]
struct Args {
    /// The SSH private key every tunnel's account accepts.
    #[arg(long)]
    key: std::path::PathBuf,
    /// Lines of `USER RELAY_PORT`.
    #[arg(long)]
    tunnels: std::path::PathBuf,
    /// The node every tunnel is claimed through first.
    #[arg(long)]
    first: String,
    /// The nodes a lost tunnel moves to, in turn.
    #[arg(long, value_delimiter = ',')]
    then: Vec<String>,
}

/// Tunnels claimed at once at the start.
const STARTING: usize = 32;

struct Service;

impl client::Handler for Service {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        _connected_address: &str,
        _connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        tokio::spawn(async move {
            let mut s = channel.into_stream();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Requests without bodies, answered in turn while the visitor keeps the connection.
            loop {
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                        return;
                    }
                }
                match s.read(&mut chunk).await {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
        });
        Ok(())
    }
}

/// One session claiming `port` through `addr`; returns once the claim is answered.
async fn claim(addr: &str, user: &str, key: Arc<PrivateKey>, port: u16) -> anyhow::Result<client::Handle<Service>> {
    let config = Arc::new(client::Config {
        keepalive_interval: Some(Duration::from_secs(5)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    });
    let mut h = client::connect(config, addr, Service).await?;
    let hash = h.best_supported_rsa_hash().await?.flatten();
    match h.authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, hash)).await? {
        client::AuthResult::Success => {}
        _ => anyhow::bail!("key refused"),
    }
    h.tcpip_forward("127.0.0.1", u32::from(port)).await?;
    Ok(h)
}

/// Holds tunnel `i` for ever; `up` counts the tunnels held once at the start, and each claim
/// after that prints `claimed I`.
async fn hold(
    args: Arc<Args>,
    key: Arc<PrivateKey>,
    (user, port): (String, u16),
    i: usize,
    started: Arc<tokio::sync::Semaphore>,
    up: Arc<AtomicUsize>,
) {
    let mut addr = args.first.clone();
    let mut turn = i;
    let mut backoff = FIRST_BACKOFF;
    let mut first = Some(started.acquire_owned().await);
    loop {
        let wait = match claim(&addr, &user, key.clone(), port).await {
            Ok(session) => {
                if first.take().is_some() {
                    up.fetch_add(1, Ordering::Relaxed);
                } else {
                    println!("claimed {i}");
                }
                while !session.is_closed() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                backoff = FIRST_BACKOFF;
                FIRST_BACKOFF
            }
            Err(_) => {
                let w = backoff;
                backoff = doubled(backoff);
                w
            }
        };
        let wait = jittered(wait, &mut rand::thread_rng());
        tokio::time::sleep(wait).await;
        if !args.then.is_empty() {
            addr = args.then[turn % args.then.len()].clone();
            turn += 1;
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let key = Arc::new(russh::keys::load_secret_key(&args.key, None).context("reading the key")?);
    let list = std::fs::read_to_string(&args.tunnels).context("reading the tunnels")?;
    let mut tunnels = Vec::new();
    for line in list.lines().filter(|l| !l.trim().is_empty()) {
        let (user, port) = line.split_once(' ').context("a line is `USER RELAY_PORT`")?;
        tunnels.push((user.to_string(), port.trim().parse::<u16>().context("relay port")?));
    }
    let started = Arc::new(tokio::sync::Semaphore::new(STARTING));
    let up = Arc::new(AtomicUsize::new(0));
    for (i, (user, port)) in tunnels.iter().enumerate() {
        tokio::spawn(hold(args.clone(), key.clone(), (user.clone(), *port), i, started.clone(), up.clone()));
    }
    while up.load(Ordering::Relaxed) < tunnels.len() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("up {}", tunnels.len());
    std::future::pending::<()>().await;
    Ok(())
}
