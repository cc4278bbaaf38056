//! A small DNS stub client (RFC 1035; SRV records, RFC 2782) for what the system resolver
//! (`getaddrinfo`) cannot do: the `_autodiscover._tcp` SRV record of Exchange Autodiscover,
//! and address lookups at a configured nameserver (`[network] nameserver`, e.g. a
//! split-horizon internal DNS server) instead of the system's.
//!
//! One question per query over UDP with EDNS(0), asked again over TCP when the answer comes
//! back truncated. Answers are hostile input: every length and compression pointer is
//! bounds-checked, a name follows at most [`MAX_POINTERS`] pointers and is at most 255
//! bytes, and the answer must carry the query's id and question.

use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{ConnectError, ErrorKind, FailureStep, Result};

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
/// The UDP payload size announced with EDNS(0) (the DNS flag day 2020 recommendation).
const UDP_PAYLOAD: u16 = 1232;
/// Compression pointers followed in one name before it is called a loop.
pub const MAX_POINTERS: usize = 32;
/// Answers with another id (late answers to an earlier query, spoofing attempts) skipped
/// before giving up on a UDP exchange.
const MAX_STRAY_ANSWERS: usize = 16;

/// An SRV record: where a service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The host, without the trailing dot.
    pub target: String,
}

/// A record of an answer section this client reads; others are skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Address(IpAddr),
    Srv(Srv),
}

/// A parsed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// RCODE: 0 no error, 2 server failure, 3 the name does not exist, 5 refused, …
    pub rcode: u8,
    /// TC: the answer did not fit; ask again over TCP.
    pub truncated: bool,
    pub records: Vec<Record>,
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the answer ends early")]
    Short,
    #[error("the answer is for another query")]
    Mismatch,
    #[error("a name in the answer is malformed ({0})")]
    BadName(&'static str),
}

/// The nameserver the system resolver uses: the first `nameserver` of `/etc/resolv.conf`
/// (127.0.0.1 when there is none, as the resolver itself assumes).
pub fn system_nameserver() -> SocketAddr {
    std::fs::read_to_string("/etc/resolv.conf")
        .ok()
        .and_then(|conf| first_nameserver(&conf))
        .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 53)))
}

fn first_nameserver(conf: &str) -> Option<SocketAddr> {
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
}

/// The SRV records of `name` (e.g. `_autodiscover._tcp.contoso.com`), best first: lowest
/// priority, then highest weight. A name without SRV records gives an empty list.
pub async fn srv(name: &str, nameserver: SocketAddr, timeout: Duration) -> Result<Vec<Srv>> {
    let answer = ask(name, TYPE_SRV, nameserver, timeout).await?;
    let mut found: Vec<Srv> = match answer.rcode {
        0 | 3 => answer
            .records
            .into_iter()
            .filter_map(|r| match r {
                Record::Srv(s) if !s.target.is_empty() => Some(s),
                _ => None,
            })
            .collect(),
        rcode => return Err(server_failure(name, rcode, nameserver)),
    };
    found.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
    Ok(found)
}

/// The addresses of `host` at `nameserver` (A and AAAA), with `port`. `localhost` is the
/// loopback addresses (RFC 6761) and an address literal is itself, without asking.
pub async fn addresses(
    host: &str,
    port: u16,
    nameserver: SocketAddr,
    timeout: Duration,
) -> Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost") {
        return Ok(vec![
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        ]);
    }
    let (v6, v4) = tokio::join!(
        ask(host, TYPE_AAAA, nameserver, timeout),
        ask(host, TYPE_A, nameserver, timeout)
    );
    let mut out = Vec::new();
    let mut missing = false;
    for answer in [v6?, v4?] {
        match answer.rcode {
            0 => out.extend(answer.records.into_iter().filter_map(|r| match r {
                Record::Address(ip) => Some(SocketAddr::new(ip, port)),
                Record::Srv(_) => None,
            })),
            3 => missing = true,
            rcode => return Err(server_failure(host, rcode, nameserver)),
        }
    }
    if out.is_empty() {
        return Err(ConnectError::new(
            FailureStep::Dns,
            ErrorKind::Config,
            if missing {
                format!(
                    "{host} does not exist (nameserver {nameserver}): check the server host name"
                )
            } else {
                format!(
                    "{host} has no IP address (nameserver {nameserver}): check the server host name"
                )
            },
        ));
    }
    Ok(out)
}

fn server_failure(name: &str, rcode: u8, nameserver: SocketAddr) -> ConnectError {
    let what = match rcode {
        2 => "server failure",
        5 => "refused",
        1 => "format error",
        _ => "error",
    };
    ConnectError::new(
        FailureStep::Dns,
        ErrorKind::Transient,
        format!(
            "the nameserver {nameserver} answered {what} (RCODE {rcode}) for {name}: check the \
             DNS server; try again later"
        ),
    )
}

fn timed_out(name: &str, nameserver: SocketAddr, timeout: Duration) -> ConnectError {
    ConnectError::new(
        FailureStep::Dns,
        ErrorKind::Transient,
        format!(
            "the nameserver {nameserver} did not answer for {name} within {} ms: check the DNS \
             server; try again later",
            timeout.as_millis()
        ),
    )
}

fn unreachable(name: &str, nameserver: SocketAddr, e: impl std::fmt::Display) -> ConnectError {
    ConnectError::new(
        FailureStep::Dns,
        ErrorKind::Transient,
        format!("asking the nameserver {nameserver} for {name} failed ({e}): check the DNS server"),
    )
}

/// Asks one question, over UDP and then, when the answer is truncated, over TCP; the
/// whole exchange within `timeout`.
async fn ask(name: &str, qtype: u16, nameserver: SocketAddr, timeout: Duration) -> Result<Answer> {
    let id = random_id();
    let query = encode_query(id, name, qtype).map_err(|why| {
        ConnectError::new(
            FailureStep::Dns,
            ErrorKind::Config,
            format!("{name} is not a valid DNS name ({why}): check the host name"),
        )
    })?;
    let exchange = async {
        let answer = ask_udp(&query, nameserver).await?;
        let answer = parse_response(id, &query, &answer)?;
        if !answer.truncated {
            return Ok::<_, Exchange>(answer);
        }
        let answer = ask_tcp(&query, nameserver).await?;
        Ok(parse_response(id, &query, &answer)?)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(timed_out(name, nameserver, timeout)),
        Ok(Err(Exchange::Io(e))) => Err(unreachable(name, nameserver, e)),
        Ok(Err(Exchange::Parse(e))) => Err(ConnectError::new(
            FailureStep::Dns,
            ErrorKind::Transient,
            format!("the nameserver {nameserver} sent an unreadable answer for {name}: {e}"),
        )),
        Ok(Ok(answer)) => Ok(answer),
    }
}

enum Exchange {
    Io(std::io::Error),
    Parse(ParseError),
}

impl From<std::io::Error> for Exchange {
    fn from(e: std::io::Error) -> Self {
        Exchange::Io(e)
    }
}

impl From<ParseError> for Exchange {
    fn from(e: ParseError) -> Self {
        Exchange::Parse(e)
    }
}

async fn ask_udp(query: &[u8], nameserver: SocketAddr) -> std::result::Result<Vec<u8>, Exchange> {
    let local: SocketAddr = if nameserver.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(local).await?;
    socket.connect(nameserver).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; usize::from(UDP_PAYLOAD)];
    for _ in 0..MAX_STRAY_ANSWERS {
        let n = socket.recv(&mut buf).await?;
        if n >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
    Err(Exchange::Parse(ParseError::Mismatch))
}

async fn ask_tcp(query: &[u8], nameserver: SocketAddr) -> std::result::Result<Vec<u8>, Exchange> {
    let mut tcp = tokio::net::TcpStream::connect(nameserver).await?;
    let len = u16::try_from(query.len()).map_err(|_| ParseError::Short)?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    tcp.write_all(&framed).await?;
    let len = tcp.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    tcp.read_exact(&mut buf).await?;
    Ok(buf)
}

fn random_id() -> u16 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default(),
    );
    h.finish() as u16
}

/// A recursive query for `name` (class IN) with an EDNS(0) OPT record.
pub fn encode_query(id: u16, name: &str, qtype: u16) -> std::result::Result<Vec<u8>, &'static str> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]); // 1 question, 1 additional (OPT)
    encode_name(&mut q, name)?;
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    // OPT: root name, type, UDP payload size as the class, no extended flags, no data.
    q.push(0);
    q.extend_from_slice(&TYPE_OPT.to_be_bytes());
    q.extend_from_slice(&UDP_PAYLOAD.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    Ok(q)
}

fn encode_name(out: &mut Vec<u8>, name: &str) -> std::result::Result<(), &'static str> {
    let name = name.trim().trim_end_matches('.');
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > 253 {
        return Err("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("an empty label");
        }
        if label.len() > 63 {
            return Err("a label longer than 63 characters");
        }
        if !label.is_ascii() {
            return Err("not ASCII: use the name's punycode (xn--) form");
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    Ok(())
}

/// Reads an answer to `query` (whose id is `id`): header, the echoed question, and the
/// A, AAAA and SRV records of the answer section.
pub fn parse_response(
    id: u16,
    query: &[u8],
    buf: &[u8],
) -> std::result::Result<Answer, ParseError> {
    let header = buf.get(..12).ok_or(ParseError::Short)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    if u16::from_be_bytes([header[0], header[1]]) != id || flags & 0x8000 == 0 {
        return Err(ParseError::Mismatch);
    }
    let qd = u16::from_be_bytes([header[4], header[5]]);
    let an = u16::from_be_bytes([header[6], header[7]]);
    // The question must be ours (a server may leave it out only when it answers with an
    // error and no records).
    let question = query.get(12..).and_then(|q| {
        let end = name_end(q)?;
        q.get(..end + 4)
    });
    let mut pos = 12;
    if qd > 0 {
        let (qname, after) = read_name(buf, pos)?;
        let echoed = buf.get(after..after + 4).ok_or(ParseError::Short)?;
        let ours = question.ok_or(ParseError::Mismatch)?;
        let (oname, oafter) = read_name(ours, 0)?;
        if !qname.eq_ignore_ascii_case(&oname) || ours.get(oafter..oafter + 4) != Some(echoed) {
            return Err(ParseError::Mismatch);
        }
        pos = after + 4;
        // Skip any further questions (servers send one).
        for _ in 1..qd {
            let (_, after) = read_name(buf, pos)?;
            pos = after.checked_add(4).ok_or(ParseError::Short)?;
        }
    }
    let mut records = Vec::new();
    for _ in 0..an {
        let (_, after) = read_name(buf, pos)?;
        let fixed = buf.get(after..after + 10).ok_or(ParseError::Short)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let start = after + 10;
        let data = buf.get(start..start + len).ok_or(ParseError::Short)?;
        if class == CLASS_IN {
            match (rtype, len) {
                (TYPE_A, 4) => records.push(Record::Address(IpAddr::from(
                    <[u8; 4]>::try_from(data).map_err(|_| ParseError::Short)?,
                ))),
                (TYPE_AAAA, 16) => records.push(Record::Address(IpAddr::from(
                    <[u8; 16]>::try_from(data).map_err(|_| ParseError::Short)?,
                ))),
                (TYPE_SRV, 7..) => {
                    let (target, end) = read_name(buf, start + 6)?;
                    if end > start + len {
                        return Err(ParseError::Short);
                    }
                    records.push(Record::Srv(Srv {
                        priority: u16::from_be_bytes([data[0], data[1]]),
                        weight: u16::from_be_bytes([data[2], data[3]]),
                        port: u16::from_be_bytes([data[4], data[5]]),
                        target,
                    }));
                }
                _ => {}
            }
        }
        pos = start + len;
    }
    Ok(Answer {
        rcode: (flags & 0x000f) as u8,
        truncated: flags & 0x0200 != 0,
        records,
    })
}

/// Where an uncompressed name starting at `buf[0]` ends (the index after its root label).
fn name_end(buf: &[u8]) -> Option<usize> {
    let mut pos = 0;
    loop {
        let len = usize::from(*buf.get(pos)?);
        if len == 0 {
            return Some(pos + 1);
        }
        if len & 0xc0 != 0 {
            return None;
        }
        pos += 1 + len;
    }
}

/// The name at `pos` (lower-case is not applied; no trailing dot) and the index after it
/// where it was first read.
fn read_name(buf: &[u8], mut pos: usize) -> std::result::Result<(String, usize), ParseError> {
    let mut name = String::new();
    let mut after = None;
    let mut pointers = 0;
    loop {
        let len = *buf.get(pos).ok_or(ParseError::Short)?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                return Ok((name, after.unwrap_or(pos + 1)));
            }
            0x00 => {
                let label = buf
                    .get(pos + 1..pos + 1 + usize::from(len))
                    .ok_or(ParseError::Short)?;
                if !name.is_empty() {
                    name.push('.');
                }
                for &b in label {
                    if b.is_ascii_graphic() {
                        name.push(char::from(b));
                    } else {
                        return Err(ParseError::BadName("a label holds a non-printable byte"));
                    }
                }
                if name.len() > 254 {
                    return Err(ParseError::BadName("longer than 255 bytes"));
                }
                pos += 1 + usize::from(len);
            }
            0xc0 => {
                let low = *buf.get(pos + 1).ok_or(ParseError::Short)?;
                pointers += 1;
                if pointers > MAX_POINTERS {
                    return Err(ParseError::BadName("a compression pointer loop"));
                }
                after.get_or_insert(pos + 2);
                let target = usize::from(u16::from_be_bytes([len & 0x3f, low]));
                if target >= pos {
                    return Err(ParseError::BadName("a compression pointer points forward"));
                }
                pos = target;
            }
            _ => return Err(ParseError::BadName("an unknown label type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `query` with `records` (each: type and data, owner compressed to the
    /// question) and `rcode`.
    fn answer(query: &[u8], rcode: u8, records: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let end = 12 + name_end(&query[12..]).unwrap() + 4;
        let mut a = query[..end].to_vec();
        a[2] = 0x81;
        a[3] = 0x80 | rcode;
        a[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        a[10..12].copy_from_slice(&[0, 0]);
        for (rtype, data) in records {
            a.extend_from_slice(&[0xc0, 12]);
            a.extend_from_slice(&rtype.to_be_bytes());
            a.extend_from_slice(&CLASS_IN.to_be_bytes());
            a.extend_from_slice(&[0, 0, 0, 60]);
            a.extend_from_slice(&(data.len() as u16).to_be_bytes());
            a.extend_from_slice(data);
        }
        a
    }

    fn srv_data(priority: u16, weight: u16, port: u16, target: &str) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&priority.to_be_bytes());
        d.extend_from_slice(&weight.to_be_bytes());
        d.extend_from_slice(&port.to_be_bytes());
        encode_name(&mut d, target).unwrap();
        d
    }

    #[test]
    fn srv_and_address_records_are_read() {
        let q = encode_query(7, "_autodiscover._tcp.contoso.com", TYPE_SRV).unwrap();
        let a = answer(
            &q,
            0,
            &[
                (TYPE_SRV, srv_data(10, 5, 443, "mail.contoso.com")),
                (TYPE_A, vec![192, 0, 2, 7]),
                (5, vec![0]), // a CNAME, skipped
            ],
        );
        let parsed = parse_response(7, &q, &a).unwrap();
        assert_eq!(parsed.rcode, 0);
        assert!(!parsed.truncated);
        assert_eq!(
            parsed.records,
            [
                Record::Srv(Srv {
                    priority: 10,
                    weight: 5,
                    port: 443,
                    target: "mail.contoso.com".into()
                }),
                Record::Address(IpAddr::from([192, 0, 2, 7])),
            ]
        );
    }

    #[test]
    fn answers_to_other_queries_and_broken_names_are_refused() {
        let q = encode_query(7, "contoso.com", TYPE_A).unwrap();
        let a = answer(&q, 3, &[]);
        assert_eq!(parse_response(7, &q, &a).unwrap().rcode, 3);
        assert_eq!(parse_response(8, &q, &a), Err(ParseError::Mismatch));
        let other = encode_query(7, "fabrikam.com", TYPE_A).unwrap();
        assert_eq!(parse_response(7, &other, &a), Err(ParseError::Mismatch));
        assert_eq!(
            parse_response(7, &q, &a[..a.len() - 1]),
            Err(ParseError::Short)
        );

        // A pointer to itself is a loop, not a hang.
        let mut looped = answer(&q, 0, &[(TYPE_SRV, vec![0, 0, 0, 0, 1, 187, 0xc0, 0])]);
        let at = looped.len() - 2;
        looped[at + 1] = at as u8;
        assert!(matches!(
            parse_response(7, &q, &looped),
            Err(ParseError::BadName(_))
        ));
    }

    #[test]
    fn names_are_checked_before_asking() {
        let mut out = Vec::new();
        assert!(encode_name(&mut out, "a..b").is_err());
        assert!(encode_name(&mut out, &"x".repeat(64)).is_err());
        assert!(encode_name(&mut out, "grüße.de").is_err());
        out.clear();
        encode_name(&mut out, "Contoso.COM.").unwrap();
        assert_eq!(out, b"\x07Contoso\x03COM\x00");
    }

    #[test]
    fn the_system_nameserver_is_the_first_of_resolv_conf() {
        let conf = "# comment\nsearch example.com\nnameserver 10.0.0.53\nnameserver 10.0.0.54\n";
        assert_eq!(
            first_nameserver(conf),
            Some("10.0.0.53:53".parse().unwrap())
        );
        assert_eq!(
            first_nameserver("nameserver fe80::1%eth0\n"),
            Some("[fe80::1]:53".parse().unwrap())
        );
        assert_eq!(first_nameserver("search x\n"), None);
    }
}
