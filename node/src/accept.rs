//! The accept loop every public listener shares: a permit taken before `accept()` bounds the
//! connections, accept errors back off instead of spinning, and each connection runs in its
//! own task holding its permit.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::Listener;

/// Accepts on `listener` until `stop`, at most `max` connections at once, each counted in the
/// metrics of `what` while it lasts.
pub async fn serve<F, Fut>(listener: TcpListener, max: usize, what: Listener, stop: CancellationToken, mut on_conn: F)
where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max));
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
        let _ = stream.set_nodelay(true);
        let conn = on_conn(stream, peer);
        let open = crate::metrics::get().accepted(what);
        tokio::spawn(async move {
            let _permit = (permit, open);
            conn.await;
        });
    }
}
