//! The PROXY protocol header (HAProxy's "PROXY protocol" spec, versions 1 and 2) that a tcp or
//! tls socket may ask for: written to the service before the visitor's first byte, by the node
//! that accepted the visitor's connection, so it carries the visitor's real address whether the
//! tunnel is held there or on another node (a relay passes the header on as the bytes it is).

use std::net::IpAddr;
use std::net::SocketAddr;

use mysocket_raft_store::ProxyProtocol;

/// The v2 signature: twelve bytes no v1 header or other protocol starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header telling the service that `src` (the visitor) connected to `dst` (the public
/// address it dialled). An IPv4 address beside an IPv6 one is given in its IPv6 form, as both
/// of a header's addresses are of one family.
pub fn header(version: ProxyProtocol, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src_ip, dst_ip) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
        (s, d) => (IpAddr::V6(v6(s)), IpAddr::V6(v6(d))),
    };
    match version {
        ProxyProtocol::V1 => {
            let family = if src_ip.is_ipv4() { "TCP4" } else { "TCP6" };
            format!("PROXY {family} {src_ip} {dst_ip} {} {}\r\n", src.port(), dst.port()).into_bytes()
        }
        ProxyProtocol::V2 => {
            let mut h = Vec::with_capacity(16 + 36);
            h.extend_from_slice(&V2_SIGNATURE);
            // Version 2, command PROXY.
            h.push(0x21);
            match (src_ip, dst_ip) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    // AF_INET, STREAM; 12 bytes of addresses and ports.
                    h.push(0x11);
                    h.extend_from_slice(&12u16.to_be_bytes());
                    h.extend_from_slice(&s.octets());
                    h.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    // AF_INET6, STREAM; 36 bytes.
                    h.push(0x21);
                    h.extend_from_slice(&36u16.to_be_bytes());
                    h.extend_from_slice(&v6(s).octets());
                    h.extend_from_slice(&v6(d).octets());
                }
            }
            h.extend_from_slice(&src.port().to_be_bytes());
            h.extend_from_slice(&dst.port().to_be_bytes());
            h
        }
    }
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's own examples (section 2.1 for v1; the v2 layout of section 2.2, byte by
    /// byte).
    #[test]
    fn headers_follow_the_spec() {
        let src: SocketAddr = "192.168.0.1:56324".parse().unwrap();
        let dst: SocketAddr = "192.168.0.11:443".parse().unwrap();
        assert_eq!(header(ProxyProtocol::V1, src, dst), b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
        let v2 = header(ProxyProtocol::V2, src, dst);
        assert_eq!(&v2[..12], b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a");
        assert_eq!(&v2[12..16], &[0x21, 0x11, 0x00, 0x0c]);
        assert_eq!(&v2[16..], &[192, 168, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb]);
        let src6: SocketAddr = "[2001:db8::1]:1000".parse().unwrap();
        let v1 = String::from_utf8(header(ProxyProtocol::V1, src6, dst)).unwrap();
        assert_eq!(v1, "PROXY TCP6 2001:db8::1 ::ffff:192.168.0.11 1000 443\r\n");
        let v2 = header(ProxyProtocol::V2, src6, dst);
        assert_eq!((v2[13], u16::from_be_bytes([v2[14], v2[15]]), v2.len()), (0x21, 36, 52));
        // A v1 line is at most 107 bytes, whatever the addresses.
        let long: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535".parse().unwrap();
        assert!(header(ProxyProtocol::V1, long, long).len() <= 107);
    }
}
