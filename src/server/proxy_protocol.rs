//! PROXY protocol v1 (text) and v2 (binary) headers, as sent by HAProxy and cloud load
//! balancers in front of a listener. Only enable it on listeners that only such a balancer
//! can reach: the header decides the client address.
//!
//! The header is peeked first and then consumed exactly, so no byte of the TLS or HTTP
//! stream behind it is read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_MAX: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("connection closed before the PROXY header was complete")]
    Closed,
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads the header. `Ok(None)` for a `LOCAL`/`UNKNOWN` header (health checks from the
/// balancer itself): the TCP peer stands.
pub async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut buf = [0u8; 536];
    let mut have = 0;
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        if n == have {
            // Peek returns the same bytes at once until more arrive: back off briefly.
            // The caller bounds the whole read with the handshake timeout.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            continue;
        }
        have = n;
        match parse(&buf[..n])? {
            Some((len, addr)) => {
                let mut sink = vec![0u8; len];
                stream.read_exact(&mut sink).await?;
                return Ok(addr);
            }
            None => {
                if n == buf.len() {
                    return Err(ProxyHeaderError::Invalid("header too long"));
                }
            }
        }
    }
}

/// Parses a header at the start of `b`: `Ok(Some((header length, address)))` when complete,
/// `Ok(None)` when more bytes are needed.
pub fn parse(b: &[u8]) -> Result<Option<(usize, Option<SocketAddr>)>, ProxyHeaderError> {
    if b.len() >= 12 && &b[..12] == V2_SIG {
        return parse_v2(b);
    }
    if b.len() < 12 && V2_SIG.starts_with(b) {
        return Ok(None);
    }
    if b.len() < 6 {
        return if b"PROXY ".starts_with(b) {
            Ok(None)
        } else {
            Err(ProxyHeaderError::Invalid("no PROXY header"))
        };
    }
    if &b[..6] != b"PROXY " {
        return Err(ProxyHeaderError::Invalid("no PROXY header"));
    }
    let Some(end) = b.windows(2).position(|w| w == b"\r\n") else {
        return if b.len() >= V1_MAX {
            Err(ProxyHeaderError::Invalid("v1 header too long"))
        } else {
            Ok(None)
        };
    };
    let line =
        std::str::from_utf8(&b[6..end]).map_err(|_| ProxyHeaderError::Invalid("v1 not text"))?;
    let mut parts = line.split(' ');
    let addr = match parts.next() {
        Some("UNKNOWN") => None,
        Some(fam @ ("TCP4" | "TCP6")) => {
            let src: IpAddr = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or(ProxyHeaderError::Invalid("v1 source address"))?;
            let _dst: IpAddr = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or(ProxyHeaderError::Invalid("v1 destination address"))?;
            let sport: u16 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or(ProxyHeaderError::Invalid("v1 source port"))?;
            if (fam == "TCP4") != src.is_ipv4() {
                return Err(ProxyHeaderError::Invalid("v1 family mismatch"));
            }
            Some(SocketAddr::new(src, sport))
        }
        _ => return Err(ProxyHeaderError::Invalid("v1 protocol")),
    };
    Ok(Some((end + 2, addr)))
}

fn parse_v2(b: &[u8]) -> Result<Option<(usize, Option<SocketAddr>)>, ProxyHeaderError> {
    if b.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = b[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::Invalid("v2 version"));
    }
    let len = u16::from_be_bytes([b[14], b[15]]) as usize;
    let total = 16 + len;
    if b.len() < total {
        return Ok(None);
    }
    let body = &b[16..total];
    let addr = match (ver_cmd & 0x0f, b[13] >> 4) {
        (0, _) => None, // LOCAL
        (1, 1) if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        (1, 2) if body.len() >= 36 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port))
        }
        (1, 0) => None, // UNSPEC
        (1, _) => return Err(ProxyHeaderError::Invalid("v2 address block")),
        _ => return Err(ProxyHeaderError::Invalid("v2 command")),
    };
    Ok(Some((total, addr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_tcp4() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nGET /";
        let (len, addr) = parse(h).unwrap().unwrap();
        assert_eq!(len, h.len() - 5);
        assert_eq!(addr.unwrap(), "192.0.2.1:56324".parse().unwrap());
    }

    #[test]
    fn v1_partial_needs_more() {
        assert!(parse(b"PROXY TCP4 192.0").unwrap().is_none());
        assert!(parse(b"PRO").unwrap().is_none());
    }

    #[test]
    fn v2_tcp6() {
        let mut h = V2_SIG.to_vec();
        h.extend_from_slice(&[0x21, 0x21, 0, 36]);
        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&[0u8; 16]);
        h.extend_from_slice(&1234u16.to_be_bytes());
        h.extend_from_slice(&443u16.to_be_bytes());
        let (len, addr) = parse(&h).unwrap().unwrap();
        assert_eq!(len, h.len());
        assert_eq!(addr.unwrap(), "[2001:db8::7]:1234".parse().unwrap());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(parse(b"GET / HTTP/1.1\r\n").is_err());
    }
}
