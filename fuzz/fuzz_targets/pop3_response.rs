//! Server bytes → the POP3 response parsers (`connectors::pop3::parse`): status lines, SASL
//! lines, multi-line bodies (dot-unstuffing with a size limit), STAT/LIST/UIDL lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serversync_connectors::pop3::parse::{
    AuthLine, MultilineDecoder, MultilineError, Phase, classify, decode_multiline, parse_auth_line,
    parse_scan_line, parse_stat, parse_status, parse_uidl_line,
};

/// The lines of `data` as the client reads them (split at LF, one CR before it dropped).
fn lines(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..pos];
        out.push(line.strip_suffix(b"\r").unwrap_or(line));
        rest = &rest[pos + 1..];
    }
    out
}

/// Dot-stuffs `body` (lines ending in CR LF) and appends the terminating `.` line.
fn stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a decoded body is CR LF lines");
        let line = &rest[..end];
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        rest = &rest[end + 2..];
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn check_status(line: &[u8]) {
    let Ok(st) = parse_status(line) else {
        assert!(!line.starts_with(b"+OK ") && !line.starts_with(b"-ERR "));
        return;
    };
    assert_eq!(st.ok, line.starts_with(b"+OK"));
    if let Some(code) = &st.code {
        assert!(!code.is_empty() && !code.contains(' '), "code {code:?}");
        assert_eq!(code, &code.to_ascii_uppercase());
    }
    let shown = st.display();
    if !shown.ends_with('…') {
        let again = parse_status(shown.as_bytes()).expect("a displayed status parses");
        assert_eq!(again, st, "display does not round-trip");
    }
    for phase in [
        Phase::Greeting,
        Phase::Stls,
        Phase::Login,
        Phase::Stat,
        Phase::Command,
    ] {
        let _ = classify(phase, st.code.as_deref());
    }
}

fuzz_target!(|data: &[u8]| {
    let all = lines(data);
    if let Some(first) = all.first() {
        check_status(first);
        match parse_auth_line(first) {
            Ok(AuthLine::Status(st)) => assert_eq!(Ok(st), parse_status(first)),
            Ok(AuthLine::Continuation(c)) => assert_eq!(c, c.trim()),
            Err(_) => {}
        }
        if let Ok(st) = parse_status(first) {
            let _ = parse_stat(&st.text);
        }
    }
    for line in &all {
        if let Some((n, size)) = parse_scan_line(line) {
            assert_eq!(
                parse_scan_line(format!("{n} {size}").as_bytes()),
                Some((n, size))
            );
        }
        if let Some((n, uid)) = parse_uidl_line(line) {
            assert!(
                (1..=70).contains(&uid.len()),
                "unique-id length {}",
                uid.len()
            );
            assert!(uid.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{uid:?}");
            assert_eq!(
                parse_uidl_line(format!("{n} {uid}").as_bytes()),
                Some((n, uid))
            );
        }
    }

    // The body after a +OK line, with a limit taken from the input.
    let max = data.first().map_or(0, |b| usize::from(*b) * 16);
    let whole = decode_multiline(data, max);
    let mut decoder = MultilineDecoder::new(max);
    let mut streamed = Ok(());
    for line in &all {
        match decoder.push_line(line) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                streamed = Err(e);
                break;
            }
        }
    }
    let streamed = streamed.and_then(|()| decoder.finish());
    assert_eq!(whole, streamed, "whole and line-by-line decoding differ");
    match whole {
        Ok(body) => {
            assert!(
                body.len() <= max,
                "{} bytes over the limit {max}",
                body.len()
            );
            assert_eq!(decode_multiline(&stuff(&body), max), Ok(body.clone()));
        }
        Err(MultilineError::TooLarge(m)) => assert_eq!(m, max),
        Err(MultilineError::Unterminated) => {}
    }
});
