//! An incremental reader of HTTP/1.x messages as they pass, for the inspector: it is fed the
//! bytes of one direction of a connection in whatever pieces they come, and says where each
//! message's head, body and end are. It never changes or holds up the bytes (the tunnel
//! copies them on regardless); what it cannot follow (an upgrade, garbage) it stops reading.

/// A request head or a response head, as the inspector keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// Requests: the method and target.
    pub method: String,
    pub target: String,
    /// Responses: the status code.
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// What a piece of the stream held.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Head(Head),
    /// Bytes of the body (chunked framing removed).
    Body(Vec<u8>),
    /// The message is complete.
    End,
}

/// Largest head followed; a longer one stops the reader (the connection goes on untouched).
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    /// A body of this many bytes left.
    Fixed(u64),
    /// A chunk-size line.
    ChunkSize,
    /// This many bytes of chunk data left, then its CRLF.
    ChunkData(u64),
    ChunkEnd,
    /// Trailer lines until an empty one.
    Trailers,
    /// A response body that ends when the connection does.
    UntilClose,
    /// Not followed any more (an upgrade, or what could not be parsed).
    Off,
}

/// One direction of one connection.
pub struct Reader {
    requests: bool,
    state: State,
    /// Bytes of a head or of a line not complete yet.
    pending: Vec<u8>,
    /// Responses: the methods of the requests they answer, oldest first (HEAD has no body).
    pub expect_head: std::collections::VecDeque<bool>,
}

impl Reader {
    pub fn requests() -> Reader {
        Reader { requests: true, state: State::Head, pending: Vec::new(), expect_head: Default::default() }
    }

    pub fn responses() -> Reader {
        Reader { requests: false, ..Reader::requests() }
    }

    /// Whether it still follows the stream.
    pub fn following(&self) -> bool {
        self.state != State::Off
    }

    /// The connection ended: a body that lasts until then is complete.
    pub fn close(&mut self, out: &mut Vec<Event>) {
        if self.state == State::UntilClose {
            out.push(Event::End);
        }
        self.state = State::Off;
    }

    /// Stops following (the other direction saw an upgrade).
    pub fn stop(&mut self) {
        self.state = State::Off;
    }

    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<Event>) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Head => {
                    let before = self.pending.len();
                    self.pending.extend_from_slice(data);
                    match self.head(out) {
                        Some(used) => {
                            // What followed the head, of this piece, is read on.
                            let rest = (before + data.len()).saturating_sub(used);
                            data = &data[data.len() - rest..];
                            self.pending.clear();
                        }
                        None => {
                            if self.pending.len() > MAX_HEAD {
                                self.state = State::Off;
                            }
                            return;
                        }
                    }
                }
                State::Fixed(left) => {
                    let n = (left as usize).min(data.len());
                    out.push(Event::Body(data[..n].to_vec()));
                    data = &data[n..];
                    self.state = if left as usize == n { self.end(out) } else { State::Fixed(left - n as u64) };
                }
                State::UntilClose => {
                    out.push(Event::Body(data.to_vec()));
                    return;
                }
                State::ChunkData(left) => {
                    let n = (left as usize).min(data.len());
                    out.push(Event::Body(data[..n].to_vec()));
                    data = &data[n..];
                    self.state = if left as usize == n { State::ChunkEnd } else { State::ChunkData(left - n as u64) };
                }
                State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    let Some(i) = data.iter().position(|b| *b == b'\n') else {
                        self.pending.extend_from_slice(data);
                        if self.pending.len() > MAX_HEAD {
                            self.state = State::Off;
                        }
                        return;
                    };
                    self.pending.extend_from_slice(&data[..=i]);
                    data = &data[i + 1..];
                    let line = std::mem::take(&mut self.pending);
                    let line = line.strip_suffix(b"\n").unwrap_or(&line);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    self.state = match self.state {
                        State::ChunkSize => {
                            let size = std::str::from_utf8(line)
                                .ok()
                                .and_then(|l| u64::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok());
                            match size {
                                Some(0) => State::Trailers,
                                Some(n) => State::ChunkData(n),
                                None => State::Off,
                            }
                        }
                        State::ChunkEnd if line.is_empty() => State::ChunkSize,
                        State::ChunkEnd => State::Off,
                        _ if line.is_empty() => self.end(out),
                        _ => State::Trailers,
                    };
                }
            }
        }
    }

    fn end(&mut self, out: &mut Vec<Event>) -> State {
        out.push(Event::End);
        State::Head
    }

    /// Parses the head in `pending`: its length once complete, with the state its body needs.
    fn head(&mut self, out: &mut Vec<Event>) -> Option<usize> {
        let mut fields = [httparse::EMPTY_HEADER; 128];
        let (len, head) = if self.requests {
            let mut r = httparse::Request::new(&mut fields);
            match r.parse(&self.pending) {
                Ok(httparse::Status::Complete(n)) => {
                    let head = Head {
                        method: r.method.unwrap_or("").to_string(),
                        target: r.path.unwrap_or("").to_string(),
                        status: 0,
                        headers: copy(r.headers),
                    };
                    (n, head)
                }
                Ok(httparse::Status::Partial) => return None,
                Err(_) => {
                    self.state = State::Off;
                    return None;
                }
            }
        } else {
            let mut r = httparse::Response::new(&mut fields);
            match r.parse(&self.pending) {
                Ok(httparse::Status::Complete(n)) => {
                    (n, Head { status: r.code.unwrap_or(0), headers: copy(r.headers), ..Head::default() })
                }
                Ok(httparse::Status::Partial) => return None,
                Err(_) => {
                    self.state = State::Off;
                    return None;
                }
            }
        };
        let field = |name: &str| head.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v);
        let chunked = field("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = field("content-length").and_then(|v| v.trim().parse::<u64>().ok());
        let (status, interim) = (head.status, (100..200).contains(&head.status) && head.status != 101);
        // An interim answer (100 Continue) is not the answer: the one it announces follows.
        if interim {
            return Some(len);
        }
        let to_head = !self.requests && self.expect_head.pop_front().unwrap_or(false);
        out.push(Event::Head(head));
        // A 101 switches the connection to another protocol: nothing more to follow.
        self.state = if !self.requests && status == 101 {
            out.push(Event::End);
            State::Off
        } else if !self.requests && (to_head || status == 204 || status == 304) {
            self.end(out)
        } else if chunked {
            State::ChunkSize
        } else if let Some(n) = length.filter(|n| *n > 0) {
            State::Fixed(n)
        } else if self.requests || length == Some(0) {
            self.end(out)
        } else {
            State::UntilClose
        };
        Some(len)
    }
}

fn copy(fields: &[httparse::Header]) -> Vec<(String, String)> {
    fields.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of every size from 1 up: the events are the same however the
    /// stream is cut.
    fn events(mut r: impl FnMut() -> Reader, bytes: &[u8]) -> Vec<Event> {
        let mut whole = Vec::new();
        r().feed(bytes, &mut whole);
        let merged = |evs: Vec<Event>| {
            let mut out: Vec<Event> = Vec::new();
            for e in evs {
                match (out.last_mut(), e) {
                    (Some(Event::Body(a)), Event::Body(b)) => a.extend(b),
                    (_, e) => out.push(e),
                }
            }
            out
        };
        let whole = merged(whole);
        for size in 1..bytes.len() {
            let mut rd = r();
            let mut evs = Vec::new();
            for piece in bytes.chunks(size) {
                rd.feed(piece, &mut evs);
            }
            assert_eq!(merged(evs), whole, "pieces of {size}");
        }
        whole
    }

    #[test]
    fn requests_with_length_chunked_and_none_follow_each_other() {
        let stream = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\n\r\n\
PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n";
        let evs = events(Reader::requests, stream);
        let heads: Vec<String> = evs
            .iter()
            .filter_map(|e| match e {
                Event::Head(h) => Some(format!("{} {}", h.method, h.target)),
                _ => None,
            })
            .collect();
        assert_eq!(heads, ["POST /a", "GET /b", "PUT /c"]);
        let bodies: Vec<&[u8]> = evs
            .iter()
            .filter_map(|e| match e {
                Event::Body(b) => Some(&b[..]),
                _ => None,
            })
            .collect();
        assert_eq!(bodies, [&b"hello"[..], b"abcde"]);
        assert_eq!(evs.iter().filter(|e| **e == Event::End).count(), 3);
    }

    #[test]
    fn responses_follow_head_requests_interim_answers_and_close() {
        let make = || {
            let mut r = Reader::responses();
            r.expect_head.extend([true, false, false]);
            r
        };
        let stream = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n\
HTTP/1.1 204 No Content\r\n\r\nHTTP/1.0 200 OK\r\n\r\nuntil the end";
        let mut evs = events(make, stream);
        let mut r = make();
        let mut more = Vec::new();
        r.feed(stream, &mut more);
        r.close(&mut more);
        assert_eq!(more.last(), Some(&Event::End), "a body until close ends with the connection");
        evs.retain(|e| matches!(e, Event::Head(_)));
        let codes: Vec<u16> = evs
            .iter()
            .map(|e| match e {
                Event::Head(h) => h.status,
                _ => 0,
            })
            .collect();
        assert_eq!(codes, [200, 204, 200], "HEAD's answer has no body; 100 is not the answer");
    }

    #[test]
    fn an_upgrade_or_garbage_stops_the_reader() {
        let mut r = Reader::responses();
        let mut evs = Vec::new();
        r.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello", &mut evs);
        assert!(!r.following());
        let mut g = Reader::requests();
        g.feed(b"\x16\x03\x01 not http at all\r\n\r\n", &mut evs);
        assert!(!g.following());
        let mut big = Reader::requests();
        big.feed(&vec![b'a'; MAX_HEAD + 10], &mut evs);
        assert!(!big.following(), "a head without end is not held");
    }
}
