//! The socket under an SSH connection, with its writes coalesced — used by both ends of a
//! tunnel (the node's SSH server and `mysocketctl`).
//!
//! russh writes out what its session loop has queued after each message it handles: on a
//! busy tunnel, one system call and one TCP segment per request or answer, though many
//! channels have data on their way at once. Here, the first write after a flush gives up the
//! task's turn once (`tokio::task::yield_now`, which also lets the runtime look for I/O), so
//! the tasks that were ready — public connections with a request in hand, or the service's
//! answers — run first and queue their data on the session, and it leaves in fewer, bigger
//! writes. On a quiet tunnel the cost is one scheduler turn per write. What it saves is in
//! BENCHMARKS.md (data plane: coalesced SSH writes).

use std::future::Future;
use std::pin::Pin;
use std::task::ready;
use std::task::Context;
use std::task::Poll;

use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;

/// A stream whose first write after each flush waits one turn of the scheduler. Reads pass
/// straight through.
pub struct Coalesced<S> {
    inner: S,
    /// The turn being given up, until the runtime comes back to this task.
    turn: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// The turn was given up since the last flush: the writes until the next one go straight.
    yielded: bool,
}

impl<S> Coalesced<S> {
    pub fn new(inner: S) -> Self {
        Coalesced { inner, turn: None, yielded: false }
    }

    /// Ready once this flush cycle's turn has been given up.
    fn poll_turn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.yielded {
            let turn = self.turn.get_or_insert_with(|| Box::pin(tokio::task::yield_now()));
            ready!(turn.as_mut().poll(cx));
            self.turn = None;
            self.yielded = true;
        }
        Poll::Ready(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        ready!(self.poll_turn(cx));
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.poll_turn(cx));
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.yielded = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::Mutex;

    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// What reaches the other end: the session's first write waits for the task that was
    /// ready beside it (which queues its own data meanwhile), later writes of the same
    /// flush cycle do not wait, and every byte arrives in order.
    #[tokio::test(flavor = "current_thread")]
    async fn the_first_write_after_a_flush_lets_ready_tasks_run_first() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let order = Arc::new(Mutex::new(Vec::<&str>::new()));
        let o = order.clone();
        let other = tokio::spawn(async move { o.lock().unwrap().push("other task") });
        let mut w = Coalesced::new(a);
        w.write_all(b"first ").await.unwrap();
        order.lock().unwrap().push("first write");
        let o = order.clone();
        let late = tokio::spawn(async move { o.lock().unwrap().push("late task") });
        w.write_all(b"second ").await.unwrap();
        order.lock().unwrap().push("second write");
        w.flush().await.unwrap();
        w.write_all(b"third").await.unwrap();
        order.lock().unwrap().push("third write");
        w.shutdown().await.unwrap();
        other.await.unwrap();
        late.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["other task", "first write", "second write", "late task", "third write"]);
        let mut got = String::new();
        b.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "first second third");
    }
}
