//! The one reader of HTTP/1.x answers for tests that speak HTTP by hand over a raw connection
//! (to see framing, field order or a connection's end, which a client library hides).

use std::io;
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;

/// How long a read may wait for the next bytes (longer than any deadline of the node's, such
/// as the API's 10 s for a request body): a node that stops answering fails the test
/// instead of hanging it.
const SILENCE: Duration = Duration::from_secs(20);

/// One HTTP/1.x answer as it came off a connection.
#[derive(Debug)]
pub struct HttpAnswer {
    /// The final answer's status code (after any interim 1xx answer other than 101).
    pub status: u16,
    /// The final answer's fields in order, names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body without its framing (a chunked body's sizes and trailer taken out).
    pub body: Vec<u8>,
    /// Every byte read for this answer, interim answers and framing included: what tests of
    /// the exact bytes on the wire look at.
    pub raw: Vec<u8>,
}

impl HttpAnswer {
    /// The value of the first field named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// [`HttpAnswer::raw`] as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

/// Reads the answer to a `method` request from `s`, and not a byte more, so that the next call
/// reads the next answer of a kept-alive or pipelined connection. The body is framed as RFC
/// 9112 §6.3 says: none after HEAD, 1xx, 204 or 304; chunked; by Content-Length; else up to
/// the end of the connection. After a 101 only the head is read (the connection has switched).
/// An end of the stream before the answer is whole is an `UnexpectedEof` error; 20 s without a
/// byte is `TimedOut`.
pub async fn read_http_answer<S: AsyncRead + Unpin>(s: &mut S, method: &str) -> io::Result<HttpAnswer> {
    let mut w = Wire { s, raw: Vec::new() };
    let (status, headers) = loop {
        let (status, headers) = w.head().await?;
        if !(100..200).contains(&status) || status == 101 {
            break (status, headers);
        }
    };
    let field = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_ascii_lowercase());
    let body = if method.eq_ignore_ascii_case("HEAD") || matches!(status, 101 | 204 | 304) {
        Vec::new()
    } else if field("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        w.chunked().await?
    } else if let Some(length) = field("content-length") {
        let length = length.parse().map_err(|_| invalid(format!("content-length {length:?}")))?;
        w.exact(length).await?
    } else {
        w.until_end().await?
    };
    Ok(HttpAnswer { status, headers, body, raw: w.raw })
}

/// [`read_http_answer`] for a request after which the connection must end (it asked to close,
/// or it is HTTP/1.0): the answer, and then the end of the stream with nothing more.
pub async fn read_last_http_answer<S: AsyncRead + Unpin>(s: &mut S, method: &str) -> io::Result<HttpAnswer> {
    let answer = read_http_answer(s, method).await?;
    let mut w = Wire { s, raw: Vec::new() };
    let more = w.until_end().await?;
    if !more.is_empty() {
        let more = String::from_utf8_lossy(&more);
        return Err(invalid(format!("bytes after the last answer {:?}: {more:?}", answer.text())));
    }
    Ok(answer)
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// A connection being read, and every byte read from it so far.
struct Wire<'a, S> {
    s: &'a mut S,
    raw: Vec<u8>,
}

impl<S: AsyncRead + Unpin> Wire<'_, S> {
    /// One read of at most `max` bytes, kept in `raw`; an empty slice at the end of the stream.
    async fn some(&mut self, max: usize) -> io::Result<&[u8]> {
        let start = self.raw.len();
        self.raw.resize(start + max, 0);
        let read = tokio::time::timeout(SILENCE, self.s.read(&mut self.raw[start..])).await;
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                self.raw.truncate(start);
                return Err(e);
            }
            Err(_) => {
                self.raw.truncate(start);
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("nothing came for {SILENCE:?}")));
            }
        };
        self.raw.truncate(start + n);
        Ok(&self.raw[start..])
    }

    /// Exactly `n` bytes.
    async fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let part = self.some((n - got.len()).min(64 * 1024)).await?;
            if part.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{} of {n} bytes", got.len())));
            }
            got.extend_from_slice(part);
        }
        Ok(got)
    }

    /// Everything up to the end of the stream.
    async fn until_end(&mut self) -> io::Result<Vec<u8>> {
        let mut got = Vec::new();
        loop {
            let part = self.some(64 * 1024).await?;
            if part.is_empty() {
                return Ok(got);
            }
            got.extend_from_slice(part);
        }
    }

    /// One line without its CRLF, read a byte at a time so that nothing after it is taken.
    async fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        while line.last() != Some(&b'\n') {
            line.extend_from_slice(&self.exact(1).await?);
        }
        Ok(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string())
    }

    /// A status line and its fields, up to the blank line.
    async fn head(&mut self) -> io::Result<(u16, Vec<(String, String)>)> {
        let status_line = self.line().await?;
        let status = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| invalid(format!("status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                return Ok((status, headers));
            }
            let (name, value) = line.split_once(':').ok_or_else(|| invalid(format!("field {line:?}")))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }

    /// A chunked body's data, its trailer read and dropped.
    async fn chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let size_line = self.line().await?;
            let size = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| invalid(format!("chunk size {size_line:?}")))?;
            if size == 0 {
                while !self.line().await?.is_empty() {}
                return Ok(body);
            }
            body.extend_from_slice(&self.exact(size).await?);
            if !self.line().await?.is_empty() {
                return Err(invalid("no CRLF after a chunk".into()));
            }
        }
    }
}
