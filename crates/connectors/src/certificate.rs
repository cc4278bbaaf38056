//! Reading what a person needs from a server's certificate (subject, issuer, validity, names,
//! SHA-256 fingerprint) for the test report. The certificate comes from the server, so this is
//! a small, bounds-checked DER reader that never panics and only extracts text; whether the
//! certificate is trusted is rustls's and webpki's business, not this module's.

use chrono::{DateTime, NaiveDate, Utc};
use serversync_model::certificate::{CertificateInfo, format_sha256};

/// The longest distinguished name or alternative name kept (longer ones are cut).
const MAX_TEXT: usize = 256;
/// At most this many alternative names are listed.
const MAX_NAMES: usize = 20;

/// SHA-256 of `der`.
pub fn sha256(der: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// What the certificate says; fields that cannot be read are left empty (the fingerprint is
/// always there).
pub fn describe(der: &[u8]) -> CertificateInfo {
    let mut info = CertificateInfo {
        subject: String::new(),
        issuer: String::new(),
        not_before: None,
        not_after: None,
        names: Vec::new(),
        sha256: format_sha256(&sha256(der)),
        self_signed: false,
    };
    let _ = read_tbs(der, &mut info);
    info
}

fn read_tbs(der: &[u8], info: &mut CertificateInfo) -> Option<()> {
    let (cert, _) = element(der, 0x30)?;
    let (tbs, _) = element(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xA0) {
        rest = any(rest)?.2; // version
    }
    rest = element(rest, 0x02)?.1; // serial number
    rest = element(rest, 0x30)?.1; // signature algorithm
    let (issuer, r) = element(rest, 0x30)?;
    let (validity, r) = element(r, 0x30)?;
    let (subject, r) = element(r, 0x30)?;
    info.issuer = name(issuer);
    info.subject = name(subject);
    info.self_signed = issuer == subject;
    let (t1, tag1, v) = any(validity)?;
    let (t2, tag2, _) = any(v)?;
    info.not_before = time(tag1, t1);
    info.not_after = time(tag2, t2);
    // subjectPublicKeyInfo, then optional [1] [2] unique ids and [3] extensions.
    let mut r = element(r, 0x30)?.1;
    while let Some((content, tag, next)) = any(r) {
        if tag == 0xA3 {
            info.names = alt_names(content).unwrap_or_default();
        }
        r = next;
    }
    Some(())
}

/// One DER element: (content, tag, rest).
fn any(data: &[u8]) -> Option<(&[u8], u8, &[u8])> {
    let tag = *data.first()?;
    let first = *data.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*data.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    if end > data.len() {
        return None;
    }
    Some((&data[header..end], tag, &data[end..]))
}

/// An element with the expected tag: (content, rest).
fn element(data: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (content, t, rest) = any(data)?;
    (t == tag).then_some((content, rest))
}

/// A distinguished name as `CN=…, O=…` in the order it is encoded.
fn name(seq: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut rdns = seq;
    while let Some((set, tag, next)) = any(rdns) {
        rdns = next;
        if tag != 0x31 {
            continue;
        }
        let mut atvs = set;
        while let Some((atv, _, n)) = any(atvs) {
            atvs = n;
            let Some((oid, r)) = element(atv, 0x06) else {
                continue;
            };
            let Some((value, vtag, _)) = any(r) else {
                continue;
            };
            parts.push(format!("{}={}", attribute(oid), string(vtag, value)));
        }
    }
    bounded(&parts.join(", "))
}

fn attribute(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x0A] => "O".into(),
        [0x55, 0x04, 0x0B] => "OU".into(),
        [0x55, 0x04, 0x05] => "serialNumber".into(),
        [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x01] => "emailAddress".into(),
        _ => dotted(oid),
    }
}

fn dotted(oid: &[u8]) -> String {
    let mut out = Vec::new();
    let mut v: u64 = 0;
    for (i, b) in oid.iter().enumerate() {
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if out.is_empty() {
                let first = (v / 40).min(2);
                out.push(first.to_string());
                out.push((v - first * 40).to_string());
            } else {
                out.push(v.to_string());
            }
            v = 0;
        }
        if i > 32 {
            break;
        }
    }
    out.join(".")
}

fn string(tag: u8, value: &[u8]) -> String {
    match tag {
        // BMPString: UTF-16BE.
        0x1E => char::decode_utf16(
            value
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])),
        )
        .map(|c| c.unwrap_or('\u{FFFD}'))
        .collect(),
        // T61String: read as Latin-1.
        0x14 => value.iter().map(|&b| char::from(b)).collect(),
        _ => String::from_utf8_lossy(value).into_owned(),
    }
}

/// No control characters, at most [`MAX_TEXT`] characters.
fn bounded(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_TEXT)
        .collect();
    if s.chars().count() > MAX_TEXT {
        out.push('…');
    }
    out
}

fn time(tag: u8, value: &[u8]) -> Option<DateTime<Utc>> {
    let s = std::str::from_utf8(value).ok()?;
    let s = s.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i32 = s.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 if s.len() == 14 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let n = |i: usize| -> Option<u32> { rest.get(i..i + 2)?.parse().ok() };
    let t = NaiveDate::from_ymd_opt(year, n(0)?, n(2)?)?.and_hms_opt(n(4)?, n(6)?, n(8)?)?;
    Some(t.and_utc())
}

/// DNS names and IP addresses of the subject alternative name extension.
fn alt_names(explicit: &[u8]) -> Option<Vec<String>> {
    let (mut exts, _) = element(explicit, 0x30)?;
    while let Some((ext, _, next)) = any(exts) {
        exts = next;
        let Some((oid, mut r)) = element(ext, 0x06) else {
            continue;
        };
        if oid != [0x55, 0x1D, 0x11] {
            continue;
        }
        if r.first() == Some(&0x01) {
            r = any(r)?.2; // critical
        }
        let (octets, _) = element(r, 0x04)?;
        let (mut names, _) = element(octets, 0x30)?;
        let mut out = Vec::new();
        while let Some((value, tag, n)) = any(names) {
            names = n;
            match (tag, value.len()) {
                (0x82, _) => out.push(bounded(&String::from_utf8_lossy(value))),
                (0x87, 4) => out.push(
                    std::net::Ipv4Addr::new(value[0], value[1], value[2], value[3]).to_string(),
                ),
                (0x87, 16) => {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(value);
                    out.push(std::net::Ipv6Addr::from(o).to_string());
                }
                _ => {}
            }
            if out.len() >= MAX_NAMES {
                break;
            }
        }
        return Some(out);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_never_panics_and_keeps_the_fingerprint() {
        for bytes in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x30\x03\x30\x01\x00",
        ] {
            let info = describe(bytes);
            assert_eq!(info.sha256.len(), 95);
            assert!(info.subject.is_empty());
        }
    }

    #[test]
    fn times_and_oids() {
        assert_eq!(
            time(0x17, b"250102030405Z").unwrap().to_rfc3339(),
            "2025-01-02T03:04:05+00:00"
        );
        assert_eq!(
            time(0x18, b"20510102030405Z").unwrap().to_rfc3339(),
            "2051-01-02T03:04:05+00:00"
        );
        assert_eq!(time(0x17, b"2501Z"), None);
        assert_eq!(
            dotted(&[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D]),
            "1.2.840.113549"
        );
        assert_eq!(bounded("a\u{7}b"), "a?b");
    }
}
