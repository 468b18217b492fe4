//! The access log each tunnel's owner sees on their SSH session: a line per HTTP request or
//! tcp/tls connection, put together by hand (it is written for every request).

use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use uuid::Uuid;

use crate::control::NodeRef;
use crate::tunnels::Holding;

/// Where a public connection's log lines go: the SSH session holding the tunnel on this node,
/// or, for a relayed connection, along the relay to the holder, which writes them there.
#[derive(Clone)]
pub enum LogSink {
    Local(Holding),
    Relay { log: crate::net::relay::RelayLog, tunnel_id: Uuid, epoch: u64 },
}

impl LogSink {
    pub fn line(&self, line: String) {
        match self {
            LogSink::Local(h) => log_line(h, line),
            LogSink::Relay { log, .. } => log.line(line),
        }
    }

    /// Whether the tunnel session this way goes through is still the one the local replica
    /// names: a connection through a superseded or released session takes no more requests,
    /// even if its holder has not heard yet (cut off from the cluster, it cannot).
    pub fn current(&self, node: &NodeRef) -> bool {
        let (tunnel_id, epoch, here) = match self {
            LogSink::Local(h) => (h.tunnel_id, h.epoch, true),
            LogSink::Relay { tunnel_id, epoch, .. } => (*tunnel_id, *epoch, false),
        };
        node.read(|r| r.session(&tunnel_id).is_some_and(|s| s.epoch == epoch && (s.node_id == node.id) == here))
    }
}

/// Writes a line to the session log of the SSH session holding `h`, if it has one.
pub fn log_line(h: &Holding, line: String) {
    h.log.line(line);
}

/// Longest path a log line shows in full; a longer one is cut and ends in `...`, so a line
/// stays small whatever a visitor asks for, and so does a session's queue of lines.
const LOGGED_PATH: usize = 256;

/// The log line of one HTTP request.
/// "HH:MM:SS <client> <method> <path> <status> <bytes>B <ms>ms", put together by hand: it is
/// written for every request, and `format!` (an `IpAddr` above all) showed in profiles.
pub fn request_line(client: &str, method: &str, path: &str, status: u16, bytes: u64, started: Instant) -> String {
    crate::metrics::get().public_bytes(bytes);
    let (path, cut) = match path.char_indices().nth(LOGGED_PATH) {
        Some((at, _)) => (&path[..at], "..."),
        None => (path, ""),
    };
    let mut line = String::with_capacity(43 + client.len() + method.len() + path.len());
    let (h, m, s) = hms();
    for (i, part) in [h, m, s].into_iter().enumerate() {
        if i > 0 {
            line.push(':');
        }
        if part < 10 {
            line.push('0');
        }
        push_number(&mut line, part);
    }
    for text in [" ", client, " ", method, " ", path, cut, " "] {
        push_printable(&mut line, text);
    }
    push_number(&mut line, u64::from(status));
    line.push(' ');
    push_number(&mut line, bytes);
    line.push_str("B ");
    push_number(&mut line, u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    line.push_str("ms\r\n");
    line
}

/// Appends `text` with every control character (C0, DEL and C1: what a terminal would take as
/// a command) shown as `?`: a log line goes to the tunnel owner's terminal, and a visitor
/// chooses the path and method in it.
fn push_printable(line: &mut String, text: &str) {
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        line.push_str(text);
    } else {
        line.extend(text.chars().map(|c| if c.is_control() { '?' } else { c }));
    }
}

fn push_number(line: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    line.extend(digits[at..].iter().map(|d| char::from(*d)));
}

/// The log line of a whole tcp/tls connection.
pub fn connection_line(client: SocketAddr, to_service: u64, to_client: u64, took: Duration) -> String {
    crate::metrics::get().public_bytes(to_service + to_client);
    format!(
        "{} {} connection closed: {to_service}B in, {to_client}B out, {}ms\r\n",
        now_hms(),
        client.ip(),
        took.as_millis()
    )
}

pub fn now_hms() -> String {
    let (h, m, s) = hms();
    format!("{h:02}:{m:02}:{s:02}")
}

/// The time of day (UTC) for log lines.
fn hms() -> (u64, u64, u64) {
    let secs = crate::control::now_ms() / 1000;
    ((secs / 3600) % 24, (secs / 60) % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_line_reads_like_an_access_log() {
        let line = request_line("203.0.113.7", "GET", "/index.html", 200, 1234567, Instant::now());
        let (time, rest) = line.split_once(' ').unwrap();
        assert_eq!(rest, "203.0.113.7 GET /index.html 200 1234567B 0ms\r\n");
        let hms: Vec<u64> = time.split(':').map(|p| p.parse().unwrap()).collect();
        assert!(time.len() == 8 && hms.len() == 3 && hms[0] < 24 && hms[1] < 60 && hms[2] < 60, "{time}");
        let line = request_line("::1", "HEAD", "/", 404, 0, Instant::now() - Duration::from_millis(1500));
        // Control characters a visitor put in the path never reach the owner's terminal.
        let line = {
            let evil = request_line("::1", "GET", "/a\u{1b}[2J\u{9b}31m\u{7f}\r\nb", 200, 0, Instant::now());
            assert!(evil.contains(" /a?[2J?31m???b 200 "), "{evil:?}");
            assert!(!evil.trim_end_matches("\r\n").chars().any(char::is_control), "{evil:?}");
            line
        };
        assert!(line.ends_with(" ::1 HEAD / 404 0B 1500ms\r\n"), "{line}");
        // A long path is cut (at a character, not inside one); one of the limit is not.
        let whole = format!("/{}", "a".repeat(LOGGED_PATH - 1));
        assert!(request_line("::1", "GET", &whole, 200, 0, Instant::now()).contains(&format!(" {whole} 200 ")));
        let long = format!("/{}", "é".repeat(40_000));
        let line = request_line("::1", "GET", &long, 200, 0, Instant::now());
        let shown = format!(" /{}... 200 ", "é".repeat(LOGGED_PATH - 1));
        assert!(line.contains(&shown) && line.len() < 700, "{line}");
    }
}
