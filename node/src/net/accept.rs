//! The accept loop every public listener shares: a permit taken before `accept()` bounds the
//! connections, a count per source address keeps one address from taking them all (a
//! connection past its address's share is closed at once), accept errors back off instead of
//! spinning, and each connection runs in its own task holding its permit.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::Listener;

/// Time a client of a public port gets to send its request head (or its TLS handshake).
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Connections open per source address on one listener.
struct Sources {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in its address's count.
struct SourceSlot(Arc<Sources>, IpAddr);

impl Sources {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let mut open = self.open.lock().expect("sources");
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot(self.clone(), ip))
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.0.open.lock().expect("sources");
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// Accepts on `listener` until `stop`, at most `max` connections at once and `per_source`
/// from one address, each counted in the metrics of `what` while it lasts.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    max: usize,
    per_source: usize,
    what: Listener,
    stop: CancellationToken,
    mut on_conn: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max));
    let sources = Arc::new(Sources { max: per_source, open: Mutex::default() });
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, what = what.name(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(slot) = sources.take(peer.ip()) else {
            crate::metrics::get().refused(crate::metrics::Refusal::PerSource);
            tracing::debug!(%peer, what = what.name(), "refused: this address has its share of the port's connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = on_conn(stream, peer);
        let open = crate::metrics::get().accepted(what);
        tokio::spawn(async move {
            let _permit = (permit, slot, open);
            conn.await;
        });
    }
}
